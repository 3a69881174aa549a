"""Generation metrics: reconstruction metrics, VAE evaluation, FID with local weights, CLIP-I/CLIP-T with a
local open_clip model. Real weights are not available offline, so the networks here are seeded random ones."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mrgen.evaluation.clip_score import ClipItem, ClipModelMissing, clip_scores, items_from_results_json, load_clip
from mrgen.evaluation.fid import FID_WEIGHTS_NAME, InceptionWeightsMissing, fid_between_folders
from mrgen.evaluation.image_metrics import global_window, reconstruction_metrics, ssim
from mrgen.evaluation.vae_eval import VaeEvalOptions, evaluate_vae_folder
from mrgen.io.images import write_gray

REPO = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int, seed: int, size: int = 32, noise: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        blob = 200.0 * (((yy - size / 2 - i) ** 2 + (xx - size / 3) ** 2) < (size / 4) ** 2)
        image = blob + 30 + rng.normal(0, 5 + noise, (size, size))
        write_gray(folder / f"img_{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
    return folder


def test_reconstruction_metrics_known_values():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (32, 32))
    same = reconstruction_metrics(a, a)
    assert (same.l1, same.mse, same.ssim) == (0.0, 0.0, 1.0) and math.isinf(same.psnr)
    shifted = reconstruction_metrics(a, np.clip(a + 0.1, -1, 1))
    assert shifted.mse <= 0.01 + 1e-12 and shifted.psnr >= 10 * math.log10(4 / 0.01) - 1e-9
    assert global_window((512, 512)) == 511 and global_window((31, 40)) == 31
    noisy = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    assert ssim(a, noisy, "global") > ssim(a, noisy, 7)  # the near-global window flatters
    with pytest.raises(ValueError, match="odd"):
        ssim(a, a, 8)


def _conditional_index(folder: Path, n: int = 4) -> Path:
    _images(folder / "images", n, seed=1)
    entries = [{"image_path": f"images/img_{i:02d}.png", "modality": "T2 SPIR Abdomen MRI",
                "modality_attributes": "fat low signal, muscle low signal, water high signal, fat dark, water bright",
                "region": "Upper Abdominal Region", "label": ["liver"], "organs": [], "shape": [32, 32],
                "dataset": "Test", "patient_id": f"p{i}"} for i in range(n)]
    path = folder / "index.json"
    path.write_text(json.dumps(entries))
    return path


def test_vae_evaluation_mode_is_deterministic(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=2, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(tmp_path / "vae")
    index = _conditional_index(tmp_path / "data")
    options = VaeEvalOptions(size=32, batch_size=3, split="all")
    first = evaluate_vae_folder(tmp_path / "vae", [index], tmp_path / "vae_results.json", options)
    second = evaluate_vae_folder(tmp_path / "vae", [index], None, options)
    assert first.images == 4 and first.means == second.means
    assert 0 < first.means["l1"] <= 2 and first.means["ssim"] < 1
    saved = json.loads((tmp_path / "vae_results.json").read_text())
    assert saved["means"] == first.means and len(saved["per_image"]) == 4
    sampled = evaluate_vae_folder(tmp_path / "vae", [index], None, VaeEvalOptions(size=32, split="all", posterior="sample"))
    assert sampled.means != first.means
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate_vae_folder(tmp_path / "data", [index], None, options)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """A seeded random state dict with the FID Inception's keys (torchvision's Inception has the same ones)."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    path = tmp_path_factory.mktemp("weights") / FID_WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path


def test_fid_is_zero_against_itself_and_grows_with_perturbation(tmp_path, inception_weights, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError(f"FID tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    hub = torch.hub.get_dir()
    real = _images(tmp_path / "real", 8, seed=0)
    slightly = _images(tmp_path / "slightly", 8, seed=0, noise=10)
    very = _images(tmp_path / "very", 8, seed=0, noise=60)
    same = fid_between_folders(real, real, inception_weights, dims=64).fid
    small = fid_between_folders(real, slightly, inception_weights, dims=64).fid
    large = fid_between_folders(real, very, inception_weights, dims=64).fid
    assert abs(same) < 1e-3 and same < small < large
    assert torch.hub.get_dir() == hub  # the temporary hub directory is gone again
    pickled = tmp_path / FID_WEIGHTS_NAME
    torch.save({"layer": torch.zeros(1), "made": datetime.date(2015, 12, 5)}, pickled)  # not a plain state dict
    with pytest.raises(ValueError, match="not a plain state dict of tensors"):
        fid_between_folders(real, real, pickled, dims=64)


def test_fid_names_the_missing_weights_file(tmp_path, monkeypatch):
    real = _images(tmp_path / "real", 2, seed=0)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(InceptionWeightsMissing, match=f"torch_home/hub/checkpoints/{FID_WEIGHTS_NAME}"):
        fid_between_folders(real, real, None, dims=64)
    with pytest.raises(InceptionWeightsMissing, match="elsewhere.pth"):
        fid_between_folders(real, real, tmp_path / "elsewhere.pth", dims=64)


TINY_CLIP = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 256, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A local-dir open_clip model: config + seeded random weights (BiomedCLIP's layout, tiny towers)."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP["model_cfg"])
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_clip_scores_with_a_local_model(tmp_path, clip_dir):
    images = _images(tmp_path / "gen", 3, seed=0)
    others = _images(tmp_path / "orig", 3, seed=5, noise=40)
    clip = load_clip(clip_dir)
    assert clip.tokenizer(["a prompt"]).shape == (1, 256)
    same = clip_scores(clip, [ClipItem(p, p, "T2 SPIR Abdomen MRI, liver") for p in sorted(images.glob("*.png"))])
    assert same.clip_i == pytest.approx(1.0, abs=1e-5) and -1.0 <= same.clip_t <= 1.0
    pairs = [ClipItem(g, o) for g, o in zip(sorted(images.glob("*.png")), sorted(others.glob("*.png")))]
    assert clip_scores(clip, pairs).clip_i < 1.0 and clip_scores(clip, pairs).clip_t is None

    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_path": "gen/img_00.png", "original_path": "orig/img_00.png",
                                    "prompt": ["T2 SPIR Abdomen MRI"]}]))
    items = items_from_results_json(results)
    assert items[0].prompt == "T2 SPIR Abdomen MRI" and items[0].original == tmp_path / "orig/img_00.png"
    by_config = load_clip(config=clip_dir / "open_clip_config.json", weights=clip_dir / "open_clip_pytorch_model.bin")
    assert clip_scores(by_config, items).clip_t == pytest.approx(clip_scores(clip, items).clip_t, abs=1e-6)


def test_clip_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ClipModelMissing, match="does not exist"):
        load_clip(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipModelMissing, match="no weights file"):
        load_clip(f"local-dir:{tmp_path / 'empty'}")
    config = dict(TINY_CLIP, model_cfg=dict(TINY_CLIP["model_cfg"], text_cfg={"hf_model_name": "org/not-cached"}))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "open_clip_config.json").write_text(json.dumps(config))
    (tmp_path / "hf" / "open_clip_model.bin").write_bytes(b"")
    with pytest.raises(ClipModelMissing, match="'org/not-cached' needs its config.json offline"):
        load_clip(tmp_path / "hf")


def test_text_to_image_generation_for_test_prompts(phantom, pipeline, tmp_path):
    from mrgen.evaluation.generation import generate_test_images

    out = tmp_path / "fid"
    summary = generate_test_images(pipeline, [phantom / "image_text_test.json"], out, steps=2, max_images=3, batch_size=2)
    generated = sorted((out / "generated").glob("*.png"))
    assert summary["images"] == 3 and len(generated) == 3 and len(list((out / "real").glob("*.png"))) == 3
    records = json.loads((out / "generated.json").read_text())
    assert records[0]["prompt"].startswith(("T1 in-phase Abdomen MRI, ", "T1 out-of-phase Abdomen MRI, ", "T2 SPIR Abdomen MRI, "))
    assert ", Upper Abdominal Region" in records[0]["prompt"] and Path(records[0]["original_path"]).is_file()
    before = [p.stat().st_mtime_ns for p in generated]
    generate_test_images(pipeline, [phantom / "image_text_test.json"], out, steps=2, max_images=3, batch_size=2)
    assert [p.stat().st_mtime_ns for p in generated] == before  # finished samples are not redone
