"""The modality registry: modality key -> attribute text, as in the original's ``modality_attributes.json``.

Prompts are built from this registry in training and synthesis alike, so the two cannot drift apart.
The project ships the seven keys the original's conditional dataset uses (which also cover every
contrast the simulated dataset renders); a user can point to the original's full 305-key file instead,
or merge it with ours. Every file is validated the same way: a JSON object of non-empty ASCII strings.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DEFAULT_REGISTRY_PATH = Path(__file__).resolve().parents[2] / "modality_attributes.json"

# Short names used on command lines and in file names (the original's --modality values) -> registry keys
MODALITY_ALIASES = {
    "T1-InPhase": "T1 in-phase Abdomen MRI",
    "T1-OutPhase": "T1 out-of-phase Abdomen MRI",
    "T1-OutofPhase": "T1 out-of-phase Abdomen MRI",
    "T2-SPIR": "T2 SPIR Abdomen MRI",
    "T1": "T1 Abdomen MRI",
    "T2": "T2 Abdomen MRI",
    "ADC": "ADC Abdomen MRI",
    "CT": "Abdomen CT",
}


def modality_key(name: str) -> str:
    """A registry key given either the key itself or one of the short names above."""
    return MODALITY_ALIASES.get(name, name)


def modality_short_name(key: str) -> str:
    """The first short name of a registry key, or the key with spaces turned into underscores."""
    for alias, target in MODALITY_ALIASES.items():
        if target == key:
            return alias
    return key.replace(" ", "_")


class RegistryError(ValueError):
    """A modality registry file is malformed."""


class UnknownModalityError(RegistryError):
    """A modality key is not in the registry."""


@dataclass(frozen=True)
class ModalityRegistry:
    attributes_by_key: Mapping[str, str]
    source: str

    def __contains__(self, key: object) -> bool:
        return key in self.attributes_by_key

    def attributes(self, key: str) -> str:
        try:
            return self.attributes_by_key[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(self.attributes_by_key), n=3)
            hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownModalityError(
                f"modality {key!r} is not in the registry {self.source}.{hint} "
                f"Add it to that file or pass a registry that has it (modality_attributes=...)."
            ) from None

    def keys(self) -> list[str]:
        return list(self.attributes_by_key)


def _validate(raw: object, source: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        raise RegistryError(f"{source}: expected a non-empty JSON object mapping modality key -> attribute text")
    for key, value in raw.items():
        if not isinstance(value, str) or not value.strip():
            raise RegistryError(f"{source}: key {key!r}: attribute text must be a non-empty string, got {value!r}")
        for what, text in (("key", key), ("value", value)):
            bad = [c for c in text if ord(c) > 127]
            if bad:
                raise RegistryError(
                    f"{source}: key {key!r}: {what} contains non-ASCII character(s) {''.join(bad)!r} "
                    f"(the original's out-of-phase prompt had such a stray character); replace it with ASCII text"
                )
    return dict(raw)


def load_registry(path: str | os.PathLike | None = None, merge_with_default: bool = False) -> ModalityRegistry:
    """Load and validate a registry; ``None`` gives the project's own file.

    With ``merge_with_default`` the user's file extends ours (its values win on shared keys).
    """
    path = Path(path) if path is not None else DEFAULT_REGISTRY_PATH
    if not path.is_file():
        raise RegistryError(
            f"modality registry {path} does not exist; pass the path of a modality_attributes.json "
            f"(the project's own sits at the repository root)"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegistryError(f"{path}: not valid UTF-8 JSON: {err}") from err
    attributes = _validate(raw, str(path))
    if merge_with_default and path != DEFAULT_REGISTRY_PATH:
        merged = dict(load_registry().attributes_by_key)
        merged.update(attributes)
        return ModalityRegistry(merged, f"{DEFAULT_REGISTRY_PATH} + {path}")
    return ModalityRegistry(attributes, str(path))
