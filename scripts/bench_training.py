"""Training throughput and peak memory of the three stages' optimizer steps.

Each configuration runs in its own process (so peak memory is its own): the stage's models built from
``ckpt/tiny`` (always) or ``ckpt`` (paper size, only when CUDA is present, with and without mixed
precision and gradient checkpointing), random images, masks and text contexts, and timed full optimizer
steps (forward, backward, AdamW step) after warm-up steps. The UNet and ControlNet steps include the
frozen VAE's encoding, as the original (no latent cache); the text context is a precomputed tensor, as
in training (prompt embeddings are cached).

    python scripts/bench_training.py                  # tiny, CPU (and paper size if CUDA is present)
    python scripts/bench_training.py --sizes tiny --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrgen.models import build_from_config, controlnet_from_unet, count_parameters, model_config  # noqa: E402
from mrgen.training.vae_stage import VAETrainingModule, kl_per_element  # noqa: E402

BATCH = {"tiny": {"vae": 16, "unet": 32, "controlnet": 16}, "paper": {"vae": 8, "unet": 16, "controlnet": 32}}
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_step(stage: str, root: Path, batch: int, device: torch.device, precision: str, checkpointing: bool):
    """(trainable model, a function running one forward+backward) for a stage at a config root."""
    vae = build_from_config(root, "vae").to(device)
    size = int(vae.config.sample_size)
    images = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "no")
    if stage == "vae":
        module = VAETrainingModule(vae)
        if checkpointing:
            vae.enable_gradient_checkpointing()

        def step() -> torch.Tensor:
            with autocast:
                reconstruction, mean, logvar = module(images)
                return F.mse_loss(reconstruction.float(), images) + 1e-4 * kl_per_element(mean.float(), logvar.float())
        return vae, step

    vae.requires_grad_(False).eval().to(DTYPES[precision] if precision != "no" else torch.float32)
    unet = build_from_config(root, "unet").to(device)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    trained = unet
    if stage == "controlnet":
        embedding = tuple(model_config(root, "controlnet")["conditioning_embedding_out_channels"])
        trained = controlnet_from_unet(unet, 1, embedding).to(device)
        unet.requires_grad_(False).eval()
        condition = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    if checkpointing:
        trained.enable_gradient_checkpointing()

    def step() -> torch.Tensor:
        with torch.no_grad():
            latents = vae.encode(images.to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        noisy = latents + noise  # the noise level does not change the cost
        with autocast:
            if stage == "unet":
                prediction = unet(noisy, timesteps, context).sample
            else:
                down, mid = trained(noisy, timesteps, context, controlnet_cond=condition, return_dict=False)
                prediction = unet(noisy, timesteps, context, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample
        return F.mse_loss(prediction.float(), noise)
    return trained, step


def run_one(spec: dict) -> dict:
    """Time ``spec['steps']`` optimizer steps after ``spec['warmup']`` in this process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(spec["threads"] or os.cpu_count() or 1)
    torch.manual_seed(0)
    root = REPO / "ckpt" / ("tiny" if spec["size"] == "tiny" else "")
    model, step = make_step(spec["stage"], root, spec["batch"], device, spec["precision"], spec["checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=spec["precision"] == "fp16")
    for i in range(spec["warmup"] + spec["steps"]):
        if i == spec["warmup"]:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
        scaler.scale(step()).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {**spec, "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()}",
            "params_m": count_parameters(model) / 1e6, "s_per_step": elapsed / spec["steps"],
            "samples_per_s": spec["batch"] * spec["steps"] / elapsed, "peak_gb": peak / 2**30,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["vae", "unet", "controlnet"], choices=["vae", "unet", "controlnet"])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (oneDNN / cuDNN warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one JSON spec in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    rows = []
    for spec in configurations(args):
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            print(f"{spec['stage']} {spec['size']} {spec['precision']}: failed\n{done.stderr[-1500:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {spec['stage']} {spec['size']} {spec['precision']} ckpt={spec['checkpointing']}", flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
