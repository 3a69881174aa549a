"""The final step of a synthesis run: apply the selection rule to every recorded candidate and write
the merged manifest, the original's two JSON files, the score histograms and the dataset card.

It reads only the per-process manifests, so it also serves ``--merge`` (cluster parts, or new thresholds; no
generation).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mrgen.filtering.base import FilterScores
from mrgen.filtering.mask_following import mask_following
from mrgen.filtering.selection import SelectionRule
from mrgen.io.atomic import atomic_save, atomic_write_json, atomic_write_text
from mrgen.io.images import read_gray
from mrgen.synthesis import manifest
from mrgen.synthesis.outputs import RunLayout


def _scores(record: dict[str, Any]) -> FilterScores:
    return FilterScores(record["organ_iou"], record["organ_confidence"])


def _rejection_reason(record: dict[str, Any], rule: SelectionRule, rank: int, kept_rule: str) -> str:
    scores = _scores(record)
    if rank >= rule.top_k:
        return f"not in the top {rule.top_k} by mean IoU"
    t = rule.thresholds_for(kept_rule)
    relaxed = " (relaxed)" if kept_rule != "strict" else ""
    if rule.per_organ:
        if not t.passing_organs(scores):
            return f"no organ reaches IoU {t.iou:.2f} and confidence {t.confidence:.2f}{relaxed}"
        return "passed, but enough better-ranked candidates were kept"
    checks = [("mean confidence", scores.avg_confidence, t.avg_confidence), ("mean IoU", scores.avg_iou, t.avg_iou)]
    checks += [(f"organ {i} IoU", v, t.iou) for i, v in enumerate(scores.organ_iou) if v != 0]
    checks += [(f"organ {i} confidence", v, t.confidence) for i, v in enumerate(scores.organ_confidence) if v != 0]
    for what, value, threshold in checks:
        if value < threshold:
            return f"{what} {value:.3f} < {threshold:.2f}{relaxed}"
    return "passed, but enough better-ranked candidates were kept"


def decide(records: list[dict[str, Any]], rule: SelectionRule) -> list[dict[str, Any]]:
    """Candidate records -> the same records with ``accepted``, ``selection`` and ``reason`` set, and for a candidate
    the per-organ rule kept, ``ignored_masks``: the indices of its present organs that missed the thresholds."""
    by_mask: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_mask[r["mask_index"]].append(r)
    decided = []
    for index in sorted(by_mask):
        candidates = sorted(by_mask[index], key=lambda r: r["try"])
        kept, how = rule.select([(r["try"], _scores(r)) for r in candidates])
        ranked = sorted(candidates, key=lambda r: (-_scores(r).avg_iou, r["try"]))
        rank_of = {r["try"]: i for i, r in enumerate(ranked)}
        for r in candidates:
            accepted = r["try"] in kept
            reason = f"kept by the {how} rule" if accepted else _rejection_reason(r, rule, rank_of[r["try"]], how)
            decision = {"accepted": accepted, "selection": how, "reason": reason}
            if accepted and rule.per_organ:
                present = [k for k, organ in enumerate(r["label"]) if organ in r["organs"]]
                decision["ignored_masks"] = rule.failing_organs(_scores(r), present, how)
            decided.append({**r, **decision})
    return decided


def _relative(path: str, start: Path) -> str:
    return os.path.relpath(path, start)


def original_item(record: dict[str, Any], json_dir: Path) -> dict[str, Any]:
    """One record in the original's synthetic_<mod>.json schema (paths relative to the JSON file)."""
    item = {
        "index": record["mask_index"],
        "prompt": [record["prompt"]],
        "original_path": record["source"]["image_path"],
        "region": record["region"],
        "organs": ", ".join(record["organs"]),
        "label": ", ".join(record["label"]),
        "mask_path": _relative(record["merged_mask_path"], json_dir),
        "image_path": _relative(record["image_path"], json_dir),
        "combined_path": _relative(record["combined_path"], json_dir),
        "sam2_avg_iou": _scores(record).avg_iou,
        "sam2_avg_confidence": _scores(record).avg_confidence,
        "sam2_organs_iou": record["organ_iou"],
        "sam2_organs_confidence": record["organ_confidence"],
        "filter": record["filter"],
        "seed": record["seed"],
    }
    if "ignored_masks" in record:
        item["ignored_masks"] = record["ignored_masks"]
    for i, path in enumerate(record["mask_paths"]):
        item[f"mask_{i}_path"] = _relative(path, json_dir)
    return item


def write_outputs(layout: RunLayout, rule: SelectionRule, run_config: dict[str, Any]) -> dict[str, Any]:
    candidates, skipped = _recorded(layout)
    decided = decide(candidates, rule)
    atomic_write_text(layout.merged_manifest, "".join(json.dumps(r, sort_keys=True) + "\n" for r in decided))
    json_dir = layout.all_json.parent
    atomic_write_json(layout.all_json, [original_item(r, json_dir) for r in decided])
    atomic_write_json(layout.filtered_json, [original_item(r, json_dir) for r in decided if r["accepted"]])
    summary = summarize(decided, skipped, run_config["num_parts"])
    summary["mask_following"] = mask_following_of(decided, run_config["seed"])
    atomic_write_json(layout.mask_following, summary["mask_following"])
    write_histograms(layout.histogram, decided, rule)
    atomic_write_text(layout.card, dataset_card(layout, run_config, rule, summary))
    return summary


def select_into(layout: RunLayout, rule: SelectionRule, json_path: Path) -> dict[str, Any]:
    """The candidates of a finished run selected by another rule, written as the original's filtered JSON at
    ``json_path``; the run itself is left as it is. Returns the selection's summary (without mask-following)."""
    candidates, skipped = _recorded(layout)
    decided = decide(candidates, rule)
    atomic_write_json(json_path, [original_item(r, json_path.parent) for r in decided if r["accepted"]])
    return summarize(decided, skipped, json.loads(layout.run_config.read_text(encoding="utf-8"))["num_parts"])


def _recorded(layout: RunLayout) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidate records, skipped-mask records) of every part manifest."""
    records = manifest.read_all(layout.manifest_dir.glob("*.jsonl"))
    return [r for r in records if r.get("type") == "candidate"], [r for r in records if r.get("type") == "skipped"]


def mask_following_of(decided: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Own-mask against shuffled-mask agreement (mrgen.filtering.mask_following) of every candidate and of the
    accepted ones; None for a subset of fewer than two images."""
    result: dict[str, Any] = {}
    for name, subset in (("all candidates", decided), ("accepted", [r for r in decided if r["accepted"]])):
        if len(subset) < 2:
            result[name] = None
            continue
        images = [read_gray(r["image_path"]) for r in subset]
        masks = [manifest.condition_masks(r) for r in subset]
        following = mask_following(images, masks, subset[0]["label"], seed)
        result[name] = {"table": following.table(), **following.as_dict()}
    return result


def summarize(decided: list[dict[str, Any]], skipped: list[dict[str, Any]], parts: int) -> dict[str, Any]:
    accepted = [r for r in decided if r["accepted"]]
    masks = {r["mask_index"] for r in decided}
    masks_with_sample = {r["mask_index"] for r in accepted}
    seconds = sum(r["seconds"] for r in decided)
    evaluations = sum(r["unet_evaluations"] for r in decided)
    return {
        "masks": len(masks),
        "masks_skipped": len({r["mask_index"] for r in skipped}),
        "masks_with_a_sample": len(masks_with_sample),
        "candidates": len(decided),
        "accepted": len(accepted),
        "acceptance_rate": len(accepted) / len(decided) if decided else 0.0,
        "seconds": seconds,
        "seconds_per_accepted": seconds / len(accepted) if accepted else None,
        "unet_evaluations": evaluations,
        "unet_evaluations_per_accepted": evaluations / len(accepted) if accepted else None,
        "parts": parts,
    }


def write_histograms(path: Path, decided: list[dict[str, Any]], rule: SelectionRule) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = rule.thresholds
    panels = [
        ("mean IoU", [_scores(r).avg_iou for r in decided], [t.avg_iou, t.avg_iou - rule.relax]),
        ("mean confidence", [_scores(r).avg_confidence for r in decided], [t.avg_confidence, t.avg_confidence - rule.relax]),
        ("organ IoU", [v for r in decided for v in r["organ_iou"] if v != 0], [t.iou, t.iou - rule.relax]),
        ("organ confidence", [v for r in decided for v in r["organ_confidence"] if v != 0], [t.confidence, t.confidence - rule.relax]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, (title, values, (strict, relaxed)) in zip(axes, panels):
        ax.hist(values, bins=np.linspace(0, 1, 26), color="#4477aa")
        ax.axvline(strict, color="#cc3311", label=f"strict {strict:.2f}")
        ax.axvline(relaxed, color="#ee7733", linestyle="--", label=f"relaxed {relaxed:.2f}")
        ax.set_title(title)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle(f"filter scores of {len(decided)} candidates")
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def dataset_card(layout: RunLayout, run_config: dict[str, Any], rule: SelectionRule, summary: dict[str, Any]) -> str:
    s = summary
    per_accepted = "n/a" if s["seconds_per_accepted"] is None else f"{s['seconds_per_accepted']:.2f} s"
    evals = "n/a" if s["unet_evaluations_per_accepted"] is None else f"{s['unet_evaluations_per_accepted']:.0f}"
    status = f"complete ({s['parts']} part{'s' if s['parts'] > 1 else ''} merged)"
    return f"""# Synthetic {layout.name} dataset

Generated by MRGen (`synthesize_filter_multi.py`); status: {status}.

## What
- target modality: `{run_config['modality']}` (prompt: "{run_config['example_prompt']}")
- condition masks: {s['masks']} source masks from {', '.join(run_config['inference_indexes'])} ({s['masks_skipped']} more skipped below mask_threshold {run_config['mask_threshold']})
- candidates generated: {s['candidates']}; accepted: {s['accepted']} ({100 * s['acceptance_rate']:.1f} %); masks with at least one accepted sample: {s['masks_with_a_sample']}
- files: `json_files/{layout.filtered_json.name}` (accepted, the original's schema), `json_files/{layout.all_json.name}` (all), `manifest.jsonl` (every candidate with seed, scores and the reason it was kept or rejected)

## How
- checkpoint: `{run_config['ckpt']}` (ControlNet `{run_config['controlnet']}`), sha256: {', '.join(f"{k} {v[:12]}" for k, v in run_config['checkpoint_sha256'].items())}
- sampler: {run_config['scheduler']}, {run_config['steps']} steps, guidance {run_config['guidance_scale']}, ControlNet scale {run_config['controlnet_scale']}{' on the conditional branch only' if run_config.get('control_conditional_only') else ''}, {run_config['size']} px, seed {run_config['seed']}
- up to {run_config['max_tries_per_mask']} candidates per mask in batches of {run_config['num_images_per_prompt']}; early stop: {run_config['early_stop']}
- filter: {run_config['filter']['name']}; rule: {rule.describe()}
- score histograms: `filter_scores.png`

## Mask-following
Per-organ IoU of the images against their condition masks, beside the same images scored against another
sample's masks (the floor: what an image that ignores its mask still scores); `mask_following.json`. The last
column, the fraction of organs brighter than a ring around them, shows the contrast polarity, which IoU ignores.

{_following_tables(s["mask_following"])}

## Cost
- generation and filtering: {s['seconds']:.1f} s in all, {per_accepted} per accepted sample
- UNet evaluations: {s['unet_evaluations']} in all, {evals} per accepted sample
"""


def _following_tables(following: dict[str, Any]) -> str:
    return "\n\n".join(f"{name}:\n\n{table['table']}" if table else f"{name}: fewer than two images"
                        for name, table in following.items())
