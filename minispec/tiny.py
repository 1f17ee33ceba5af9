"""A tiny Gemma 3 with random weights: the same architecture at toy sizes.

Tests, the app's test mode and the lessons use it: it runs in milliseconds and needs no weights
file. Its tokenizer is bytes only (ids 4..259 are the 256 byte values), so any text encodes.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, processors

from minispec.checkpoint import expected_shapes
from minispec.config import GemmaConfig
from minispec.model import Model, params_from_state_dict

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma


def tiny_config(**overrides: object) -> GemmaConfig:
    """Toy sizes, real structure: GQA, QK-norm, two RoPE bases, a sliding window, a global layer."""
    n_layers = int(overrides.pop("num_hidden_layers", 6))  # type: ignore[arg-type]
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    base = dict(
        vocab_size=len(SPECIALS) + 256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        sliding_window=8,
        query_pre_attn_scalar=16.0,
        layer_types=[pattern[i % 6] for i in range(n_layers)],
    )
    base.update(overrides)
    return GemmaConfig(**base)  # type: ignore[arg-type]


def random_state_dict(
    config: GemmaConfig, seed: int = 0, scale: float = 0.5
) -> dict[str, np.ndarray]:
    """Random tensors for every checkpoint name; norms around 0 as Gemma stores them."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(config).items():
        if len(shape) == 1:
            tensors[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = shape[1]
            tensors[name] = (scale * rng.standard_normal(shape) / np.sqrt(fan_in)).astype(
                np.float32
            )
    return tensors


def byte_tokenizer() -> Tokenizer:
    """Gemma's special ids, then one token per byte (SentencePiece's byte fallback, alone)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"<0x{b:02X}>": len(SPECIALS) + b for b in range(256)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 2)]
    )
    return tok


def tiny_model(seed: int = 0, weights: str = "float32", **overrides: object) -> Model:
    config = tiny_config(**overrides)
    params = params_from_state_dict(config, random_state_dict(config, seed), weights)
    return Model(config, params, byte_tokenizer(), name=f"tiny-{seed}", weights=weights)
