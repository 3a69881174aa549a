"""The whole chain on the simulated dataset, stage by stage, ending in ``report.md``.

dataset -> (train VAE, UNet and ControlNet, or take the model zoo) -> synthesis with filtering ->
mask-following -> nnU-Net dataset -> short nnU-Net training -> 3D evaluation on real target volumes ->
report. Every stage writes plain files under ``out``; a finished stage is not redone, a killed one resumes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any


from mrgen.config import ControlNetConfig, UNetConfig, VAEConfig, dump_yaml, load_config
from mrgen.data.modalities import modality_key
from mrgen.data.phantom import DEFAULT_MODALITIES, generate_phantom_dataset
from mrgen.io.atomic import atomic_write_text
from mrgen.pipeline.config import DatasetSection, PipelineConfig
from mrgen.pipeline.report import write_report
from mrgen.pipeline.segmentation import NnUNetWork
from mrgen.pipeline.stages import StageRunner
from mrgen.pipeline.synthetic_measures import ReferenceSegmenter, measure_synthesis_runs
from mrgen.synthesis.run import SynthesisOptions, synthesize

log = logging.getLogger(__name__)


def stage_names(config: PipelineConfig) -> list[str]:
    training = ["train_vae", "train_unet", "train_controlnet"] if config.models.train else []
    return ["dataset", *training, "synthesis", "nnunet_data", "nnunet_train", "evaluation", "synthetic_measures"]


def pair_config_for(config_path: str, out: Path, data: Path) -> Path:
    """A pair config with its data pointed at this run's dataset (a two-line file inheriting the original)."""
    path = out / "pair.yml"
    atomic_write_text(path, f"base: {Path(config_path).resolve()}\ndata:\n  data_root: {data.resolve()}\n")
    return path


def train_models(config: PipelineConfig, runner: StageRunner, out: Path, data: Path,
                 pair: Path) -> tuple[Path, Path]:
    """Train the VAE, the UNet and the ControlNet (self-trained, if the config says so); (pipeline folder, ControlNet
    folder)."""
    from mrgen.training import train_controlnet, train_unet, train_vae

    m = config.models
    common = [f"seed={config.seed}", f"data.index_paths=[{data / 'image_text_train.json'}]",
              f"data.test_index_paths=[{data / 'image_text_test.json'}]"]
    folders = {name: out / "train" / name / "pipeline" for name in ("vae", "unet", "controlnet")}
    runner.run("train_vae", lambda: {"pipeline": str(train_vae(load_config(
        m.vae_config, VAEConfig, [*common, f"output_dir={out / 'train' / 'vae'}", *m.vae_overrides]), resume="latest"))})
    runner.run("train_unet", lambda: {"pipeline": str(train_unet(load_config(
        m.unet_config, UNetConfig, [*common, f"output_dir={out / 'train' / 'unet'}",
                                    f"model.pretrained_model_path={folders['vae']}", *m.unet_overrides]), resume="latest"))})

    controlnet = [f"seed={config.seed}", f"output_dir={out / 'train' / 'controlnet'}",
                  f"model.pretrained_model_path={folders['unet']}"]
    self_training = ["self_training.enabled=true", "train.cache_latents=false"] \
        if m.conditioning == "self_trained_controlnet" else []
    runner.run("train_controlnet", lambda: {"pipeline": str(train_controlnet(load_config(
        pair, ControlNetConfig, [*controlnet, *self_training, *m.controlnet_overrides]), resume="latest"))})
    return folders["controlnet"], folders["controlnet"]


def zoo_models(config: PipelineConfig) -> tuple[Path, Path]:
    """(pipeline folder, ControlNet folder) from the model zoo."""
    m = config.models
    ckpt = Path(m.zoo)
    controlnet = Path(m.self_trained_controlnet if m.conditioning == "self_trained_controlnet" else m.controlnet)
    for folder in (ckpt / "vae", ckpt / "unet", controlnet):
        if not folder.is_dir():
            raise FileNotFoundError(f"model zoo folder {folder} is missing: train the zoo (zoo/phantom/README.md) "
                                    f"or run the chain from scratch with models.train=true (make demo-full)")
    return ckpt, controlnet


def synthesis_options(config: PipelineConfig, ckpt: Path, controlnet: Path, pair: Path,
                      log_dir: Path) -> SynthesisOptions:
    """The synthesis flags: the config's synthesis section (every key is a flag of the same name) plus the run's paths."""
    return SynthesisOptions(**dataclasses.asdict(config.synthesis), ckpt=str(ckpt),
                            controlnet=str(controlnet),
                            config=str(pair), log_dir=str(log_dir), modality=modality_key(config.target),
                            seed=config.seed, num_gpus=1)


def run_pipeline(config: PipelineConfig) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pipeline.yml", dump_yaml(config))
    runner = StageRunner(out, stage_names(config))
    data = out / "phantom"
    runner.run("dataset", lambda: make_dataset(config.dataset, [config.source, config.target], data))
    pair = pair_config_for(config.models.pair_config, out, data)
    ckpt, controlnet = train_models(config, runner, out, data, pair) if config.models.train else zoo_models(config)
    synthesis_dir = out / "synthesis"
    runner.run("synthesis", lambda: synthesize(synthesis_options(config, ckpt, controlnet, pair, synthesis_dir)))

    if runner.results["synthesis"]["accepted"] == 0:
        log.warning("the quality filter accepted no synthetic sample, so there is nothing to train nnU-Net on; "
                    "report.md shows the mask-following numbers and filter scores")
        return write_report(out, config, runner)

    seg = config.segmentation
    work = NnUNetWork(out / "nnunet", seg)
    train_id, test_id = seg.dataset_id, seg.dataset_id + 1
    filtered = next((synthesis_dir / "json_files").glob("*_filtered.json"))
    runner.run("nnunet_data", lambda: {
        "train": str(work.export_synthetic([filtered], train_id, "MRGenSynthetic")),
        "test": str(work.export_real([data / f"volumes_{config.target}_test.jsonl"], "test", test_id,
                                     f"Real{config.target.replace('-', '')}", config.dataset.size)),
    })
    runner.run("nnunet_train", lambda: work.plan_and_train(train_id, "MRGenSynthetic", config.seed))
    test_dataset = Path(runner.results["nnunet_data"]["test"])
    runner.run("evaluation", lambda: work.predict_and_evaluate(train_id, "MRGenSynthetic", test_dataset, out / "evaluation",
                                                               config.seed))
    runner.run("synthetic_measures", lambda: measure_demo_synthesis(config, work, data, synthesis_dir, test_dataset))
    report = write_report(out, config, runner)
    log.info("report: %s", report)
    return report


def measure_demo_synthesis(config: PipelineConfig, work: NnUNetWork, data: Path, synthesis_dir: Path,
                           test_dataset: Path) -> dict[str, Any]:
    """Fidelity and realism of the candidates (mrgen.pipeline.synthetic_measures), with a reference nnU-Net trained
    on the real target training volumes' labels for the same budget as the synthetic one."""
    out = Path(config.out) / "synthetic_measures"
    dataset_id, name = config.segmentation.dataset_id + 2, "RealTargetTrain"
    work.export_real([data / f"volumes_{config.target}_train.jsonl"], "train", dataset_id, name, config.dataset.size)
    work.plan_and_train(dataset_id, name, config.seed)
    predictions = work.predict(test_dataset / "imagesTs", out / "reference" / "predictions", dataset_id, name, config.seed)
    reference = ReferenceSegmenter(work, dataset_id, name, config.seed, test_dataset, predictions)
    return measure_synthesis_runs({"MRGen synthetic": synthesis_dir}, data, config.source, config.target, reference,
                                  out, config.seed)


def make_dataset(section: DatasetSection, modalities: list[str], data: Path) -> dict[str, Any]:
    """The simulated dataset with the default contrasts plus ``modalities`` (the pair configs name them all)."""
    generate_phantom_dataset(data, cases=section.cases, seed=section.seed, size=section.size, slices=section.slices,
                             modalities=sorted({*DEFAULT_MODALITIES, *modalities}))
    return {"folder": str(data), "cases_per_modality": section.cases}


