"""Realism as a classifier two-sample test: can a small CNN tell two sets of slices apart?

Both sets are balanced (the larger one is subsampled, seeded), each slice is min-max scaled to [0, 1] (so the
test looks at anatomy, texture and contrast, not at a global intensity scale that any export would change),
and a small CNN is trained in ``folds``-fold cross-validation; the result is the ROC AUC of each held-out fold,
averaged over the folds. 0.5 means the classifier cannot tell the sets apart; 1.0 that it separates them perfectly.

Slices of one patient are alike (neighbouring slices, one body, one bias field), so folds are made of whole groups
(patients, or a synthetic slice's source patient) when groups are given: otherwise the classifier learns to
recognise patients, and two sets of real slices from different patients scored 0.81 instead of about 0.5.
Calibrate with real-vs-real (two patient groups of the same modality: the floor) and source-vs-target real slices
(the ceiling). Seeded; about ten seconds per test on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

MIN_PER_SET = 10


@dataclass(frozen=True)
class TwoSampleResult:
    auc: float | None  # None when a set has fewer than MIN_PER_SET slices
    per_set: int  # slices used from each set

    def as_dict(self) -> dict[str, float | int | None]:
        return {"auc": self.auc, "per_set": self.per_set}


def _scaled(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    low = images.min(axis=(1, 2), keepdims=True)
    span = images.max(axis=(1, 2), keepdims=True) - low
    return (images - low) / np.maximum(span, 1e-6)


def _classifier() -> nn.Module:
    layers: list[nn.Module] = []
    channels = [1, 8, 16, 32]
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(4, c_out), nn.SiLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], 1))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties counted half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


def _fit_and_score(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, steps: int,
                   generator: torch.Generator) -> np.ndarray:
    model = _classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss = nn.BCEWithLogitsLoss()
    batch = min(32, len(x_train))
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(x_train), (batch,), generator=generator)
        flip = torch.rand(batch, generator=generator) < 0.5  # left-right flips: a cheap augmentation
        x = torch.where(flip[:, None, None, None], x_train[pick].flip(-1), x_train[pick])
        optimizer.zero_grad()
        loss(model(x).squeeze(1), y_train[pick]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model(x_test).squeeze(1).numpy()


def _group_folds(groups: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per slice, every group in one fold, groups dealt to the folds in a seeded order."""
    unique = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(unique[rng.permutation(len(unique))])}
    return np.array([fold_of[g] for g in groups])


def classifier_two_sample_test(first: np.ndarray, second: np.ndarray, first_groups: Sequence[str] | None = None,
                               second_groups: Sequence[str] | None = None, seed: int = 0, folds: int = 5,
                               steps: int = 150, max_per_set: int = 256) -> TwoSampleResult:
    """ROC AUC of a CNN separating ``first`` from ``second`` ((N, H, W) slices of one size) on held-out folds;
    ``*_groups`` name each slice's patient (default: every slice its own group)."""
    n = min(len(first), len(second), max_per_set)
    if n < MIN_PER_SET:
        return TwoSampleResult(None, n)
    rng = np.random.default_rng(seed)
    images, fold_of = [], []
    for label, (slices, groups) in enumerate(((first, first_groups), (second, second_groups))):
        pick = rng.choice(len(slices), n, replace=False)
        names = np.arange(len(slices)).astype(str) if groups is None else np.asarray(groups)
        images.append(_scaled(np.asarray(slices)[pick]))
        fold_of.append(_group_folds(names[pick], folds, rng))
    x = torch.from_numpy(np.concatenate(images))[:, None]
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    fold_of = np.concatenate(fold_of)
    aucs = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for fold in range(folds):
            test = fold_of == fold
            if len(np.unique(y.numpy()[test])) == 2:
                scores = _fit_and_score(x[~test], y[~test], x[test], steps, generator)
                aucs.append(roc_auc(scores, y.numpy()[test]))
    return TwoSampleResult(float(np.mean(aucs)) if aucs else None, n)
