"""The one prompt builder, used by every training stage and by synthesis.

The original's template (reference 4.2 and 4.5) is the non-empty items of
``[modality key, modality attributes, region, organs-or-label]`` joined with ", ", where a list of organ
names is itself joined with ", ". The empty prompt "" is the classifier-free-guidance null prompt.
"""

from __future__ import annotations

from typing import Sequence

from mrgen.data.modalities import ModalityRegistry

EMPTY_PROMPT = ""


def join_organs(organs: str | Sequence[str] | None) -> str:
    if organs is None:
        return ""
    if isinstance(organs, str):
        return organs.strip()
    return ", ".join(o.strip() for o in organs if o and o.strip())


def build_prompt(
    registry: ModalityRegistry,
    modality: str,
    region: str | None = None,
    organs: str | Sequence[str] | None = None,
) -> str:
    """``"<modality>, <attributes>, <region>, <organ>, <organ>..."``; unknown modality keys are an error."""
    items = [modality.strip(), registry.attributes(modality), (region or "").strip(), join_organs(organs)]
    return ", ".join(item for item in items if item)


def radiopaedia_modality_key(image_modality: str | None, aux_modality: str | None = None) -> str:
    """The original's stage-1 key: CT -> "Abdomen CT"; MRI -> "<aux> Abdomen MRI" (stripped)."""
    image_modality = (image_modality or "").strip()
    if image_modality.upper() == "CT":
        return f"Abdomen {image_modality}".strip()
    return " ".join([(aux_modality or "").strip(), "Abdomen", image_modality]).strip()
