"""Lesson 2's checks (lessons/02_memory_bound.ipynb): the bytes one decoding step reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from minispec.config import GemmaConfig, _default_layer_types
from minispec.exercises.judging import (
    Case,
    judge,
    name_of,
    number_reader,
    report,
    same_number,
)

FLOAT32 = 4  # bytes


def config_cases() -> list[tuple[str, GemmaConfig]]:
    """Gemma 3 270M, a Gemma 3 1B-shaped config and a made-up one with 2 KV heads."""
    one_b = GemmaConfig(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        layer_types=_default_layer_types(26),
    )
    other = GemmaConfig(
        vocab_size=32_000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        sliding_window=128,
        # Not Gemma's every-6th pattern: a check must catch `(i + 1) % 6` written in by hand.
        layer_types=["sliding_attention", "full_attention", "sliding_attention"] * 2,
    )
    return [
        ("Gemma 3 270M", GemmaConfig()),
        ("a Gemma 3 1B shape", one_b),
        ("a made-up config", other),
    ]


def weight_parts(c: GemmaConfig) -> dict[str, int]:
    """Weight bytes of one forward pass, by part (float32); the tied head counted once."""
    d, ff, n_layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    q_width, kv_width = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return {
        "head": FLOAT32 * c.vocab_size * d,
        "attention": FLOAT32 * n_layers * (2 * q_width * d + 2 * kv_width * d),
        "mlp": FLOAT32 * n_layers * 3 * ff * d,
        "norms": FLOAT32 * (n_layers * (4 * d + 2 * c.head_dim) + d),
    }


def kv_bytes_read(c: GemmaConfig, context: int, heads: int | None = None) -> int:
    """Keys and values one decoding step reads: context + 1 positions, a window on sliding layers.

    heads: key/value heads per layer (default the config's; the mistake uses the query heads).
    """
    heads = c.num_key_value_heads if heads is None else heads
    seen = [
        min(context + 1, c.sliding_window) if c.is_sliding(i) else context + 1
        for i in range(c.num_hidden_layers)
    ]
    return FLOAT32 * 2 * heads * c.head_dim * sum(seen)


def show_bytes(case: Case, got: float) -> str:
    return f"{case.name}: {got:,.0f} bytes, expected {case.want:,.0f} ({got - case.want:+,.0f})"


def check_weight_bytes(fn: Callable) -> None:
    """fn(config) = bytes of float32 weights one decoding step reads (every matrix once)."""
    report(fn, grade_weight_bytes)


def weight_bytes_answers(c: GemmaConfig) -> tuple[int, dict[str, float]]:
    """The weight bytes of config c, and what each common mistake gives instead."""
    parts = weight_parts(c)
    want = sum(parts.values())
    n_layers, d, hd = c.num_hidden_layers, c.hidden_size, c.head_dim
    q_width, extra_kv_heads = (
        c.num_attention_heads * hd,
        c.num_attention_heads - c.num_key_value_heads,
    )
    mistakes = {
        "the output head: logits = h @ embed.T reads the whole (vocab, d_model) embedding "
        "every step (the lookup at the input reads one row)": want - parts["head"],
        "the head is tied to the embedding: the same (vocab, d_model) matrix, read once": (
            want + parts["head"]
        ),
        "bytes, not numbers: a float32 is 4 bytes": want / FLOAT32,
        "k_proj and v_proj have num_key_value_heads * head_dim rows (grouped-query "
        "attention shares each key/value head)": want
        + FLOAT32 * n_layers * 2 * extra_kv_heads * hd * d,
        "the gated MLP has three matrices (gate, up, down), each d_model x d_ff": (
            want - FLOAT32 * n_layers * c.intermediate_size * d
        ),
        "q_proj is (num_attention_heads * head_dim, d_model): Gemma's heads are wider than "
        "d_model / num_attention_heads": want - FLOAT32 * n_layers * 2 * (q_width - d) * d,
    }
    return want, mistakes


def grade_weight_bytes(fn: Callable) -> str:
    # The norm vectors are 0.02 % of the bytes: forgetting them is fine.
    cases = [
        Case(name, (c,), *weight_bytes_answers(c), slack=weight_parts(c)["norms"])
        for name, c in config_cases()
    ]
    judge(fn, cases, number_reader(fn), same_number, show_bytes)
    return f"{name_of(fn)} gives every config's weight bytes (the tied head counted once)"


def check_bytes_per_token(fn: Callable) -> None:
    """fn(config, context) = bytes one decoding step reads after `context` cached positions."""
    report(fn, grade_bytes_per_token)


def grade_bytes_per_token(fn: Callable) -> str:
    cases = []
    for name, c in config_cases():
        weights, weight_mistakes = weight_bytes_answers(c)
        slack = weight_parts(c)["norms"]  # forgetting the norm vectors is fine
        no_window = replace(c, sliding_window=10**9)
        all_windowed = replace(c, layer_types=["sliding_attention"] * c.num_hidden_layers)
        gemma_pattern = replace(c, layer_types=_default_layer_types(c.num_hidden_layers))
        for context in (100, 1000, 20_000):
            kv = kv_bytes_read(c, context)
            mistakes = {
                "the KV cache: each step reads every cached key and value it attends over": weights,
                "values too: the cache holds a key and a value per position": weights + kv / 2,
                "sliding layers (5 of every 6 in Gemma 3) read at most sliding_window positions": (
                    weights + kv_bytes_read(no_window, context)
                ),
                "the global layers (every 6th) read the whole context, not a window": (
                    weights + kv_bytes_read(all_windowed, context)
                ),
                "keys and values have num_key_value_heads heads, not num_attention_heads "
                "(grouped-query attention)": weights
                + kv_bytes_read(c, context, heads=c.num_attention_heads),
                "the step attends over context + 1 positions: the new token's own key and value "
                "are read too": weights + kv_bytes_read(c, context - 1),
                "ask config.is_sliding(i) which layers slide: not every model puts a global "
                "layer every 6th": weights + kv_bytes_read(gemma_pattern, context),
            }
            for hint, wrong_weights in weight_mistakes.items():
                mistakes[
                    f"the weights are off, the KV reads right (check_weight_bytes): {hint}"
                ] = wrong_weights + kv
            name_here = f"{name} after {context:,} cached positions"
            cases.append(Case(name_here, (c, context), weights + kv, mistakes, slack=slack))

    judge(fn, cases, number_reader(fn), same_number, show_bytes)
    return f"{name_of(fn)} adds up weights and KV cache reads on {len(cases)} cases"
