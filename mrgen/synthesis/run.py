"""A synthesis run: target-modality images from source masks, scored by a quality filter, selected.

Masks are split deterministically: a cluster part takes the entries with ``index % num_parts == part_id``, and
its worker processes every ``processes``-th of those. Every process appends its candidates to its own manifest
and skips what any manifest already holds, so a killed run started again with the same arguments continues where
it stopped; candidate seeds depend on (seed, mask, try) only, so any split gives the same samples. Candidates are
generated in fixed batches (tries ``[b*n, (b+1)*n)``) and a partly recorded batch is regenerated whole, so a
resumed run computes exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mrgen.data.datasets import PairConfig, load_condition, pair_prompt
from mrgen.data.index import IndexEntry
from mrgen.data.modalities import ModalityRegistry, load_registry, modality_key, modality_short_name
from mrgen.data.preprocess import signed_to_uint8
from mrgen.filtering.base import FilterScores, QualityFilter
from mrgen.filtering.selection import SelectionRule, Thresholds
from mrgen.io.atomic import atomic_write_json, remove_stale_temporaries
from mrgen.io.images import write_gray, write_rgb
from mrgen.synthesis import manifest
from mrgen.synthesis.finalize import write_outputs
from mrgen.synthesis.outputs import RunLayout
from mrgen.synthesis.parts import check_parts
from mrgen.synthesis.sampler import MaskSampler, make_mask_sampler
from mrgen.synthesis.seeds import candidate_seed
from mrgen.viz import overlay

log = logging.getLogger(__name__)

SELECTIONS = ("original", "per_organ")  # the selection rules (mrgen.filtering.selection)

# Keys of run_config.json that may differ on a resumed run without mixing incompatible samples
# (the checkpoints are compared by their hashes, so a moved checkpoint folder is fine).
RESUMABLE_DIFFERENCES = {"part_id", "num_gpus", "processes", "thresholds", "selection", "top_k", "relax", "keep_relaxed",
                         "sample_per_mask", "max_masks", "log_dir", "ckpt", "controlnet"}


@dataclass
class SynthesisOptions:
    """Every flag of ``synthesize_filter_multi.py``; defaults are the original's (reference 6.1)."""

    ckpt: str
    log_dir: str
    config: str
    modality: str | None = None
    controlnet: str | None = None
    channels: int = 1
    sample_per_mask: int = 2
    num_images_per_prompt: int = 10
    max_tries_per_mask: int = 20
    mask_threshold: float = 0.005
    iou_threshold: float = 0.70
    confidence_threshold: float = 0.80
    avg_iou_threshold: float = 0.80
    avg_confidence_threshold: float = 0.90
    top_k: int = 5
    relax: float = 0.10
    keep_relaxed: int = 1
    selection: str = "original"  # or "per_organ" (mrgen.filtering.selection)
    num_gpus: int = 4
    processes: int | None = None  # worker processes; default: one per visible CUDA device up to num_gpus, else 1
    scheduler: str = "ddim"
    steps: int = 50
    guidance_scale: float = 7.0
    controlnet_scale: float = 1.0
    control_conditional_only: bool = False
    seed: int = 0
    filter: str = "offline"
    sam2_config: str = "configs/sam2/sam2_hiera_l.yaml"
    sam2_checkpoint: str = "checkpoints/sam2_hiera_large.pt"
    sam2_prompt: str = "box"
    box_jitter: float = 0.0
    early_stop: bool = False
    num_parts: int = 1
    part_id: int = 0
    merge: bool = False  # no generation: check the recorded parts, merge them and apply the selection rule
    max_masks: int | None = None  # that many masks, spread evenly over the inference list
    size: int | None = None
    half: bool | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.part_id < self.num_parts:
            raise ValueError(f"--part_id must be in [0, --num_parts={self.num_parts}), got {self.part_id}")
        counts = {"num_images_per_prompt": self.num_images_per_prompt, "max_tries_per_mask": self.max_tries_per_mask,
                  "steps": self.steps, "sample_per_mask": self.sample_per_mask, "top_k": self.top_k,
                  "num_parts": self.num_parts, "num_gpus": self.num_gpus,
                  "processes": 1 if self.processes is None else self.processes,
                  "max_masks": 1 if self.max_masks is None else self.max_masks}
        low = {name: value for name, value in counts.items() if value < 1}
        if low:
            raise ValueError(", ".join(f"--{name} must be at least 1 (got {value})" for name, value in low.items())
                             + ("; leave --max_masks out to use every mask" if "max_masks" in low else ""))
        if self.selection not in SELECTIONS:
            raise ValueError(f"--selection must be one of {list(SELECTIONS)}, got {self.selection!r}")
        if self.guidance_scale < 0 or self.controlnet_scale < 0:
            raise ValueError("--guidance_scale and --controlnet_scale must not be negative")

    @property
    def rule(self) -> SelectionRule:
        thresholds = Thresholds(self.iou_threshold, self.confidence_threshold, self.avg_iou_threshold,
                                self.avg_confidence_threshold)
        return SelectionRule(thresholds, self.top_k, self.sample_per_mask, self.relax, self.keep_relaxed,
                             per_organ=self.selection == "per_organ")


@dataclass
class MaskJob:
    """One source mask to render in the target modality."""

    index: int
    entry: IndexEntry
    condition: np.ndarray          # (C, S, S) in [-1, 1]
    organ_masks: list[np.ndarray]  # per organ (S, S) bool, in the pair's organ order
    prompt: str

    @property
    def foreground_fraction(self) -> float:
        return float(np.any(np.stack(self.organ_masks), axis=0).mean())


def inference_entries(pair: PairConfig) -> list[IndexEntry]:
    """The annotated source slices whose masks are synthesised (the original keeps non-empty ones)."""
    entries = [e for e in pair.load(pair.inference_indexes) if e.organs]
    if not entries:
        raise ValueError(f"pair {pair.name}: no annotated slice in inference_indexes {pair.inference_indexes}")
    return entries


def mask_job(index: int, entry: IndexEntry, pair: PairConfig, registry: ModalityRegistry, modality: str, size: int) -> MaskJob:
    condition = load_condition(pair, entry, size)
    organ_masks = pair.encoding.decode(condition, len(pair.organs))
    return MaskJob(index, entry, condition, organ_masks, pair_prompt(pair, registry, entry, modality))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_hashes(folders: dict[str, Path]) -> dict[str, str]:
    """sha256 of each model's weights file (what makes two checkpoints the same)."""
    hashes = {}
    for name, folder in folders.items():
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        if not weights:
            raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in {folder}")
        hashes[name] = file_sha256(weights[0])
    return hashes


def check_resumable(layout: RunLayout, run_config: dict[str, Any]) -> None:
    """Refuse to continue a run whose samples would not be compatible with the new arguments."""
    if not layout.run_config.is_file():
        return
    if not manifest.read_all(layout.manifest_dir.glob("*.jsonl")):
        # no sample was made under the old settings (say, the models failed to load): nothing to be compatible with
        log.info("%s holds no samples yet; its run_config.json is replaced", layout.root)
        return
    previous = json.loads(layout.run_config.read_text())
    changed = sorted(k for k in set(previous) | set(run_config)
                     if k not in RESUMABLE_DIFFERENCES and previous.get(k) != run_config.get(k))
    if changed:
        details = "; ".join(f"{k}: was {previous.get(k)!r}, now {run_config.get(k)!r}" for k in changed)
        raise ValueError(
            f"{layout.root} holds a run made with different settings ({details}). Mixing them would give "
            f"incompatible samples: use a new --log_dir, or the previous settings (see {layout.run_config}). "
            f"The selection rule alone (thresholds, --selection) can change with --merge."
        )


def save_mask_files(layout: RunLayout, job: MaskJob) -> None:
    write_gray(layout.merged_mask(job.index), np.round((job.condition[0] + 1) / 2 * 255).astype(np.uint8))
    for m, mask in enumerate(job.organ_masks):
        write_gray(layout.organ_mask(job.index, m), mask.astype(np.uint8) * 255)


def combined_picture(image: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The mask overlay on the generated image (left) beside the plain image (right)."""
    return np.concatenate([overlay(image, masks), np.repeat(image[..., None], 3, axis=2)], axis=1)


class Synthesizer:
    """Generates, scores and records the candidates of one worker process's share of this part's masks."""

    def __init__(self, options: SynthesisOptions, pair: PairConfig, layout: RunLayout, run_config: dict[str, Any],
                 sampler: Any, quality_filter: QualityFilter, jobs: Callable[[int], MaskJob], mask_indices: list[int],
                 rank: int, processes: int):
        self.options = options
        self.pair = pair
        self.layout = layout
        self.run_config = run_config
        self.sampler = sampler
        self.filter = quality_filter
        self.jobs = jobs
        self.mask_indices = mask_indices
        self.rank, self.processes = rank, processes
        self.writer = manifest.ManifestWriter(layout.part_manifest(options.part_id, options.num_parts, rank))
        records = manifest.read_all(layout.manifest_dir.glob("*.jsonl"))
        self.done = {(r["mask_index"], r["try"]): r for r in records if r.get("type") == "candidate"}
        self.skipped = {r["mask_index"] for r in records if r.get("type") == "skipped"}

    def run(self) -> None:
        where = f"part {self.options.part_id + 1}/{self.options.num_parts}, process {self.rank + 1}/{self.processes}"
        for index in tqdm(self.mask_indices, desc=f"synthesis {where}", unit="mask"):
            if index not in self.skipped:
                self.render_mask(self.jobs(index))

    def render_mask(self, job: MaskJob) -> None:
        if job.foreground_fraction <= self.options.mask_threshold:
            self.writer.append({"type": "skipped", "mask_index": job.index, "reason":
                                f"foreground {job.foreground_fraction:.4f} <= mask_threshold {self.options.mask_threshold}"})
            return
        save_mask_files(self.layout, job)
        n = self.options.num_images_per_prompt
        for start in range(0, self.options.max_tries_per_mask, n):
            if self.options.early_stop and self.enough(job.index):
                break
            tries = list(range(start, min(start + n, self.options.max_tries_per_mask)))
            if all((job.index, t) in self.done for t in tries):
                continue
            self.render_batch(job, tries)

    def enough(self, index: int) -> bool:
        scores = [FilterScores(r["organ_iou"], r["organ_confidence"])
                  for (i, _), r in sorted(self.done.items()) if i == index]
        return self.options.rule.enough_strict(scores)

    def render_batch(self, job: MaskJob, tries: list[int]) -> None:
        seeds = [candidate_seed(self.options.seed, job.index, t) for t in tries]
        started = time.perf_counter()
        evaluations_before = self.sampler.unet_evaluations
        images = self.sampler.generate(torch.from_numpy(job.condition), job.prompt, seeds)
        generation_seconds = (time.perf_counter() - started) / len(tries)
        evaluations = (self.sampler.unet_evaluations - evaluations_before) // len(tries)
        for try_index, seed, image in zip(tries, seeds, images):
            if (job.index, try_index) in self.done:
                continue
            scored_at = time.perf_counter()
            record = self.record(job, try_index, seed, signed_to_uint8(image[0].numpy()), evaluations)
            record["seconds"] = generation_seconds + time.perf_counter() - scored_at
            self.writer.append(record)
            self.done[(job.index, try_index)] = record

    def record(self, job: MaskJob, try_index: int, seed: int, image: np.ndarray, evaluations: int) -> dict[str, Any]:
        image_path, combined_path = self.layout.image(job.index, try_index), self.layout.combined(job.index, try_index)
        write_gray(image_path, image)
        write_rgb(combined_path, combined_picture(image, job.organ_masks))
        scores = self.filter.score(image, job.organ_masks)
        entry = job.entry
        return {
            "type": "candidate", "mask_index": job.index, "try": try_index, "seed": seed, "prompt": job.prompt,
            "modality": self.run_config["modality"], "scheduler": self.options.scheduler, "steps": self.options.steps,
            "guidance_scale": self.options.guidance_scale, "controlnet_scale": self.options.controlnet_scale,
            "control_conditional_only": self.options.control_conditional_only,
            "checkpoint_sha256": self.run_config["checkpoint_sha256"], "filter": self.filter.name,
            "source": {"image_path": str(entry.image_path), "patient_id": entry.patient_id,
                       "slice_index": entry.slice_index, "dataset": entry.dataset, "modality": entry.modality},
            "region": entry.region, "organs": [o for o, m in zip(self.pair.organs, job.organ_masks) if m.any()],
            "label": list(self.pair.organs), "merged_mask_path": str(self.layout.merged_mask(job.index)),
            "mask_paths": [str(self.layout.organ_mask(job.index, m)) for m in range(len(job.organ_masks))],
            "image_path": str(image_path), "combined_path": str(combined_path),
            "organ_iou": scores.organ_iou, "organ_confidence": scores.organ_confidence,
            "unet_evaluations": evaluations, "part": self.options.part_id,
        }


def describe_run(options: SynthesisOptions, pair: PairConfig, modality: str, size: int, example_prompt: str,
                 hashes: dict[str, str], filter_settings: dict[str, Any]) -> dict[str, Any]:
    """run_config.json: every setting the samples depend on, plus the ones that may change on resume."""
    selection_thresholds = {"iou_threshold", "confidence_threshold", "avg_iou_threshold", "avg_confidence_threshold"}
    config = {k: v for k, v in asdict(options).items() if k not in selection_thresholds}
    config.update(
        modality=modality, size=size, example_prompt=example_prompt, checkpoint_sha256=hashes,
        pair=asdict(pair), inference_indexes=list(pair.inference_indexes), filter=filter_settings,
        thresholds=asdict(options.rule.thresholds),
    )
    if options.early_stop:  # the rule decides which candidates exist at all
        config["early_stop_rule"] = {**asdict(options.rule.thresholds), "keep": options.sample_per_mask, "top_k": options.top_k,
                                     "selection": options.selection}
    for key in ("config", "merge", "sam2_config", "sam2_checkpoint", "sam2_prompt", "box_jitter"):
        config.pop(key)
    return config


def target_modality(options: SynthesisOptions, pair: PairConfig) -> str:
    return modality_key(options.modality) if options.modality else pair.target_modality


def layout_for(options: SynthesisOptions, pair: PairConfig) -> RunLayout:
    return RunLayout(Path(options.log_dir), modality_short_name(target_modality(options, pair)))


def finalize(options: SynthesisOptions, layout: RunLayout) -> dict[str, Any]:
    """Check that every part finished with the same settings, then merge them and apply the selection rule."""
    run_config = json.loads(layout.run_config.read_text())
    check_parts(layout, run_config)
    summary = write_outputs(layout, options.rule, run_config)
    log.info("%d candidates, %d accepted (%.1f %%) -> %s", summary["candidates"], summary["accepted"],
             100 * summary["acceptance_rate"], layout.filtered_json)
    return summary


def write_run_config(layout: RunLayout, run_config: dict[str, Any]) -> None:
    check_resumable(layout, run_config)
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.run_config, run_config)


def load_pair(config_path: str) -> PairConfig:
    """The pair (``data``) of a ControlNet config."""
    from mrgen.config import ControlNetConfig, load_config

    pair = load_config(config_path, ControlNetConfig).data
    if pair is None:
        raise ValueError(f"{config_path}: no 'data' section; synthesis needs the pair config the model was trained with")
    if not pair.inference_indexes:
        raise ValueError(f"{config_path}: data.inference_indexes is empty; list the source indexes whose masks to synthesise from")
    return pair


def process_count(options: SynthesisOptions) -> int:
    """``--processes`` if given (CPU workers, or at most one per visible CUDA device), else one per visible CUDA
    device up to ``--num_gpus``, and 1 on a machine without CUDA."""
    available = torch.cuda.device_count()
    if options.processes is not None:
        if available and options.processes > available:
            raise ValueError(f"--processes {options.processes} but {available} CUDA device(s) visible: one process per "
                             f"device at most")
        return options.processes
    if options.num_gpus > 1 and available < options.num_gpus:
        log.warning("--num_gpus %d but %d CUDA device(s) visible: using %d process(es); --processes N runs N worker "
                    "processes on the CPU", options.num_gpus, available, max(1, available))
    return max(1, min(options.num_gpus, available))


def build_filter(options: SynthesisOptions, device: torch.device) -> QualityFilter:
    if options.filter == "offline":
        from mrgen.filtering.offline import OfflineFilter

        return OfflineFilter()
    if options.filter == "sam2":
        from mrgen.filtering.sam2_filter import Sam2Filter

        return Sam2Filter(config=options.sam2_config, checkpoint=options.sam2_checkpoint, prompt=options.sam2_prompt,
                          box_jitter=options.box_jitter, device=str(device), seed=options.seed)
    raise ValueError(f"--filter must be 'offline' or 'sam2', got {options.filter!r}")


def filter_settings(options: SynthesisOptions) -> dict[str, Any]:
    if options.filter == "sam2":
        checkpoint = Path(options.sam2_checkpoint)
        return {"name": "sam2", "config": options.sam2_config, "prompt": options.sam2_prompt,
                "box_jitter": options.box_jitter,
                "checkpoint_sha256": file_sha256(checkpoint) if checkpoint.is_file() else None}
    from mrgen.filtering.offline import ClassicalSegmenter

    return {"name": options.filter, **asdict(ClassicalSegmenter())}


def model_folders(options: SynthesisOptions) -> dict[str, Path]:
    """The weights the samples depend on: VAE, UNet and ControlNet."""
    from mrgen.models.builders import CONTROLNET, UNET, VAE, ModelFolderError, component_dir

    folders = {"vae": component_dir(options.ckpt, VAE), "unet": component_dir(options.ckpt, UNET)}
    if options.controlnet:
        folders["controlnet"] = component_dir(options.controlnet, CONTROLNET)
    elif (Path(options.ckpt) / CONTROLNET).is_dir():
        folders["controlnet"] = component_dir(options.ckpt, CONTROLNET)
    else:
        raise ModelFolderError(f"{options.ckpt}: nothing conditions on the mask; pass --controlnet (a ControlNet "
                               f"folder) or a --ckpt with controlnet/")
    return folders


def prepare_run(options: SynthesisOptions, pair: PairConfig, processes: int) -> dict[str, Any]:
    """Check everything that can fail before any generation, then write run_config.json."""
    from mrgen.models.builders import read_json

    folders = model_folders(options)
    registry = load_registry()
    modality = target_modality(options, pair)
    registry.attributes(modality)
    channels = pair.encoding.channels
    controlnet_channels = read_json(folders["controlnet"] / "config.json").get("conditioning_channels")
    if channels != options.channels or channels != controlnet_channels:
        raise ValueError(f"--channels {options.channels}, the intensity-coded mask ({channels} channel) and the "
                         f"ControlNet's conditioning_channels ({controlnet_channels}) must agree")
    if options.filter == "sam2":
        build_filter(options, torch.device("cpu"))  # a missing checkpoint fails here, before any generation
    entries = inference_entries(pair)
    size = options.size or int(read_json(folders["vae"] / "config.json")["sample_size"])
    run_config = describe_run(options, pair, modality, size, pair_prompt(pair, registry, entries[0], modality),
                              checkpoint_hashes(folders), filter_settings(options))
    run_config.update(controlnet=str(folders["controlnet"]), processes=processes)
    write_run_config(layout_for(options, pair), run_config)
    return run_config


def _device(rank: int) -> torch.device:
    return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")


def make_sampler(options: SynthesisOptions, device: torch.device) -> MaskSampler:
    from mrgen.models.pipeline_folder import load_pipeline_components

    half = options.half if options.half is not None else device.type == "cuda"
    dtype = torch.float16 if half else torch.float32
    parts = load_pipeline_components(options.ckpt, controlnet_path=options.controlnet, device=device, dtype=dtype)
    return make_mask_sampler(parts, options.scheduler, options.steps, options.guidance_scale,
                             options.controlnet_scale, options.control_conditional_only, device, dtype)


def my_masks(options: SynthesisOptions, count: int, rank: int, processes: int) -> list[int]:
    """The mask indices of this part (``index % num_parts == part_id``) that worker ``rank`` of ``processes`` renders
    (every ``processes``-th of them), so that a part covers the same masks with any number of processes.
    ``max_masks`` picks that many spread evenly over the whole list."""
    chosen = range(count) if options.max_masks is None else \
        sorted({int(i) for i in np.linspace(0, count - 1, min(count, options.max_masks)).round()})
    return [i for i in chosen if i % options.num_parts == options.part_id][rank::processes]


def _work(rank: int, options: SynthesisOptions, processes: int, threads: int = 0) -> None:
    pair = load_pair(options.config)
    layout = layout_for(options, pair)
    run_config = json.loads(layout.run_config.read_text())
    registry = load_registry()
    device = _device(rank)
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)  # the workers share the parent's threads
    entries = inference_entries(pair)
    modality, size = run_config["modality"], run_config["size"]
    synthesizer = Synthesizer(
        options, pair, layout, run_config, make_sampler(options, device), build_filter(options, device),
        lambda i: mask_job(i, entries[i], pair, registry, modality, size),
        my_masks(options, len(entries), rank, processes), rank, processes,
    )
    synthesizer.run()


def synthesize(options: SynthesisOptions) -> dict[str, Any]:
    """Run (or resume) a synthesis part; with ``merge`` only merge the recorded parts and re-select. Returns the
    summary of the merged run, or of this part while other parts (``num_parts`` > 1) still have to be merged."""
    pair = load_pair(options.config)
    layout = layout_for(options, pair)
    if options.merge:
        if not layout.run_config.is_file():
            raise FileNotFoundError(f"--merge: {layout.run_config} does not exist; run the synthesis first")
        return finalize(options, layout)
    processes = process_count(options)
    if layout.root.is_dir() and (removed := remove_stale_temporaries(layout.root)):
        log.info("%s: removed %d half-written file(s) left by an interrupted run", layout.root, removed)
    run_config = prepare_run(options, pair, processes)
    layout.part_done(options.part_id, options.num_parts).unlink(missing_ok=True)  # this part is running again
    if processes == 1:
        _work(0, options, 1)
    else:
        threads = max(1, torch.get_num_threads() // processes)
        torch.multiprocessing.spawn(_work, args=(options, processes, threads), nprocs=processes, join=True)
    atomic_write_json(layout.part_done(options.part_id, options.num_parts), run_config)  # what it was made with
    if options.num_parts > 1:
        log.info("part %d of %d done; when every part is, merge them: the same command with --merge",
                 options.part_id, options.num_parts)
        return {"part_id": options.part_id, "num_parts": options.num_parts, "merged": False}
    return finalize(options, layout)
