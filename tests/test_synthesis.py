"""Synthesis on CPU with tiny random-weight models and a small simulated dataset (code paths, not quality)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PHANTOM_PAIR_YAML, REPO
from mrgen.data.index import load_index
from mrgen.data.preprocess import preprocess_image, preprocess_mask
from mrgen.filtering.mask_following import mask_following
from mrgen.filtering.offline import OfflineFilter
from mrgen.io.images import read_gray
from mrgen.synthesis import manifest
from mrgen.synthesis.parts import PartsError
from mrgen.synthesis.run import SynthesisOptions, synthesize
from mrgen.synthesis.seeds import candidate_seed


@pytest.fixture
def options(phantom, pipeline, tmp_path):
    config = tmp_path / "pair.yml"
    config.write_text(PHANTOM_PAIR_YAML.format(root=phantom))

    def make(**overrides) -> SynthesisOptions:
        values = dict(ckpt=str(pipeline), log_dir=str(tmp_path / "run"), config=str(config), steps=2,
                      num_images_per_prompt=2, max_tries_per_mask=4, max_masks=3, num_gpus=1,
                      iou_threshold=0.0, confidence_threshold=0.0, avg_iou_threshold=0.0, avg_confidence_threshold=0.0)
        values.update(overrides)
        return SynthesisOptions(**values)
    return make


def _records(log_dir: str) -> list[dict]:
    return sorted((r for r in manifest.read(Path(log_dir) / "manifest.jsonl")), key=lambda r: (r["mask_index"], r["try"]))


def test_run_writes_the_original_layout_and_json(options):
    opts = options()
    summary = synthesize(opts)
    root = Path(opts.log_dir)
    assert summary["candidates"] == 12 and summary["masks"] == 3
    for name in ("run_config.json", "manifest.jsonl", "README.md", "filter_scores.png",
                 "json_files/synthetic_T2-SPIR.json", "json_files/synthetic_T2-SPIR_filtered.json",
                 "synthetic_mask/0_mask.png", "synthetic_mask/0_mask_3.png",
                 "synthetic_T2-SPIR/0_T2-SPIR_3.png", "synthetic_T2-SPIR_combined/0_T2-SPIR_3_combined.png"):
        assert (root / name).is_file(), name
    items = json.loads((root / "json_files/synthetic_T2-SPIR_filtered.json").read_text())
    assert len(items) == 6  # thresholds 0: the first two of every mask
    item = items[0]
    assert item["prompt"][0].startswith("T2 SPIR Abdomen MRI, fat low signal")
    assert (root / "json_files" / item["image_path"]).resolve().is_file()
    assert {"mask_0_path", "mask_3_path", "sam2_avg_iou", "sam2_organs_confidence", "original_path"} <= set(item)
    record = _records(opts.log_dir)[1]
    assert record["seed"] == candidate_seed(0, record["mask_index"], record["try"])
    assert record["source"]["patient_id"] and record["checkpoint_sha256"]["controlnet"]
    assert "acceptance" not in record and record["reason"]
    following = json.loads((root / "mask_following.json").read_text())
    assert following["all candidates"]["own"]["all"]["count"] > 0 and following["accepted"]["floor"]["all"]
    assert "## Mask-following" in (root / "README.md").read_text()


def test_resume_after_a_crash_gives_identical_records_and_images(options, tmp_path):
    straight = options(log_dir=str(tmp_path / "straight"))
    synthesize(straight)
    crashed = options(log_dir=str(tmp_path / "crashed"))
    synthesize(crashed)
    part = Path(crashed.log_dir) / "manifest" / "part-000-of-001-rank-00.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:5]) + lines[5][:40])  # killed mid-append after 5 candidates
    for path in Path(crashed.log_dir).glob("synthetic_T2-SPIR/2_*.png"):
        path.unlink()  # and before the last mask's images were written
    (Path(crashed.log_dir) / "manifest.jsonl").unlink()
    synthesize(crashed)
    a, b = _records(straight.log_dir), _records(crashed.log_dir)
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "image_path", "combined_path",  # noqa: E731
                                                              "merged_mask_path", "mask_paths")}
    assert [drop(r) for r in a] == [drop(r) for r in b]
    for r in a:
        name = Path(r["image_path"]).name
        assert (Path(straight.log_dir) / "synthetic_T2-SPIR" / name).read_bytes() == \
            (Path(crashed.log_dir) / "synthetic_T2-SPIR" / name).read_bytes()


def _same_dataset(a: str, b: str) -> None:
    """The same candidates, scores and decisions, the same accepted list and the same image bytes."""
    keys = lambda log_dir: [(r["mask_index"], r["try"], r["seed"], r["organ_iou"], r["accepted"])  # noqa: E731
                            for r in _records(log_dir)]
    assert keys(a) == keys(b)
    filtered = "json_files/synthetic_T2-SPIR_filtered.json"
    assert (Path(a) / filtered).read_text() == (Path(b) / filtered).read_text()
    for r in _records(a):
        relative = Path(r["image_path"]).relative_to(a)
        assert (Path(a) / relative).read_bytes() == (Path(b) / relative).read_bytes(), relative


def test_parts_merged_equal_one_run_and_a_missing_or_foreign_part_is_refused(options, tmp_path):
    single = options(log_dir=str(tmp_path / "single"))
    synthesize(single)
    parts = [options(log_dir=str(tmp_path / "parts"), num_parts=2, part_id=k) for k in (0, 1)]
    assert synthesize(parts[0]) == {"part_id": 0, "num_parts": 2, "merged": False}
    with pytest.raises(PartsError, match=r"part\(s\) 1 of 2 have not finished"):
        synthesize(options(log_dir=parts[0].log_dir, num_parts=2, merge=True))
    synthesize(parts[1])
    manifests = Path(parts[0].log_dir) / "manifest"
    foreign = manifests / "part-000-of-003-rank-00.jsonl"
    foreign.write_text((manifests / "part-000-of-002-rank-00.jsonl").read_text())
    with pytest.raises(PartsError, match="written with --num_parts 3"):
        synthesize(options(log_dir=parts[0].log_dir, num_parts=2, merge=True))
    foreign.unlink()
    altered = manifests / "part-001-of-002-rank-00.jsonl"
    records = manifest.read(altered)
    records[0]["steps"] = 99
    altered.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(PartsError, match="other settings than run_config.json: steps"):
        synthesize(options(log_dir=parts[0].log_dir, num_parts=2, merge=True))
    records[0]["steps"] = parts[1].steps
    altered.write_text("".join(json.dumps(r) + "\n" for r in records))
    synthesize(options(log_dir=parts[0].log_dir, num_parts=2, part_id=1, max_masks=2))  # part 1 of another selection
    with pytest.raises(PartsError, match="ran with other settings than run_config.json: max_masks"):
        synthesize(options(log_dir=parts[0].log_dir, num_parts=2, merge=True))
    synthesize(parts[1])
    assert synthesize(options(log_dir=parts[0].log_dir, num_parts=2, merge=True))["candidates"] == 12
    _same_dataset(single.log_dir, parts[0].log_dir)
    assert "status: complete (2 parts merged)" in (Path(parts[0].log_dir) / "README.md").read_text()


def test_the_slurm_array_script_makes_parts_in_separate_processes_and_merges_them(options, tmp_path):
    single = options(log_dir=str(tmp_path / "single"))
    synthesize(single)
    flags = "--steps 2 --num_images_per_prompt 2 --max_tries_per_mask 4 --max_masks 3 --iou_threshold 0 " \
            "--confidence_threshold 0 --avg_iou_threshold 0 --avg_confidence_threshold 0"
    env = {**os.environ, "NUM_PARTS": "2", "PAIR": single.config, "CKPT": single.ckpt, "LOG_DIR": str(tmp_path / "parts"),
           "EXTRA_ARGS": flags, "SLURM_SUBMIT_DIR": str(REPO), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as this process: float sums depend on the thread count

    def job(*args: str, task: int | None = None) -> subprocess.CompletedProcess:
        task_env = env if task is None else {**env, "SLURM_ARRAY_TASK_ID": str(task)}
        return subprocess.run(["bash", str(REPO / "scripts/cluster/synthesize_array.sbatch"), *args], env=task_env,
                              capture_output=True, text=True, timeout=600)

    assert job(task=1).returncode == 0
    early = job("merge")
    assert early.returncode != 0 and "part(s) 0 of 2 have not finished" in early.stderr, early.stderr[-2000:]
    assert job(task=0).returncode == 0
    merged = job("merge")
    assert merged.returncode == 0, merged.stderr[-2000:]
    _same_dataset(single.log_dir, str(tmp_path / "parts"))


def test_two_worker_processes_on_the_cpu_give_the_same_dataset_as_one(options, tmp_path):
    single = options(log_dir=str(tmp_path / "single"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two workers below: float sums depend on the thread count
    try:
        synthesize(single)
        torch.set_num_threads(2)  # shared by the two workers
        two = options(log_dir=str(tmp_path / "two"), processes=2)
        assert synthesize(two)["candidates"] == 12
    finally:
        torch.set_num_threads(threads)
    written = sorted(p.name for p in (Path(two.log_dir) / "manifest").glob("*.jsonl"))
    assert written == ["part-000-of-001-rank-00.jsonl", "part-000-of-001-rank-01.jsonl"]
    assert all(manifest.read(Path(two.log_dir) / "manifest" / name) for name in written)  # both did work
    _same_dataset(single.log_dir, two.log_dir)


def test_changed_arguments_are_refused_and_merge_reselects(options):
    synthesize(options())
    with pytest.raises(ValueError, match="guidance_scale"):
        synthesize(options(guidance_scale=3.0))
    strict = synthesize(options(merge=True, avg_iou_threshold=1.01, iou_threshold=1.01))
    assert strict["accepted"] == 0 and strict["candidates"] == 12


def test_merge_with_the_per_organ_rule_keeps_slices_and_names_their_untrusted_organs(options):
    synthesize(options())
    # a candidate with two present organs of different IoU; a threshold between them passes only the better one
    record = next(r for r in _records(options().log_dir)
                  if len({v for v in r["organ_iou"] if v > 0}) >= 2)
    scores = [v for v in record["organ_iou"] if v > 0]
    threshold = (max(scores) + min(scores)) / 2
    per_organ = options(merge=True, selection="per_organ", iou_threshold=threshold, confidence_threshold=0.0,
                        avg_iou_threshold=1.01, avg_confidence_threshold=1.01, sample_per_mask=4, relax=0.0)
    summary = synthesize(per_organ)
    assert summary["accepted"] > 0
    kept = next(r for r in _records(per_organ.log_dir) if (r["mask_index"], r["try"]) == (record["mask_index"], record["try"]))
    present = [k for k, organ in enumerate(kept["label"]) if organ in kept["organs"]]
    assert kept["accepted"] and kept["ignored_masks"] == [k for k in present if kept["organ_iou"][k] < threshold] != []
    filtered = json.loads(next((Path(per_organ.log_dir) / "json_files").glob("*_filtered.json")).read_text())
    assert all("ignored_masks" in item for item in filtered) and len(filtered) == summary["accepted"]
    assert "per organ" in (Path(per_organ.log_dir) / "README.md").read_text()
    original = synthesize(options(merge=True, iou_threshold=threshold, confidence_threshold=0.0,
                                  avg_iou_threshold=1.01, avg_confidence_threshold=1.01))
    assert original["accepted"] == 0 and "ignored_masks" not in _records(per_organ.log_dir)[0]


def test_a_run_that_failed_before_its_first_sample_can_be_rerun_with_other_settings(options, monkeypatch):
    import mrgen.synthesis.run as run

    def broken_models(*args, **kwargs):
        raise RuntimeError("weights failed to load")

    monkeypatch.setattr(run, "make_sampler", broken_models)
    with pytest.raises(RuntimeError, match="weights failed to load"):
        synthesize(options(guidance_scale=3.0))
    monkeypatch.undo()
    assert synthesize(options())["candidates"] == 12  # its run_config.json, with no sample behind it, is replaced


def test_a_pipeline_folder_without_a_controlnet_is_refused_before_any_work(options, pipeline_without_controlnet,
                                                                         tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing conditions on the mask"):
        synthesize(options(ckpt=str(pipeline_without_controlnet)))
    assert not (tmp_path / "run").exists()


def test_early_stop_generates_less(options):
    summary = synthesize(options(early_stop=True))
    assert summary["candidates"] == 6  # the first batch of 2 already passes (thresholds 0)


def _phantom_t2(phantom: Path) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    slices = []
    for entry in load_index(phantom / "Phantom_T2-SPIR_all.json"):
        if len(entry.organs) >= 2:
            image = np.round((preprocess_image(read_gray(entry.image_path), 64) + 1) * 127.5).astype(np.uint8)
            slices.append((image, [preprocess_mask(read_gray(p), 64) for p in entry.mask_paths]))
    return slices


def test_offline_filter_separates_own_from_shifted_masks(phantom):
    own, shifted = [], []
    for image, masks in _phantom_t2(phantom):
        scores = OfflineFilter().score(image, masks)
        assert all(i == 0 and c == 0 for i, c, m in zip(scores.organ_iou, scores.organ_confidence, masks) if not m.any())
        own += [i for i, m in zip(scores.organ_iou, masks) if m.any()]
        moved = OfflineFilter().score(image, [np.roll(m, (8, 8), axis=(0, 1)) for m in masks])
        shifted += [i for i, m in zip(moved.organ_iou, masks) if m.any()]
    own, shifted = np.array(own), np.array(shifted)
    assert len(own) >= 10
    assert (own > 0.7).mean() > 0.6 and (shifted > 0.7).mean() < 0.15
    assert own.mean() > shifted.mean() + 0.3


def test_sam2_path_runs_with_random_weights_and_needs_a_checkpoint(phantom, tmp_path):
    from mrgen.filtering.sam2_filter import MissingCheckpointError, Sam2Filter

    with pytest.raises(MissingCheckpointError, match="sam2_hiera_large.pt"):
        Sam2Filter(checkpoint=tmp_path / "sam2_hiera_large.pt")
    image, masks = _phantom_t2(phantom)[0]
    sam2 = Sam2Filter(config="configs/sam2.1/sam2.1_hiera_t.yaml", random_weights=True, device="cpu", box_jitter=0.08)
    for prompt in ("box", "mask"):
        sam2.prompt = prompt
        scores = sam2.score(image, masks)
        assert len(scores.organ_iou) == 4 and all(0 <= v <= 1 for v in scores.organ_iou)


def test_mask_following_scores_own_masks_high_shuffled_at_the_floor_and_reports_polarity(phantom):
    images, masks = zip(*_phantom_t2(phantom))  # slices with at least two organs
    organs = ["liver", "right kidney", "left kidney", "spleen"]
    real = mask_following(images, masks, organs)
    own, floor = real.own["all"], real.floor["all"]
    assert own.count >= 10 and own.fraction_above > 0.6 and floor.fraction_above < 0.15
    assert own.mean_iou > floor.mean_iou + 0.3
    assert own.fraction_brighter > 0.8  # T2-SPIR organs are bright
    inverted = mask_following([255 - image for image in images], masks, organs).own["all"]
    assert inverted.fraction_brighter < 0.2  # the polarity flips ...
    assert abs(inverted.mean_iou - own.mean_iou) < 0.1  # ... while the IoU barely notices
    assert "| brighter than surroundings |" in real.table()


@pytest.mark.parametrize("flags, message", [
    (["--max_masks", "0"], "--max_masks must be at least 1 (got 0); leave --max_masks out"),
    (["--steps", "0"], "--steps must be at least 1 (got 0)"),
    (["--num_images_per_prompt", "-1"], "--num_images_per_prompt must be at least 1"),
    (["--part_id", "2", "--num_parts", "2"], "--part_id must be in [0, --num_parts=2)"),
    (["--guidance_scale", "-1"], "must not be negative"),
])
def test_bad_counts_are_refused_before_any_work(flags, message, capsys):
    import synthesize_filter_multi

    with pytest.raises(SystemExit) as exit_info:
        synthesize_filter_multi.parse_args(["--ckpt", "x", "--log_dir", "y", "--config", "z", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
