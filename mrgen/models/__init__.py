"""Model builders (diffusers configs and folders), text encoders, and the pipeline-folder layout."""

from mrgen.models.builders import (CONTROLNET, SCHEDULER, UNET, VAE, ModelFolderError, build_empty,
                                   build_from_config, component_dir, controlnet_from_unet, count_parameters,
                                   load_pretrained, model_config, noise_scheduler, sampling_scheduler,
                                   scheduler_config, vae_scale_factor)
from mrgen.models.pipeline_folder import (PipelineComponents, TextEncoderSpec, load_pipeline_components,
                                          text_encoder_spec, write_text_encoder)
from mrgen.models.text_encoders import (MAX_TOKENS, PromptEmbeddings, TextEncoder, TextEncoderError,
                                        load_text_encoder)

__all__ = [
    "CONTROLNET", "SCHEDULER", "UNET", "VAE", "MAX_TOKENS", "ModelFolderError", "PipelineComponents",
    "PromptEmbeddings", "TextEncoder", "TextEncoderError", "TextEncoderSpec", "build_empty", "build_from_config",
    "component_dir", "controlnet_from_unet", "count_parameters", "load_pipeline_components", "load_pretrained",
    "load_text_encoder", "model_config", "noise_scheduler", "sampling_scheduler", "scheduler_config",
    "text_encoder_spec", "vae_scale_factor", "write_text_encoder",
]
