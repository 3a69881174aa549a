"""YAML -> typed config: sections, base inheritance, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mrgen.config import (ConfigError, ControlNetConfig, UNetConfig, VAEConfig, dump_yaml,
                          load_config)
from mrgen.pipeline.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training_configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_type_conversion(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "a.yml", "train:\n  learning_rate: 1e-5\n  mixed_precision: no\n"), UNetConfig)
    assert cfg.train.learning_rate == 1e-5 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.mixed_precision == "no"
    assert cfg.train.max_grad_norm == 1.0 and cfg.train.use_ema is False and cfg.train.timestep_sampling == "uniform"


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yml", "train:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: unknown key 'train\.learning_rat'; did you mean 'train\.learning_rate'"):
        load_config(path, VAEConfig)
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_config(write(tmp_path / "top.yml", "colour: red\n"), VAEConfig)


def test_overrides_with_sections_bare_keys_and_types(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yml", "train:\n  max_train_steps: 100\n")
    cfg = load_config(path, UNetConfig, ["train.max_train_steps=5", "learning_rate=3e-4", "seed=1",
                                         "train.checkpoints_total_limit=null", "use_ema=true",
                                         "validation.prompts=[a, b]"])
    assert cfg.train.max_train_steps == 5 and cfg.train.learning_rate == 3e-4 and cfg.seed == 1
    assert cfg.train.checkpoints_total_limit is None and cfg.train.use_ema is True
    assert cfg.validation.prompts == ["a", "b"]
    with pytest.raises(ConfigError, match="the command line: unknown key 'train.nope'"):
        load_config(path, UNetConfig, ["train.nope=1"])
    with pytest.raises(ConfigError, match="'train.max_train_steps' must be an integer"):
        load_config(path, UNetConfig, ["train.max_train_steps=ten"])
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(path, UNetConfig, ["train.timestep_sampling=normal"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, UNetConfig, ["train.max_train_steps"])


def test_base_chain_merges_section_by_section(tmp_path: Path) -> None:
    (tmp_path / "pairs").mkdir()
    write(tmp_path / "base.yml", "name: base\ntrain:\n  learning_rate: 1e-5\n  train_batch_size: 32\n")
    pair = write(tmp_path / "pairs" / "p.yml",
                 "base: ../base.yml\ntrain:\n  train_batch_size: 4\ndata:\n  name: p\n  source_indexes: [a.json]\n"
                 "  target_indexes: [b.json]\n  target_modality: T2 SPIR Abdomen MRI\n  organs: [liver]\n"
                 "  organ_weights: [1.0]\n")
    cfg = load_config(pair, ControlNetConfig)
    assert (cfg.name, cfg.train.learning_rate, cfg.train.train_batch_size) == ("base", 1e-5, 4)
    assert cfg.data.organs == ["liver"] and cfg.data.target_modality == "T2 SPIR Abdomen MRI"
    assert cfg.validation.guidance_scale == 6.0
    write(tmp_path / "loop.yml", "base: loop.yml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yml", VAEConfig)


def test_pair_section_validation_errors_are_reported_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yml", "data:\n  name: p\n  source_indexes: [a.json]\n  target_indexes: []\n"
                                     "  target_modality: x\n  organs: [liver, spleen]\n  organ_weights: [0.3]\n")
    with pytest.raises(ConfigError, match=r"p\.yml: section 'data': .*organ_weights"):
        load_config(path, ControlNetConfig)
    with pytest.raises(ConfigError, match="missing required key 'data.organs'"):
        load_config(write(tmp_path / "q.yml", "data:\n  name: q\n  source_indexes: []\n  target_indexes: []\n"
                                              "  target_modality: x\n"), ControlNetConfig)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path: Path) -> None:
    if path.parent.name == "pipeline":  # end-to-end run configs (scripts/run_pipeline.py)
        assert "out:" in dump_yaml(load_config(path, PipelineConfig))
        return
    schema = VAEConfig if "vae" in path.name else UNetConfig if "unet" in path.name else ControlNetConfig
    cfg = load_config(path, schema)
    assert "output_dir" in dump_yaml(cfg)


@pytest.mark.parametrize("override, message", [
    ("train.max_train_steps=-5", "max_train_steps must be at least 1, got -5"),
    ("train.checkpointing_steps=0", "checkpointing_steps must be at least 1, got 0"),
    ("train.train_batch_size=0", "train_batch_size must be at least 1"),
    ("train.learning_rate=0", "learning_rate must be positive"),
    ("train.ema_decay=1.5", "ema_decay must lie between 0 and 1"),
    ("train.checkpoints_total_limit=0", "checkpoints_total_limit must be at least 1 or null"),
    ("segmentation.plans=nnUNetPlans_Big", "segmentation.plans must be one of"),
])
def test_out_of_range_settings_are_refused_with_the_file(tmp_path: Path, override: str, message: str) -> None:
    schema, path = (PipelineConfig, REPO / "training_configs/pipeline/demo.yml") if override.startswith("segmentation") \
        else (UNetConfig, REPO / "training_configs/train_unet_config.yml")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, schema, [override])
    assert str(path) in str(info.value)
