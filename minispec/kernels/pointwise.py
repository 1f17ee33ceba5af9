"""The elementwise steps of a layer, one pass each on the threads: RMSNorm (`rms_norm_rows`),
the MLP's GeGLU (`gelu_gate`), the rotary embedding (`rope_rows`), and the vectorized float32 exp
(`_exp_row`) that GeGLU and attention's softmax share.

Each row is one fixed loop, so a row's result does not depend on the others: batch invariant.
A few rows (decoding) stay on the calling thread (`on_the_pool`): waking the pool would cost
more than the work.

No fastmath, on purpose. With reassociation allowed, LLVM picks a sum's order when it vectorizes
the loop, and it may pick another in another compiled variant (the pool's or the calling
thread's, compiled fresh or loaded from the cache): the same row then gets other bits, and a
verify pass disagrees with plain decoding in the last place. So every operation here is one
IEEE operation in the order written, and the sums that want vectors say their order themselves
(`ordered_sum`). The compiler still vectorizes the elementwise loops: that needs no licence.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

SERIAL_SIZE = 16384  # the norms and GeGLU of at most this many elements stay on one thread
SUM_LANES = 16  # `ordered_sum` keeps this many running sums: one AVX-512 register, two AVX2


def on_the_pool(n_elements: int) -> bool:
    """Whether a norm or GeGLU over n_elements goes to the thread pool (`_*_kernel`) or stays
    on the calling thread (`_*_serial`): more than SERIAL_SIZE elements pay for the pool."""
    return n_elements > SERIAL_SIZE


def rms_norm_rows(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """`model.rms_norm` over the last axis, x / sqrt(mean(x^2) + eps) * (1 + w), on the threads.

    Why a kernel: NumPy makes six passes over x (square, mean, add, sqrt, divide, multiply), on
    one thread; here each row is read twice and written once, and the rows go to the threads.
    Each row is one fixed loop (`_rms_norm_row`), so a row's result does not depend on the
    others: batch invariant. A few rows (decoding) stay on the calling thread: waking the pool
    would cost more than the work.
    """
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (N, d)
    out = np.empty_like(rows)
    kernel = _rms_norm_kernel if on_the_pool(rows.size) else _rms_norm_serial
    kernel(rows, w.astype(np.float32, copy=False), np.float32(eps), out)
    return out.reshape(x.shape)


@njit(cache=True)
def ordered_sum(a, squared=False):
    """sum(a), or sum(a * a) with squared, in one fixed order: SUM_LANES running sums (sum l
    takes a[l], a[l + 16], a[l + 32], ...), then those 16 in turn, then the last len(a) % 16.

    Why not a plain loop: one running sum waits 4 cycles for each addition. Why not fastmath:
    it would let LLVM choose the order, and choose differently in each place the loop is
    compiled into. Here the 16 sums are independent, so LLVM may put them in one vector without
    changing a bit.
    """
    n = a.shape[0]
    whole = n - n % SUM_LANES
    lanes = np.zeros(SUM_LANES, a.dtype)  # float32 or float64, as a is
    for i in range(0, whole, SUM_LANES):
        for lane in range(SUM_LANES):
            v = a[i + lane]
            lanes[lane] += v * v if squared else v
    total = lanes[0]
    for lane in range(1, SUM_LANES):
        total += lanes[lane]
    for i in range(whole, n):
        total += a[i] * a[i] if squared else a[i]
    return total


@njit(cache=True)
def _rms_norm_row(x, w, eps, out):
    d = x.shape[0]
    squares = ordered_sum(x, True)
    scale = np.float32(1.0) / np.sqrt(squares / np.float32(d) + eps)
    for j in range(d):
        out[j] = x[j] * scale * (np.float32(1.0) + w[j])


@njit(parallel=True, cache=True)
def _rms_norm_kernel(x, w, eps, out):
    for i in prange(x.shape[0]):
        _rms_norm_row(x[i], w, eps, out[i])


@njit(cache=True)
def _rms_norm_serial(x, w, eps, out):
    for i in range(x.shape[0]):
        _rms_norm_row(x[i], w, eps, out[i])


def gelu_gate(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """`model.gelu_tanh(gate) * up` (the MLP's GeGLU), in one pass on the threads.

    0.5 x (1 + tanh(y)) is computed as x / (1 + exp(-2y)), the same function (1 + tanh(y) =
    2 / (1 + exp(-2y))), with `_exp_row`'s exp, which vectorizes: NumPy's version makes nine
    passes on one thread, and libm's exp, called once per element, was most of this kernel's
    time. Elementwise, so batch invariant; a few rows stay on the calling thread.
    """
    gate, up = np.ascontiguousarray(gate), np.ascontiguousarray(up)
    out = np.empty_like(gate)
    (_gelu_gate_kernel if on_the_pool(gate.size) else _gelu_gate_serial)(gate, up, out)
    return out


@njit(cache=True)
def _gelu_gate_row(gate, up, out, bits):
    minus_two_c = np.float32(-2.0 * np.sqrt(2.0 / np.pi))
    d = gate.shape[0]
    for j in range(d):  # out: -2y, then exp(-2y), then the result, in place
        x = gate[j]
        out[j] = minus_two_c * (x + np.float32(0.044715) * x * x * x)
    _exp_row(out, bits)
    for j in range(d):
        out[j] = gate[j] / (np.float32(1.0) + out[j]) * up[j]


@njit(parallel=True, cache=True)
def _gelu_gate_kernel(gate, up, out):
    for i in prange(gate.shape[0]):
        _gelu_gate_row(gate[i], up[i], out[i], np.empty(gate.shape[1], np.int32))


@njit(cache=True)
def _gelu_gate_serial(gate, up, out):
    bits = np.empty(gate.shape[1], np.int32)
    for i in range(gate.shape[0]):
        _gelu_gate_row(gate[i], up[i], out[i], bits)


def rope_rows(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """`model.rope`'s rotation, given its angles: x (T, n_heads, d), cos and sin (T, d/2).

    The same products and sums in the same order, with no fused multiply-add, so the same
    bits as `model.rope`; one pass instead of NumPy's eight calls, which at T = 1 cost more
    than the arithmetic. Elementwise per position, so batch invariant.
    """
    T, n_heads, d = x.shape
    if d % 2 or cos.shape != (T, d // 2) or sin.shape != cos.shape:
        raise ValueError(f"rope_rows: x {x.shape} needs cos and sin (T, d/2), got {cos.shape}")
    out = np.empty((T, n_heads, d), np.float32)
    _rope_kernel(np.ascontiguousarray(x, np.float32), cos, sin, out)
    return out


@njit(cache=True)
def _rope_kernel(x, cos, sin, out):
    T, n_heads, d = x.shape
    half = d // 2
    for t in range(T):
        for h in range(n_heads):
            for i in range(half):
                x1, x2 = x[t, h, i], x[t, h, half + i]
                out[t, h, i] = x1 * cos[t, i] - x2 * sin[t, i]
                out[t, h, half + i] = x2 * cos[t, i] + x1 * sin[t, i]


@njit(cache=True)
def _exp_row(a, bits):
    """a[:] = exp(a[:]) in place, in float32, within about 1 ulp; bits: int32 scratch, len(a).

    Why not np.exp: without Intel's SVML, Numba calls libm's expf once per element, which
    LLVM cannot vectorize. This is Cephes' expf, written so that it can: exp(x) = 2^k e^r with
    k = round(x / ln 2) and r = x - k ln 2 (ln 2 in two parts, so r is exact), e^r by a degree-6
    polynomial on |r| <= ln(2)/2, and 2^k made directly from its bits, (k + 127) << 23, in
    `bits` seen as float32. x is clamped to [-87, 88], where 2^k is a normal float32 (so
    exp(-100) is about 1.6e-38, not 0). NaN stays NaN. The same bits for the same x wherever it
    sits in a row: elementwise.
    """
    n = a.shape[0]
    for i in range(n):
        x = min(max(a[i], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        a[i] = p * r * r + r + np.float32(1.0)
        bits[i] = (np.int32(k) + np.int32(127)) << 23
    two_to_k = bits.view(np.float32)
    for i in range(n):
        a[i] *= two_to_k[i]
