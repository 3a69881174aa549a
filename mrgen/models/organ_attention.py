"""Organ-word attention: the prompt's organ words attend where their masks are.

It renders the target-look self-samples the self-trained ControlNet learns from (docs/mask_following.md). In every
cross-attention layer of the UNet, the logits of an organ's prompt tokens get ``+ w * t / T`` at the latent pixels
inside that organ's mask and ``- w * t / T`` outside it; an organ the prompt names but the slice lacks gets ``-``
everywhere. ``w`` is one fixed number (``self_training.organ_weight``); the ``t / T`` ramp makes the bias strong while
the layout is decided and fade as the details are drawn. Unlike a ControlNet, which learns the mask from the source
modality's slices and carries their look with it, the bias only steers where the organ words act, so the target
prompt keeps the target look. The UNet is used as trained: retraining its cross-attention on its own biased samples
was tried and distorted the bodies (docs/mask_following.md).

Use::

    with OrganAttention(unet, tokenizer, organs, weight) as attention:  # swaps the cross-attention processors
        with attention.conditioned(prompts, organ_masks):                # (B, organs, H, W) bool
            unet(latents, t, encoder_hidden_states=...)
                                                                         # leaving: the UNet's processors are back

A batch twice the size of ``prompts`` is read as ``[unconditional, conditional]`` (classifier-free guidance,
``mrgen.models.sampling.denoise``): only the conditional half is biased.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from transformers import PreTrainedTokenizerBase

from mrgen.models.text_encoders import MAX_TOKENS

CROSS_ATTENTION_SUFFIX = "attn2.processor"
INSIDE_FRACTION = 0.5  # a latent pixel is inside an organ when more than this fraction of it is


def stack_organ_masks(masks: Sequence[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """Per-organ (H, W) masks, ``None`` for an organ the slice lacks -> (organs, H, W) bool."""
    return np.stack([np.zeros(tuple(shape), bool) if m is None else np.asarray(m, bool) for m in masks])


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    return [name for name in unet.attn_processors if name.endswith(CROSS_ATTENTION_SUFFIX)]


def organ_token_matrix(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | None], organs: Sequence[str],
                       max_tokens: int) -> torch.Tensor:
    """(B, organs, tokens): 1 where a token belongs to that organ's name in the prompt (its last mention).

    Longer names claim their characters first, so "kidney" never matches inside "left kidney". A ``None`` or
    empty prompt, or an organ the prompt does not name, gives a zero row.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("organ attention needs a fast tokenizer (character offsets per token)")
    matrix = torch.zeros(len(prompts), len(organs), max_tokens)
    for b, prompt in enumerate(prompts):
        if not prompt:
            continue
        offsets = tokenizer(prompt, return_offsets_mapping=True, truncation=True,
                            max_length=max_tokens)["offset_mapping"]
        for o, (start, end) in _organ_spans(prompt, organs).items():
            for j, (token_start, token_end) in enumerate(offsets):
                if token_end > token_start and token_start < end and token_end > start:
                    matrix[b, o, j] = 1.0
    return matrix


def _organ_spans(prompt: str, organs: Sequence[str]) -> dict[int, tuple[int, int]]:
    claimed = np.zeros(len(prompt), dtype=bool)
    spans = {}
    for o in sorted(range(len(organs)), key=lambda i: -len(organs[i])):
        name, at = organs[o], len(prompt)
        while (at := prompt.rfind(organs[o], 0, at)) >= 0:
            if not claimed[at:at + len(name)].any():
                claimed[at:at + len(name)] = True
                spans[o] = (at, at + len(name))
                break
    return spans


class _BiasState:
    """What the processors read during one UNet call: masks, token matrix and timesteps of the batch."""

    def __init__(self) -> None:
        self.masks: torch.Tensor | None = None    # (B, organs, H, W) float
        self.tokens: torch.Tensor | None = None   # (B, organs, tokens)
        self.ramp: torch.Tensor | None = None     # (B_unet,) t / T
        self._cache: dict[int, torch.Tensor] = {}

    def clear(self) -> None:
        self.masks = self.tokens = self.ramp = None
        self._cache = {}

    def bias(self, queries: int) -> torch.Tensor:
        """(B, queries, tokens) in {-1, 0, 1} at this layer's square latent grid."""
        if queries not in self._cache:
            side = math.isqrt(queries)
            if side * side != queries:
                raise ValueError(f"organ attention needs square latents; got {queries} query positions")
            present = self.masks.flatten(2).amax(-1) > 0  # (B, organs)
            inside = F.adaptive_avg_pool2d(self.masks, side).flatten(2) > INSIDE_FRACTION
            sign = torch.where(inside & present[..., None], 1.0, -1.0)  # (B, organs, queries)
            self._cache[queries] = torch.einsum("boq,boj->bqj", sign, self.tokens)
        return self._cache[queries]


class OrganBiasedAttnProcessor:
    """Cross-attention with the organ bias added to the logits (plain attention when nothing is conditioned)."""

    def __init__(self, weight: float, state: _BiasState):
        self.weight, self.state = weight, state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if attention_mask is not None:
            raise ValueError("organ attention does not take an encoder attention mask (the prompts are padded)")
        residual = hidden_states
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        batch, queries, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        query, key, value = (x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
        logits = query @ key.transpose(-1, -2) * attn.scale  # (B, heads, queries, tokens)
        if self.state.masks is not None and encoder_hidden_states is not None:
            logits = logits + self._bias(batch, queries, logits.dtype)[:, None]
        out = (logits.softmax(-1) @ value).transpose(1, 2).reshape(batch, queries, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _bias(self, batch: int, queries: int, dtype: torch.dtype) -> torch.Tensor:
        bias = self.state.bias(queries).to(dtype)
        if len(bias) != batch:  # [unconditional, conditional]: the unconditional half is not biased
            bias = torch.cat([torch.zeros_like(bias), bias])
        return self.weight * self.state.ramp.to(dtype).view(-1, 1, 1) * bias


class OrganAttention:
    """The organ-word bias attached to one UNet while the ``with`` block lasts (its cross-attention processors are
    replaced, and restored on leaving)."""

    def __init__(self, unet: UNet2DConditionModel, tokenizer: PreTrainedTokenizerBase, organs: Sequence[str],
                 weight: float, num_train_timesteps: int = 1000, max_tokens: int = MAX_TOKENS):
        self.unet, self.tokenizer, self.weight = unet, tokenizer, float(weight)
        self.organs, self.max_tokens = list(organs), max_tokens
        self.num_train_timesteps = num_train_timesteps
        self.state = _BiasState()
        self._restore: dict | None = None
        self._hook = None

    def __enter__(self) -> "OrganAttention":
        self._restore = dict(self.unet.attn_processors)
        processors = dict(self._restore)
        for name in cross_attention_layers(self.unet):
            processors[name] = OrganBiasedAttnProcessor(self.weight, self.state)
        self.unet.set_attn_processor(processors)
        self._hook = self.unet.register_forward_pre_hook(self._read_timesteps, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        self.unet.set_attn_processor(self._restore)
        self.state.clear()

    def _read_timesteps(self, module, args, kwargs):
        if self.state.masks is None:
            return
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device)
        self.state.ramp = timestep.expand(sample.shape[0]) / self.num_train_timesteps

    @contextlib.contextmanager
    def conditioned(self, prompts: Sequence[str | None], organ_masks: torch.Tensor | np.ndarray) -> Iterator[None]:
        """Bias the UNet calls inside by ``organ_masks`` (B, organs, H, W), B = len(prompts); ``None`` prompts
        (dropped for classifier-free guidance) are not biased."""
        masks = organ_masks if torch.is_tensor(organ_masks) else torch.from_numpy(np.array(organ_masks, dtype=bool))
        if masks.ndim != 4 or masks.shape[:2] != (len(prompts), len(self.organs)):
            raise ValueError(f"organ masks must be (batch {len(prompts)}, organs {len(self.organs)}, H, W); "
                             f"got {tuple(masks.shape)}")
        device = self.unet.device
        self.state.masks = masks.to(device, torch.float32)
        self.state.tokens = organ_token_matrix(self.tokenizer, prompts, self.organs, self.max_tokens).to(device)
        try:
            yield
        finally:
            self.state.clear()

