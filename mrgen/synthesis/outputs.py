"""File names of a synthesis run (the original's layout, reference 6.6, without its hard-coded "T1-" prefix).

    <log_dir>/run_config.json                          what the samples depend on (a resumed run must match)
    <log_dir>/manifest/part-<k>-of-<n>-rank-<r>.jsonl  one record per candidate, per part and worker process
    <log_dir>/manifest/part-<k>-of-<n>.done            part k of n finished (every process of its job)
    <log_dir>/manifest.jsonl                           all records with the selection decision (final step)
    <log_dir>/json_files/synthetic_<name>.json         every candidate, the original's schema
    <log_dir>/json_files/synthetic_<name>_filtered.json   the selected ones
    <log_dir>/synthetic_mask/<idx>_mask.png, <idx>_mask_<m>.png
    <log_dir>/synthetic_<name>/<idx>_<name>_<n>.png
    <log_dir>/synthetic_<name>_combined/<idx>_<name>_<n>_combined.png   mask overlay | image
    <log_dir>/README.md, filter_scores.png             dataset card and score histograms
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


MERGED_MANIFEST = "manifest.jsonl"  # every candidate with its selection decision, written by the final step


@dataclass(frozen=True)
class RunLayout:
    root: Path
    name: str  # the target modality's short name, e.g. "T2-SPIR"

    @property
    def run_config(self) -> Path:
        return self.root / "run_config.json"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "manifest"

    def part_manifest(self, part: int, parts: int, rank: int) -> Path:
        return self.manifest_dir / f"part-{part:03d}-of-{parts:03d}-rank-{rank:02d}.jsonl"

    def part_done(self, part: int, parts: int) -> Path:
        return self.manifest_dir / f"part-{part:03d}-of-{parts:03d}.done"

    @property
    def mask_following(self) -> Path:
        return self.root / "mask_following.json"

    @property
    def merged_manifest(self) -> Path:
        return self.root / MERGED_MANIFEST

    @property
    def all_json(self) -> Path:
        return self.root / "json_files" / f"synthetic_{self.name}.json"

    @property
    def filtered_json(self) -> Path:
        return self.root / "json_files" / f"synthetic_{self.name}_filtered.json"

    def merged_mask(self, index: int) -> Path:
        return self.root / "synthetic_mask" / f"{index}_mask.png"

    def organ_mask(self, index: int, organ: int) -> Path:
        return self.root / "synthetic_mask" / f"{index}_mask_{organ}.png"

    def image(self, index: int, try_index: int) -> Path:
        return self.root / f"synthetic_{self.name}" / f"{index}_{self.name}_{try_index}.png"

    def combined(self, index: int, try_index: int) -> Path:
        return self.root / f"synthetic_{self.name}_combined" / f"{index}_{self.name}_{try_index}_combined.png"

    @property
    def card(self) -> Path:
        return self.root / "README.md"

    @property
    def histogram(self) -> Path:
        return self.root / "filter_scores.png"
