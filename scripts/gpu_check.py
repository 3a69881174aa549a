"""Everything that only a GPU can show, in one call (about 5 minutes on one H100):

1. the device and its measured dense matmul throughput (bf16 and fp16), the reference for the rest;
2. paper-size UNet and ControlNet training steps (``ckpt/``) in bf16 and fp16 with gradient checkpointing, with
   PyTorch's SDPA attention and, if installed, xformers; AdamW, and 8-bit AdamW if bitsandbytes is installed:
   samples/s, peak memory, model TFLOP/s and their share of the measured matmul peak;
3. fp16 synthesis of a few candidates with the tiny model zoo, one worker process per visible GPU
   (``--num_gpus`` = all), through ``synthesize_filter_multi.py``'s code path;
4. the SAM2 filter on the GPU (the original's Hiera-L, random weights: its cost, not its scores).

    python scripts/gpu_check.py [--steps 5] [--out gpu_check.json]
    python scripts/gpu_check.py --dry-run      # the same code on the CPU, tiny sizes, 1 step (CI runs this)

A check that fails prints its error in the table and the script goes on; the exit code says whether all passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrgen.training.throughput import DTYPES, make_optimizer, make_step, matmul_tflops, step_flops, time_steps  # noqa: E402

PAPER_BATCH = {"unet": 16, "controlnet": 16}
TINY_BATCH = {"unet": 4, "controlnet": 4}


def installed(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def attempt(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        row = {"check": name, "ok": True, **check()}
    except Exception as err:  # a check tool reports every failure and goes on
        traceback.print_exc()
        row = {"check": name, "ok": False, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    row["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row), flush=True)
    return row


def device_rows(device: torch.device, dry_run: bool) -> list[dict[str, Any]]:
    size = 512 if dry_run else 8192
    precisions = ["bf16"] if dry_run else ["bf16", "fp16"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    return [attempt(f"matmul {p}", lambda p=p: {"device": name, "tflops": round(matmul_tflops(device, DTYPES[p], size), 2)})
            for p in precisions]


def training_check(stage: str, precision: str, attention: str, eight_bit: bool, device: torch.device, dry_run: bool,
                   steps: int, peak_tflops: float | None) -> dict[str, Any]:
    torch.manual_seed(0)
    root = REPO / "ckpt" / ("tiny" if dry_run else "")
    batch = (TINY_BATCH if dry_run else PAPER_BATCH)[stage]
    model, step = make_step(stage, root, batch, device, precision, checkpointing=True, attention=attention)
    flops = step_flops(model, step)
    timing = time_steps(model, step, make_optimizer(model, device, eight_bit), device, precision, steps, warmup=1 if dry_run else 2)
    achieved = flops / timing["s_per_step"] / 1e12
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"batch": batch, "samples_per_s": round(batch / timing["s_per_step"], 2),
            "peak_gb": round(timing["peak_gb"], 2), "model_tflops": round(achieved, 2),
            "share_of_matmul_peak": None if not peak_tflops else round(achieved / peak_tflops, 3)}


def training_rows(device: torch.device, dry_run: bool, steps: int, peaks: dict[str, float]) -> list[dict[str, Any]]:
    attentions = ["sdpa"] + (["xformers"] if installed("xformers") and device.type == "cuda" else [])
    optimizers = [False] + ([True] if installed("bitsandbytes") and device.type == "cuda" else [])
    precisions = ["bf16"] if dry_run else ["bf16", "fp16"]
    rows = []
    for stage in ("unet", "controlnet"):
        for precision in precisions:
            for attention in attentions:
                for eight_bit in optimizers:
                    name = f"train {stage} {precision} grad-ckpt {attention} {'adamw8bit' if eight_bit else 'adamw'}"
                    rows.append(attempt(name, lambda s=stage, p=precision, a=attention, e=eight_bit: training_check(
                        s, p, a, e, device, dry_run, steps, peaks.get(p))))
    return rows


def synthesis_check(work: Path, device: torch.device) -> dict[str, Any]:
    from mrgen.pipeline.config import DatasetSection
    from mrgen.pipeline.demo import make_dataset, pair_config_for
    from mrgen.synthesis.run import SynthesisOptions, synthesize

    data = work / "phantom"
    make_dataset(DatasetSection(cases=2, slices=8), ["T1-InPhase", "T2-SPIR"], data)
    pair = pair_config_for(str(REPO / "training_configs/controlnet/phantom_T1_to_T2-SPIR.yml"), work, data)
    gpus = torch.cuda.device_count()
    options = SynthesisOptions(ckpt=str(REPO / "zoo/phantom"), controlnet=str(REPO / "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR"),
                               config=str(pair), log_dir=str(work / "synthesis"), num_gpus=max(1, gpus),
                               max_masks=2 * max(1, gpus), max_tries_per_mask=4, num_images_per_prompt=4,
                               scheduler="dpm-solver++", steps=20, guidance_scale=6.0, half=device.type == "cuda")
    started = time.perf_counter()
    summary = synthesize(options)
    seconds = time.perf_counter() - started
    run_config = json.loads((work / "synthesis" / "run_config.json").read_text())
    return {"processes": run_config["processes"], "fp16": options.half, "candidates": summary["candidates"],
            "candidates_per_s_with_start_up": round(summary["candidates"] / seconds, 2)}


def sam2_check(work: Path, device: torch.device, dry_run: bool) -> dict[str, Any]:
    import numpy as np

    from mrgen.filtering.sam2_filter import DEFAULT_SAM2_CONFIG, Sam2Filter

    config = "configs/sam2.1/sam2.1_hiera_t.yaml" if dry_run else DEFAULT_SAM2_CONFIG
    sam2 = Sam2Filter(config=config, random_weights=True, device=str(device))
    rng = np.random.default_rng(0)
    image = (rng.random((512, 512)) * 255).astype(np.uint8)
    masks = [np.zeros((512, 512), bool) for _ in range(4)]
    for k, mask in enumerate(masks):
        mask[100 + 60 * k:150 + 60 * k, 100:200] = True
    sam2.score(image, masks)  # warm-up: builds the model
    images = 2 if dry_run else 10
    started = time.perf_counter()
    for _ in range(images):
        sam2.score(image, masks)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"config": config, "s_per_image_4_organs": round((time.perf_counter() - started) / images, 3),
            "peak_gb": None if peak is None else round(peak, 2)}


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| check | ok | seconds | result |\n|---|---|---|---|")
    for row in rows:
        result = row.get("error") or ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("check", "ok", "seconds"))
        print(f"| {row['check']} | {'yes' if row['ok'] else 'NO'} | {row['seconds']} | {result} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, one step (no GPU needed)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--out", type=Path, help="also write every row as JSON here")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible; run with --dry-run to check the code paths on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    steps = 1 if args.dry_run else args.steps
    rows = device_rows(device, args.dry_run)
    peaks = {row["check"].split()[-1]: row["tflops"] for row in rows if row["ok"]}
    rows += training_rows(device, args.dry_run, steps, peaks)
    with tempfile.TemporaryDirectory() as folder:
        rows.append(attempt("synthesis (fp16 on CUDA), one process per visible GPU", lambda: synthesis_check(Path(folder), device)))
        rows.append(attempt("SAM2 filter", lambda: sam2_check(Path(folder), device, args.dry_run)))
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(row["ok"] for row in rows) else 1)


if __name__ == "__main__":
    main()
