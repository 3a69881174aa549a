"""Organ-word attention (mrgen.models.organ_attention), with tiny random-weight models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mrgen.models.builders import UNET, load_pretrained
from mrgen.models.organ_attention import OrganAttention, cross_attention_layers, organ_token_matrix
from mrgen.models.text_encoders import load_text_encoder

ORGANS = ["liver", "right kidney", "left kidney", "spleen", "kidney"]
PROMPT = "T2 SPIR Abdomen MRI, abdomen, liver, right kidney, left kidney, spleen, kidney"


@pytest.fixture(scope="module")
def tokenizer():
    return load_text_encoder("minilm").tokenizer


def _words(tokenizer, row: torch.Tensor) -> str:
    ids = tokenizer(PROMPT, padding="max_length", max_length=row.shape[-1], truncation=True)["input_ids"]
    return tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(i) for i, on in zip(ids, row) if on])


def test_each_organ_claims_exactly_its_own_words(tokenizer) -> None:
    matrix = organ_token_matrix(tokenizer, [PROMPT, None], ORGANS, 77)
    assert [_words(tokenizer, matrix[0, o]) for o in range(len(ORGANS))] == \
        ["liver", "right kidney", "left kidney", "spleen", "kidney"]
    assert matrix[0, 4].sum() == 1  # "kidney" alone: its last mention, not inside "left kidney"
    assert matrix[1].sum() == 0  # a dropped prompt is not biased
    assert organ_token_matrix(tokenizer, ["T1 MRI, abdomen, liver"], ORGANS, 77)[0, 1:].sum() == 0  # not named


def _attention(pipeline: Path, tokenizer, weight: float):
    unet = load_pretrained(pipeline, UNET).eval()
    return unet, OrganAttention(unet, tokenizer, ORGANS[:4], weight)


def _call(unet, masks: np.ndarray | None, attention=None) -> torch.Tensor:
    torch.manual_seed(0)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        if attention is None:
            return unet(latents, 500, encoder_hidden_states=context).sample
        with attention.conditioned([PROMPT, PROMPT], masks):
            return unet(latents, 500, encoder_hidden_states=context).sample


def test_zero_weight_or_no_masks_is_the_stock_unet_and_the_bias_changes_it(pipeline: Path, tokenizer) -> None:
    stock = load_pretrained(pipeline, UNET).eval()
    masks = np.zeros((2, 4, 32, 32), bool)
    masks[:, 0, :16, :16] = True
    expected = _call(stock, None)
    unet, attention = _attention(pipeline, tokenizer, 0.0)
    with attention:
        torch.testing.assert_close(_call(unet, masks, attention), expected, rtol=1e-4, atol=1e-5)
    unet, attention = _attention(pipeline, tokenizer, 10.0)
    with attention:
        torch.testing.assert_close(_call(unet, None), expected, rtol=1e-4, atol=1e-5)  # outside conditioned(): plain
        assert (_call(unet, masks, attention) - expected).abs().max() > 1e-3


def test_leaving_the_with_block_gives_the_unet_back_its_own_processors(pipeline: Path, tokenizer) -> None:
    unet, attention = _attention(pipeline, tokenizer, 10.0)
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    hooks = len(unet._forward_pre_hooks)
    with attention:
        assert {type(p).__name__ for n, p in unet.attn_processors.items() if "attn2" in n} == {"OrganBiasedAttnProcessor"}
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    assert len(unet._forward_pre_hooks) == hooks


def test_bias_is_plus_inside_minus_outside_and_only_on_the_conditional_half(pipeline: Path, tokenizer) -> None:
    unet, attention = _attention(pipeline, tokenizer, 2.0)
    masks = np.zeros((1, 4, 32, 32), bool)
    masks[0, 0, :16, :16] = True  # liver: the top-left quarter; spleen and kidneys absent
    liver, spleen = (organ_token_matrix(tokenizer, [PROMPT], ORGANS[:4], 77)[0, o].bool() for o in (0, 3))
    with attention:
        captured = {}
        processor = unet.attn_processors[cross_attention_layers(unet)[0]]
        original = processor._bias

        def spy(batch, queries, dtype):
            captured["bias"] = original(batch, queries, dtype)
            return captured["bias"]
        processor._bias = spy
        with attention.conditioned([PROMPT], masks), torch.no_grad():
            context = torch.randn(2, 77, unet.config.cross_attention_dim)
            unet(torch.randn(2, 4, 8, 8), 250, encoder_hidden_states=context)
    bias = captured["bias"]  # (2, queries, tokens): [unconditional, conditional]
    side = int(bias.shape[1] ** 0.5)
    grid = bias[1].view(side, side, -1)
    assert bias[0].abs().sum() == 0
    ramp = 2.0 * 250 / 1000
    assert torch.all(grid[: side // 2, : side // 2][..., liver] == ramp)
    assert torch.all(grid[side // 2:, :][..., liver] == -ramp)
    assert torch.all(grid[..., spleen] == -ramp)  # named in the prompt, absent from the slice: nowhere
    assert grid[..., 0].abs().sum() == 0  # [CLS] and every non-organ word are untouched
