"""Optimizer and learning-rate schedule, both counted in optimizer steps."""

from __future__ import annotations

import importlib.util
import logging
from typing import Iterable

import torch
from diffusers.optimization import get_scheduler

from mrgen.config import TrainSection

log = logging.getLogger(__name__)


def make_optimizer(parameters: Iterable[torch.nn.Parameter], train: TrainSection,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the config's betas, decay and epsilon over the ``parameters`` that require gradients; bitsandbytes'
    8-bit AdamW when asked and usable."""
    kwargs = dict(lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                  weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)
    params = [p for p in parameters if p.requires_grad]
    if train.use_8bit_adam:
        if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kwargs)
        log.warning("use_8bit_adam: bitsandbytes %s; using torch AdamW (same update, 32-bit state, more memory)",
                    "needs a CUDA device" if device.type != "cuda" else "is not installed (pip install .[bnb])")
    return torch.optim.AdamW(params, **kwargs)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule over ``max_train_steps`` optimizer steps, stepped once per optimizer step.

    It is deliberately not passed through ``accelerator.prepare``: prepared schedulers step once per
    process per call, which made the original's cosine run ``num_processes`` times too fast.
    """
    return get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=train.lr_warmup_steps,
                         num_training_steps=train.max_train_steps)
