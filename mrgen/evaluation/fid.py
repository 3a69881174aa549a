"""FID between two image folders through pytorch-fid, with the Inception weights read from a local file.

pytorch-fid fetches ``pt_inception-2015-12-05-6726825d.pth`` through ``torch.hub.load_state_dict_from_url``, which
downloads only when the file is not already in the hub directory's ``checkpoints/``. So the file is taken from
``--inception_weights PATH`` or, failing that, ``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``
(where pytorch-fid itself caches it), and a given PATH is offered to torch.hub through a temporary hub directory
that links to it (``$TORCH_HOME``): nothing is patched and nothing is downloaded. The hub loads the file
without ``weights_only``, so it is first loaded with ``torch.load(weights_only=True)``: a file that holds anything but
tensors is refused before the hub unpickles it. Features are pytorch-fid's defaults otherwise: images
converted to RGB, resized to 299, the pool3 block (2048-d) unless ``dims`` picks an earlier one
(64, 192, 768: for quick checks, not comparable with published FID).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class InceptionWeightsMissing(FileNotFoundError):
    """The FID Inception weights are not on disk."""


@dataclass(frozen=True)
class FidResult:
    fid: float
    real_images: int
    generated_images: int
    dims: int


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def resolve_weights(path: str | Path | None) -> Path:
    candidate = Path(path) if path is not None else default_weights_path()
    if not candidate.is_file():
        raise InceptionWeightsMissing(
            f"FID Inception weights not found at {candidate}. Download {FID_WEIGHTS_NAME} from the pytorch-fid "
            f"releases on a machine with network access and pass it with --inception_weights, or place it at "
            f"{default_weights_path()} ($TORCH_HOME/hub/checkpoints)"
        )
    return candidate


@contextlib.contextmanager
def hub_holding(weights_path: Path) -> Iterator[None]:
    """torch.hub's directory pointed at one whose ``checkpoints/`` holds ``weights_path`` under the name pytorch-fid
    asks for (left alone when the file already lies in the current one), and restored afterwards: through
    ``$TORCH_HOME``, or ``torch.hub.set_dir`` when a directory was set that way before."""
    previous = torch.hub.get_dir()
    if weights_path.resolve() == (Path(previous) / "checkpoints" / FID_WEIGHTS_NAME).resolve():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="mrgen_fid_torch_home_") as home:
        link = Path(home) / "hub" / "checkpoints" / FID_WEIGHTS_NAME
        link.parent.mkdir(parents=True)
        try:
            os.symlink(weights_path.resolve(), link)
        except OSError:  # no symlinks on this file system
            shutil.copyfile(weights_path, link)
        saved_home = os.environ.get("TORCH_HOME")
        os.environ["TORCH_HOME"] = home
        set_explicitly = torch.hub.get_dir() != str(Path(home) / "hub")
        if set_explicitly:
            torch.hub.set_dir(str(Path(home) / "hub"))
        try:
            yield
        finally:
            if set_explicitly:
                torch.hub.set_dir(previous)
            if saved_home is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = saved_home


def build_inception(weights: str | Path | None, dims: int = 2048, device: str = "cpu") -> torch.nn.Module:
    """pytorch-fid's FID Inception with its state dict read from a local file (no network)."""
    from pytorch_fid import inception

    if dims not in inception.InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims must be one of {sorted(inception.InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
    weights_path = resolve_weights(weights)
    try:
        torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or others for files it will not load
        raise ValueError(f"{weights_path}: not a plain state dict of tensors ({err}); use the pytorch-fid release "
                         f"file {FID_WEIGHTS_NAME}") from err
    with hub_holding(weights_path):
        model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    return model.to(device).eval()


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ValueError(f"{folder}: {len(files)} image(s); FID needs at least 2 per set (and many more to mean much)")
    return files


def activation_statistics(files: list[Path], model: torch.nn.Module, dims: int, batch_size: int,
                          device: str) -> tuple[np.ndarray, np.ndarray]:
    from pytorch_fid.fid_score import calculate_activation_statistics

    return calculate_activation_statistics([str(f) for f in files], model, min(batch_size, len(files)), dims,
                                           device, num_workers=0)


def fid_between_folders(real_dir: str | Path, generated_dir: str | Path, weights: str | Path | None = None,
                        dims: int = 2048, batch_size: int = 16, device: str = "cpu") -> FidResult:
    from pytorch_fid.fid_score import calculate_frechet_distance

    real, generated = list_images(real_dir), list_images(generated_dir)
    model = build_inception(weights, dims, device)
    mu_r, sigma_r = activation_statistics(real, model, dims, batch_size, device)
    mu_g, sigma_g = activation_statistics(generated, model, dims, batch_size, device)
    value = float(calculate_frechet_distance(mu_r, sigma_r, mu_g, sigma_g))
    log.info("FID %.4f between %s (%d images) and %s (%d images), %d-d features", value, real_dir, len(real),
             generated_dir, len(generated), dims)
    return FidResult(value, len(real), len(generated), dims)

