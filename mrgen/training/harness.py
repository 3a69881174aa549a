"""The one training loop the three stages share, on ``accelerate``.

A stage supplies its trainable model, dataset, loss, validation figure and pipeline export
(``Stage``); this module does everything else the same way for all three:

- gradient accumulation through ``accelerator.accumulate`` (it really accumulates, and the effective
  batch is ``train_batch_size x processes x gradient_accumulation_steps``); gradient clipping;
- a learning-rate schedule over ``max_train_steps`` *optimizer* steps, stepped once per optimizer step
  and never wrapped by ``accelerator.prepare`` (which would step it once per process);
- optional EMA (off by default, as the original), 8-bit Adam, gradient checkpointing, mixed precision;
- full-state checkpoints (weights as a diffusers folder, optimizer, LR schedule, step and data position,
  RNG states, EMA) through ``accelerator.save_state``, written to a temporary folder and renamed, with
  rotation; ``resume="latest"`` or a checkpoint path continues exactly where the run stopped;
- validation grids and a loss curve as PNG, tensorboard scalars, a tqdm bar, repeatable seeds.

Run layout under ``output_dir``: ``config.yaml``, ``checkpoints/checkpoint-<step>/``, ``validation/``,
``logs/`` (tensorboard), ``loss_curve.png`` and, at the end, ``pipeline/`` (the trained models in the
released MRGen layout; EMA weights when EMA is on).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from diffusers import ModelMixin
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from mrgen.config import (ControlNetConfig, StageConfig, TrainSection, UNetConfig, VAEConfig, dump_yaml, flatten,
                          to_dict)
from mrgen.io.atomic import atomic_write_text
from mrgen.models.builders import load_pretrained
from mrgen.training import checkpoints
from mrgen.training.optim import make_lr_scheduler, make_optimizer
from mrgen.training.sample_keys import KeyedDataset
from mrgen.training.visuals import save_loss_curve, save_validation_curve

log = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
CHECKPOINT_DIR = "checkpoints"
VALIDATION_DIR = "validation"


class Stage(Protocol):
    """What a training stage gives the shared loop."""

    name: str  # the trained component: "vae", "unet" or "controlnet" (its folder name in checkpoints)
    trained_model: ModelMixin  # the diffusers model whose weights are trained and saved
    module: torch.nn.Module  # what is prepared and called: the model itself or a wrapper around it
    train_dataset: Dataset

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor: ...

    def validate(self, model: ModelMixin, step: int, folder: Path) -> dict[str, float]: ...

    def export(self, model: ModelMixin, folder: Path) -> None: ...


StageFactory = Callable[[Accelerator], Stage]


@dataclass
class TrainingProgress:
    """Where the run is: saved in every checkpoint beside the weights."""

    global_step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed (per process)
    loss_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)  # {"step": ..., metric: value, ...}

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "loss_steps": list(self.loss_steps), "losses": list(self.losses),
                "validations": [dict(v) for v in self.validations]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): the same order in a resumed run, on every process."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def run_training(config: VAEConfig | UNetConfig | ControlNetConfig, make_stage: StageFactory,
                 resume: str | None = None) -> Path:
    """Train ``make_stage(accelerator)`` per ``config.train`` and return the exported pipeline folder."""
    train = config.train
    output_dir = Path(config.output_dir)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    torch.set_num_threads(train.num_threads or max(1, (os.cpu_count() or 1) // local_processes))
    if train.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    resume_from = checkpoints.resolve_resume(resume, output_dir / CHECKPOINT_DIR)  # a bad path fails before any work
    if resume_from is not None:
        checkpoints.check_resume_config(resume_from, to_dict(config))
        checkpoints.check_safe_to_unpickle(resume_from)
    accelerator = _make_accelerator(train, output_dir)
    set_seed(config.seed, device_specific=True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_incomplete(output_dir / CHECKPOINT_DIR)
        checkpoints.remove_incomplete(output_dir)
    accelerator.wait_for_everyone()

    stage = make_stage(accelerator)  # reads and checks the data and models: a bad input fails here
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "config.yaml", dump_yaml(config))
    loop = _Loop(accelerator, config, train, stage, output_dir)
    loop.resume(resume_from, requested=resume)
    loop.run()
    return loop.finish()


def _make_accelerator(train: TrainSection, output_dir: Path) -> Accelerator:
    return Accelerator(
        # without CUDA, a multi-process launch (`accelerate launch --multi_gpu --num_processes N`) then trains on the
        # CPU with the gloo backend instead of running N unaware copies
        cpu=not torch.cuda.is_available(),
        mixed_precision=train.mixed_precision,
        # sync_with_dataloader=False: an epoch boundary must not force an early, smaller optimizer step,
        # so every step sees exactly gradient_accumulation_steps micro-batches (and resume stays exact)
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=train.gradient_accumulation_steps, adjust_scheduler=False, sync_with_dataloader=False),
        step_scheduler_with_optimizer=False,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )


class _Loop:
    def __init__(self, accelerator: Accelerator, config: StageConfig, train: TrainSection, stage: Stage,
                 output_dir: Path):
        self.accelerator, self.config, self.train, self.stage = accelerator, config, train, stage
        self.output_dir = output_dir
        self.checkpoint_root = output_dir / CHECKPOINT_DIR
        self.progress = TrainingProgress()
        model = stage.trained_model
        if train.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.ema = self._make_ema(model) if train.use_ema else None
        optimizer = make_optimizer(model.parameters(), train, accelerator.device)
        self.lr_scheduler = make_lr_scheduler(optimizer, train)
        self.sampler = EpochShuffleSampler(len(stage.train_dataset), config.seed)
        self.keyed_dataset = KeyedDataset(stage.train_dataset, config.seed)
        dataloader = self._make_dataloader()
        self.module, self.optimizer, self.dataloader = accelerator.prepare(stage.module, optimizer, dataloader)
        accelerator.register_for_checkpointing(self.lr_scheduler, self.progress)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        accelerator.register_save_state_pre_hook(self._save_model_hook)
        accelerator.register_load_state_pre_hook(self._load_model_hook)
        self._log_setup()

    # ----- setup -------------------------------------------------------------------------------------
    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """The trained model's parameters (what the EMA averages)."""
        return list(self.stage.trained_model.parameters())

    def _make_ema(self, model: ModelMixin) -> EMAModel:
        ema = EMAModel(self._trained_parameters(), decay=self.train.ema_decay, use_ema_warmup=self.train.ema_warmup,
                       model_cls=type(model), model_config=model.config)
        ema.to(self.accelerator.device)
        return ema

    def _make_dataloader(self) -> DataLoader:
        dataset = self.keyed_dataset
        needed = self.train.train_batch_size * self.accelerator.num_processes
        if len(dataset) < needed:
            raise ValueError(f"the training set has {len(dataset)} slices, fewer than one batch of {needed} "
                             f"(train_batch_size x processes); lower train.train_batch_size or add data")
        return DataLoader(dataset, batch_size=self.train.train_batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.train.dataloader_num_workers,
                          pin_memory=self.accelerator.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed))

    def _log_setup(self) -> None:
        train, acc = self.train, self.accelerator
        effective = train.train_batch_size * acc.num_processes * train.gradient_accumulation_steps
        trainable = sum(p.numel() for p in self.stage.trained_model.parameters() if p.requires_grad)
        acc.init_trackers(self.config.name, config=_flat_hparams(to_dict(self.config)))
        if not acc.is_main_process:
            return
        log.info("%s stage: %d trainable parameters, %d training slices, %d process(es) on %s, mixed precision %s",
                 self.stage.name, trainable, len(self.stage.train_dataset), acc.num_processes, acc.device,
                 acc.mixed_precision)
        log.info("effective batch %d = %d per process x %d processes x %d accumulation; %d optimizer steps, "
                 "%s LR %.3g with %d warm-up steps", effective, train.train_batch_size, acc.num_processes,
                 train.gradient_accumulation_steps, train.max_train_steps, train.lr_scheduler, train.learning_rate,
                 train.lr_warmup_steps)

    # ----- checkpoints -------------------------------------------------------------------------------
    def _save_model_hook(self, models: list, weights: list, output_dir: str) -> None:
        """Save the trained model as a stock diffusers folder instead of accelerate's raw state dict."""
        if self.accelerator.is_main_process:
            self.stage.trained_model.save_pretrained(Path(output_dir) / self.stage.name)
        while weights:
            weights.pop()

    def _load_model_hook(self, models: list, input_dir: str) -> None:
        loaded = load_pretrained(input_dir, self.stage.name)
        self.stage.trained_model.load_state_dict(loaded.state_dict())
        while models:
            models.pop()

    def resume(self, path: Path | None, requested: str | None) -> None:
        main = self.accelerator.is_main_process
        if path is None:
            if requested and main:
                log.warning("--resume %s: no complete checkpoint in %s yet; starting a new run", requested,
                            self.checkpoint_root)
            return
        if main:
            log.info("resuming from %s", path)
        self.accelerator.load_state(str(path))
        # the optimizer holds the learning rate the checkpoint's schedule set for the next step; the schedule is this
        # run's (train.max_train_steps may have changed), so the next step takes its rate from it
        scheduler = self.lr_scheduler  # diffusers' schedules are LambdaLR: base rate x factor(step)
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)  # its state is loaded onto the CPU
        if main:
            log.info("resumed at optimizer step %d (epoch %d, micro-batch %d)", self.progress.global_step,
                     self.progress.epoch, self.progress.batches_in_epoch)

    def save_checkpoint(self) -> None:
        acc, step = self.accelerator, self.progress.global_step
        temp = checkpoints.temp_dir_for(self.checkpoint_root, step)
        if acc.is_main_process:
            checkpoints.remove_incomplete(self.checkpoint_root)
        acc.wait_for_everyone()
        acc.save_state(str(temp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_write_text(temp / checkpoints.CONFIG_FILE, dump_yaml(self.config))
            final = checkpoints.commit(temp, step)
            checkpoints.rotate(self.checkpoint_root, self.train.checkpoints_total_limit)
            self._write_loss_curve()
            log.info("saved checkpoint %s", final)
        acc.wait_for_everyone()

    # ----- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        acc, train, progress = self.accelerator, self.train, self.progress
        self.module.train()
        bar = tqdm(total=train.max_train_steps, initial=progress.global_step, unit="step", dynamic_ncols=True,
                   disable=not acc.is_local_main_process, desc=f"train {self.stage.name}")
        step_loss = torch.zeros((), device=acc.device)
        started, steps_at_start = time.perf_counter(), progress.global_step
        while progress.global_step < train.max_train_steps:
            for batch in self._epoch_batches():
                progress.batches_in_epoch += 1
                with acc.accumulate(self.module):
                    with acc.autocast():
                        loss = self.stage.loss(self.module, batch)
                    acc.backward(loss)
                    grad_norm = self._clip_gradients()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach() / train.gradient_accumulation_steps
                if not acc.sync_gradients:
                    continue
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step(self._trained_parameters())
                progress.global_step += 1
                mean_loss = acc.reduce(step_loss, reduction="mean").item()
                step_loss.zero_()
                self._after_step(mean_loss, grad_norm, bar, started, steps_at_start)
                if progress.global_step >= train.max_train_steps:
                    break
            else:
                progress.epoch += 1
                progress.batches_in_epoch = 0
        bar.close()

    def _epoch_batches(self):
        loader = self.dataloader
        if self.progress.batches_in_epoch:
            loader = self.accelerator.skip_first_batches(self.dataloader, self.progress.batches_in_epoch)
        loader.set_epoch(self.progress.epoch)
        self.keyed_dataset.set_epoch(self.progress.epoch)
        return loader

    def _clip_gradients(self) -> float | None:
        if not self.accelerator.sync_gradients or self.train.max_grad_norm <= 0:
            return None
        norm = self.accelerator.clip_grad_norm_(self.module.parameters(), self.train.max_grad_norm)
        return None if norm is None else float(norm)

    def _after_step(self, loss: float, grad_norm: float | None, bar: tqdm, started: float, steps_at_start: int) -> None:
        progress, train = self.progress, self.train
        step = progress.global_step
        progress.loss_steps.append(step)
        progress.losses.append(loss)
        lr = self.lr_scheduler.get_last_lr()[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % train.log_every_steps == 0:
            scalars = {"train/loss": loss, "train/lr": lr,
                       "train/steps_per_s": (step - steps_at_start) / max(time.perf_counter() - started, 1e-9)}
            if grad_norm is not None and math.isfinite(grad_norm):
                scalars["train/grad_norm"] = grad_norm
            self.accelerator.log(scalars, step=step)
        # validation before the checkpoint: then no RNG use can differ between a resumed and a straight run
        if step % train.validation_steps == 0 or step == train.max_train_steps:
            self.validate()
        if step % train.checkpointing_steps == 0 or step == train.max_train_steps:
            self.save_checkpoint()

    # ----- validation and export ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _inference_weights(self) -> Iterator[ModelMixin]:
        """The trained model in eval mode, holding the EMA weights when EMA is on."""
        model = self.stage.trained_model
        if self.ema is not None:
            self.ema.store(self._trained_parameters())
            self.ema.copy_to(self._trained_parameters())
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                yield model
        finally:
            if self.ema is not None:
                self.ema.restore(self._trained_parameters())
            self.module.train()

    def validate(self) -> None:
        if self.accelerator.is_main_process:
            step = self.progress.global_step
            # the training random streams continue as if there had been no validation, so a run stopped after a
            # validation (say, at its last step) and resumed with more steps trains like a run that went straight on
            devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
            with self._inference_weights() as model, torch.random.fork_rng(devices=devices):
                metrics = self.stage.validate(model, step, self.output_dir / VALIDATION_DIR)
            if metrics:
                self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
                log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                self.progress.validations = [v for v in self.progress.validations if v["step"] != step]
                self.progress.validations.append({"step": step, **metrics})
                save_validation_curve(self.output_dir / "validation_curve.png", self.progress.validations,
                                      f"{self.config.name}: {self.stage.name} validation")
        self.accelerator.wait_for_everyone()

    def _write_loss_curve(self) -> None:
        if self.progress.losses:
            save_loss_curve(self.output_dir / "loss_curve.png", self.progress.loss_steps, self.progress.losses,
                            f"{self.config.name}: {self.stage.name} training loss")

    def finish(self) -> Path:
        destination = self.output_dir / PIPELINE_DIR
        if self.accelerator.is_main_process:
            with self._inference_weights() as model:
                checkpoints.write_folder_atomically(destination, lambda folder: self.stage.export(model, folder))
            self._write_loss_curve()
            log.info("pipeline folder written to %s", destination)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return destination


def _flat_hparams(data: dict[str, Any]) -> dict[str, Any]:
    """Nested config -> flat scalars, as tensorboard's hyper-parameter table needs."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(data).items()}
