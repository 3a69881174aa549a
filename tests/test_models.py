"""Model configs, parameter counts, text-encoder loaders and the pipeline-folder layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer

from mrgen.models import (CONTROLNET, SCHEDULER, UNET, VAE, ModelFolderError, PromptEmbeddings, TextEncoderError,
                          TextEncoderSpec, build_empty, build_from_config, controlnet_from_unet, count_parameters,
                          load_pipeline_components, load_text_encoder, model_config, noise_scheduler, scheduler_config,
                          vae_scale_factor, write_text_encoder)
from mrgen.models.builders import load_pretrained
from mrgen.models.text_encoders import RELEASED_ENCODER_DIR, RELEASED_TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "ckpt"
TINY = REPO / "ckpt" / "tiny"

# Stock SD-1.x UNet (4 in/out channels, cross-attention 768): 859,520,964 parameters. MRGen's has 16 in/out
# channels: conv_in gains 12*320*3*3 weights, conv_out 12*320*3*3 weights and 12 biases.
SD1_UNET_PARAMS = 859_520_964
MRGEN_UNET_PARAMS = SD1_UNET_PARAMS + 2 * 12 * 320 * 9 + 12


def test_paper_configs_have_the_originals_values() -> None:
    vae = model_config(PAPER, VAE)
    assert (vae["in_channels"], vae["latent_channels"], vae["block_out_channels"]) == (1, 16, [128, 256, 512, 512])
    assert vae["scaling_factor"] == 0.18215 and vae_scale_factor(vae) == 8
    unet = model_config(PAPER, UNET)
    assert (unet["in_channels"], unet["out_channels"], unet["cross_attention_dim"]) == (16, 16, 768)
    assert unet["attention_head_dim"] == 8 and unet["sample_size"] == 64
    controlnet = model_config(PAPER, CONTROLNET)
    assert controlnet["conditioning_channels"] == 1
    assert controlnet["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    scheduler = noise_scheduler(scheduler_config(PAPER))
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)


def test_paper_size_parameter_counts() -> None:
    vae = build_empty(PAPER, VAE)
    assert 83e6 < count_parameters(vae) < 85e6  # the released vae is a 335 MB fp32 safetensors file
    unet = build_empty(PAPER, UNET)
    assert count_parameters(unet) == MRGEN_UNET_PARAMS
    with init_empty_weights():
        stock = UNet2DConditionModel.from_config({**unet.config, "in_channels": 4, "out_channels": 4})
    assert count_parameters(stock) == SD1_UNET_PARAMS
    controlnet = build_empty(PAPER, CONTROLNET)
    # the ControlNet copies the UNet's encoder half: conv_in, time embedding, down blocks and mid block
    encoder_half = sum(p.numel() for name, p in unet.named_parameters()
                       if re.match(r"(conv_in|time_embedding|down_blocks|mid_block)\.", name))
    extra = count_parameters(controlnet) - encoder_half
    embedding = sum(p.numel() for n, p in controlnet.named_parameters() if n.startswith("controlnet_cond_embedding"))
    zero_convs = sum(p.numel() for n, p in controlnet.named_parameters()
                     if n.startswith(("controlnet_down_blocks", "controlnet_mid_block")))
    assert extra == embedding + zero_convs
    assert count_parameters(controlnet) == 361_313_392


def test_tiny_models_fit_together() -> None:
    vae = build_from_config(TINY, VAE)
    unet = build_from_config(TINY, UNET)
    image = torch.randn(2, 1, 64, 64)
    latents = vae.encode(image).latent_dist.sample()
    assert latents.shape == (2, 4, 16, 16)
    assert vae_scale_factor(model_config(TINY, VAE)) == 4
    context = torch.randn(2, 77, 384)
    out = unet(latents, torch.tensor([1, 500]), context).sample
    assert out.shape == latents.shape
    embedding = tuple(model_config(TINY, CONTROLNET)["conditioning_embedding_out_channels"])
    controlnet = controlnet_from_unet(unet, 1, embedding)
    down, mid = controlnet(latents, torch.tensor([1, 500]), context, controlnet_cond=torch.randn(2, 1, 64, 64),
                           return_dict=False)
    assert mid.shape[0] == 2 and len(down) == len(unet.down_blocks) * (unet.config.layers_per_block + 1)
    assert count_parameters(vae) < 300_000 and count_parameters(unet) < 2_000_000


def test_missing_model_folder_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"unet/config.json"):
        build_from_config(tmp_path, UNET)
    with pytest.raises(ModelFolderError, match="does not exist"):
        build_from_config(tmp_path / "nowhere", VAE)


def test_damaged_or_diverged_weights_are_refused_with_the_folder(tmp_path: Path) -> None:
    vae = build_from_config(TINY, VAE)
    vae.save_pretrained(tmp_path / "good" / VAE)
    assert load_pretrained(tmp_path / "good", VAE) is not None
    weights = tmp_path / "good" / VAE / "diffusion_pytorch_model.safetensors"
    (tmp_path / "cut" / VAE).mkdir(parents=True)
    (tmp_path / "cut" / VAE / "config.json").write_bytes((tmp_path / "good" / VAE / "config.json").read_bytes())
    (tmp_path / "cut" / VAE / weights.name).write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match=r"cut/vae: the weights cannot be read .*truncated or damaged"):
        load_pretrained(tmp_path / "cut", VAE)
    with torch.no_grad():
        next(vae.parameters()).view(-1)[0] = float("nan")
    vae.save_pretrained(tmp_path / "nan" / VAE)
    with pytest.raises(ModelFolderError, match=r"nan/vae: 1 weight tensor\(s\) hold NaN or infinity"):
        load_pretrained(tmp_path / "nan", VAE)


def _tiny_bert() -> tuple[BertModel, BertConfig]:
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False).eval(), config


def _write_tokenizer(folder: Path) -> BertTokenizer:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "t1", "t2", "abdomen", "mri", "liver", "spleen", ","]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _released_name(key: str) -> str:
    """Stock BertModel key -> the released CLIP-port key (the inverse of the loader's renaming)."""
    rules = [
        (r"^embeddings\.word_embeddings\.", "embeddings.token_embedding."),
        (r"^embeddings\.position_embeddings\.", "embeddings.position_embedding."),
        (r"^embeddings\.token_type_embeddings\.", "embeddings.token_type_embedding."),
        (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.layer_norm1."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
        (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.layer_norm2."),
    ]
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return "text_model." + new
    raise AssertionError(key)


def _reference_context(bert: BertModel, tokenizer: BertTokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return bert(input_ids=ids).last_hidden_state


def make_released_text_encoder(root: Path) -> tuple[BertModel, BertTokenizer]:
    """A tiny random BERT saved the way the released text_encoder_BiomedCLIP/ stores its weights."""
    bert, config = _tiny_bert()
    state = {_released_name(k): v.contiguous() for k, v in bert.state_dict().items()
             if k not in ("embeddings.position_ids", "embeddings.token_type_ids")}
    state["vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3, 2, 2)
    state["text_projection.fc1.weight"] = torch.zeros(8, 32)
    (root / RELEASED_ENCODER_DIR).mkdir(parents=True)
    save_file(state, str(root / RELEASED_ENCODER_DIR / "model.safetensors"))
    text_config = {k: getattr(config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                   "num_attention_heads", "intermediate_size", "hidden_act",
                                                   "max_position_embeddings", "type_vocab_size", "layer_norm_eps")}
    (root / RELEASED_ENCODER_DIR / "config.json").write_text(json.dumps(
        {"model_type": "clip", "projection_dim": 8, "text_config": text_config, "vision_config": {}}))
    return bert, _write_tokenizer(root / RELEASED_TOKENIZER_DIR)


def test_released_biomedclip_layout_maps_onto_a_stock_bert(tmp_path: Path) -> None:
    bert, tokenizer = make_released_text_encoder(tmp_path)
    prompts = ["T1 abdomen MRI, liver, spleen", ""]
    expected = _reference_context(bert, tokenizer, prompts)
    for path in (tmp_path, tmp_path / RELEASED_ENCODER_DIR):
        encoder = load_text_encoder("biomedclip", path)
        context = encoder.encode(prompts)
        assert context.shape == (2, 77, 32) and encoder.width == 32
        torch.testing.assert_close(context, expected, rtol=0, atol=1e-6)


def test_released_layout_config_written_by_save_pretrained_loads(tmp_path: Path) -> None:
    """save_pretrained leaves out fields equal to the config class's defaults (num_hidden_layers 12 for BERT-base):
    the sizes come from the weights; a stated size that disagrees with them is an error."""
    bert, tokenizer = make_released_text_encoder(tmp_path)
    config_path = tmp_path / RELEASED_ENCODER_DIR / "config.json"
    config = json.loads(config_path.read_text())
    for field in ("num_hidden_layers", "intermediate_size", "max_position_embeddings", "type_vocab_size"):
        del config["text_config"][field]
    config_path.write_text(json.dumps(config))
    encoder = load_text_encoder("biomedclip", tmp_path)
    torch.testing.assert_close(encoder.encode(["t1 mri, liver"]), _reference_context(bert, tokenizer, ["t1 mri, liver"]),
                               rtol=0, atol=1e-6)
    config["text_config"]["num_hidden_layers"] = 12
    config_path.write_text(json.dumps(config))
    with pytest.raises(TextEncoderError, match="disagrees with the weights.*num_hidden_layers"):
        load_text_encoder("biomedclip", tmp_path)


def test_open_clip_biomedclip_layout_takes_the_inner_bert(tmp_path: Path) -> None:
    bert, _ = _tiny_bert()
    state = {f"text.transformer.{k}": v for k, v in bert.state_dict().items()}
    state["text.transformer.pooler.dense.weight"] = torch.zeros(32, 32)
    state["text.proj.0.weight"] = torch.zeros(16, 32)
    state["visual.trunk.cls_token"] = torch.zeros(1, 1, 8)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"}}}))
    tokenizer = _write_tokenizer(tmp_path)
    # the tiny BERT has 2 heads of 16; open_clip folders store no head count and BERT-base heads are 64 wide,
    # so the loader would infer 1 head here: compare against a 1-head BERT with the same weights
    one_head = BertModel(BertConfig(**{**bert.config.to_dict(), "num_attention_heads": 1}), add_pooling_layer=False)
    one_head.load_state_dict(bert.state_dict())
    expected = _reference_context(one_head.eval(), tokenizer, ["t2 mri, liver"])
    encoder = load_text_encoder("biomedclip", tmp_path)
    torch.testing.assert_close(encoder.encode(["t2 mri, liver"]), expected, rtol=0, atol=1e-6)


def test_missing_or_malformed_biomedclip_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderError, match=r"text_encoder_BiomedCLIP/config.json.*does not exist"):
        load_text_encoder("biomedclip", tmp_path / "absent")
    with pytest.raises(TextEncoderError, match="needs text_encoder_path"):
        load_text_encoder("biomedclip", None)
    (tmp_path / RELEASED_ENCODER_DIR).mkdir()
    (tmp_path / RELEASED_ENCODER_DIR / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(TextEncoderError, match="no weights file; expected one of model.safetensors"):
        load_text_encoder("biomedclip", tmp_path)
    save_file({"text_model.x": torch.zeros(1)}, str(tmp_path / RELEASED_ENCODER_DIR / "model.safetensors"))
    with pytest.raises(TextEncoderError, match="tokenizer_BiomedCLIP: no BERT tokenizer"):
        load_text_encoder("biomedclip", tmp_path)
    _write_tokenizer(tmp_path / RELEASED_TOKENIZER_DIR)
    with pytest.raises(TextEncoderError, match="text_config"):
        load_text_encoder("biomedclip", tmp_path)
    with pytest.raises(TextEncoderError, match="unknown text encoder"):
        load_text_encoder("clip-l", None)


def test_minilm_gives_a_77_token_context_and_the_cache_reuses_it() -> None:
    encoder = load_text_encoder("minilm")
    assert encoder.width == 384
    prompts = ["T2 SPIR Abdomen MRI, liver", "", "T2 SPIR Abdomen MRI, liver"]
    direct = encoder.encode(prompts)
    assert direct.shape == (3, 77, 384)
    table = PromptEmbeddings.encode(encoder, prompts)
    assert len(table.index) == 2
    torch.testing.assert_close(table(prompts), direct, rtol=0, atol=1e-5)
    with pytest.raises(KeyError, match="not in the precomputed vocabulary"):
        table(["unseen prompt"])


def test_pipeline_folder_round_trip(tmp_path: Path) -> None:
    vae, unet = build_from_config(TINY, VAE), build_from_config(TINY, UNET)
    vae.save_pretrained(tmp_path / VAE)
    unet.save_pretrained(tmp_path / UNET)
    noise_scheduler(scheduler_config(TINY)).save_pretrained(tmp_path / SCHEDULER)
    write_text_encoder(tmp_path, TextEncoderSpec("minilm"))
    parts = load_pipeline_components(tmp_path)
    assert parts.controlnet is None and parts.text_encoder.width == 384
    assert parts.scheduler_config["beta_schedule"] == "scaled_linear"
    torch.testing.assert_close(parts.unet.conv_in.weight, unet.conv_in.weight)


def test_released_layout_pipeline_folder_uses_biomedclip(tmp_path: Path) -> None:
    make_released_text_encoder(tmp_path / "released")
    build_from_config(TINY, VAE).save_pretrained(tmp_path / "released" / VAE)
    unet_config = {**model_config(TINY, UNET), "cross_attention_dim": 32}
    type(build_empty(TINY, UNET)).from_config(unet_config).save_pretrained(tmp_path / "released" / UNET)
    parts = load_pipeline_components(tmp_path / "released")
    assert parts.text_encoder.kind == "biomedclip" and parts.text_encoder.width == 32
    out = tmp_path / "copy"
    write_text_encoder(out, TextEncoderSpec("biomedclip", tmp_path / "released"))
    assert (out / RELEASED_ENCODER_DIR / "model.safetensors").is_file()
    assert json.loads((out / "text_encoder.json").read_text()) == {"kind": "biomedclip", "path": "."}
