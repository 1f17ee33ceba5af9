"""Lesson 1's checks (lessons/01_forward_pass.ipynb): RMSNorm and RoPE."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minispec.exercises.judging import (
    Case,
    array_reader,
    judge,
    largest_difference,
    name_of,
    report,
    same_array,
)
from minispec.model import rms_norm, rope


def check_rms_norm(fn: Callable) -> None:
    """fn(x, w, eps) = x / sqrt(mean(x^2) + eps) * (1 + w), over the last axis (Gemma's RMSNorm)."""
    report(fn, grade_rms_norm)


def grade_rms_norm(fn: Callable) -> str:
    rng = np.random.default_rng(1)
    eps = 1e-6
    inputs = [
        ("x of shape (3, 8)", rng.standard_normal((3, 8))),
        (
            "x of shape (2, 4, 16), one row per head as QK-norm uses it",
            rng.standard_normal((2, 4, 16)),
        ),
        ("a tiny x (values near 1e-4), where eps matters", 1e-4 * rng.standard_normal((2, 8))),
        ("x all zeros", np.zeros((2, 8))),
        ("rows of very different sizes", rng.standard_normal((2, 8)) * np.array([[0.01], [100]])),
        ("x of shape (5, 640), Gemma's width", 30 * rng.standard_normal((5, 640))),
    ]
    cases = []
    for name, x in inputs:
        x = x.astype(np.float32)
        w = (0.3 * rng.standard_normal(x.shape[-1])).astype(np.float32)
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        ms = np.mean(x64 * x64, axis=-1, keepdims=True)
        centred = x64 - x64.mean(axis=-1, keepdims=True)
        with np.errstate(all="ignore"):
            mistakes = {
                "multiply by (1 + w), not by w: Gemma stores each gain as its offset from 1, so "
                "a norm with w = 0 leaves the scale alone": x64 / np.sqrt(ms + eps) * w64,
                "add eps inside the square root, sqrt(mean(x^2) + eps): without it a row of "
                "zeros divides 0 by 0": x64 / np.sqrt(ms) * (1 + w64),
                "eps goes inside the square root: sqrt(mean(x^2) + eps), not sqrt(...) + eps": (
                    x64 / (np.sqrt(ms) + eps) * (1 + w64)
                ),
                "normalise each row on its own: the mean is over the last axis only "
                "(axis=-1, keepdims=True)": x64 / np.sqrt(np.mean(x64 * x64) + eps) * (1 + w64),
                "RMSNorm does not subtract the mean (that is LayerNorm): divide x itself by its "
                "root mean square": centred
                / np.sqrt(np.mean(centred**2, -1, keepdims=True) + eps)
                * (1 + w64),
                "divide by the root mean square, sqrt(mean(x^2) + eps), not by the standard "
                "deviation: the variance subtracts the mean, and RMSNorm never does": x64
                / np.sqrt(x64.var(axis=-1, keepdims=True) + eps)
                * (1 + w64),
                "divide by the square root of mean(x^2) + eps, not by the mean itself": (
                    x64 / (ms + eps) * (1 + w64)
                ),
            }
        cases.append(Case(name, (x, w, eps), rms_norm(x, w, eps), mistakes))
    judge(fn, cases, array_reader(fn), same_array, largest_difference)
    return f"{name_of(fn)} matches minispec.model.rms_norm on {len(cases)} cases"


def check_rope(fn: Callable) -> None:
    """fn(x, positions, base): rotate-half RoPE of x (T, n_heads, head_dim) at the positions."""
    report(fn, grade_rope)


def grade_rope(fn: Callable) -> str:
    rng = np.random.default_rng(2)
    inputs = [  # (name, n_heads, head_dim, positions, base)
        ("T=3, 2 heads of 8 dims, positions 0..2, base 10,000", 2, 8, [0, 1, 2], 10_000.0),
        ("position 0 alone (RoPE must leave it unchanged)", 1, 8, [0], 10_000.0),
        ("positions 100..103 (decoding after a KV cache)", 1, 16, [100, 101, 102, 103], 10_000.0),
        ("Gemma's head_dim 256, positions 511 and 512, base 1,000,000", 4, 256, [511, 512], 1e6),
        ("a small base, 10", 2, 8, [3, 7], 10.0),
    ]
    cases = []
    for name, heads, d, positions, base in inputs:
        pos = np.array(positions)
        x = rng.standard_normal((len(positions), heads, d)).astype(np.float32)
        mistakes = {
            "pair dimension i with i + d/2 (rotate-half, as Gemma and Hugging Face do), not "
            "the adjacent dimensions 2i and 2i+1 (the RoFormer paper's layout)": rope_interleaved(
                x, pos, base
            ),
            "the frequencies are base^(-2i/d) for i = 0..d/2-1, i.e. "
            "base ** (-np.arange(0, d, 2) / d)": rope_variant(x, pos, base, freq_step=1),
            "the rotation goes the other way: (x1 cos - x2 sin, x2 cos + x1 sin)": rope_variant(
                x, -pos, base
            ),
            "rotate by the positions you are given: after a KV cache they do not start at 0": rope(
                x, np.arange(len(pos)), base
            ),
        }
        cases.append(Case(name, (x, pos, base), rope(x, pos, base), mistakes))
    judge(fn, cases, array_reader(fn), same_array, largest_difference)
    return f"{name_of(fn)} matches minispec.model.rope on {len(cases)} cases"


def rope_interleaved(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """The mistake: RoPE pairing dimensions (2i, 2i+1) instead of (i, i + d/2)."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-np.arange(0, d, 2) / d)  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty(x.shape)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, odd * cos + even * sin
    return out


def rope_variant(
    x: np.ndarray, positions: np.ndarray, base: float, freq_step: int = 2
) -> np.ndarray:
    """Rotate-half RoPE with inv_freq = base^(-freq_step * i / d): the right step is 2."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-freq_step * np.arange(d // 2) / d)  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
