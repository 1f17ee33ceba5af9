"""Sampling has three kernels of its own: `distribution_row` (temperature, top-k and top-p over
a row of 262,144 logits without sorting it: `sampling.distribution`), `sample_row` (an inverse-
CDF draw) and `top_n` (the trace's few most likely tokens). A sampled step makes one such row
per verified and per drafted position, so each costs a fraction of a millisecond, not the
milliseconds of NumPy's sorts.

Which path a row takes is `cut_kind` (nothing cut, top-k, or top-p alone).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minispec.kernels.pointwise import _exp_row, ordered_sum

N_ROW_CHUNKS = 8  # a row's fixed ranges for the threads
BLOCK64 = 256  # the passes go through a chunk this many tokens at a time (in L1)
GROUPS = 4096  # top-k: the k-th largest of this many groups' maxima bounds the k-th logit
BUCKETS = 2048  # top-p's histogram bins: the one that holds the edge has few tokens to sort
SPARE = 8  # and more bins past those, for the tokens below its floor


def cut_kind(top_k: int, top_p: float, vocab: int) -> str:
    """How `distribution_row` finds the kept tokens: "none" (every token kept), "top-k" (the
    top_k largest, then top-p over them: `top_k_cut`) or "top-p" (top-p alone: `top_p_cut`)."""
    if 0 < top_k < vocab:
        return "top-k"
    return "top-p" if top_p < 1.0 else "none"


def distribution_row(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, out: np.ndarray
) -> None:
    """out[:] = `sampling.numpy_distribution`'s row in float64, with no sort over the vocabulary.

    The reference sorts or partitions all 262,144 probabilities for top-k and top-p. Here:
      1. the largest logit (NumPy's max, which also catches NaN);
      2. on the threads: e_i = exp((l_i - max) / T) with `_exp64_block`'s vectorized exp, and
         their sum Z (`_exp_kernel`); for top-p, in the same pass, a histogram of the few
         tokens that can be its edge (`top_p_floor`);
      3. the edge, found among a few candidates that provably hold it, sorted by logit then
         id as the reference sorts, so that the kept set is exactly the reference's: the
         tokens up to a cut (logit, id). Top-k: `top_k_cut`; top-p alone: `top_p_cut`;
      4. on the threads again, out = e / (the kept tokens' sum of e) up to the cut, 0 after it.
    exp is monotone, so ordering by logit is ordering by probability. The row is cut into
    N_ROW_CHUNKS fixed ranges whose sums are added in a fixed order: the same bits whatever the
    number of threads. logits: (vocab,) float32 or float64; temperature > 0.
    """
    hi = float(logits.max())
    if not hi < np.inf:
        raise ValueError("the logits contain NaN or +inf: no distribution can be made from them")
    if hi == -np.inf:
        raise ValueError("every logit is -inf: no token has any probability")
    n = logits.shape[0]
    kind = cut_kind(top_k, top_p, n)
    histogram = kind == "top-p"
    floor, scale = top_p_bins(logits, hi, temperature, top_p) if histogram else (2.0, 0.0)
    bins = np.empty(n if histogram else 0, np.int16)
    mass = np.zeros((N_ROW_CHUNKS, BUCKETS + SPARE if histogram else 0))
    sums = np.zeros(N_ROW_CHUNKS)
    _exp_kernel(logits, hi, 1.0 / temperature, out, sums, floor, scale, bins, mass)
    total = sums.sum()  # Z, the chunks' sums added in a fixed order
    if kind == "top-k":
        cut_logit, cut_id, kept_mass = top_k_cut(logits, out, top_k, top_p)
    elif kind == "top-p":
        edge = top_p_cut(logits, out, bins, mass, top_p * total)
        cut_logit, cut_id, kept_mass = edge
    else:  # every token kept
        cut_logit, cut_id, kept_mass = -np.inf, n, total
    _scale_kernel(logits, cut_logit, cut_id, 1.0 / kept_mass, out)


def log_partition(logits: np.ndarray) -> float:
    """log Z = log sum_i exp(l_i), so that softmax(logits)_t = exp(l_t - log Z), for a row that
    is shown, not sampled from (`sampling.SoftmaxRow`): with attention's float32 exp
    (`pointwise._exp_row`, four times the lanes of `_exp64_block` and a shorter polynomial),
    added up in float64. log Z is then within about 1e-8 of the float64 sum's, so each shown
    probability within about 1e-8 of itself: a learner reads three digits. logits: (vocab,)
    float32 or float64, not all -inf."""
    hi = float(logits.max())
    sums = np.zeros(N_ROW_CHUNKS)
    _sum_exp_kernel(logits, hi, sums)
    return hi + float(np.log(sums.sum()))


@njit(parallel=True, cache=True)
def _sum_exp_kernel(logits, hi, sums):
    """sums[c] = chunk c's sum of exp(logits - hi), a block at a time in L1 scratch."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        block, bits = np.empty(BLOCK64, np.float32), np.empty(BLOCK64, np.int32)
        for b0 in range(a, b, BLOCK64):
            m = min(BLOCK64, b - b0)
            _shifted(logits[b0 : b0 + m], hi, block[:m])
            _exp_row(block[:m], bits[:m])
            sums[c] += _sum64(block[:m])


@njit(cache=True)
def _shifted(logits, hi, out):
    for i in range(logits.shape[0]):
        out[i] = np.float32(np.float64(logits[i]) - hi)


@njit(fastmath=True, cache=True)
def _sum64(values):
    # fastmath lets LLVM add in vector lanes, in an order of its own: this sum is only shown
    total = 0.0
    for i in range(values.shape[0]):
        total += np.float64(values[i])
    return total


@njit(parallel=True, cache=True)
def _exp_kernel(logits, hi, inverse_temperature, out, sums, floor, scale, bins, mass):
    """Pass 2 on the threads: out = exp((logits - hi) / T), chunk c's sum in sums[c]; and for
    top-p, each token's bin in bins (`_bin_block`) and the histogram of their e in mass[c].
    BLOCK64 tokens at a time, so that each block is in L1 for both; a block with no token
    above the floor skips the histogram (its tokens' bin: BUCKETS)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        chunk = logits[a:b], out[a:b], bins[a:b], mass[c]
        sums[c] = _exp_chunk(hi, inverse_temperature, floor, scale, *chunk)


@njit(cache=True)
def _exp_chunk(hi, inverse_temperature, floor, scale, logits, out, bins, mass):
    scratch = np.empty((2, BLOCK64), np.int64)
    histogram = bins.shape[0] > 0
    total = 0.0
    for b0 in range(0, logits.shape[0], BLOCK64):
        block, block_logits = out[b0 : b0 + BLOCK64], logits[b0 : b0 + BLOCK64]
        _shift_and_scale(block_logits, hi, inverse_temperature, block)
        _exp64_block(block, scratch)
        total += ordered_sum(block)
        if not histogram:
            continue
        block_bins = bins[b0 : b0 + BLOCK64]
        passing = _count_between(block, floor, np.inf)
        if passing == 0:  # most blocks: no candidate
            block_bins[:] = BUCKETS
            continue
        _bin_block(block_logits, block, hi, floor, scale, block_bins)
        if 2 * passing > block.shape[0]:  # most of the block: add every token
            for j in range(block.shape[0]):
                mass[block_bins[j]] += block[j]
            continue
        # a few: their places first, without a branch (it would be mispredicted at random)
        m = 0
        for j in range(block.shape[0]):
            scratch[0, m] = j
            m += block[j] >= floor
        for j in scratch[0, :m]:
            mass[block_bins[j]] += block[j]
    return total


@njit(cache=True)
def _shift_and_scale(logits, hi, inverse_temperature, out):
    """out = (logits - hi) / T in float64, as a product: a division costs several times more
    (the result may differ from the quotient in its last bit)."""
    for i in range(logits.shape[0]):
        out[i] = (np.float64(logits[i]) - hi) * inverse_temperature


@njit(fastmath={"contract"}, cache=True)
def _exp64_block(a, bits):
    """a[:] = exp(a[:]) in place, float64, for a <= 0, within about 1 ulp of np.exp.

    `_exp_row`'s method in double precision: exp(x) = 2^k e^r, k = round(x / ln 2), r = x -
    k ln 2 (ln 2 in two parts, fdlibm's, so r is exact), e^r by its Taylor series to r^13 on
    |r| <= ln(2)/2 (the next term is below 1e-17), and 2^k made from its bits. x is clamped to
    -746, below which exp is 0 in float64; 2^k is made as two powers of two, so that the
    subnormal results between e^-745 and e^-708 come out too. bits: int64 scratch (2, len(a)).
    """
    n = a.shape[0]
    for i in range(n):
        x = a[i] if a[i] > -746.0 else -746.0
        k = np.floor(x * 1.4426950408889634 + 0.5)
        r = (x - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        a[i] = (p * r + 1.0) * r + 1.0
        k0 = np.int64(k)
        k1 = k0 if k0 > -1000 else -1000
        bits[0, i] = (k1 + 1023) << 52
        bits[1, i] = (k0 - k1 + 1023) << 52
    powers = bits.view(np.float64)
    for i in range(n):
        a[i] = a[i] * powers[0, i] * powers[1, i]


# ----------------------------------------------------------------------------------- top-k


def top_k_cut(
    logits: np.ndarray, e: np.ndarray, top_k: int, top_p: float
) -> tuple[float, int, float]:
    """(cut logit, cut id, kept mass) for top-k: every token at least as large as the k-th
    is kept (ties too), then top-p walks them in order.

    Only a few candidates are looked at: the tokens at least as large as the k-th largest of
    the maxima of GROUPS groups (at least 2k groups). Why that is enough: k groups have a
    maximum that large, so k tokens are, and the k-th largest logit is too. Group g holds the
    tokens g, g + m, g + 2m, ... (m groups), so that their maxima are one vectorized pass; on
    a row in no particular order, such as Gemma's, few more than k tokens pass. (A row of at
    most 2k tokens is m groups of one: every token is a candidate.)"""
    m = min(max(GROUPS, 2 * top_k), logits.shape[0])  # the number of groups
    maxima = _group_maxima(logits, m)  # (m,)
    ids = _ids_between(logits, np.partition(maxima, m - top_k)[m - top_k], np.inf)
    values = logits[ids].astype(np.float64)
    cut_logit = float(np.partition(values, ids.shape[0] - top_k)[ids.shape[0] - top_k])
    kept = ids[values >= cut_logit]  # the k-th largest and every token as large
    if top_p >= 1.0:
        return cut_logit, int(kept[-1]), float(e[kept].sum())
    kept = sorted_by_logit(logits, kept)
    return _walk_top_p(logits, e, kept, top_p * e[kept].sum(), 0.0)


@njit(parallel=True, cache=True)
def _group_maxima(logits, m):
    """maxima[g] = max(logits[g], logits[g + m], logits[g + 2m], ...): row after row of m
    tokens, an elementwise max, each chunk of groups on its thread."""
    n = logits.shape[0]
    maxima = logits[:m].copy()
    step = -(-m // N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(m, (c + 1) * step)
        for row in range(m, n, m):
            end = min(b, n - row)
            if end > a:
                _max_into(logits[row + a : row + end], maxima[a:end])
    return maxima


@njit(cache=True)
def _max_into(values, maxima):
    for g in range(values.shape[0]):
        maxima[g] = values[g] if values[g] > maxima[g] else maxima[g]


@njit(parallel=True, cache=True)
def _ids_between(values, low, high):
    """The ids with low <= values[i] <= high, in id order: each chunk counts its own, then
    writes them where the counts before it end."""
    n = values.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    first = np.zeros(N_ROW_CHUNKS + 1, np.int64)  # where each chunk's ids go
    for c in prange(N_ROW_CHUNKS):
        first[c + 1] = _count_between(values[c * step : min(n, (c + 1) * step)], low, high)
    first = np.cumsum(first)
    ids = np.empty(first[N_ROW_CHUNKS], np.int64)
    for c in prange(N_ROW_CHUNKS):
        chunk = values[c * step : min(n, (c + 1) * step)]
        _write_between(chunk, low, high, c * step, ids[first[c] : first[c + 1]])
    return ids


@njit(cache=True)
def _count_between(values, low, high):
    found = 0
    for i in range(values.shape[0]):
        found += (values[i] >= low) & (values[i] <= high)  # no branch: it vectorizes
    return found


@njit(cache=True)
def _write_between(values, low, high, offset, ids):
    """ids[:] = offset + the i with low <= values[i] <= high, a block at a time: a block
    where none passes costs a vectorized count; in the others, a branch per token."""
    j = 0
    for b0 in range(0, values.shape[0], BLOCK64):
        block = values[b0 : b0 + BLOCK64]
        if _count_between(block, low, high) == 0:
            continue
        for i in range(block.shape[0]):
            if (block[i] >= low) & (block[i] <= high):
                ids[j] = offset + b0 + i
                j += 1


def sorted_by_logit(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids (in id order) sorted by logit from the largest, ties by id: the reference's order.
    (NumPy's sort, which is several times faster than Numba's on a few thousand values.)"""
    return ids[np.argsort(-logits[ids].astype(np.float64), kind="stable")]


@njit(cache=True)
def _walk_top_p(logits, e, ids, threshold, before):
    """Walk ids (sorted) keeping each token while the mass before it, starting at `before`, is
    below the threshold: (cut logit, cut id, kept mass). The first is always kept; if rounding
    walks past the last, every one of ids is."""
    last = ids[0]
    for i in ids:
        if before >= threshold:
            break
        last, before = i, before + e[i]
    return np.float64(logits[last]), last, before


# ----------------------------------------------------------------------------------- top-p


def top_p_floor(top_p: float, n: int) -> float:
    """A floor under e_c, c the last token top-p keeps, known before any exp is taken: only
    the tokens with e_i >= (1 - top_p) / n can be c or come before it.

    Why: the tokens before c hold less than top_p Z, so c and the tokens after it hold more
    than (1 - top_p) Z. None of the at most n tokens after c is more likely than c, so
    n e_c > (1 - top_p) Z, and Z >= 1 (the largest token's e is exactly 1). 1e-9 comes off
    1 - top_p, room for rounding: within 1e-9 of top_p = 1 the floor is 0 and every token is
    a candidate. On Gemma's rows at temperature 0.7 a few hundred tokens pass; on a flat row,
    a fifth."""
    return max(0.0, 1.0 - top_p - 1e-9) / n


def top_p_bins(
    logits: np.ndarray, hi: float, temperature: float, top_p: float
) -> tuple[float, float]:
    """(floor, scale) for `_exp_kernel`'s histogram: its candidates are the tokens with
    e_i >= floor (`top_p_floor`), and BUCKETS bins of logit span them, from the largest logit
    down to where e = floor: a token's bin is (largest - logit) * scale (`_bin_block`)."""
    floor = top_p_floor(top_p, logits.shape[0])
    if floor > 0:
        bottom = hi + temperature * np.log(floor)
    else:
        bottom = float(logits[logits > -np.inf].min())
    return floor, (BUCKETS - 1) / (hi - bottom) if hi > bottom else 0.0


def top_p_cut(
    logits: np.ndarray, e: np.ndarray, bins: np.ndarray, mass: np.ndarray, threshold: float
) -> tuple[float, int, float]:
    """(cut logit, cut id, kept mass) for top-p alone, from `_exp_kernel`'s histogram of its
    candidates (bins, mass): the bin where the mass before a token reaches the threshold
    (top_p Z) holds the edge (`_edge_bin`), and only its tokens are sorted and walked."""
    b, before = _edge_bin(mass, threshold)
    members = _ids_between(bins, np.int16(b), np.int16(b))  # int16 compares: 16 lanes
    return _walk_top_p(logits, e, sorted_by_logit(logits, members), threshold, before)


@njit(cache=True)
def _bin_block(logits, e, hi, floor, scale, bins):
    """Each token's histogram bin: 0 holds the largest logits, BUCKETS - 1 the smallest
    candidates. A token below the floor gets one of SPARE bins past those, in turn, so that
    adding a run of them to the histogram does not wait on one bin's last addition."""
    for i in range(logits.shape[0]):
        v = (hi - np.float64(logits[i])) * scale
        v = v if v < BUCKETS - 1 else BUCKETS - 1
        bins[i] = np.int16(v if e[i] >= floor else BUCKETS + i % SPARE)


@njit(cache=True)
def _edge_bin(mass, threshold):
    """(b, the mass before bin b): the bin where the mass before a token reaches the threshold.
    The chunks' histograms are added in a fixed order."""
    total = mass[0].copy()
    for c in range(1, mass.shape[0]):
        total += mass[c]
    last = BUCKETS - 1  # the last bin with a candidate: rounding may leave the threshold unmet
    while last > 0 and total[last] == 0.0:
        last -= 1
    before, b = 0.0, 0
    while b < last and before + total[b] < threshold:
        before += total[b]
        b += 1
    return b, before


# ------------------------------------------------------------------------------ both passes


@njit(parallel=True, cache=True)
def _scale_kernel(logits, cut_logit, cut_id, factor, out):
    """Pass 4 on the threads: out[i] *= factor up to the cut, 0 after it (`_scale_chunk`)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        _scale_chunk(logits[a:b], cut_logit, cut_id - a, factor, out[a:b])


@njit(cache=True)
def _scale_chunk(logits, cut_logit, cut_id, factor, out):
    for i in range(logits.shape[0]):
        v = np.float64(logits[i])
        keep = (v > cut_logit) | ((v == cut_logit) & (i <= cut_id))  # no branch: it vectorizes
        out[i] = out[i] * (factor * keep)


def sample_row(probs: np.ndarray, u: float) -> int:
    """The token where the cumulative sum of probs first exceeds u * sum(probs): an inverse-CDF
    draw for u ~ U[0, 1), as `sampling.numpy_sample` does with NumPy's cumsum over the whole
    row, here by chunks: each chunk's sum first, then a running sum inside the one chunk where
    the draw lands. Never a token of probability 0. probs: (vocab,) float64, not all 0."""
    return int(_sample_kernel(np.ascontiguousarray(probs, np.float64), float(u)))


@njit(cache=True)
def _sample_kernel(probs, u):
    n = probs.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    sums = np.zeros(N_ROW_CHUNKS)
    for c in range(N_ROW_CHUNKS):
        sums[c] = ordered_sum(probs[c * step : min(n, (c + 1) * step)])
    target, before, last = u * sums.sum(), 0.0, -1
    for c in range(N_ROW_CHUNKS):
        if before + sums[c] <= target:  # the draw lies past this chunk
            before += sums[c]
            continue
        for i in range(c * step, min(n, (c + 1) * step)):
            if probs[i] > 0.0:
                last = i
                before += probs[i]
                if before > target:
                    return i
    for i in range(n - 1, -1, -1):  # rounding left the draw past the end: the last token
        if probs[i] > 0.0:
            return i
    return last


def top_n(values: np.ndarray, n: int) -> np.ndarray:
    """The ids of the n largest values, largest first, ties by id: the trace's "top few".

    One pass per chunk on the threads, each keeping its n best in a small sorted list (most
    blocks of values have none to offer), then the chunks' lists merged. An argpartition of
    262,144 values took milliseconds; this takes a few hundredths of one."""
    values = np.ascontiguousarray(values)
    n = max(0, min(n, values.shape[0]))
    return _top_n_kernel(values, n) if n else np.empty(0, np.int64)


@njit(parallel=True, cache=True)
def _top_n_kernel(values, n):
    size = values.shape[0]
    step = -(-size // N_ROW_CHUNKS)
    best = np.full((N_ROW_CHUNKS, n), -1, np.int64)
    for c in prange(N_ROW_CHUNKS):
        _top_n_chunk(values[c * step : min(size, (c + 1) * step)], c * step, best[c])
    ids = best.reshape(-1)
    ids = ids[ids >= 0]  # (chunks shorter than n leave -1)
    keys = np.empty(ids.shape[0])
    for j in range(ids.shape[0]):
        keys[j] = -np.float64(values[ids[j]])
    order = np.argsort(ids)  # id order first, so the stable sort below breaks ties by id
    ids, keys = ids[order], keys[order]
    return ids[np.argsort(keys, kind="mergesort")][:n]


@njit(cache=True)
def _top_n_chunk(values, offset, best):
    """best[:] = the ids of values' n largest, largest first, ties by id (-1 while unfilled).
    A block of BLOCK64 where nothing beats the n-th best costs a vectorized count: most."""
    n, filled = best.shape[0], 0
    for b0 in range(0, values.shape[0], BLOCK64):
        block = values[b0 : b0 + BLOCK64]
        if filled == n and _count_above(block, values[best[n - 1] - offset]) == 0:
            continue
        for i in range(b0, b0 + block.shape[0]):
            v = values[i]
            if filled == n and not v > values[best[n - 1] - offset]:
                continue  # not above the n-th best (an equal value has a larger id: it loses)
            j = filled if filled < n else n - 1  # insert, shifting the smaller ones down
            while j > 0 and v > values[best[j - 1] - offset]:
                best[j] = best[j - 1]
                j -= 1
            best[j] = offset + i
            filled = min(filled + 1, n)


@njit(cache=True)
def _count_above(values, bound):
    found = 0
    for i in range(values.shape[0]):
        found += values[i] > bound  # no branch: it vectorizes
    return found
