"""YAML training configs as typed dataclasses.

- Sections map to nested dataclasses; every option has a safe default except the few a run cannot do
  without (the dataset), which are errors when missing.
- Unknown keys are errors naming the key and the file, with the closest known key as a hint.
- ``base: <path>`` (relative to the file naming it) inherits another config; the file's own keys win,
  section by section. Chains are allowed, cycles are errors.
- Command-line overrides: ``section.key=value`` or ``key=value``. A bare ``key`` is a top-level key, or
  the one section key of that name. Values are read as YAML and converted to the field's type
  (``train.learning_rate=1e-4``, ``data.organs=[liver,spleen]``, ``train.checkpoints_total_limit=null``).
- Paths in configs resolve against the working directory, as in the original's configs.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from mrgen.data.datasets import PairConfig

T = TypeVar("T")
BASE_KEY = "base"
COMMAND_LINE = "the command line"
# The original's per-pair scripts (train_controlnet_CHAOS.py, synthesize_CHAOS_filter_multi.py) had this pair built in;
# ours take it as --config and default to it. Relative to the repository root, as the original's paths were.
ORIGINAL_PAIR_CONFIG = "training_configs/controlnet/CHAOS-MRI_T1_to_CHAOS-MRI_T2.yml"
_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and where it came from."""


# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------

@dataclass
class TrainSection:
    """Optimisation, checkpointing and runtime settings shared by the three stages."""

    train_batch_size: int = 1  # per process; effective batch = this x processes x gradient_accumulation_steps
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 1000  # optimizer steps (not micro-batches)
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"  # any diffusers get_scheduler name: constant, linear, cosine, ...
    lr_warmup_steps: int = 0  # optimizer steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit on CUDA; otherwise a warning and torch AdamW
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    allow_tf32: bool = False
    use_ema: bool = False  # the original has no EMA
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # diffusers EMAModel warm-up (decay ramps up as 1 - (1 + step)^-2/3)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None  # keep this many newest checkpoints; null keeps all
    validation_steps: int = 500
    dataloader_num_workers: int = 0
    num_threads: int = 0  # torch CPU threads per process; 0 = the cores shared among the machine's processes
    log_every_steps: int = 1  # tensorboard scalars

    def __post_init__(self) -> None:
        at_least(self, 1, "train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                 "validation_steps", "log_every_steps")
        at_least(self, 0, "lr_warmup_steps", "dataloader_num_workers", "num_threads", "max_grad_norm")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie between 0 and 1, got {self.ema_decay}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be at least 1 or null (keep all), got "
                             f"{self.checkpoints_total_limit}")


def at_least(section: Any, minimum: float, *names: str) -> None:
    """Refuse a count or step setting below ``minimum`` (a negative step count used to train nothing, silently)."""
    for name in names:
        value = getattr(section, name)
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")


@dataclass
class VAETrainSection(TrainSection):
    kld_weight: float = 1e-4  # times the KL averaged over latent elements (the original's loss)
    estimate_scaling_factor: bool = False  # at export, set scaling_factor = 1 / std of the latents


@dataclass
class DiffusionTrainSection(TrainSection):
    prompt_dropout: float = 0.1  # probability of the empty prompt (classifier-free guidance)
    timestep_sampling: Literal["uniform", "cubic"] = "uniform"  # cubic: t = (1 - u^3) T, more high-noise steps
    cache_latents: bool = False  # encode each image once (posterior mean and std), sample from it every step
    latent_cache_dir: str | None = None  # default: <output_dir>/latent_cache


@dataclass
class ValidationSection:
    num_images: int = 4  # VAE: reconstructions; UNet: prompts; ControlNet: masks
    num_inference_steps: int = 50  # DDIM, as the original
    guidance_scale: float = 7.0
    prompts: list[str] = field(default_factory=list)  # UNet: explicit prompts; empty = taken from the test split
    conditioning_scale: float = 1.0  # ControlNet residual scale
    control_conditional_only: bool = False  # ControlNet on the conditional CFG branch only (mrgen.models.sampling)
    # ControlNet: this many training source masks sampled with the target prompt and scored against their own and
    # against shuffled masks (mrgen.filtering.mask_following; held-out masks: scripts/measure_mask_following.py); 0: off
    mask_following_images: int = 16
    # ControlNet, monitoring only (never trained on): annotated target-modality indexes (paths as in data:) whose
    # real slices, scored the same way, draw the ceiling and the target's contrast polarity in validation_curve.png
    target_reference_indexes: list[str] = field(default_factory=list)


@dataclass
class ImageTextData:
    """Image-text indexes (the original's Radiopaedia JSON, or our conditional indexes)."""

    index_paths: list[str] = field(default_factory=list)
    test_index_paths: list[str] = field(default_factory=list)  # if given: validation data; else a patient split
    test_fraction: float = 0.01
    split_seed: int = 0
    augment: bool = False  # the original's flips/rotation; VAE stage only


@dataclass
class VAEModelSection:
    config_path: str = "ckpt"  # folder with vae/config.json
    init_from: str | None = None  # a trained VAE folder to fine-tune; null = random init from config_path
    resolution: int | None = None  # image size; null = the VAE config's sample_size


@dataclass
class DiffusionModelSection:
    config_path: str = "ckpt"  # folder with unet/, controlnet/ and scheduler/ configs
    # required: the pipeline folder with the frozen models (UNet stage: vae/; ControlNet stage: vae/, unet/)
    pretrained_model_path: str | None = None
    init_from: str | None = None  # trained weights to start the trained model from; null = new
    text_encoder: Literal["minilm", "biomedclip"] = "minilm"
    text_encoder_path: str | None = None  # biomedclip only
    resolution: int | None = None  # image size; null = the VAE config's sample_size
    attention: Literal["sdpa", "xformers"] = "sdpa"
    # UNet stage: overrides the scheduler config's prediction type (the original: epsilon). v_prediction weights
    # the high-noise steps, where layout is decided, far more (a deviation; the ControlNet inherits it)
    prediction_type: Literal["epsilon", "v_prediction"] | None = None


@dataclass
class StageConfig:
    name: str = "mrgen"
    output_dir: str = "runs/mrgen"
    seed: int = 6666
    modality_attributes: str | None = None  # a registry file merged over the project's own


@dataclass
class VAEConfig(StageConfig):
    model: VAEModelSection = field(default_factory=VAEModelSection)
    data: ImageTextData = field(default_factory=ImageTextData)
    train: VAETrainSection = field(default_factory=VAETrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)


@dataclass
class UNetConfig(StageConfig):
    model: DiffusionModelSection = field(default_factory=DiffusionModelSection)
    data: ImageTextData = field(default_factory=ImageTextData)
    train: DiffusionTrainSection = field(default_factory=DiffusionTrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)


@dataclass
class SelfTrainingSection:
    """Target-modality pairs for the ControlNet stage (ours, docs/mask_following.md): training source masks rendered
    with the target prompt by the stage's own UNet under organ-word attention (mrgen.models.organ_attention), each
    organ segmented by the offline filter's segmenter; the kept ones join the training pairs with the segmented organ
    regions as their masks (mrgen.training.self_samples). Off unless ``enabled``."""

    enabled: bool = False
    organ_weight: float = 10.0  # w: the organ-word attention bias (x t / T) on every cross-attention layer
    self_samples: int = 800  # training source masks rendered in the target modality
    sampling_steps: int = 20  # DPM-Solver++ steps
    guidance_scale: float = 6.0
    sampling_batch: int = 8
    min_organ_iou: float = 0.4  # kept when every present organ's segmented region reaches this IoU with its mask
    share: float = 0.5  # self-sample items per real training item in an epoch (the kept ones, cycled)


@dataclass
class ControlNetConfig(StageConfig):
    model: DiffusionModelSection = field(default_factory=DiffusionModelSection)
    data: PairConfig | None = None  # required: the source/target pair
    train: DiffusionTrainSection = field(default_factory=DiffusionTrainSection)
    validation: ValidationSection = field(default_factory=lambda: ValidationSection(guidance_scale=6.0))
    self_training: SelfTrainingSection = field(default_factory=SelfTrainingSection)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def load_config(path: str | os.PathLike, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (with its ``base`` chain), apply ``overrides`` and return a ``schema`` instance."""
    path = Path(path)
    merged: dict[str, Any] = {}
    for source, raw in _base_chain(path):
        check_keys(raw, schema, str(source))
        merged = _deep_merge(merged, raw)
    for override in overrides:
        update = parse_override(override, schema)
        check_keys(update, schema, COMMAND_LINE)
        merged = _deep_merge(merged, update)
    return build(schema, merged, str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return raw


def _base_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """[(file, keys)] from the root base to ``path``, each without its ``base`` key."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            raise ConfigError(f"{path}: 'base' chain loops back to {current}")
        seen.add(resolved)
        raw = _read_yaml(current)
        base = raw.pop(BASE_KEY, None)
        chain.append((current, raw))
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"{current}: 'base' must be a path string, got {base!r}")
        current = (current.parent / base) if base else None
    return chain[::-1]


def _deep_merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass inside ``hint`` (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def check_keys(raw: Mapping[str, Any], schema: type, source: str, prefix: str = "") -> None:
    """Every key of ``raw`` must be a field of ``schema`` (recursively into sections)."""
    hints = _hints(schema)
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            known = ", ".join(hints)
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint} (known keys here: {known})")
        section = _dataclass_of(hints[key])
        if section is not None and isinstance(value, Mapping):
            check_keys(value, section, source, f"{dotted}.")


def parse_override(text: str, schema: type) -> dict[str, Any]:
    """``a.b=value`` -> ``{"a": {"b": value}}``; a bare key may name a unique section key."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} on {COMMAND_LINE}: expected key=value or section.key=value")
    key, _, value_text = text.partition("=")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from err
    parts = key.strip().split(".")
    if len(parts) == 1:
        parts = _locate_bare_key(parts[0], schema)
    update: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        update = {part: update}
    return update


def _locate_bare_key(key: str, schema: type) -> list[str]:
    hints = _hints(schema)
    if key in hints:
        return [key]
    owners = [name for name, hint in hints.items() if (sec := _dataclass_of(hint)) and key in _hints(sec)]
    if len(owners) == 1:
        return [owners[0], key]
    if owners:
        raise ConfigError(f"override '{key}' on {COMMAND_LINE} is ambiguous: write one of "
                          + ", ".join(f"{o}.{key}" for o in owners))
    return [key]  # check_keys reports it as unknown


def build(schema: type[T], raw: Mapping[str, Any], source: str, prefix: str = "") -> T:
    """Instantiate ``schema`` from a mapping, converting every value to its field's type."""
    hints = _hints(schema)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.name in raw:
            kwargs[f.name] = convert(raw[f.name], hints[f.name], f"{prefix}{f.name}", source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{f.name}'")
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: section '{prefix.rstrip('.') or '<top>'}': {err}") from err


def convert(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as ``hint`` (int, float, bool, str, Literal, list[...], X | None, dataclass)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], key, source) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a section (a mapping), got {value!r}")
        return build(hint, value, source, f"{key}.")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            value = next((a for a in args if a in _YAML_BOOL_WORDS[value]), value)
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, Sequence, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return [convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is bool:
        return _to_bool(value, key, source)
    if hint in (int, float):
        return _to_number(value, hint, key, source)
    if hint is str:
        if isinstance(value, (Mapping, list)) or value is None:
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _to_bool(value: Any, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")


def _to_number(value: Any, kind: type, key: str, source: str) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value  # YAML 1.1 reads 1e-5 as a string
        if kind is int:
            if float(number) != int(float(number)):
                raise ValueError
            return int(float(number))
        return float(number)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: '{key}' must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for ``config.yaml`` beside a run, and tracker hyper-parameters)."""
    return dataclasses.asdict(config)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> one level with dotted keys (``train.learning_rate``); other values as they are."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
