"""Lesson 1's exercises, solved: the bodies a learner writes in 01_forward_pass.ipynb."""

import numpy as np


def my_rms_norm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * (1 + w), each row (the last axis) on its own."""
    rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x / rms * (1.0 + w)


def my_rope(x, positions, base):
    """Rotate-half RoPE: dimension i pairs with i + d/2, turned by position * base^(-2i/d)."""
    d = x.shape[-1]  # x: (T, n_heads, head_dim)
    inv_freq = base ** (-np.arange(0, d, 2) / d)  # (d/2,)
    angles = positions[:, None] * inv_freq  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]  # (T, 1, d/2)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
