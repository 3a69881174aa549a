"""A short, seeded nnU-Net trainer for CPU machines, tests and the demo.

Picked with ``-tr nnUNetTrainer_MRGenShort`` once ``nnUNet_extTrainer`` names this folder. Its length is
set by environment variables, read when the trainer is built (so ``nnUNetv2_train`` and
``nnUNetv2_predict`` see the same class):

- ``MRGEN_NNUNET_EPOCHS`` (default 10): epochs; nnU-Net's own default is 1000.
- ``MRGEN_NNUNET_ITERATIONS`` (default 25): training iterations per epoch (nnU-Net: 250).
- ``MRGEN_NNUNET_VAL_ITERATIONS`` (default 5): validation iterations per epoch (nnU-Net: 50).
- ``MRGEN_NNUNET_BATCH_SIZE`` (default 0): slices per training batch; 0 keeps the plan's, which nnU-Net caps at
  5 % of the dataset, so that a set of 40 slices would train on batches of 2 and one of 400 on batches of 20. A
  fixed value gives every dataset of a comparison the same training compute.
- ``MRGEN_NNUNET_SEED`` (default 0): seeds Python, NumPy and torch before the network is built, which
  with ``nnUNet_n_proc_DA=0`` (single-threaded augmentation) and a fixed CPU thread count makes a run
  repeatable. nnU-Net itself does not seed training.
- ``MRGEN_NNUNET_FINAL_VALIDATION`` (default 1): 0 skips nnU-Net's final validation export over the
  validation fold (for fold ``all`` that is every training case); ``checkpoint_final.pth`` is written either way.

This module is imported by nnU-Net as a top-level module, so it imports only nnunetv2 and the standard library.
"""

import os
import random

import numpy as np
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be at least {minimum}")
    return value


class nnUNetTrainer_MRGenShort(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.seed = _env_int("MRGEN_NNUNET_SEED", 0, 0)
        self._seed_everything()
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("MRGEN_NNUNET_EPOCHS", 10, 1)
        self.num_iterations_per_epoch = _env_int("MRGEN_NNUNET_ITERATIONS", 25, 1)
        self.num_val_iterations_per_epoch = _env_int("MRGEN_NNUNET_VAL_ITERATIONS", 5, 1)
        self.run_final_validation = _env_int("MRGEN_NNUNET_FINAL_VALIDATION", 1, 0) > 0

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        batch_size = _env_int("MRGEN_NNUNET_BATCH_SIZE", 0, 0)
        if batch_size:
            self.print_to_log_file(f"MRGEN_NNUNET_BATCH_SIZE={batch_size}: batch size {batch_size} "
                                   f"(the plan says {self.batch_size})", also_print_to_console=True)
            self.batch_size = batch_size

    def _seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)

    def on_train_start(self):
        # The network is built here; seeding again makes its initial weights and the first batches
        # independent of whatever ran between construction and training.
        self._seed_everything()
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.run_final_validation:
            self.print_to_log_file("MRGEN_NNUNET_FINAL_VALIDATION=0: skipping the final validation export",
                                   also_print_to_console=True)
            return
        super().perform_actual_validation(save_probabilities)
