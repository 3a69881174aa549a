"""A CPU-lean nnU-Net plans file, derived from nnU-Net's own plans for a dataset.

nnU-Net v2 finds experiment planners (``-pl``) only inside its own package, so a planner of ours cannot be
selected by name; its documented extension point for a different network is a plans file of another name
(``docs/explanation_plans_files.md`` in nnU-Net): copy ``nnUNetPlans.json``, change a configuration, and pass
the new name with ``-p`` to ``nnUNetv2_train`` and ``nnUNetv2_predict``. That is what this module writes:
``nnUNetPlans_CPULean.json`` beside the stock plans, with the same preprocessing (``data_identifier``
unchanged, so the preprocessed data are shared) and a smaller network in every 2D configuration:

- at most ``LEAN_STAGES`` resolution stages (64 x 64 slices down to 8 x 8 instead of 4 x 4),
- features capped at ``LEAN_MAX_FEATURES`` (32, 64, 128, 256 instead of 32 ... 512),
- the stock kernel sizes, strides and convolutions per stage for the stages kept.

So it is the stock network without its deepest, widest stage (on 64 x 64 slices a 4 x 4 map with 512 features),
which costs time on a CPU without helping here. Measured on a validation draw (``scripts/bench_nnunet.py``, docs/segmentation.md 4.3):
about 1.5 times faster per iteration and a higher Dice at the same iteration count; a narrower variant (16 ... 128)
was 2.7 times faster per iteration but learned no kidney in 2,000 iterations.

The trainer and the patch size are unchanged; the batch size is set by the trainer
(``MRGEN_NNUNET_BATCH_SIZE``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mrgen.io.atomic import atomic_write_json

STOCK_PLANS = "nnUNetPlans"
LEAN_PLANS = "nnUNetPlans_CPULean"
PLANS = (STOCK_PLANS, LEAN_PLANS)
LEAN_STAGES = 4
LEAN_MAX_FEATURES = 256


class PlansError(ValueError):
    """nnU-Net's plans for a dataset are missing or not of the expected shape."""


def lean_plans(stock: dict[str, Any]) -> dict[str, Any]:
    """The stock plans with every 2D configuration's network made CPU-sized (see the module docstring)."""
    plans = copy.deepcopy(stock)
    plans["plans_name"] = LEAN_PLANS
    for configuration in plans.get("configurations", {}).values():
        architecture = configuration.get("architecture", {}).get("arch_kwargs")
        if architecture is None or len(configuration.get("patch_size", [])) != 2:
            continue  # 3D configurations and those inheriting from another keep the stock network
        stages = min(LEAN_STAGES, architecture["n_stages"])
        architecture.update(
            n_stages=stages,
            features_per_stage=[min(f, LEAN_MAX_FEATURES) for f in architecture["features_per_stage"][:stages]],
            kernel_sizes=architecture["kernel_sizes"][:stages],
            strides=architecture["strides"][:stages],
            n_conv_per_stage=architecture["n_conv_per_stage"][:stages],
            n_conv_per_stage_decoder=architecture["n_conv_per_stage_decoder"][:stages - 1],
        )
    return plans


def write_lean_plans(preprocessed_dataset: Path) -> Path:
    """Write ``nnUNetPlans_CPULean.json`` beside ``nnUNetPlans.json`` (made by ``nnUNetv2_plan_and_preprocess``)."""
    stock_path = Path(preprocessed_dataset) / f"{STOCK_PLANS}.json"
    if not stock_path.is_file():
        raise PlansError(f"{stock_path} is missing: run nnUNetv2_plan_and_preprocess -d <id> -c 2d first")
    try:
        plans = lean_plans(json.loads(stock_path.read_text()))
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise PlansError(f"{stock_path} is not an nnU-Net v2 plans file ({error!r}); plan the dataset again") from None
    path = stock_path.with_name(f"{LEAN_PLANS}.json")
    atomic_write_json(path, plans)
    return path
