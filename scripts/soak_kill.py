"""Kill synthesis and training with SIGKILL at random moments, restart them with the same command, and compare the
end result with an uninterrupted run.

    python scripts/soak_kill.py [--synthesis_kills 10] [--training_kills 5] [--seed 0] [--work runs/soak]

Synthesis: the tiny model zoo on a small simulated dataset; each kill lands a random moment after the run has
recorded a new candidate. Printed: candidates lost, duplicated or left truncated in the manifests, images
byte-identical to the uninterrupted run's, and whether the accepted set is the same.
Training: the tiny VAE, a checkpoint every few steps; each kill lands a random moment after a new checkpoint
appeared (the first as soon as a checkpoint's write has begun), then ``--resume latest``. Printed: kills, kills that left a
half-written checkpoint, and the largest weight difference from the uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrgen.data.phantom import generate_phantom_dataset  # noqa: E402
from mrgen.pipeline.demo import pair_config_for  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
POLL_S = 0.005


def synthesis_command(pair: Path, log_dir: Path, masks: int) -> list[str]:
    return [sys.executable, str(REPO / "synthesize_filter_multi.py"), "--config", str(pair), "--ckpt",
            str(REPO / "zoo/phantom"), "--controlnet", str(REPO / "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR"),
            "--log_dir", str(log_dir), "--max_masks", str(masks), "--max_tries_per_mask", "4", "--num_images_per_prompt", "2",
            "--scheduler", "dpm-solver++", "--steps", "10", "--num_gpus", "1"]


def training_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train_vae.py"), "--config", str(config), *extra]


def manifest_lines(log_dir: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (log_dir / "manifest").glob("*.jsonl"))


def newest_checkpoint(run: Path) -> int:
    """The step of the newest complete checkpoint (0: none yet)."""
    return max((int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*")), default=0)


def kill_after_progress(command: list[str], progress: Callable[[], int], rng: random.Random, max_delay_s: float,
                        timeout_s: float = 600) -> bool:
    """Start ``command``; once ``progress()`` rises, wait a random moment and SIGKILL it. False if it finished first;
    an error if it failed or made no progress."""
    process = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start, deadline = progress(), time.monotonic() + timeout_s
    while process.poll() is None and progress() <= start:
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"no progress in {timeout_s:.0f} s: {' '.join(command)}")
        time.sleep(POLL_S)
    time.sleep(rng.uniform(0, max_delay_s))
    if process.poll() is not None:
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-3000:]}")
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def run_to_end(command: list[str], timeout_s: float = 900) -> None:
    done = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def kill_repeatedly(kills: int, start: Callable[[], bool], restart_from_scratch: Callable[[], None],
                    attempts: int = 3) -> int:
    """``start()`` (one killed run) until ``kills`` landed; when a run finishes before its kill, start the whole
    sequence again from scratch, at most ``attempts`` times (then the kills that landed are reported)."""
    landed = 0
    for _ in range(attempts):
        landed = 0
        while landed < kills and start():
            landed += 1
        if landed == kills:
            return landed
        restart_from_scratch()
    return landed


def soak_synthesis(work: Path, kills: int, rng: random.Random) -> dict:
    data = work / "phantom"
    generate_phantom_dataset(data, cases=4, seed=0, size=64, slices=8)
    pair = pair_config_for(str(REPO / "training_configs/controlnet/phantom_T1_to_T2-SPIR.yml"), work, data)
    straight, killed = work / "synthesis_straight", work / "synthesis_killed"
    masks = max(6, 2 * kills)  # two batches of candidates per mask: the run outlasts the kills
    run_to_end(synthesis_command(pair, straight, masks))
    landed = kill_repeatedly(
        kills, lambda: kill_after_progress(synthesis_command(pair, killed, masks), lambda: manifest_lines(killed), rng, 0.5),
        lambda: shutil.rmtree(killed, ignore_errors=True))
    truncated = sum(1 for p in (killed / "manifest").glob("*.jsonl") if not p.read_bytes().endswith(b"\n"))
    run_to_end(synthesis_command(pair, killed, masks))
    return {"kills": landed, "truncated_manifests_found": truncated, **compare_synthesis(straight, killed)}


def compare_synthesis(straight: Path, killed: Path) -> dict:
    def candidates(root: Path) -> list[tuple[int, int]]:
        keys = []
        for path in (root / "manifest").glob("*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("type") == "candidate":
                    keys.append((record["mask_index"], record["try"]))
        return keys

    reference, recorded = candidates(straight), candidates(killed)
    images = sorted(p.relative_to(straight) for p in straight.glob("synthetic_*/*.png"))
    identical = sum((straight / p).read_bytes() == (killed / p).read_bytes() for p in images if (killed / p).is_file())
    filtered = next((straight / "json_files").glob("*_filtered.json")).name
    return {"candidates": len(reference), "lost": len(set(reference) - set(recorded)),
            "duplicated": len(recorded) - len(set(recorded)), "images": len(images), "images_identical": identical,
            "accepted_set_identical": (straight / "json_files" / filtered).read_text()
            == (killed / "json_files" / filtered).read_text()}


def soak_training(work: Path, kills: int, rng: random.Random) -> dict:
    data = work / "phantom_vae"
    generate_phantom_dataset(data, cases=4, seed=0, size=64, slices=8, modalities=["T1-InPhase"])
    config = work / "vae.yml"
    config.write_text(f"model:\n  config_path: {REPO / 'ckpt/tiny'}\ndata:\n  index_paths: [{data / 'image_text_train.json'}]\n"
                      "  test_fraction: 0.25\n"
                      "train:\n  train_batch_size: 4\n  max_train_steps: 60\n  checkpointing_steps: 2\n"
                      "  checkpoints_total_limit: 3\n  validation_steps: 1000\n  num_threads: 1\n"
                      "validation:\n  num_images: 1\n")
    straight, killed = work / "vae_straight", work / "vae_killed"
    run_to_end(training_command(config, f"output_dir={straight}"))
    in_checkpoint_write: list[bool] = []

    def writing() -> int:
        return len(list((killed / "checkpoints").glob(".tmp-checkpoint-*")))

    def killed_run() -> bool:
        extra = [f"output_dir={killed}"] + (["--resume", "latest"] if newest_checkpoint(killed) else [])
        if not in_checkpoint_write:  # the first kill lands while a checkpoint is being written
            landed = kill_after_progress(training_command(config, *extra), writing, rng, 0.0)
        else:
            landed = kill_after_progress(training_command(config, *extra), lambda: newest_checkpoint(killed), rng, 0.4)
        in_checkpoint_write.append(landed and any((killed / "checkpoints").glob(".tmp-checkpoint-*")))
        return landed

    def from_scratch() -> None:
        shutil.rmtree(killed, ignore_errors=True)
        in_checkpoint_write.clear()

    landed = kill_repeatedly(kills, killed_run, from_scratch)
    run_to_end(training_command(config, f"output_dir={killed}", "--resume", "latest"))
    return {"kills": landed, "kills_inside_a_checkpoint_write": sum(in_checkpoint_write),
            "max_weight_difference": max_weight_difference(straight, killed)}


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    weights = "pipeline/vae/diffusion_pytorch_model.safetensors"
    first, second = load_file(a / weights), load_file(b / weights)
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesis_kills", type=int, default=10)
    parser.add_argument("--training_kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "soak", help="work folder (emptied first)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rng = random.Random(args.seed)
    result = {"synthesis": soak_synthesis(args.work, args.synthesis_kills, rng),
              "training": soak_training(args.work, args.training_kills, rng)}
    print(json.dumps(result, indent=2))
    synthesis, training = result["synthesis"], result["training"]
    ok = (synthesis["lost"] == synthesis["duplicated"] == 0 and synthesis["accepted_set_identical"]
          and synthesis["images_identical"] == synthesis["images"] and training["max_weight_difference"] <= 1e-6)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
