#!/usr/bin/env python
"""Train the phantom model zoo: the tiny VAE, UNet and ControlNets on the simulated dataset, reproducibly.

Every stage is one of the project's training scripts with a config from ``training_configs/zoo/`` (the recipe;
see docs/mask_following.md for how it was chosen) and fixed seeds. A stage whose pipeline folder under
``--work`` or whose folder in the zoo already exists is skipped (on a fresh clone the committed VAE and UNet
are upcast into ``--work`` for the later stages to start from), and an interrupted one resumes from its last
checkpoint, so an interrupted run continues (to train a finished stage longer, raise its config's
``max_train_steps`` and delete its ``pipeline`` folder and its zoo folder: it resumes from its last
checkpoint). The zoo folder then holds stock diffusers folders in fp16 safetensors:

    <out>/vae/ unet/ scheduler/ text_encoder.json      (a pipeline folder for synthesize_filter_multi.py --ckpt)
    <out>/controlnet_<source>_to_<target>/              (--controlnet)
    <out>/controlnet_self_trained_<source>_to_<target>/ (--controlnet)

The self-trained ControlNet (train_controlnet.py with self_training, docs/mask_following.md) starts from the
zoo's ControlNet of its pair and learns from the zoo UNet's own organ-attention samples, last.

Example (stage times in zoo/phantom/README.md):
    python scripts/train_zoo.py --out zoo/phantom --work runs/zoo
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
RESUME = ["--resume", "latest"]  # a killed stage continues from its last checkpoint (a new run if there is none)
# config file names, in the --configs folder
PAIRS = {  # zoo folder name -> (config, extra overrides)
    "controlnet_T1-InPhase_to_T2-SPIR": ("controlnet_phantom_T1_to_T2-SPIR.yml", []),
    "controlnet_T2-SPIR_to_T1-InPhase": ("controlnet_phantom_T2-SPIR_to_T1.yml", []),
    "controlnet_T1-InPhase_to_T2-SPIR_no_target_images": ("controlnet_phantom_T1_to_T2-SPIR.yml",
                                                          ["data.use_target_images=false"]),
}

SELF_TRAINED = {  # zoo folder name -> (config, the ControlNet it starts from)
    "controlnet_self_trained_T1-InPhase_to_T2-SPIR": ("controlnet_self_trained_phantom_T1_to_T2-SPIR.yml",
                                                      "controlnet_T1-InPhase_to_T2-SPIR"),
    "controlnet_self_trained_T2-SPIR_to_T1-InPhase": ("controlnet_self_trained_phantom_T2-SPIR_to_T1.yml",
                                                      "controlnet_T2-SPIR_to_T1-InPhase"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="zoo/phantom", help="the zoo folder")
    p.add_argument("--work", default="runs/zoo", help="data and training runs")
    p.add_argument("--configs", type=Path, default=REPO / "training_configs" / "zoo",
                   help="the stage configs")
    p.add_argument("--cases", type=int, default=60, help="phantom cases per modality")
    p.add_argument("--data_seed", type=int, default=1)
    p.add_argument("--vae_steps", type=int, help="default: the config's")
    p.add_argument("--unet_steps", type=int, help="default: the config's")
    p.add_argument("--controlnet_steps", type=int, help="default: the config's")
    p.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--self_trained", nargs="*", default=list(SELF_TRAINED), choices=list(SELF_TRAINED))
    p.add_argument("--threads", type=int, default=2, help="torch threads of the VAE and UNet processes")
    p.add_argument("--jobs", type=int, default=2, help="ControlNets trained at the same time (one per core)")
    return p.parse_args(argv)


def run_parallel(commands: dict[str, tuple[list[str], Path]], jobs: int) -> dict[str, float]:
    """Run the named commands, ``jobs`` at a time, each with its output to its log; their wall times in s."""
    times, pending = {}, list(commands.items())
    while pending:
        batch, pending = pending[:jobs], pending[jobs:]
        started = time.perf_counter()
        running = {}
        for name, (command, log) in batch:
            print("+", " ".join(command), flush=True)
            running[name] = subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=open(log, "w"),
                                             stderr=subprocess.STDOUT)
        while running:  # poll, so that each command's own wall time is recorded
            time.sleep(1)
            for name, process in [(n, p) for n, p in running.items() if p.poll() is not None]:
                if process.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {process.returncode}); see {commands[name][1]}")
                times[name] = round(time.perf_counter() - started, 1)
                del running[name]
    return times


def run(command: list[str], log: Path) -> float:
    return run_parallel({"stage": (command, log)}, 1)["stage"]


def todo(name: str, work: Path, out: Path) -> bool:
    """Whether a stage still has to train: neither its run's pipeline folder nor its zoo folder exists."""
    for finished in (work / name / "pipeline", out / name):
        if finished.is_dir():
            print(f"{name}: {finished} exists, skipped", flush=True)
            return False
    return True


def stage(name: str, work: Path, out: Path, command: list[str], times: dict[str, float]) -> None:
    if todo(name, work, out):
        times[name] = round(run([*command, *RESUME], work / f"{name}.log"), 1)


def restore_from_zoo(work: Path, out: Path) -> None:
    """The committed zoo's VAE and UNet (upcast to fp32) as the run folders later stages start from.

    On a machine without ``--work`` (a fresh clone), the finished stages are then not trained again."""
    unet_run, vae_run = work / "unet" / "pipeline", work / "vae" / "pipeline"
    if (out / "unet").is_dir() and not unet_run.is_dir():
        copy_pipeline(out, unet_run, ("vae", "unet"), ("text_encoder.json",), torch.float32)
    elif (out / "vae").is_dir() and not vae_run.is_dir() and not unet_run.is_dir():
        copy_weights(out / "vae", vae_run / "vae", torch.float32)


def train_all(args: argparse.Namespace, work: Path, out: Path) -> dict[str, float]:
    data, times = work / "data", {}
    if not (data / "image_text_train.json").is_file():
        times["data"] = round(run(["scripts/make_phantom_dataset.py", "--out", str(data), "--cases", str(args.cases),
                                   "--seed", str(args.data_seed), "--size", "64", "--modalities", "T1-InPhase",
                                   "T1-OutPhase", "T2-SPIR"], work / "data.log"), 1)
    image_text = [f"data.index_paths=[{data}/image_text_train.json]",
                  f"data.test_index_paths=[{data}/image_text_test.json]"]
    threads = [f"train.num_threads={args.threads}"]
    restore_from_zoo(work, out)
    stage("vae", work, out, ["train_vae.py", "--config", str(args.configs / "train_vae_phantom.yml"),
                                f"output_dir={work}/vae", *steps(args.vae_steps), *image_text, *threads], times)
    stage("unet", work, out, ["train_unet.py", "--config", str(args.configs / "train_unet_phantom.yml"),
                                  f"output_dir={work}/unet", f"model.pretrained_model_path={work}/vae/pipeline",
                                  *steps(args.unet_steps), *image_text, *threads], times)
    controlnets = {}
    for name in (n for n in args.pairs if todo(n, work, out)):
        config, extra = PAIRS[name]
        controlnets[name] = (["train_controlnet.py", "--config", str(args.configs / config), f"output_dir={work}/{name}",
                              f"model.pretrained_model_path={work}/unet/pipeline", f"data.data_root={data}",
                              *steps(args.controlnet_steps), *extra, "train.num_threads=1", *RESUME],
                             work / f"{name}.log")
    return {**times, **run_parallel(controlnets, args.jobs)}


def steps(count: int | None) -> list[str]:
    return [] if count is None else [f"train.max_train_steps={count}"]


def copy_weights(source: Path, destination: Path, dtype: torch.dtype = torch.float16) -> None:
    """A diffusers model folder with its weights stored in ``dtype`` (fp16 ones load back with from_pretrained)."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "config.json", destination / "config.json")
    weights = load_file(source / "diffusion_pytorch_model.safetensors")
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
              destination / "diffusion_pytorch_model.safetensors")


def copy_pipeline(pipeline: Path, destination: Path, models: tuple[str, ...], files: tuple[str, ...],
                  dtype: torch.dtype = torch.float16) -> None:
    """A pipeline folder's ``models`` in ``dtype``, its scheduler and its ``files``."""
    for component in models:
        copy_weights(pipeline / component, destination / component, dtype)
    shutil.copytree(pipeline / "scheduler", destination / "scheduler", dirs_exist_ok=True)
    for file in files:
        shutil.copy2(pipeline / file, destination / file)


def assemble(args: argparse.Namespace, work: Path, out: Path) -> None:
    """The finished runs' models into the zoo, in fp16 (a stage taken from the zoo has no run to copy)."""
    copy_pipeline(work / "unet" / "pipeline", out, ("vae", "unet"), ("text_encoder.json",))
    for name in (n for n in args.pairs if (work / n / "pipeline").is_dir()):
        copy_controlnet(work / name / "pipeline", out / name)


def copy_controlnet(pipeline: Path, destination: Path) -> None:
    """The ControlNet in fp16, its pair and its run's mask-following curve."""
    copy_weights(pipeline / "controlnet", destination)
    shutil.copy2(pipeline / "pair.json", destination / "pair.json")
    curve = pipeline.parent / "validation_curve.png"
    if curve.is_file():
        shutil.copy2(curve, destination / curve.name)


def train_self_trained(args: argparse.Namespace, work: Path, out: Path) -> dict[str, float]:
    """Self-trained ControlNets from the assembled zoo; each one's ControlNet copied into the zoo."""
    times: dict[str, float] = {}
    for name in args.self_trained:
        config, controlnet = SELF_TRAINED[name]
        stage(name, work, out, ["train_controlnet.py", "--config", str(args.configs / config), f"output_dir={work}/{name}",
                                 f"model.pretrained_model_path={out}", f"model.init_from={out / controlnet}",
                                 f"data.data_root={work / 'data'}", f"train.num_threads={args.threads}"], times)
        if (work / name / "pipeline").is_dir():
            copy_controlnet(work / name / "pipeline", out / name)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    times = train_all(args, work, out)
    assemble(args, work, out)
    times.update(train_self_trained(args, work, out))
    record = work / "times.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    record.write_text(json.dumps({**previous, **times}, indent=2) + "\n")
    print(f"zoo written to {out}; stage wall times (s): {json.dumps({**previous, **times})}")


if __name__ == "__main__":
    main()
