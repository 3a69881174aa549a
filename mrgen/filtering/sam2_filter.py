"""The SAM2 quality filter (``--filter sam2``), as in the original but with its defects fixed.

- SAM2 sees the true generated image as uint8 RGB (the original multiplied a uint8 image by 255 and
  let it wrap around, so SAM2 saw a corrupted, largely inverted picture).
- The image embedding is computed once per image, not once per organ.
- The prompt is a box (the mask's bounding box, optionally jittered by up to ``box_jitter`` of the image
  size per coordinate, the paper's "oracle box") or the mask itself given as proper logits
  (+/- ``mask_logit``) at SAM2's 256x256 low-resolution input (the original passed 0/255 values).
- Confidence is SAM2's predicted IoU of the best of its three masks; IoU is that mask against the
  condition mask.

The checkpoint must be supplied by the user (nothing is downloaded).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from mrgen.filtering.base import FilterScores, iou, present

log = logging.getLogger(__name__)

DEFAULT_SAM2_CONFIG = "configs/sam2/sam2_hiera_l.yaml"          # SAM2 v1 Hiera-L, as the original
DEFAULT_SAM2_CHECKPOINT = "checkpoints/sam2_hiera_large.pt"
CHECKPOINT_URLS = {
    "sam2_hiera_large.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt",
    "sam2.1_hiera_large.pt": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
}
PROMPTS = ("box", "mask")


class MissingCheckpointError(FileNotFoundError):
    pass


def _missing_checkpoint_message(path: Path) -> str:
    url = CHECKPOINT_URLS.get(path.name, "https://github.com/facebookresearch/sam2#download-checkpoints")
    return (f"SAM2 checkpoint {path} does not exist. Download {path.name} from {url} on a machine with "
            f"internet access, put it at {path} (or pass --sam2_checkpoint PATH), or use --filter offline, "
            f"which needs no weights.")


@dataclass
class Sam2Filter:
    config: str = DEFAULT_SAM2_CONFIG
    checkpoint: str | os.PathLike | None = DEFAULT_SAM2_CHECKPOINT
    prompt: str = "box"
    box_jitter: float = 0.0          # the original's helper jittered by up to 0.08 of the image size
    mask_logit: float = 10.0
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    random_weights: bool = False     # tests only: build the architecture without a checkpoint
    seed: int = 0
    name: str = "sam2"
    _predictor: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise ValueError(f"SAM2 prompt must be one of {PROMPTS}, got {self.prompt!r}")
        if not self.random_weights:
            if self.checkpoint is None or not Path(self.checkpoint).is_file():
                raise MissingCheckpointError(_missing_checkpoint_message(Path(self.checkpoint or DEFAULT_SAM2_CHECKPOINT)))
        self._rng = np.random.default_rng(self.seed)

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            from sam2.build_sam import build_sam2
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            checkpoint = None if self.random_weights else str(self.checkpoint)
            model = build_sam2(self.config, ckpt_path=checkpoint, device=self.device)
            self._predictor = SAM2ImagePredictor(model)
        return self._predictor

    def score(self, image: np.ndarray, masks: Sequence[np.ndarray | None]) -> FilterScores:
        ious, confidences = [], []
        rgb = np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=2)
        with torch.inference_mode():
            embedded = False
            for mask in masks:
                if not present(mask):
                    ious.append(0.0)
                    confidences.append(0.0)
                    continue
                if not embedded:
                    self.predictor.set_image(rgb)
                    embedded = True
                predicted, scores, _ = self.predictor.predict(**self._prompt(np.asarray(mask, bool)), multimask_output=True)
                best = int(np.argmax(scores))
                ious.append(iou(predicted[best] > 0, mask))
                confidences.append(float(scores[best]))
        return FilterScores(ious, confidences)

    def _prompt(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        if self.prompt == "mask":
            low_res = Image.fromarray(mask.astype(np.uint8) * 255).resize((256, 256), Image.NEAREST)
            logits = np.where(np.asarray(low_res) > 127, self.mask_logit, -self.mask_logit).astype(np.float32)
            return {"mask_input": logits[None]}
        rows, cols = np.nonzero(mask)
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float32)
        if self.box_jitter > 0:
            h, w = mask.shape
            box += self._rng.uniform(-1, 1, 4) * self.box_jitter * np.array([w, h, w, h])
            box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        return {"box": box}
