"""The training stages on tiny models and a toy dataset, on CPU.

Each stage trains a few steps and its output loads with stock diffusers; a resumed run equals a straight
one; accumulation equals a bigger batch; a kill during a checkpoint save never leaves a half checkpoint
that ``latest`` would pick.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file

from conftest import ORGANS, make_toy_index
from mrgen.config import (ControlNetConfig, DiffusionModelSection, DiffusionTrainSection, ImageTextData,
                          SelfTrainingSection, UNetConfig,
                          ValidationSection, VAEConfig, VAEModelSection, VAETrainSection, dump_yaml, to_dict)
from mrgen.data.datasets import ImageTextDataset, PairConfig
from mrgen.models import TextEncoderError, build_from_config
from mrgen.training import checkpoints, train_controlnet, train_unet, train_vae
from mrgen.training.cli import main
from mrgen.training.diffusion import predicted_x0, training_schedule
from mrgen.training.latent_cache import CachedLatentDataset, LatentCache

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "ckpt" / "tiny")
VALIDATION = ValidationSection(num_images=2, num_inference_steps=2, guidance_scale=2.0)


def reset_accelerate_state() -> None:
    """Each run in this process builds its own Accelerator; accelerate keeps singletons between them."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate_state()


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    return {"root": root,
            "source": make_toy_index(root, "src", "T1 in-phase Abdomen MRI", seed=1),
            "target": make_toy_index(root, "tgt", "T2 SPIR Abdomen MRI", seed=2)}


def vae_config(out: Path, data: dict[str, Path], **train) -> VAEConfig:
    settings = dict(train_batch_size=2, max_train_steps=2, learning_rate=1e-3, checkpointing_steps=100,
                    validation_steps=100, num_threads=1, estimate_scaling_factor=True)
    settings.update(train)
    return VAEConfig(name="toy_vae", output_dir=str(out), seed=0, model=VAEModelSection(config_path=TINY),
                     data=ImageTextData(index_paths=[str(data["source"]), str(data["target"])], test_fraction=0.34),
                     train=VAETrainSection(**settings), validation=VALIDATION)


def diffusion_train(**train) -> DiffusionTrainSection:
    settings = dict(train_batch_size=2, max_train_steps=2, learning_rate=1e-3, checkpointing_steps=100,
                    validation_steps=100, num_threads=1)
    settings.update(train)
    return DiffusionTrainSection(**settings)


def unet_config(out: Path, data: dict[str, Path], vae_pipeline: Path, **train) -> UNetConfig:
    return UNetConfig(name="toy_unet", output_dir=str(out), seed=0,
                      model=DiffusionModelSection(config_path=TINY, pretrained_model_path=str(vae_pipeline)),
                      data=ImageTextData(index_paths=[str(data["source"]), str(data["target"])], test_fraction=0.34),
                      train=diffusion_train(**train), validation=VALIDATION)


def toy_pair(data: dict[str, Path]) -> PairConfig:
    return PairConfig(name="toy_T1_to_T2", source_indexes=[data["source"].name], target_indexes=[data["target"].name],
                      target_modality="T2 SPIR Abdomen MRI", organs=list(ORGANS), organ_weights=[0.3, 0.5, 0.4, 0.6],
                      data_root=str(data["root"]))


@pytest.fixture(scope="module")
def vae_pipeline(toy_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae_run")
    pipeline = train_vae(vae_config(out, toy_data))
    reset_accelerate_state()
    return pipeline


@pytest.fixture(scope="module")
def unet_pipeline(toy_data, vae_pipeline, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unet_run")
    pipeline = train_unet(unet_config(out, toy_data, vae_pipeline, cache_latents=True, use_ema=True))
    reset_accelerate_state()
    return pipeline


def test_vae_stage_writes_a_stock_diffusers_vae_and_pictures(vae_pipeline: Path) -> None:
    vae = AutoencoderKL.from_pretrained(vae_pipeline / "vae")
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor != 0.18215  # estimated, 1 / latent std
    run = vae_pipeline.parent
    assert (run / "validation" / "step_0000002.png").is_file() and (run / "loss_curve.png").is_file()
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    assert checkpoints.list_checkpoints(run / "checkpoints")[-1].name == "checkpoint-2"


def test_unet_stage_with_cached_latents_and_ema(unet_pipeline: Path, vae_pipeline: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(unet_pipeline / "unet")
    assert unet.config.cross_attention_dim == 384
    assert json.loads((unet_pipeline / "text_encoder.json").read_text()) == {"kind": "minilm", "path": None}
    assert (unet_pipeline / "scheduler" / "scheduler_config.json").is_file()
    assert load_file(unet_pipeline / "vae" / "diffusion_pytorch_model.safetensors").keys() == \
        load_file(vae_pipeline / "vae" / "diffusion_pytorch_model.safetensors").keys()
    run = unet_pipeline.parent
    assert (run / "latent_cache" / "manifest.json").is_file()
    assert (run / "checkpoints" / "checkpoint-2" / "custom_checkpoint_2.pkl").is_file()  # the EMA state


def test_the_same_command_twice_trains_the_same_weights(toy_data, unet_pipeline: Path, vae_pipeline: Path,
                                                         tmp_path: Path) -> None:
    again = train_unet(unet_config(tmp_path / "again", toy_data, vae_pipeline, cache_latents=True, use_ema=True))
    weights = "unet/diffusion_pytorch_model.safetensors"
    first, second = load_file(unet_pipeline / weights), load_file(again / weights)
    assert all(torch.equal(first[k], second[k]) for k in first)  # latent cache, data order and noise all seeded


def test_controlnet_stage_trains_from_the_unet(toy_data, unet_pipeline: Path, tmp_path: Path) -> None:
    config = ControlNetConfig(name="toy_cn", output_dir=str(tmp_path), seed=0, data=toy_pair(toy_data),
                              model=DiffusionModelSection(config_path=TINY, pretrained_model_path=str(unet_pipeline)),
                              train=diffusion_train(timestep_sampling="cubic"),
                              validation=dataclasses.replace(VALIDATION, target_reference_indexes=[str(toy_data["target"])]))
    pipeline = train_controlnet(config)
    controlnet = ControlNetModel.from_pretrained(pipeline / "controlnet")
    assert controlnet.config.conditioning_channels == 1
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0  # the zero convolution has started to learn
    for name in ("vae", "unet", "scheduler"):
        assert (pipeline / name).is_dir()
    assert json.loads((pipeline / "pair.json").read_text())["target_modality"] == "T2 SPIR Abdomen MRI"
    assert (tmp_path / "validation" / "step_0000002.png").is_file()
    following = (tmp_path / "validation" / "mask_following.md").read_text()
    assert "## step 2" in following and "IoU vs shuffled mask (floor)" in following
    assert "Clean-latent error of the source slices" in following
    # the mask-following curve: every validation's numbers, with the floor and the real target slices' reference
    assert (tmp_path / "validation_curve.png").is_file()
    events = b"".join(p.read_bytes() for p in (tmp_path / "logs").rglob("events.out.tfevents.*"))
    for metric in (b"val/mask_iou", b"val/mask_iou_floor", b"val/mask_fraction_brighter",
                   b"val/mask_fraction_brighter_real", b"val/mask_fraction_above_0.7_real"):
        assert metric in events


def test_controlnet_self_training_adds_segmented_target_pairs_and_keeps_them_across_a_resume(
        toy_data, unet_pipeline: Path, tmp_path: Path) -> None:
    def config(steps: int = 1, self_samples: int = 3, **train) -> ControlNetConfig:
        return ControlNetConfig(
            name="toy_cn_self", output_dir=str(tmp_path), seed=0, data=toy_pair(toy_data),
            model=DiffusionModelSection(config_path=TINY, pretrained_model_path=str(unet_pipeline)),
            train=diffusion_train(max_train_steps=steps, checkpointing_steps=1, **train), validation=VALIDATION,
            self_training=SelfTrainingSection(enabled=True, self_samples=self_samples, min_organ_iou=0.0,
                                              sampling_steps=2, sampling_batch=2, share=1.0))

    with pytest.raises(ValueError, match="cache_latents"):
        train_controlnet(config(cache_latents=True))
    reset_accelerate_state()
    assert (train_controlnet(config(cache_latents=False)) / "controlnet").is_dir()
    samples = tmp_path / "self_samples"
    summary = json.loads((samples / "summary.json").read_text())
    assert summary["masks"] == 3 and summary["kept"] == 3 and "every organ" in summary["rule"]
    chunk = np.load(samples / "chunk_00000.npz")
    assert chunk["regions"].shape == chunk["masks"].shape and chunk["organ_iou"].shape == (3, len(ORGANS))
    assert (samples / "examples.png").is_file()
    rendered = (samples / "chunk_00000.npz").stat().st_mtime_ns
    reset_accelerate_state()
    train_controlnet(config(steps=2, cache_latents=False), resume="latest")
    assert (samples / "chunk_00000.npz").stat().st_mtime_ns == rendered  # not rendered again
    assert checkpoints.list_checkpoints(tmp_path / "checkpoints")[-1].name == "checkpoint-2"
    reset_accelerate_state()
    fewer = config(steps=3, self_samples=2, cache_latents=False)
    with pytest.raises(checkpoints.ResumeError, match="self_training.self_samples: 3 in the checkpoint, 2 now"):
        train_controlnet(fewer, resume="latest")  # refused before any work
    reset_accelerate_state()
    shutil.rmtree(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="holds other masks"):  # a changed sample count never mixes two runs
        train_controlnet(fewer)


def _tensors_close(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=what)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _tensors_close(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_close(x, y, f"{what}[{i}]")
    else:
        assert a == b, what


def _checkpoint_state(folder: Path) -> dict:
    return {
        "weights": load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
        "optimizer": torch.load(folder / "optimizer.bin", weights_only=True),
        "lr_scheduler": torch.load(folder / "custom_checkpoint_0.pkl", weights_only=False),
        "progress": torch.load(folder / "custom_checkpoint_1.pkl", weights_only=False),
        "ema": torch.load(folder / "custom_checkpoint_2.pkl", weights_only=False),
    }


class _Interrupt(Exception):
    pass


def test_v_prediction_is_written_for_the_controlnet_and_cannot_be_changed_there(toy_data, vae_pipeline: Path,
                                                                                 tmp_path: Path) -> None:
    config = unet_config(tmp_path / "unet", toy_data, vae_pipeline)
    config.model.prediction_type = "v_prediction"
    unet_pipeline = train_unet(config)
    assert json.loads((unet_pipeline / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == \
        "v_prediction"
    AcceleratorState._reset_state(True)
    model = DiffusionModelSection(config_path=TINY, pretrained_model_path=str(unet_pipeline))
    assert training_schedule(unet_pipeline, model)["prediction_type"] == "v_prediction"  # inherited
    model.prediction_type = "epsilon"
    with pytest.raises(ValueError, match="trained with 'v_prediction'"):
        training_schedule(unet_pipeline, model)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_x0_inverts_the_forward_process(prediction_type: str) -> None:
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    latents, noise, timesteps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    exact = scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
    assert torch.allclose(predicted_x0(scheduler, noisy, timesteps, exact), latents, atol=2e-3)


def test_resume_equals_a_straight_run(toy_data, vae_pipeline: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """4 steps == 2 steps, stop, --resume latest, 2 more: weights, optimizer, LR schedule, EMA, RNG, data order."""
    settings = dict(max_train_steps=4, checkpointing_steps=2, use_ema=True, prompt_dropout=0.5,
                    lr_scheduler="cosine", lr_warmup_steps=1)
    train_unet(unet_config(tmp_path / "straight", toy_data, vae_pipeline, **settings))
    reset_accelerate_state()

    commit = checkpoints.commit

    def stop_after_step_2(temp: Path, step: int) -> Path:
        final = commit(temp, step)
        if step == 2:
            raise _Interrupt
        return final

    monkeypatch.setattr(checkpoints, "commit", stop_after_step_2)
    resumed = unet_config(tmp_path / "resumed", toy_data, vae_pipeline, **settings)
    with pytest.raises(_Interrupt):
        train_unet(resumed)
    monkeypatch.undo()
    reset_accelerate_state()
    with caplog.at_level(logging.INFO, logger="mrgen.training.harness"):
        train_unet(resumed, resume="latest")
    assert "resumed at optimizer step 2" in caplog.text

    straight = _checkpoint_state(tmp_path / "straight" / "checkpoints" / "checkpoint-4")
    again = _checkpoint_state(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")
    _tensors_close(straight, again, "checkpoint-4")
    assert again["lr_scheduler"]["last_epoch"] == 4  # stepped once per optimizer step
    assert again["progress"]["global_step"] == 4 and len(again["progress"]["losses"]) == 4

    # the restored optimizer and scheduler would keep the old learning rate: a changed one is refused up front,
    # a longer run (max_train_steps) is not; a --resume path that does not exist fails before any work
    reset_accelerate_state()
    changed = unet_config(tmp_path / "resumed", toy_data, vae_pipeline, **{**settings, "learning_rate": 0.5})
    with pytest.raises(checkpoints.ResumeError, match=r"train\.learning_rate: 0\.001 in the checkpoint, 0\.5 now"):
        train_unet(changed, resume="latest")
    with pytest.raises(checkpoints.ResumeError, match="no such checkpoint folder"):
        train_unet(resumed, resume=str(tmp_path / "nowhere"))
    # a checkpoint whose pickles hold anything but tensors and plain data is refused before accelerate unpickles it
    checkpoints.check_safe_to_unpickle(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")
    torch.save({"step": 4, "made": datetime.date(2026, 12, 6)}, tmp_path / "resumed" / "checkpoints" / "checkpoint-4" /
               "custom_checkpoint_1.pkl")
    with pytest.raises(checkpoints.ResumeError, match="custom_checkpoint_1.pkl holds more than tensors"):
        train_unet(resumed, resume="latest")
    checkpoints.check_resume_config(tmp_path / "resumed" / "checkpoints" / "checkpoint-4",
                                    to_dict(unet_config(tmp_path / "resumed", toy_data, vae_pipeline,
                                                        **{**settings, "max_train_steps": 6})))


def test_accumulating_two_micro_batches_equals_one_double_batch(toy_data, tmp_path: Path) -> None:
    """Same samples per step (8 slices: 2 batches of 4 or 4 of 2 per epoch), same LR per optimizer step."""
    eight = make_toy_index(tmp_path, "eight", "T1 in-phase Abdomen MRI", patients=4, seed=3)
    # adam_epsilon 1e-3: attention key biases have an exactly-zero true gradient; with the default 1e-8 Adam
    # would blow their rounding noise (different summation orders) up to full-size, random updates
    settings = dict(max_train_steps=3, lr_scheduler="linear", lr_warmup_steps=1, checkpointing_steps=1,
                    checkpoints_total_limit=1, estimate_scaling_factor=False, adam_epsilon=1e-3)
    results = []
    for name, batch, accumulation in (("big", 4, 1), ("small", 2, 2)):
        config = vae_config(tmp_path / name, toy_data, train_batch_size=batch, gradient_accumulation_steps=accumulation,
                            **settings)
        config.data = ImageTextData(index_paths=[str(eight)], test_index_paths=[str(toy_data["target"])])
        train_vae(config)
        reset_accelerate_state()
        found = checkpoints.list_checkpoints(Path(config.output_dir) / "checkpoints")
        assert [p.name for p in found] == ["checkpoint-3"]  # rotation kept only the newest
        results.append({"weights": load_file(found[0] / "vae" / "diffusion_pytorch_model.safetensors"),
                        "optimizer": torch.load(found[0] / "optimizer.bin", weights_only=True),
                        "lr": torch.load(found[0] / "custom_checkpoint_0.pkl", weights_only=False)["_last_lr"]})
    _tensors_close(results[0], results[1], "accumulated vs big batch")


KILL_SCRIPT = """
import os, signal, sys
from mrgen.training import harness

original = harness._Loop._save_model_hook

def save_then_die(self, models, weights, output_dir):
    original(self, models, weights, output_dir)  # the model is written, the optimizer and RNG states are not
    if self.progress.global_step == 2:
        os.kill(os.getpid(), signal.SIGKILL)

harness._Loop._save_model_hook = save_then_die
from mrgen.training.cli import main
main("vae", ["--config", sys.argv[1]])
"""


def test_kill_during_checkpoint_save_keeps_latest_complete(toy_data, tmp_path: Path) -> None:
    config = vae_config(tmp_path / "run", toy_data, max_train_steps=3, checkpointing_steps=1)
    (tmp_path / "config.yml").write_text(dump_yaml(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "config.yml")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    root = tmp_path / "run" / "checkpoints"
    assert (root / ".tmp-checkpoint-2" / "vae").is_dir() and not (root / "checkpoint-2").exists()
    assert checkpoints.resolve_resume("latest", root).name == "checkpoint-1"

    train_vae(config, resume="latest")
    assert [p.name for p in checkpoints.list_checkpoints(root)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def test_missing_text_encoder_folder_fails_before_training(toy_data, vae_pipeline: Path, tmp_path: Path) -> None:
    config = unet_config(tmp_path, toy_data, vae_pipeline)
    config.model = dataclasses.replace(config.model, text_encoder="biomedclip", text_encoder_path=str(tmp_path / "nope"))
    with pytest.raises(TextEncoderError, match="tokenizer_BiomedCLIP/vocab.txt"):
        train_unet(config)
    wide = json.loads((Path(TINY) / "unet" / "config.json").read_text()) | {"in_channels": 16, "out_channels": 16}
    (tmp_path / "wide" / "unet").mkdir(parents=True)
    (tmp_path / "wide" / "unet" / "config.json").write_text(json.dumps(wide))
    config.model = dataclasses.replace(config.model, text_encoder="minilm", config_path=str(tmp_path / "wide"))
    with pytest.raises(ValueError, match="UNet takes 16 channels but the VAE makes 4"):
        train_unet(config)


def test_cli_reports_config_errors(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yml"
    path.write_text("train:\n  max_train_steps: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main("vae", ["--config", str(path), "train.max_steps=3"])
    assert exit_info.value.code == 2 and "error: " in capsys.readouterr().err


def test_stage_scripts_default_to_the_original_configs_as_its_commands_took_none() -> None:
    from mrgen.config import ControlNetConfig, UNetConfig, VAEConfig, load_config
    from mrgen.training.cli import parse_args

    for stage, schema in (("vae", VAEConfig), ("unet", UNetConfig), ("controlnet", ControlNetConfig)):
        config = load_config(REPO / parse_args(stage, []).config, schema)
        assert config.train.max_train_steps > 10_000, stage  # the paper-size runs, not a demo config


def test_the_original_command_without_its_data_says_which_file_and_what_to_set(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main("vae", [f"output_dir={tmp_path / 'run'}"])
    assert "radiopaedia_abdomen_mri_image_annotated.json does not exist" in capsys.readouterr().err


def test_latent_cache_matches_the_vae_posterior(toy_data, tmp_path: Path) -> None:
    vae = build_from_config(TINY, "vae").eval()
    dataset = ImageTextDataset([toy_data["source"]], size=64, split="all", prompt_dropout=0.0)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    cache = LatentCache.build(tmp_path / "cache", dataset, vae, accelerator, resolution=64, batch_size=4)
    # building the cache draws nothing from torch's global generator: a run that builds it and one that finds it
    # built train with the same random numbers
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
    cached = CachedLatentDataset(dataset, cache)
    item = cached[3]
    with torch.no_grad():
        posterior = vae.encode(dataset[3]["image"][None]).latent_dist
    torch.testing.assert_close(item["latent_mean"], posterior.mean[0], rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(item["latent_std"], posterior.std[0], rtol=1e-2, atol=1e-3)
    assert "image" not in item and item["prompt"] == dataset[3]["prompt"]
    with pytest.raises(RuntimeError, match="stale"):
        cache.get(3, "/somewhere/else.png")
    manifest = (tmp_path / "cache" / "manifest.json").read_text()
    LatentCache.build(tmp_path / "cache", dataset, vae, accelerator, resolution=64, batch_size=4)
    assert (tmp_path / "cache" / "manifest.json").read_text() == manifest  # reused, not rebuilt


def _launch(script: str, config: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", script, "--config", str(config), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


@pytest.mark.slow
def test_accelerate_launch_chain_survives_kill_9(toy_data, tmp_path: Path) -> None:
    """The three scripts under `accelerate launch`; the ControlNet run is killed with SIGKILL and resumed."""
    vae = vae_config(tmp_path / "vae", toy_data)
    unet = unet_config(tmp_path / "unet", toy_data, tmp_path / "vae" / "pipeline", cache_latents=True)
    pair = toy_pair(toy_data)
    model = DiffusionModelSection(config_path=TINY, pretrained_model_path=str(Path(unet.output_dir) / "pipeline"))
    controlnet = ControlNetConfig(name="toy_cn", output_dir=str(tmp_path / "cn"), seed=0, data=pair, model=model,
                                  train=diffusion_train(max_train_steps=1000, checkpointing_steps=2), validation=VALIDATION)
    for name, config in (("vae", vae), ("unet", unet), ("controlnet", controlnet)):
        (tmp_path / f"{name}.yml").write_text(dump_yaml(config))
    for name in ("vae", "unet"):
        process = _launch(f"train_{name}.py", tmp_path / f"{name}.yml")
        assert process.wait(timeout=300) == 0, process.stdout.read()[-3000:]

    process = _launch("train_controlnet.py", tmp_path / "controlnet.yml", start_new_session=True)
    root = tmp_path / "cn" / "checkpoints"
    for _ in range(600):
        if len(checkpoints.list_checkpoints(root)) >= 2 or process.poll() is not None:
            break
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = checkpoints.checkpoint_step(checkpoints.resolve_resume("latest", root))
    assert killed_at >= 2

    process = _launch("train_controlnet.py", tmp_path / "controlnet.yml", "--resume", "latest",
                      f"train.max_train_steps={killed_at + 2}")
    assert process.wait(timeout=300) == 0
    output = process.stdout.read()
    assert f"resumed at optimizer step {killed_at}" in output, output[-3000:]
    ControlNetModel.from_pretrained(tmp_path / "cn" / "pipeline" / "controlnet")


# ----- two processes on the CPU, launched as on a GPU node (`accelerate launch --multi_gpu --num_processes 2`;
# without CUDA the harness trains with the gloo backend), against one process

ACCELERATE = Path(sys.executable).with_name("accelerate")
WEIGHTS = Path("pipeline") / "vae" / "diffusion_pytorch_model.safetensors"


def vae_command(processes: int, config, tmp_path: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    path = tmp_path / f"{Path(config.output_dir).name}.yml"
    path.write_text(dump_yaml(config))
    command = [str(ACCELERATE), "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_processes", str(processes), *(["--multi_gpu"] if processes > 1 else []),
               str(REPO / "train_vae.py"), "--config", str(path), *extra]
    return command, {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def launch_vae(processes: int, config, tmp_path: Path, *extra: str) -> tuple[Path, str]:
    command, env = vae_command(processes, config, tmp_path, *extra)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(config.output_dir), done.stderr


def vae_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / WEIGHTS)


def test_two_cpu_processes_train_what_one_does_write_once_and_resume_exactly(toy_data, tmp_path: Path) -> None:
    def config(name: str, steps: int, batch: int = 2):
        return vae_config(tmp_path / name, toy_data, train_batch_size=batch, max_train_steps=steps, checkpointing_steps=1)

    two, log = launch_vae(2, config("two", steps=2), tmp_path)
    one, _ = launch_vae(1, config("one", steps=2, batch=4), tmp_path)
    # the same global batch of 4: every sample's random numbers are keyed by the sample (mrgen.training.sample_keys),
    # so only the floating-point order of the gradient all-reduce differs, which Adam's normalised first steps
    # magnify in elements whose gradient is near zero: measured L2 distance 0.0007 (before keyed draws: 0.58, the
    # distance between two unrelated noise draws)
    first, second = vae_weights(one), vae_weights(two)
    distance = sum(((first[k] - second[k]).float() ** 2).sum().item() for k in first) ** 0.5
    assert distance < 0.01
    assert "effective batch 4 = 2 per process x 2 processes" in log and "2 process(es) on cpu" in log
    # rank 0 alone writes the logs and the checkpoints
    writers = {name.split(".")[-2] for name in (p.name for p in (two / "logs").rglob("events.out.tfevents.*"))}
    assert len(writers) == 1  # the process id in every tensorboard file name
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]

    stopped, _ = launch_vae(2, config("resumed", steps=1), tmp_path)
    launch_vae(2, config("resumed", steps=2), tmp_path, "--resume", "latest")
    resumed, straight = vae_weights(stopped), vae_weights(two)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_two_cpu_processes_killed_with_sigkill_resume_to_the_uninterrupted_weights(toy_data, tmp_path: Path) -> None:
    def config(name: str, steps: int):  # a constant rate: the killed run's schedule must not depend on its length
        return vae_config(tmp_path / name, toy_data, train_batch_size=2, max_train_steps=steps, checkpointing_steps=1,
                          lr_scheduler="constant")

    command, env = vae_command(2, config("killed", steps=100_000), tmp_path)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    root = tmp_path / "killed" / "checkpoints"
    for _ in range(600):
        if len(checkpoints.list_checkpoints(root)) >= 2 or process.poll() is not None:
            break
        time.sleep(0.2)
    # as a scheduler ends a job: the launcher and every worker at once (torchrun starts each worker in a session
    # of its own, so killing the launcher's process group alone would leave them training)
    job = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in job:
        member.kill()
    psutil.wait_procs(job, timeout=60)
    process.wait(timeout=60)
    killed_at = checkpoints.checkpoint_step(checkpoints.resolve_resume("latest", root))
    assert killed_at >= 2

    _, log = launch_vae(2, config("killed", steps=killed_at + 2), tmp_path, "--resume", "latest")
    assert f"resumed at optimizer step {killed_at}" in log
    straight, _ = launch_vae(2, config("straight", steps=killed_at + 2), tmp_path)
    resumed, expected = vae_weights(tmp_path / "killed"), vae_weights(straight)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
