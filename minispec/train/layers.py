"""Forward and hand-written backward passes of the layers the MTP drafter uses, in NumPy.

Each `*_forward` returns its output and a `cache` of what the backward needs; each `*_backward`
takes the gradient of the loss with respect to the output (dL/dy, named `dy`) and returns the
gradient with respect to the input, plus those of the layer's weights. Backpropagation
(Rumelhart, Hinton & Williams 1986) is the chain rule applied in reverse order. The equations
are the same as minispec/model.py's (`rms_norm`, `gelu_tanh`, `rope`, attention); every
gradient here is checked against finite differences in tests/test_mtp.py.

Shapes: any leading dimensions (...) are batch dimensions; weights are (d_out, d_in) as in the
checkpoints, so a linear layer is y = x @ W.T.
"""

from __future__ import annotations

import numpy as np

from minispec.model import rope_angles

# exp() of anything below this is 0 in effect; clamping keeps softmax out of the subnormal
# numbers, whose arithmetic runs many times slower on x86 CPUs (the MTP probe saw 4x).
EXP_FLOOR = -80.0


# ----------------------------------------------------------------------------- RMSNorm


def rms_norm_forward(x: np.ndarray, w: np.ndarray, eps: float):
    """y = x r (1 + w), r = 1 / sqrt(mean(x^2) + eps) (Zhang & Sennrich 2019, Gemma's gain)."""
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * r
    return xhat * (1.0 + w), (xhat, r, w)


def rms_norm_backward(dy: np.ndarray, cache):
    """dx = r (g - xhat mean(g xhat)), g = dy (1 + w); dw = sum over rows of dy xhat.

    The mean term is the gradient through r: every input moves the norm of all of them.
    """
    xhat, r, w = cache
    g = dy * (1.0 + w)
    dx = r * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    dw = np.sum((dy * xhat).reshape(-1, xhat.shape[-1]), axis=0)
    return dx, dw


# ------------------------------------------------------------------------------- linear


def linear_forward(x: np.ndarray, w: np.ndarray):
    """y = x W^T, W (d_out, d_in). Computed as one 2-D product (one BLAS call) over all rows."""
    y = x.reshape(-1, x.shape[-1]) @ w.T
    return y.reshape(*x.shape[:-1], w.shape[0]), (x, w)


def linear_backward(dy: np.ndarray, cache):
    """dx = dy W; dW = dy^T x, summed over every batch row."""
    x, w = cache
    dy2 = dy.reshape(-1, dy.shape[-1])
    dw = dy2.T @ x.reshape(-1, x.shape[-1])
    return (dy2 @ w).reshape(*dy.shape[:-1], w.shape[1]), dw


# -------------------------------------------------------------------- GELU and the GeGLU MLP

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)


def gelu_forward(x: np.ndarray):
    """gelu(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2/pi) (Hendrycks & Gimpel)."""
    t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy: np.ndarray, cache):
    """d gelu/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)."""
    x, t = cache
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (
        1.0 + 3 * 0.044715 * x * x
    )
    return dy * slope


def mlp_forward(m: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray):
    """W_down(gelu(W_gate m) * W_up m): Gemma's gated MLP (GeGLU, Shazeer 2020)."""
    a, ca = linear_forward(m, gate)  # (..., d_ff)
    b, cb = linear_forward(m, up)
    g, cg = gelu_forward(a)
    y, cd = linear_forward(g * b, down)  # (..., d)
    return y, (ca, cb, cg, cd, g, b)


def mlp_backward(dy: np.ndarray, cache):
    """Returns dm, (d_gate, d_up, d_down)."""
    ca, cb, cg, cd, g, b = cache
    dh, d_down = linear_backward(dy, cd)
    da = gelu_backward(dh * b, cg)
    dm_a, d_gate = linear_backward(da, ca)
    dm_b, d_up = linear_backward(dh * g, cb)
    return dm_a + dm_b, (d_gate, d_up, d_down)


# ------------------------------------------------------------------------------------ RoPE


def rope_forward(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """Rotate-half RoPE (Su et al. 2021) of x (N, heads, head_dim) at positions (N,).

    The same arithmetic as model.rope, in x's own precision (model.rope is float32 only).
    """
    d = x.shape[-1]
    cos, sin = (a[:, None, :].astype(x.dtype) for a in rope_angles(positions, base, d))
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward(dy: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """A rotation's gradient is the inverse rotation: RoPE at -angle, i.e. sin negated."""
    d = dy.shape[-1]
    cos, sin = (a[:, None, :].astype(dy.dtype) for a in rope_angles(positions, base, d))
    g1, g2 = dy[..., : d // 2], dy[..., d // 2 :]
    return np.concatenate([g1 * cos + g2 * sin, g2 * cos - g1 * sin], axis=-1)


# ------------------------------------------------------------- query-only attention, batched


def masked_softmax(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """softmax over the last axis, keys where seen is False get probability exactly 0."""
    z = scores - np.max(np.where(seen, scores, -np.inf), axis=-1, keepdims=True)
    e = np.exp(np.maximum(z, EXP_FLOOR)) * seen
    return e / np.sum(e, axis=-1, keepdims=True)


def attention_forward(q: np.ndarray, keys: np.ndarray, values: np.ndarray, seen: np.ndarray):
    """softmax(q K^T) V per document over fixed (the target's) keys and values.

    q: (B, T, H, hd) scaled and rotated queries; keys, values: (B, S, G, hd) with G key/value
    heads, each read by H / G query heads (grouped-query attention); seen: (T, S) bool.
    Returns (B, T, H, hd).
    """
    B, T, H, hd = q.shape
    G = keys.shape[2]
    R = H // G
    qg = q.reshape(B, T, G, R, hd).transpose(0, 2, 1, 3, 4).reshape(B, G, T * R, hd)
    kg = keys.transpose(0, 2, 1, 3).astype(q.dtype)  # (B, G, S, hd)
    vg = values.transpose(0, 2, 1, 3).astype(q.dtype)
    mask = np.repeat(seen, R, axis=0)  # (T * R, S): row t * R + r is query head r of time t
    p = masked_softmax(qg @ kg.swapaxes(-1, -2), mask)  # (B, G, T * R, S)
    o = p @ vg  # (B, G, T * R, hd)
    out = o.reshape(B, G, T, R, hd).transpose(0, 2, 1, 3, 4).reshape(B, T, H, hd)
    return out, (p, kg, vg, q.shape)


def attention_backward(dout: np.ndarray, cache) -> np.ndarray:
    """dq only: the keys and values are the target's, not trained.

    dP = dO V^T; dS = P (dP - sum(dP P)) (the softmax Jacobian); dq = dS K.
    """
    p, kg, vg, (B, T, H, hd) = cache
    G = kg.shape[1]
    R = H // G
    do = dout.reshape(B, T, G, R, hd).transpose(0, 2, 1, 3, 4).reshape(B, G, T * R, hd)
    dp = do @ vg.swapaxes(-1, -2)  # (B, G, T * R, S)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    dq = ds @ kg  # (B, G, T * R, hd)
    return dq.reshape(B, G, T, R, hd).transpose(0, 2, 1, 3, 4).reshape(B, T, H, hd)


# --------------------------------------------------------------- softmax cross-entropy


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """Mean of -log softmax(logits)[label] over the rows whose label >= 0 (-1: not counted).

    logits (N, C), labels (N,). Returns (loss, cache). Works in one buffer: the head's logits
    are the largest array of a training step.
    """
    probs = logits - np.max(logits, axis=-1, keepdims=True)
    np.maximum(probs, EXP_FLOOR, out=probs)
    np.exp(probs, out=probs)
    probs /= np.sum(probs, axis=-1, keepdims=True)
    valid = labels >= 0
    n = max(1, int(valid.sum()))
    picked = probs[np.flatnonzero(valid), labels[valid]]
    loss = float(-np.sum(np.log(np.maximum(picked, 1e-30))) / n)
    return loss, (probs, labels, valid, n)


def cross_entropy_backward(cache) -> np.ndarray:
    """dL/dlogits = (softmax - one_hot(label)) / n on counted rows, 0 elsewhere."""
    probs, labels, valid, n = cache
    d = probs * (valid[:, None] / n)
    d[np.flatnonzero(valid), labels[valid]] -= 1.0 / n
    return d
