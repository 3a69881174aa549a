"""Training throughput and peak memory of the three stages' optimizer steps, and what the training harness costs.

Stages: each configuration runs in its own process (so peak memory is its own): the stage's models built from
``ckpt/tiny`` (always) or ``ckpt`` (paper size, only when CUDA is present, with and without mixed precision and
gradient checkpointing), random images, masks and text contexts, timed full optimizer steps after warm-up steps
(mrgen/training/throughput.py).

Harness: the tiny UNet stage trained on a small simulated dataset by our harness (``train_unet``), against a
minimal hand-written accelerate loop over the same stage's data and loss (forward, backward, clipping, optimizer
step), in one process; prints the ratio of their seconds per step (aim: at most 1.1).

    python scripts/bench_training.py                  # tiny, CPU (and paper size if CUDA is present), then the harness
    python scripts/bench_training.py --sizes tiny --steps 10 --no-harness
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrgen.models import count_parameters  # noqa: E402
from mrgen.training.throughput import make_optimizer, make_step, time_steps  # noqa: E402

BATCH = {"tiny": {"vae": 16, "unet": 32, "controlnet": 16}, "paper": {"vae": 8, "unet": 16, "controlnet": 32}}
HARNESS_BATCH = 16


def run_one(spec: dict) -> dict:
    """Time ``spec['steps']`` optimizer steps after ``spec['warmup']`` in this process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(spec["threads"] or os.cpu_count() or 1)
    torch.manual_seed(0)
    root = REPO / "ckpt" / ("tiny" if spec["size"] == "tiny" else "")
    model, step = make_step(spec["stage"], root, spec["batch"], device, spec["precision"], spec["checkpointing"])
    timing = time_steps(model, step, make_optimizer(model, device), device, spec["precision"], spec["steps"], spec["warmup"])
    return {**spec, **timing, "params_m": count_parameters(model) / 1e6,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()}",
            "samples_per_s": spec["batch"] / timing["s_per_step"],
            "memory": "GPU allocated" if device.type == "cuda" else "process RSS"}


def configurations(args: argparse.Namespace) -> list[dict]:
    specs = []
    for size in args.sizes:
        if size == "paper" and not torch.cuda.is_available():
            print("paper size skipped: no CUDA device (a paper-size UNet step takes about a minute on a CPU)")
            continue
        variants = [("no", False)] if size == "tiny" else [("no", False), ("fp16", False), ("fp16", True), ("bf16", True)]
        for stage in args.stages:
            for precision, checkpointing in variants:
                specs.append({"stage": stage, "size": size, "batch": BATCH[size][stage], "precision": precision,
                              "checkpointing": checkpointing, "steps": args.steps, "warmup": args.warmup,
                              "threads": args.threads})
    return specs


def print_table(rows: list[dict]) -> None:
    header = ("stage", "size", "device", "params (M)", "batch", "precision", "grad ckpt", "s/step", "samples/s", "peak (GB)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['stage']} | {r['size']} | {r['device']} | {r['params_m']:.2f} | {r['batch']} | {r['precision']} | "
              f"{'yes' if r['checkpointing'] else 'no'} | {r['s_per_step']:.3f} | {r['samples_per_s']:.1f} | "
              f"{r['peak_gb']:.2f} ({r['memory']}) |")


def stage_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for spec in configurations(args):
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            print(f"{spec['stage']} {spec['size']} {spec['precision']}: failed\n{done.stderr[-1500:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {spec['stage']} {spec['size']} {spec['precision']} ckpt={spec['checkpointing']}", flush=True)
    return rows


# ----- the harness against a hand-written loop -------------------------------------------------------------

def harness_config(work: Path, steps: int):
    from mrgen.config import UNetConfig, load_config

    overrides = [f"output_dir={work / 'harness'}", f"model.pretrained_model_path={REPO / 'zoo/phantom'}",
                 f"data.index_paths=[{work / 'data' / 'image_text_train.json'}]",
                 f"data.test_index_paths=[{work / 'data' / 'image_text_test.json'}]",
                 f"train.train_batch_size={HARNESS_BATCH}", f"train.max_train_steps={steps}", "train.use_ema=false",
                 "train.cache_latents=false", "train.lr_warmup_steps=0", f"train.checkpointing_steps={steps}",
                 f"train.validation_steps={steps}", "validation.num_images=1", "validation.num_inference_steps=2"]
    return load_config(REPO / "training_configs/demo/train_unet_phantom.yml", UNetConfig, overrides)


def harness_seconds_per_step(config, warmup: int) -> float:
    """Our harness: seconds per step between step ``warmup`` and the last, from the steps/s it logs every step
    (cumulative since the loop started, so the time at step k is k / rate_k)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mrgen.training.unet_stage import train_unet

    reset_accelerate()
    train_unet(config)
    events = EventAccumulator(str(Path(config.output_dir) / "logs" / config.name))  # accelerate's tracker folder
    events.Reload()
    rate = {e.step: e.value for e in events.Scalars("train/steps_per_s")}
    last = max(rate)
    at_warmup = warmup / rate[warmup] if warmup else 0.0
    return (last / rate[last] - at_warmup) / (last - warmup)


def reset_accelerate() -> None:
    """Each run in this process builds its own Accelerator; accelerate keeps singletons between them."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def plain_seconds_per_step(config, warmup: int) -> float:
    """The same stage's data, model and loss in a hand-written accelerate loop."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from mrgen.training.sample_keys import KeyedDataset
    from mrgen.training.unet_stage import UNetStage

    reset_accelerate()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(config.seed)
    stage = UNetStage(config, accelerator, Path(config.output_dir))
    # the stage's loss draws its noise from each sample's key (mrgen.training.sample_keys), as in the harness
    loader = torch.utils.data.DataLoader(KeyedDataset(stage.train_dataset, config.seed), batch_size=HARNESS_BATCH,
                                         shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(stage.trained_model.parameters(), lr=config.train.learning_rate)
    model, optimizer, loader = accelerator.prepare(stage.trained_model, optimizer, loader)
    model.train()
    step, started = 0, time.perf_counter()
    while step < config.train.max_train_steps:
        for batch in loader:
            loss = stage.loss(model, batch)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == warmup:
                started = time.perf_counter()
            if step == config.train.max_train_steps:
                break
    return (time.perf_counter() - started) / (config.train.max_train_steps - warmup)


def harness_ratio(steps: int, warmup: int) -> None:
    from mrgen.data.phantom import generate_phantom_dataset

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        generate_phantom_dataset(work / "data", cases=4, seed=0, size=64)
        config = harness_config(work, warmup + steps)
        plain_seconds_per_step(config, warmup)  # a first pass, not counted: both measured loops find warm caches
        plain = plain_seconds_per_step(config, warmup)
        harness = harness_seconds_per_step(config, warmup)
    print(f"\ntiny UNet stage, batch {HARNESS_BATCH}, {steps} timed steps after {warmup}, "
          f"{torch.get_num_threads()} threads:")
    print("| loop | s/step |\n|---|---|")
    print(f"| hand-written accelerate loop | {plain:.4f} |\n| our harness (train_unet) | {harness:.4f} |")
    print(f"harness / plain loop: {harness / plain:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["vae", "unet", "controlnet"], choices=["vae", "unet", "controlnet"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (oneDNN / cuDNN warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    parser.add_argument("--harness", action=argparse.BooleanOptionalAction, default=True,
                        help="also time our harness against a hand-written loop (default: on)")
    parser.add_argument("--harness_steps", type=int, default=40, help="timed steps of the harness comparison")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON spec in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    print_table(stage_rows(args))
    if args.harness:
        harness_ratio(args.harness_steps, args.warmup)


if __name__ == "__main__":
    main()
