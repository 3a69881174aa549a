"""How long must nnU-Net train on this machine? Stock vs CPU-lean plans on real target labels.

On a validation draw of the simulated dataset (its own generator seed, so its patients are neither the zoo's
nor the downstream benchmark's test volumes), nnU-Net is trained on real target slices with their labels
(the benchmark's D_t arm) at several budgets with each plans file, and evaluated in 3D on the draw's held-out
volumes. Printed and written: ms per training iteration, mean and per-organ Dice per budget, and the
iterations each plans file needs to reach a target mean Dice. Every (plans, budget) run is a stage, so a
killed run resumes.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mrgen.io.atomic import atomic_save, atomic_write_json, atomic_write_text
from mrgen.nnunet.plans import LEAN_PLANS, STOCK_PLANS
from mrgen.pipeline.config import DatasetSection, SegmentationSection
from mrgen.pipeline.demo import make_dataset
from mrgen.pipeline.segmentation import NnUNetWork, number_cell, percent_cell
from mrgen.pipeline.stages import StageRunner

EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
ORGANS = ("liver", "right kidney", "left kidney", "spleen")


@dataclass
class BudgetConfig:
    out: str = "runs/bench_nnunet"
    target: str = "T2-SPIR"
    seed: int = 0
    dataset: DatasetSection = field(default_factory=lambda: DatasetSection(cases=24, seed=2))
    segmentation: SegmentationSection = field(default_factory=lambda: SegmentationSection(iterations=25, batch_size=8))
    epochs: list[int] = field(default_factory=lambda: [10, 20, 40, 80])
    plans: list[str] = field(default_factory=lambda: [STOCK_PLANS, LEAN_PLANS])
    target_dice: float = 0.80


def run_budget_sweep(config: BudgetConfig) -> Path:
    out = Path(config.out)
    runs = [(plans, epochs) for plans in config.plans for epochs in config.epochs]
    runner = StageRunner(out, ["dataset", "export", *[budget_name(p, e) for p, e in runs]])
    data = out / "data"
    runner.run("dataset", lambda: make_dataset(config.dataset, [config.target], data))
    work = NnUNetWork(out / "nnunet", config.segmentation)
    train_id, test_id = config.segmentation.dataset_id, config.segmentation.dataset_id + 1

    def export() -> dict[str, Any]:
        size = config.dataset.size
        work.export_real([data / f"volumes_{config.target}_train.jsonl"], "train", train_id, "RealTarget", size)
        test = work.export_real([data / f"volumes_{config.target}_test.jsonl"], "test", test_id, "RealTargetTest", size)
        work.plan(train_id, "RealTarget")
        return {"test": str(test)}

    test = Path(runner.run("export", export)["test"])
    results = []
    for plans, epochs in runs:
        name = budget_name(plans, epochs)
        settings = replace(config.segmentation, plans=plans, epochs=epochs)
        budget_work = NnUNetWork(out / "nnunet", settings)

        def train_and_evaluate(budget_work=budget_work, name=name) -> dict[str, Any]:
            budget_work.train(train_id, "RealTarget", config.seed, run=name)
            summary = budget_work.predict_and_evaluate(train_id, "RealTarget", test, out / name, config.seed, run=name)
            log = budget_work.logs / f"train_RealTarget_{name}.log"
            return {"summary": summary, "epoch_seconds": [float(s) for s in EPOCH_TIME.findall(log.read_text())]}

        result = runner.run(name, train_and_evaluate)
        results.append(budget_row(plans, epochs, settings.iterations, result))
    return write_budget_outputs(out, config, results)


def budget_name(plans: str, epochs: int) -> str:
    return f"{plans}_e{epochs}"


def budget_row(plans: str, epochs: int, iterations: int, result: dict[str, Any]) -> dict[str, Any]:
    seconds = result["epoch_seconds"]
    summary = result["summary"]
    return {"plans": plans, "epochs": epochs, "iterations": epochs * iterations,
            "ms_per_iteration": 1000 * statistics.median(seconds) / iterations if seconds else None,
            "train_seconds": sum(seconds), "stage_seconds": result["stage_seconds"],
            "dice": summary["mean"]["dice"], "organs": {o: summary["organs"][o]["dice"] for o in ORGANS}}


def iterations_to(rows: list[dict[str, Any]], plans: str, target: float) -> int | None:
    reached = [r["iterations"] for r in rows if r["plans"] == plans and (r["dice"] or 0.0) >= target]
    return min(reached) if reached else None


def write_budget_outputs(out: Path, config: BudgetConfig, rows: list[dict[str, Any]]) -> Path:
    atomic_write_json(out / "bench_nnunet.json", {"rows": rows, "target_dice": config.target_dice,
                                                  "target": config.target, "dataset_seed": config.dataset.seed})
    lines = [f"# nnU-Net budget on real {config.target} labels (validation draw, dataset seed {config.dataset.seed})", "",
             f"Batch {config.segmentation.batch_size}, {config.segmentation.iterations} iterations per epoch; "
             "3D Dice (%) on the draw's held-out volumes; ms per iteration = the median epoch's time / its training "
             f"iterations (its {config.segmentation.val_iterations} validation iterations included); stage s = "
             "training, prediction and evaluation, start-up included.", "",
             "| plans | iterations | ms / iteration | stage s | mean Dice | " + " | ".join(ORGANS) + " |",
             "|---" * (5 + len(ORGANS)) + "|"]
    for r in rows:
        organs = " | ".join(percent_cell(r["organs"][o]) for o in ORGANS)
        lines.append(f"| {r['plans']} | {r['iterations']} | {number_cell(r['ms_per_iteration'], '.0f')} | {r['stage_seconds']:.0f} | "
                     f"{percent_cell(r['dice'])} | {organs} |")
    lines += ["", f"Iterations to mean Dice >= {100 * config.target_dice:.0f}:"]
    for plans in config.plans:
        reached = iterations_to(rows, plans, config.target_dice)
        lines.append(f"- {plans}: {reached if reached is not None else 'not reached within the budgets run'}")
    write_budget_chart(out / "bench_nnunet.png", rows, config.plans)
    path = out / "bench_nnunet.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_budget_chart(path: Path, rows: list[dict[str, Any]], plans_order: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plans_order), figsize=(5 * len(plans_order), 3.6), sharey=True, squeeze=False)
    for ax, plans in zip(axes[0], plans_order):
        mine = sorted((r for r in rows if r["plans"] == plans), key=lambda r: r["iterations"])
        x = [r["iterations"] for r in mine]
        ax.plot(x, [100 * (r["dice"] or 0) for r in mine], "k-o", lw=2, label="mean")
        for organ in ORGANS:
            ax.plot(x, [100 * (r["organs"][organ] or 0) for r in mine], "--.", label=organ)
        timed = [r["ms_per_iteration"] for r in mine if r["ms_per_iteration"] is not None]
        ms = statistics.median(timed) if timed else 0.0
        ax.set_title(f"{plans} ({ms:.0f} ms / iteration, median)", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training iterations")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("3D Dice (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
