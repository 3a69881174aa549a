"""The end-to-end driver in a miniature setting (tiny random models as the zoo, a few masks, a very short
nnU-Net training): it runs, writes the report with its pictures, and resumes a killed stage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mrgen.config import load_config
from mrgen.pipeline.config import PipelineConfig
from mrgen.pipeline.demo import run_pipeline
from mrgen.pipeline.report import figure_records, masks_by_acceptance

REPO = Path(__file__).resolve().parents[1]
MINIATURE = ["synthesis.max_masks=4", "synthesis.max_tries_per_mask=2", "synthesis.num_images_per_prompt=2",
             "synthesis.steps=3", "segmentation.epochs=1", "segmentation.iterations=3", "segmentation.val_iterations=1",
             "dataset.cases=4", "dataset.slices=12", "synthesis.iou_threshold=0", "synthesis.confidence_threshold=0",
             "synthesis.avg_iou_threshold=0", "synthesis.avg_confidence_threshold=0"]


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_resumes(pipeline, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    config = load_config(REPO / "training_configs/pipeline/demo.yml", PipelineConfig,
                         [f"out={out}", f"models.zoo={pipeline}", f"models.controlnet={pipeline / 'controlnet'}",
                          *MINIATURE])
    assert config.models.conditioning == "controlnet"  # the demo's: the original's recipe
    report = run_pipeline(config)
    text = report.read_text()
    for picture in ("phantom/preview.png", "synthetic_samples.png", "synthesis/filter_scores.png"):
        assert f"]({picture})" in text and (out / picture).is_file()
    assert "IoU vs shuffled mask (floor)" in text and "| MRGen synthetic |" in text
    first = json.loads((out / "report.json").read_text())

    # a run killed during synthesis: the stage marker is gone and the manifest ends in a partial record
    for stage in ("synthesis", "nnunet_data", "nnunet_train", "evaluation"):
        (out / "stages" / f"{stage}.json").unlink()
    part = out / "synthesis" / "manifest" / "part-000-of-001-rank-00.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:25])
    (out / "synthesis" / "manifest.jsonl").unlink()
    run_pipeline(config)
    second = json.loads((out / "report.json").read_text())
    assert second["dataset"]["stage_seconds"] == first["dataset"]["stage_seconds"]  # finished stages are not redone
    assert second["synthesis"]["candidates"] == first["synthesis"]["candidates"] > 0
    assert second["synthesis"]["accepted"] == first["synthesis"]["accepted"]
    assert second["evaluation"]["mean"] == first["evaluation"]["mean"]  # same seed, same numbers


@pytest.mark.slow
def test_benchmark_in_miniature_writes_a_full_table(pipeline, tmp_path, monkeypatch):
    import shutil
    from dataclasses import replace

    from mrgen.pipeline.benchmark import BenchmarkConfig, run_benchmark, with_budget, with_zoo

    monkeypatch.chdir(REPO)
    zoo = tmp_path / "zoo"
    for part in ("vae", "unet", "scheduler", "text_encoder.json"):
        (shutil.copytree if (pipeline / part).is_dir() else shutil.copyfile)(pipeline / part, zoo / part)
    for name in ("controlnet_T1-InPhase_to_T2-SPIR", "controlnet_T1-InPhase_to_T2-SPIR_no_target_images",
                 "controlnet_self_trained_T1-InPhase_to_T2-SPIR"):
        shutil.copytree(pipeline / "controlnet", zoo / name)
    # four columns, two nnU-Net seeds each: a real-data arm, a synthetic arm under both selection rules and the upper
    # bound (which also measures the synthetic candidates' fidelity)
    config = BenchmarkConfig(out=str(tmp_path / "bench"), conditions=["b", "c", "c_per_organ", "e"])
    config = with_zoo(with_budget(config, "mini"), str(zoo))
    config = replace(config, pairs=config.pairs[:1], seeds=2,
                     synthesis=replace(config.synthesis, iou_threshold=0, confidence_threshold=0, avg_iou_threshold=0,
                                       avg_confidence_threshold=0))
    table = run_benchmark(config).read_text()
    row = next(line for line in table.splitlines() if line.startswith("| T1-InPhase -> T2-SPIR |"))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    assert len(cells) == 4 and all(c != "n/a" for c in cells), row
    assert (tmp_path / "bench" / "benchmark.png").is_file()
    result = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    arms = result["results"]["T1-InPhase -> T2-SPIR"]
    assert [s["seed"] for s in arms["e"]["seeds"]] == [0, 1] and set(arms["e"]["spread"]["mean"]["dice"]) == {
        "mean", "std", "min", "max"}
    assert arms["e"]["mean"]["dice"] == pytest.approx(sum(s["mean"]["dice"] for s in arms["e"]["seeds"]) / 2)
    assert set(arms["c"]["fidelity"]) == {"accepted", "rejected"} and arms["c"]["fidelity"]["accepted"]["own"]["all"]["count"] > 0
    assert set(arms["c"]["realism"]) == {"accepted", "rejected"}
    assert "fidelity" in result["measures"]["T1-InPhase -> T2-SPIR"]["references"]
    assert "MRGen ControlNet: accepted" in table and "fidelity ceiling" in table

    (tmp_path / "bench" / "stages" / "pair0_b.json").unlink()  # killed after augmenting: its dataset holds the id
    assert row in run_benchmark(config).read_text().splitlines()  # the rerun replaces it; same seed, same numbers


def test_benchmark_table_marks_a_condition_without_accepted_samples(tmp_path):
    from mrgen.pipeline.benchmark import CONDITIONS, BenchmarkConfig, write_outputs
    from mrgen.pipeline.stages import StageRunner

    organs = ["liver", "spleen"]

    def evaluated(dice: float) -> dict:
        return {"mean_over": organs, "organs": {o: {"dice": dice, "hd95": 5.0} for o in organs},
                "mean": {"dice": dice, "hd95": 5.0}, "stage_seconds": 1.0}

    synthesis = {"candidates": 8, "accepted": 0, "unet_evaluations_per_accepted": None, "seconds_per_accepted": None,
                 "seconds": 3.0}
    results = {"T1-InPhase -> T2-SPIR": {"a": evaluated(0.1), "b": evaluated(0.2),
                                         "c": {"samples": 0, "skipped": "no accepted synthetic sample",
                                               "synthesis": synthesis, "stage_seconds": 2.0},
                                         "d_unfiltered": {**evaluated(0.3), "synthesis": {**synthesis, "accepted": 0}},
                                         "d_no_target": None, "e": evaluated(0.9)}}
    table = write_outputs(tmp_path, BenchmarkConfig(out=str(tmp_path), seeds=1), results, {}, StageRunner(tmp_path, []))
    row = next(line for line in table.read_text().splitlines() if line.startswith("| T1-InPhase -> T2-SPIR |"))
    columns = [c.strip() for c in table.read_text().splitlines()[4].split("|")[2:-1]]
    assert columns == [title for title, _ in CONDITIONS.values()]
    assert row.split("|")[2:-1] == [" 10.0 ", " 20.0 ", " n/a ", " n/a ", " n/a ", " n/a ", " 30.0 ", " n/a ", " 90.0 "]
    assert (tmp_path / "benchmark.png").is_file()


def test_benchmark_runs_a_chosen_part_of_the_table(tmp_path):
    from mrgen.pipeline.benchmark import CONDITIONS, BenchmarkConfig, PairBenchmark
    from mrgen.pipeline.stages import StageRunner

    with pytest.raises(ValueError, match="unknown benchmark conditions"):
        BenchmarkConfig(conditions=["c", "z"])
    with pytest.raises(ValueError, match="unknown benchmark pairs"):
        BenchmarkConfig(run_pairs=["T1:T2"])
    second = BenchmarkConfig(run_pairs=["T2-SPIR:T1-InPhase"]).chosen_pairs()
    assert [(i, p.target) for i, p in second] == [(1, "T1-InPhase")]  # the full run's position: its stages, its ids
    config = BenchmarkConfig(out=str(tmp_path), conditions=[])
    runner = StageRunner(tmp_path, ["pair0_test_set", "pair0_measures"])
    runner.run("pair0_test_set", lambda: {"dataset": str(tmp_path)})  # finished: the benchmark reads it back
    results, measures = PairBenchmark(config, config.pairs[0], 0, tmp_path, runner).run()
    assert set(results) == set(CONDITIONS) and all(r is None for r in results.values())  # no condition chosen
    assert measures["runs"] == {}


def test_benchmark_tables_are_written_when_no_arm_of_a_pair_had_samples_to_train_on(tmp_path):
    from mrgen.pipeline.benchmark import BenchmarkConfig, write_outputs
    from mrgen.pipeline.stages import StageRunner

    synthesis = {"candidates": 256, "accepted": 0, "unet_evaluations_per_accepted": None, "seconds_per_accepted": None,
                 "seconds": 3.0}
    results = {"T1-InPhase -> T2-SPIR": {"c": {"samples": 0, "synthesis": synthesis}}}
    config = BenchmarkConfig(out=str(tmp_path), conditions=["c"])
    text = write_outputs(tmp_path, config, results, {}, StageRunner(tmp_path, [])).read_text()
    assert "| T1-InPhase -> T2-SPIR | n/a |" in text and "| 256 | 0 |" in text


def test_a_stage_run_inside_another_is_timed_once(tmp_path):
    from mrgen.pipeline.stages import StageRunner

    runner = StageRunner(tmp_path, ["outer", "inner"])

    def outer() -> None:
        time.sleep(0.05)
        runner.run("inner", lambda: time.sleep(0.2))

    runner.run("outer", outer)
    inner, outer = runner.results["inner"]["stage_seconds"], runner.results["outer"]["stage_seconds"]
    assert inner >= 0.2 and 0.05 <= outer < 0.2
    assert runner.total_seconds == pytest.approx(inner + outer)


def test_synthetic_figure_shows_accepted_samples_first_then_one_rejected_per_other_mask():
    records = [{"mask_index": m, "try": t, "accepted": (m, t) == (2, 1)} for m in range(3) for t in range(3)]
    shown = [(r["mask_index"], r["try"]) for r in figure_records(records)]
    assert shown == [(2, 1), (0, 0), (1, 0)]


def test_overview_figure_rows_are_the_masks_with_most_accepted_candidates_accepted_first():
    accepted = {(1, 2), (2, 0), (2, 2)}
    records = [{"mask_index": m, "try": t, "accepted": (m, t) in accepted} for m in range(3) for t in range(3)]
    rows = [[(r["mask_index"], r["try"]) for r in group] for group in masks_by_acceptance(records, masks=2)]
    assert rows == [[(2, 0), (2, 2), (2, 1)], [(1, 2), (1, 0), (1, 1)]]


def test_self_trained_controlnet_conditioning_trains_a_self_training_controlnet(tmp_path):
    from mrgen.config import ControlNetConfig
    from mrgen.pipeline.demo import stage_names, zoo_models

    demo = REPO / "training_configs/pipeline/demo.yml"
    names = stage_names(load_config(demo, PipelineConfig, ["models.train=true"]))
    assert names[names.index("train_unet") + 1:names.index("synthesis")] == ["train_controlnet"]
    names = stage_names(load_config(demo, PipelineConfig, ["models.train=true", "models.conditioning=self_trained_controlnet"]))
    assert names[names.index("train_unet") + 1:names.index("synthesis")] == ["train_controlnet"]
    self_trained = "models.conditioning=self_trained_controlnet"
    config = load_config(demo, PipelineConfig, [f"models.zoo={REPO / 'zoo/phantom'}", self_trained,
                                                f"models.self_trained_controlnet={tmp_path}"])
    assert zoo_models(config) == (REPO / "zoo/phantom", tmp_path)
    missing = load_config(demo, PipelineConfig, [self_trained, f"models.self_trained_controlnet={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="make demo-full"):
        zoo_models(missing)
    pair = load_config(REPO / "training_configs/controlnet/phantom_T1_to_T2-SPIR.yml", ControlNetConfig,
                       ["self_training.enabled=true", "train.cache_latents=false"])
    assert pair.self_training.enabled and not ControlNetConfig().self_training.enabled
