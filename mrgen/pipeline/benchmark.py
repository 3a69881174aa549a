"""The paper's Table 3 experiment on the simulated dataset: what should a target-modality segmenter be
trained on when the target has no labels?

For each pair (source -> target) nnU-Net 2D is trained on
  (a) real source slices with their masks (D_s, the lower bound),
  (b) the same with strong random intensity augmentation (a domain-randomisation baseline),
  (c) MRGen: synthetic target slices from source masks, after the quality filter,
  (d) (c) without the filter, and (c) from a ControlNet trained without target images (the ablation),
  (e) real target slices with their masks (D_t, the upper bound),
and, where the zoo has it, (c) with the ControlNet self-trained on organ-word attention's target-modality samples
(ours, not in the paper), each evaluated in 3D on held-out
real target volumes (patients no model of the chain saw: the zoo was trained on another generator seed). Every arm's
nnU-Net is trained with ``seeds`` seeds (the table shows the mean and the min-max range), on the CPU-lean plans by
default (mrgen/nnunet/plans.py). Every synthesis run is also measured without the quality filter's help
(mrgen/pipeline/synthetic_measures.py): segmentation fidelity with the D_t nnU-Net and realism by a classifier
two-sample test. Everything is a stage (resumable); the output is a markdown table shaped like the paper's (one
column per condition run), a JSON with every number and the config, and a bar chart.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mrgen.config import dump_yaml, to_dict
from mrgen.io.atomic import atomic_save, atomic_write_json, atomic_write_text
from mrgen.nnunet.plans import LEAN_PLANS, STOCK_PLANS
from mrgen.pipeline.augment import augment_dataset
from mrgen.pipeline.config import DatasetSection, PipelineConfig, SegmentationSection, SynthesisSection
from mrgen.pipeline.demo import make_dataset, pair_config_for, synthesis_options
from mrgen.pipeline.segmentation import NnUNetWork, aggregate_seeds, number_cell, organ_table, spread_cell
from mrgen.pipeline.stages import StageRunner
from mrgen.pipeline.synthetic_measures import ReferenceSegmenter, measure_synthesis_runs, measures_table
from mrgen.synthesis.finalize import select_into
from mrgen.synthesis.outputs import RunLayout
from mrgen.synthesis.run import SynthesisOptions, synthesize

log = logging.getLogger(__name__)

# key: (column title, offset of its nnU-Net dataset id; fixed, so that a new condition renumbers no earlier run;
# 7 was organ attention alone, removed)
CONDITIONS = {
    "a": ("D_s: real source", 1),
    "b": ("D_s + intensity augmentation", 2),
    "c": ("MRGen (filtered)", 3),
    "c_per_organ": ("MRGen, per-organ rule", 9),
    "c_self_trained": ("MRGen, self-trained ControlNet (filtered)", 8),
    "c_self_trained_per_organ": ("MRGen, self-trained ControlNet, per-organ rule", 10),
    "d_unfiltered": ("MRGen without filter", 4),
    "d_no_target": ("MRGen, ControlNet without D_t images", 5),
    "e": ("D_t: real target (upper bound)", 6),
}
# the synthetic arms and the synthesis run each trains on
SYNTHETIC_ARMS = {"c": "main", "c_per_organ": "main", "c_self_trained": "self_trained",
                  "c_self_trained_per_organ": "self_trained", "d_unfiltered": "main", "d_no_target": "no_target"}
UPPER_BOUND = "e"


@dataclass
class PairSpec:
    source: str
    target: str
    pair_config: str
    controlnet: str
    ablation_controlnet: str  # trained with data.use_target_images=false; "" if there is none
    self_trained_controlnet: str = ""  # a ControlNet trained with self_training; "" if there is none

    @property
    def name(self) -> str:
        return f"{self.source} -> {self.target}"

    @property
    def key(self) -> str:
        return f"{self.source}:{self.target}"


@dataclass
class BenchmarkConfig:
    out: str = "runs/benchmark_downstream"
    seed: int = 0
    zoo: str = "zoo/phantom"
    pairs: list[PairSpec] = field(default_factory=lambda: [
        PairSpec("T1-InPhase", "T2-SPIR", "training_configs/controlnet/phantom_T1_to_T2-SPIR.yml",
                 "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR", "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR_no_target_images",
                 "zoo/phantom/controlnet_self_trained_T1-InPhase_to_T2-SPIR"),
        PairSpec("T2-SPIR", "T1-InPhase", "training_configs/controlnet/phantom_T2-SPIR_to_T1.yml",
                 "zoo/phantom/controlnet_T2-SPIR_to_T1-InPhase", "",
                 "zoo/phantom/controlnet_self_trained_T2-SPIR_to_T1-InPhase"),
    ])
    # 24 cases per contrast: 18 training and 6 held-out test volumes (patients) per modality
    dataset: DatasetSection = field(default_factory=lambda: DatasetSection(cases=24))
    synthesis: SynthesisSection = field(default_factory=lambda: SynthesisSection(max_masks=64, max_tries_per_mask=4))
    # a fixed batch gives every column the same nnU-Net compute (the plan's scales with the dataset: 2 for 40 slices);
    # 2,000 iterations on the CPU-lean plans: the fewest of those tried with which real labels reach a mean Dice of 80
    # in both targets of a validation draw (scripts/bench_nnunet.py; docs/segmentation.md 4.3)
    segmentation: SegmentationSection = field(
        default_factory=lambda: SegmentationSection(epochs=80, iterations=25, batch_size=8, plans=LEAN_PLANS))
    augmentation_copies: int = 2
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))  # the columns to run
    # nnU-Net trainings per arm (seeds seed, seed + 1, ...); the table shows their mean and min-max range. One by
    # default: two do not fit the 2-hour CPU budget (docs/segmentation.md 4.3 gives one seed's measured spread)
    seeds: int = 1
    run_pairs: list[str] = field(default_factory=list)  # "SOURCE:TARGET" rows to run; empty: all

    def __post_init__(self) -> None:
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown benchmark conditions {sorted(unknown)}; choose from {list(CONDITIONS)}")
        keys = [p.key for p in self.pairs]
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        unknown = set(self.run_pairs) - set(keys)
        if unknown:
            raise ValueError(f"unknown benchmark pairs {sorted(unknown)}; choose from {keys}")

    def seed_list(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]

    def chosen_pairs(self) -> list[tuple[int, PairSpec]]:
        """The pairs to run with their position in ``pairs``, which names their stages, folders and dataset ids
        (so a part of the table reuses the full run's)."""
        return [(i, p) for i, p in enumerate(self.pairs) if not self.run_pairs or p.key in self.run_pairs]


BUDGETS = {
    "mini": dict(dataset=DatasetSection(cases=4, slices=12), synthesis=SynthesisSection(max_masks=6, max_tries_per_mask=2,
                 num_images_per_prompt=2, steps=3), segmentation=SegmentationSection(epochs=1, iterations=3, val_iterations=1,
                 batch_size=4)),
    "default": {},
    "full": dict(dataset=DatasetSection(cases=40, size=64), synthesis=SynthesisSection(max_masks=None, max_tries_per_mask=20,
                 num_images_per_prompt=10, scheduler="ddim", steps=50, guidance_scale=7.0, early_stop=False,
                 control_conditional_only=False),
                 segmentation=SegmentationSection(epochs=100, iterations=250, val_iterations=50, batch_size=12,
                                                  plans=STOCK_PLANS), seeds=3),
}


def with_budget(config: BenchmarkConfig, budget: str) -> BenchmarkConfig:
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    return replace(config, **BUDGETS[budget])


def with_zoo(config: BenchmarkConfig, zoo: str) -> BenchmarkConfig:
    """The same pairs with their ControlNets looked up by folder name in another zoo."""
    def moved(path: str) -> str:
        return str(Path(zoo) / Path(path).name) if path else ""

    pairs = [replace(p, controlnet=moved(p.controlnet), ablation_controlnet=moved(p.ablation_controlnet),
                     self_trained_controlnet=moved(p.self_trained_controlnet)) for p in config.pairs]
    return replace(config, zoo=zoo, pairs=pairs)


class PairBenchmark:
    """The arms of one pair, sharing one dataset folder, one nnU-Net tree and one test set."""

    def __init__(self, config: BenchmarkConfig, pair: PairSpec, index: int, data: Path, runner: StageRunner):
        self.config, self.pair, self.data, self.runner = config, pair, data, runner
        self.out = Path(config.out) / f"pair{index}_{pair.source}_to_{pair.target}"
        seg = config.segmentation
        self.work = NnUNetWork(self.out / "nnunet", seg)
        self.base_id = seg.dataset_id + 10 * index
        self.prefix = f"pair{index}"

    def stage(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(each arm's result, with its synthesis run's fidelity and realism; the measures of every synthesis run
        and their references)."""
        test = self.runner.run(self.stage("test_set"), lambda: {"dataset": str(self.work.export_real(
            [self.data / f"volumes_{self.pair.target}_test.jsonl"], "test", self.base_id, "TargetTest", self.config.dataset.size))})
        test_dataset = Path(test["dataset"])
        results = {}
        for key, make in self.training_sets().items():
            results[key] = None if make is None or key not in self.config.conditions else self.arm(key, make, test_dataset)
        measures = self.runner.run(self.stage("measures"), lambda: self.synthetic_measures(results, test_dataset))
        for key, role in SYNTHETIC_ARMS.items():
            if results.get(key) is not None and role in measures["runs"]:
                results[key] = {**results[key], **measures["runs"][role]}
        return results, measures

    def arm(self, key: str, make: Any, test_dataset: Path) -> dict[str, Any]:
        """Build and plan one arm's training set, then train and evaluate it once per seed."""
        dataset_id, name = self.base_id + CONDITIONS[key][1], f"Train_{key}"

        def prepare() -> dict[str, Any]:
            extra = make(dataset_id, name)
            if extra.get("samples") == 0:
                log.warning("%s %s: the quality filter accepted no synthetic sample; nothing to train on", self.pair.name, name)
                return {**extra, "skipped": "no accepted synthetic sample"}
            self.work.plan(dataset_id, name)
            return extra

        extra = self.runner.run(self.stage(key), prepare)
        if "skipped" in extra:
            return extra
        summaries, seconds = [], extra["stage_seconds"]
        for seed in self.config.seed_list():
            summary = self.runner.run(self.stage(f"{key}_seed{seed}"), lambda seed=seed: self.train_and_evaluate(
                dataset_id, name, test_dataset, seed))
            seconds += summary["stage_seconds"]
            summaries.append(summary)
        return {**extra, **aggregate_seeds(summaries, self.config.seed_list()), "stage_seconds": seconds}

    def train_and_evaluate(self, dataset_id: int, name: str, test_dataset: Path, seed: int) -> dict[str, Any]:
        self.work.train(dataset_id, name, seed)
        return self.work.predict_and_evaluate(dataset_id, name, test_dataset, self.arm_output(name, seed), seed)

    def arm_output(self, name: str, seed: int) -> Path:
        """Where an arm's nnU-Net trained with ``seed`` writes its test predictions and evaluation."""
        return self.out / name / f"seed{seed}"

    def synthetic_measures(self, results: dict[str, Any], test_dataset: Path) -> dict[str, Any]:
        """Fidelity (with the first seed's D_t nnU-Net) and realism of every synthesis run an arm trained on."""
        seed = self.config.seed_list()[0]
        upper = results.get(UPPER_BOUND)
        reference = None
        if upper is not None and "skipped" not in upper:
            name = f"Train_{UPPER_BOUND}"
            reference = ReferenceSegmenter(self.work, self.base_id + CONDITIONS[UPPER_BOUND][1], name, seed, test_dataset,
                                           self.arm_output(name, seed) / "predictions")
        runs = {role: self.out / f"synthesis_{role}"
                for role in sorted({role for key, role in SYNTHETIC_ARMS.items() if results.get(key) is not None})}
        return measure_synthesis_runs(runs, self.data, self.pair.source, self.pair.target, reference,
                                      self.out / "fidelity", seed)

    def training_sets(self) -> dict[str, Any]:
        source_train = [self.data / f"volumes_{self.pair.source}_train.jsonl"]
        target_train = [self.data / f"volumes_{self.pair.target}_train.jsonl"]
        size = self.config.dataset.size
        def have(folder: str) -> bool:
            return bool(folder) and Path(folder).is_dir()

        return {
            "a": lambda i, n: {"dataset": str(self.work.export_real(source_train, "train", i, n, size))},
            "b": lambda i, n: self.augmented(source_train, i, n),
            "c": lambda i, n: self.synthetic("main", "filtered", i, n),
            "c_per_organ": lambda i, n: self.synthetic("main", "per_organ", i, n),
            "c_self_trained": (lambda i, n: self.synthetic("self_trained", "filtered", i, n))
            if have(self.pair.self_trained_controlnet) else None,
            "c_self_trained_per_organ": (lambda i, n: self.synthetic("self_trained", "per_organ", i, n))
            if have(self.pair.self_trained_controlnet) else None,
            "d_unfiltered": lambda i, n: self.synthetic("main", "all", i, n),
            "d_no_target": (lambda i, n: self.synthetic("no_target", "filtered", i, n))
            if have(self.pair.ablation_controlnet) else None,
            "e": lambda i, n: {"dataset": str(self.work.export_real(target_train, "train", i, n, size))},
        }

    def augmented(self, source_train: list[Path], dataset_id: int, name: str) -> dict[str, Any]:
        destination = self.work.dataset(dataset_id, name)
        shutil.rmtree(destination, ignore_errors=True)  # a killed attempt's copy would hold the id the plain export needs
        plain = self.work.export_real(source_train, "train", dataset_id, name + "Plain", self.config.dataset.size)
        augmented = augment_dataset(plain, destination, self.config.augmentation_copies, self.config.seed)
        shutil.rmtree(plain)  # only the augmented copy may hold this dataset id
        return {"dataset": str(augmented)}

    def synthetic(self, role: str, which: str, dataset_id: int, name: str) -> dict[str, Any]:
        """Training set from the ``main``, ``no_target`` or ``self_trained`` ControlNet's run: its ``filtered`` or
        ``all`` candidates, or its candidates selected again by the ``per_organ`` rule (the same generation; the
        organs that miss get the ignore label). The self-trained ControlNet acts in both guidance branches (it
        follows masks better so, docs/mask_following.md); the others as configured."""
        synthesis = self.config.synthesis
        ckpt, controlnet, synthesis = {
            "main": (self.config.zoo, self.pair.controlnet, synthesis),
            "no_target": (self.config.zoo, self.pair.ablation_controlnet, synthesis),
            "self_trained": (self.config.zoo, self.pair.self_trained_controlnet,
                             replace(synthesis, control_conditional_only=False))}[role]
        log_dir = self.out / f"synthesis_{role}"
        options = self.synthesis_options(ckpt, controlnet, synthesis, log_dir)
        summary = self.runner.run(self.stage(f"synthesis_{role}"), lambda: synthesize(options))
        if which == "per_organ":
            files = [self.out / f"selection_{role}_per_organ" / f"synthetic_{self.pair.target}_filtered.json"]
            files[0].parent.mkdir(parents=True, exist_ok=True)
            summary = select_into(RunLayout(log_dir, self.pair.target), replace(options, selection="per_organ").rule,
                                  files[0])
        else:
            files = [p for p in sorted((log_dir / "json_files").glob("synthetic_*.json"))
                     if p.name.endswith("_filtered.json") == (which == "filtered")]
        samples = sum(len(json.loads(p.read_text(encoding="utf-8"))) for p in files)
        if samples == 0:
            return {"samples": 0, "synthesis": summary}
        return {"dataset": str(self.work.export_synthetic(files, dataset_id, name)), "samples": samples, "synthesis": summary}

    def synthesis_options(self, ckpt: str, controlnet: str, synthesis: SynthesisSection,
                          log_dir: Path) -> SynthesisOptions:
        pipeline = PipelineConfig(seed=self.config.seed, source=self.pair.source, target=self.pair.target,
                                  synthesis=synthesis)
        pair = pair_config_for(self.pair.pair_config, log_dir.parent, self.data)
        return synthesis_options(pipeline, Path(ckpt), Path(controlnet), pair, log_dir)


def run_benchmark(config: BenchmarkConfig) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.yml", dump_yaml(config))
    chosen = config.chosen_pairs()
    per_arm = [name for key in CONDITIONS for name in (key, *(f"{key}_seed{seed}" for seed in config.seed_list()))]
    stages = ["dataset"] + [f"pair{i}_{s}" for i, _ in chosen
                            for s in ("test_set", "synthesis_main", "synthesis_no_target",
                                      "synthesis_self_trained", *per_arm, "measures")]
    runner = StageRunner(out, stages)
    data = out / "phantom"
    modalities = sorted({m for p in config.pairs for m in (p.source, p.target)})
    runner.run("dataset", lambda: make_dataset(config.dataset, modalities, data))
    results, measures = {}, {}
    for i, pair in chosen:
        results[pair.name], measures[pair.name] = PairBenchmark(config, pair, i, data, runner).run()
    return write_outputs(out, config, results, measures, runner)


def write_outputs(out: Path, config: BenchmarkConfig, results: dict[str, dict[str, Any]],
                  measures: dict[str, dict[str, Any]], runner: StageRunner) -> Path:
    seconds = runner.total_seconds
    atomic_write_json(out / "benchmark.json", {"config": to_dict(config), "results": results, "measures": measures,
                                               "stage_seconds": runner.stage_seconds, "seconds": seconds})
    columns = [key for key in CONDITIONS if key in config.conditions]
    seeds = config.seed_list()
    lines = ["# Downstream benchmark on the simulated dataset (paper Table 3 shape)", "",
             "Mean 3D Dice (%) over liver, right kidney, left kidney and spleen on held-out real target volumes"
             + (f"; nnU-Net trained with seeds {', '.join(map(str, seeds))}: mean over seeds (min-max). "
                "A difference inside the ranges is a tie." if len(seeds) > 1 else "."), "",
             "| source -> target | " + " | ".join(CONDITIONS[key][0] for key in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for pair, by_condition in results.items():
        cells = ["n/a" if not evaluated(r) else spread_cell(r["mean"]["dice"], r.get("spread", {}).get("mean", {}).get("dice"))
                 for r in (by_condition.get(k) for k in columns)]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    for pair, by_condition in results.items():
        present = {CONDITIONS[k][0]: r for k, r in by_condition.items() if evaluated(r)}
        lines += ["", f"## {pair}", ""]
        if present:  # no arm of the pair trained a segmenter (say, its filter accepted nothing): no organ tables
            lines += ["Dice (%):", "", organ_table(present, "dice"), "", "HD95 (mm):", "", organ_table(present, "hd95"), ""]
        lines += [cost_table(by_condition), "", measures_table(measures.get(pair, {}), RUN_TITLES)]
    lines += ["", f"Total time {seconds:.0f} s (sum of the stages). Config: `benchmark.yml`; every number: `benchmark.json`; chart: `benchmark.png`."]
    write_chart(out / "benchmark.png", results, columns)
    path = out / "benchmark.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


RUN_TITLES = {"main": "MRGen ControlNet", "no_target": "ControlNet without D_t images",
              "self_trained": "self-trained ControlNet"}


def evaluated(result: dict[str, Any] | None) -> bool:
    """Whether a condition was trained and evaluated (not missing, not skipped for want of samples)."""
    return result is not None and "mean" in result


def cost_table(by_condition: dict[str, Any]) -> str:
    """Per arm: its nnU-Net stage time and, for a synthetic arm, what its training slices cost (the filtered arms
    train on the accepted candidates, the unfiltered one on every candidate)."""
    lines = ["| training data | nnU-Net stage time (s) | synthetic candidates | training slices | UNet evaluations / slice | s / slice |",
             "|---|---|---|---|---|---|"]
    for key, r in by_condition.items():
        if r is None:
            continue
        s = r.get("synthesis")
        synth = ["", "", "", ""]
        if s is not None:
            slices = r.get("samples", s["accepted"])
            generation = s["seconds"]  # generation and filtering, without the models' loading
            synth = [str(s["candidates"]), str(slices), number_cell(s["unet_evaluations"] / slices if slices else None, ".0f"),
                     number_cell(generation / slices if slices else None, ".2f")]
        stage = number_cell(r.get("stage_seconds"), ".0f")  # n/a: nothing was accepted, so no segmenter was trained
        lines.append(f"| {CONDITIONS[key][0]} | {stage} | " + " | ".join(synth) + " |")
    return "\n".join(lines)


def write_chart(path: Path, results: dict[str, dict[str, Any]], keys: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(results))
    for j, (pair, by_condition) in enumerate(results.items()):
        dice = [100 * by_condition[k]["mean"]["dice"] if evaluated(by_condition.get(k)) else None for k in keys]
        bars = ax.bar(np.arange(len(keys)) + j * width, [d or 0.0 for d in dice], width, label=pair)
        ax.bar_label(bars, labels=["n/a" if d is None else f"{d:.1f}" for d in dice], fontsize=7)
    ax.set_xticks(np.arange(len(keys)) + width * (len(results) - 1) / 2)
    ax.set_xticklabels([CONDITIONS[k][0] for k in keys], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("mean 3D Dice (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


