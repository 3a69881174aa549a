"""Patient-level splits: a patient's slices are never on both sides, and list order never matters."""

from __future__ import annotations

import hashlib
import math
from typing import Iterable


def held_out_patients(patient_keys: Iterable[str], test_fraction: float, seed: int = 0) -> set[str]:
    """The patients held out for testing: the ``ceil(fraction * n)`` with the smallest seeded hash.

    Deterministic for a given seed and set of patients, whatever their order. With at least two
    patients and a positive fraction, at least one is held out and at least one is kept.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    unique = sorted(set(patient_keys))
    if test_fraction == 0.0 or len(unique) < 2:
        return set()
    count = min(max(1, math.ceil(test_fraction * len(unique))), len(unique) - 1)
    ranked = sorted(unique, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    return set(ranked[:count])
