"""Adam (Kingma & Ba 2015, Algorithm 1), with the gradient clipped by its global norm.

    m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
    w <- w - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)

Each weight gets a step of about lr whatever the scale of its gradient: what lets one learning
rate train norm gains, projections and the MLP together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AdamState:
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    clip: float = 1.0  # the largest global gradient norm; larger ones are scaled down to it
    t: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)


def global_norm(grads: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())))


def adam_step(
    weights: object, grads: dict[str, np.ndarray], state: AdamState, lr: float | None = None
) -> float:
    """Update weights' attributes named in grads in place; returns the gradient's global norm."""
    norm = global_norm(grads)
    scale = min(1.0, state.clip / (norm + 1e-12))
    state.t += 1
    lr = state.lr if lr is None else lr
    c1, c2 = 1.0 - state.b1**state.t, 1.0 - state.b2**state.t
    for name, g in grads.items():
        w = getattr(weights, name)
        g = (g * scale).astype(w.dtype)
        m = state.m.setdefault(name, np.zeros_like(w))
        v = state.v.setdefault(name, np.zeros_like(w))
        m *= state.b1
        m += (1.0 - state.b1) * g
        v *= state.b2
        v += (1.0 - state.b2) * g * g
        w -= (lr * (m / c1) / (np.sqrt(v / c2) + state.eps)).astype(w.dtype)
    return norm
