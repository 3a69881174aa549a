"""``report.md`` of an end-to-end run: pictures and numbers a person reads first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mrgen.io.atomic import atomic_write_text
from mrgen.io.images import read_gray
from mrgen.pipeline.segmentation import number_cell, organ_table
from mrgen.pipeline.stages import StageRunner
from mrgen.pipeline.synthetic_measures import candidate_records, measures_table
from mrgen.synthesis.manifest import condition_masks
from mrgen.viz import overlay, save_grid

SAMPLES_IN_FIGURE = 8


def _link(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def source_with_mask(record: dict[str, Any], masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The candidate's real source slice with its condition masks over it (without them if its size differs)."""
    source = read_gray(record["source"]["image_path"])
    return overlay(source, masks) if source.shape == shape else source


def figure_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accepted samples, then the first rejected candidate of each mask not yet shown, so that the
    figure covers as many different masks as it can."""
    accepted = [r for r in records if r["accepted"]]
    shown_masks = {r["mask_index"] for r in accepted}
    rejected = []
    for r in records:
        if not r["accepted"] and r["mask_index"] not in shown_masks:
            shown_masks.add(r["mask_index"])
            rejected.append(r)
    return (accepted + rejected)[:SAMPLES_IN_FIGURE]


def synthetic_figure(out: Path, records: list[dict[str, Any]]) -> Path | None:
    """Source slice with its mask | synthetic target slice | the same with the mask: the accepted samples
    first, then rejected candidates of other masks to fill the figure (the row labels say which)."""
    shown = figure_records(records)
    if not shown:
        return None
    rows = []
    for r in shown:
        masks = condition_masks(r)
        image = read_gray(r["image_path"])
        rows.append([source_with_mask(r, masks, image.shape), image, overlay(image, masks)])
    path = out / "synthetic_samples.png"
    save_grid(rows, path, titles=["source slice + mask", "synthetic target", "synthetic + mask"],
              row_labels=[f"mask {r['mask_index']} try {r['try']}{'' if r['accepted'] else ' (rejected)'}" for r in shown])
    return path


def masks_by_acceptance(records: list[dict[str, Any]], masks: int) -> list[list[dict[str, Any]]]:
    """Each mask's candidates, accepted ones first, for the ``masks`` masks with the most accepted candidates
    (ties: the mask seen first)."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        grouped.setdefault(r["mask_index"], []).append(r)
    ordered = sorted(grouped.values(), key=lambda group: -sum(r["accepted"] for r in group))
    return [sorted(group, key=lambda r: not r["accepted"]) for group in ordered[:masks]]


def mask_candidates_figure(records: list[dict[str, Any]], path: Path, masks: int = 4, per_mask: int = 4) -> Path:
    """One row per source mask: the real source slice with its mask, ``per_mask`` synthetic target slices drawn
    from that mask (accepted ones first), and the first of them with the mask over it."""
    groups = masks_by_acceptance(records, masks)
    if not groups:
        raise ValueError("no candidates to show: the synthesis run has no manifest records")
    rows, labels = [], []
    for group in groups:
        shown = group[:per_mask]
        condition = condition_masks(shown[0])
        images = [read_gray(r["image_path"]) for r in shown]
        rows.append([source_with_mask(shown[0], condition, images[0].shape), *images,
                     *[None] * (per_mask - len(images)), overlay(images[0], condition)])
        labels.append(f"{sum(r['accepted'] for r in group)} of {len(group)} accepted")
    titles = ["real source + mask", *[f"synthetic {k + 1}" for k in range(per_mask)], "synthetic 1 + mask"]
    save_grid(rows, path, titles=titles, row_labels=labels)
    return path


def _stage_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| stage | time (s) |", "|---|---|"]
    lines += [f"| {name} | {result['stage_seconds']:.1f} |" for name, result in results.items()]
    return "\n".join(lines)


def _pictures(out: Path, results: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    lines = [f"![real slices]({_link(out / 'phantom' / 'preview.png', out)})",
             "", "Real slices of the simulated dataset with their organ masks (source and target contrasts).", ""]
    figure = synthetic_figure(out, records)
    if figure is not None:
        lines += [f"![synthetic samples]({_link(figure, out)})", "",
                  "Synthetic target-modality slices generated from source masks: accepted ones first, "
                  "then one rejected candidate of each further mask.", ""]
    lines += [f"![filter scores]({_link(out / 'synthesis' / 'filter_scores.png', out)})", "",
              "Quality-filter scores of every candidate, with the strict and relaxed thresholds.", ""]
    for stage in ("vae", "unet", "controlnet"):
        curve = out / "train" / stage / "loss_curve.png"
        if curve.is_file():
            lines += [f"![{stage} loss]({_link(curve, out)})", "", f"{stage} training loss.", ""]
    return lines


def write_report(out: Path, config: Any, runner: StageRunner) -> Path:
    results = runner.results
    synthesis = results["synthesis"]
    records = candidate_records(out / "synthesis")
    following = synthesis["mask_following"]
    evaluation = results.get("evaluation")
    models = "trained from scratch in this run" if config.models.train else f"model zoo `{config.models.zoo}`"
    models += f", mask conditioning `{config.models.conditioning}`"
    lines = [
        f"# MRGen end to end: {config.source} masks -> synthetic {config.target} -> nnU-Net -> real {config.target}",
        "",
        f"Models: {models}. Total time {runner.total_seconds:.0f} s (sum of the stages). Config: `pipeline.yml`.",
        "",
        "## Counts and cost",
        "",
        "| masks | candidates | accepted | acceptance rate | s / accepted | UNet evaluations / accepted |",
        "|---|---|---|---|---|---|",
        f"| {synthesis['masks']} | {synthesis['candidates']} | {synthesis['accepted']} | "
        f"{100 * synthesis['acceptance_rate']:.1f} % | {number_cell(synthesis['seconds_per_accepted'], '.2f')} | "
        f"{number_cell(synthesis['unet_evaluations_per_accepted'], '.0f')} |",
        "",
        _stage_table(results),
        "",
        "## Pictures",
        "",
        *_pictures(out, results, records),
        "## Mask-following",
        "",
        "Per-organ IoU of the synthetic images against their condition masks, beside the same images scored",
        "against another sample's masks (the floor: what an image that ignores its mask still scores). IoU says",
        "where organs are, not how they look; the last column, the fraction of organs brighter than a ring around",
        "them, shows their contrast polarity: compare it with the real target slices above.",
        "",
    ]
    for subset, table in following.items():
        if table is not None:
            lines += [f"**{subset}**", "", table["table"], ""]
    lines += _segmentation_section(config, evaluation)
    if "synthetic_measures" in results:
        lines += ["## Fidelity and realism of the synthetic slices", "", measures_table(results["synthetic_measures"]), ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "report.json", json.dumps(results, indent=2, default=str) + "\n")
    return path


def _segmentation_section(config: Any, evaluation: dict[str, Any] | None) -> list[str]:
    title = f"## nnU-Net trained on the accepted synthetic data, evaluated on real {config.target} volumes"
    if evaluation is None:
        return [title, "", "Not run: the quality filter accepted no synthetic sample, so there was nothing to train on. "
                "The mask-following numbers above say why (samples at the shuffled-mask floor do not follow their masks).", ""]
    return [
        title,
        "",
        "3D Dice (%) per organ:",
        "",
        organ_table({"MRGen synthetic": evaluation}, "dice"),
        "",
        "HD95 (mm):",
        "",
        organ_table({"MRGen synthetic": evaluation}, "hd95"),
        "",
        f"Short nnU-Net training ({config.segmentation.epochs} epochs x {config.segmentation.iterations} iterations "
        "on CPU): these numbers show the chain works, not what the method reaches with full training.",
        "",
    ]



