"""The end-to-end run's config (``training_configs/pipeline/demo.yml``), read like every other config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mrgen.nnunet.plans import LEAN_PLANS, PLANS


@dataclass
class DatasetSection:
    cases: int = 8
    size: int = 64
    slices: int = 24
    seed: int = 0


@dataclass
class ModelsSection:
    """Start from the model zoo (``train: false``) or train every model from scratch (``train: true``).

    ``conditioning`` is how the mask reaches the UNet: a ControlNet (the original), or a ControlNet also trained on
    the UNet's own target-modality samples under organ-word attention (``self_training`` in the ControlNet config;
    docs/mask_following.md). ``pair_config`` is the ControlNet pair config; its ``data_root`` is pointed at this
    run's dataset. The ``*_overrides`` are ``key=value`` overrides for the training configs when training.
    """

    train: bool = False
    conditioning: Literal["controlnet", "self_trained_controlnet"] = "controlnet"
    zoo: str = "zoo/phantom"
    controlnet: str = "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR"
    self_trained_controlnet: str = "zoo/phantom/controlnet_self_trained_T1-InPhase_to_T2-SPIR"
    pair_config: str = "training_configs/controlnet/phantom_T1_to_T2-SPIR.yml"
    vae_config: str = "training_configs/demo/train_vae_phantom.yml"
    unet_config: str = "training_configs/demo/train_unet_phantom.yml"
    vae_overrides: list[str] = field(default_factory=list)
    unet_overrides: list[str] = field(default_factory=list)
    controlnet_overrides: list[str] = field(default_factory=list)


@dataclass
class SynthesisSection:
    """The run's synthesis settings; each key is the ``synthesize_filter_multi.py`` flag of the same name."""

    max_masks: int | None = 32  # spread evenly over the source masks; null: all
    max_tries_per_mask: int = 4
    num_images_per_prompt: int = 4
    sample_per_mask: int = 2
    scheduler: str = "dpm-solver++"
    steps: int = 20
    guidance_scale: float = 6.0
    controlnet_scale: float = 1.0
    control_conditional_only: bool = True  # the zoo follows masks far better with it (docs/mask_following.md)
    filter: str = "offline"
    early_stop: bool = True
    iou_threshold: float = 0.70
    confidence_threshold: float = 0.80
    avg_iou_threshold: float = 0.80
    avg_confidence_threshold: float = 0.90
    selection: str = "original"


@dataclass
class SegmentationSection:
    epochs: int = 10
    iterations: int = 25
    val_iterations: int = 5
    batch_size: int = 0  # slices per nnU-Net batch; 0: the plan's (5 % of the dataset at most)
    dataset_id: int = 601
    plans: str = LEAN_PLANS  # nnU-Net's own (nnUNetPlans) or the CPU-lean network (mrgen.nnunet.plans)

    def __post_init__(self) -> None:
        if self.plans not in PLANS:
            raise ValueError(f"segmentation.plans must be one of {list(PLANS)}, got {self.plans!r}")


@dataclass
class PipelineConfig:
    out: str = "demo_output"
    seed: int = 0
    source: str = "T1-InPhase"
    target: str = "T2-SPIR"
    dataset: DatasetSection = field(default_factory=DatasetSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    synthesis: SynthesisSection = field(default_factory=SynthesisSection)
    segmentation: SegmentationSection = field(default_factory=SegmentationSection)
