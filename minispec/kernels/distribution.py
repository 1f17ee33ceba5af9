"""Sampling has three kernels of its own: `distribution_row` (temperature, top-k and top-p over
a row of 262,144 logits without sorting it: `sampling.distribution`), `sample_row` (an inverse-
CDF draw) and `top_n` (the trace's few most likely tokens). A sampled step makes one such row
per verified and per drafted position, so each costs a fraction of a millisecond, not the
milliseconds of NumPy's sorts.

Which compiled path a row takes is `cut_kind` (nothing cut, top-k, or top-p alone).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minispec.kernels.pointwise import ordered_sum

BUCKETS = 2048  # the histogram's bins: the one that holds the edge has few tokens to sort
N_ROW_CHUNKS = 8  # a row's fixed ranges for the threads
BLOCK64 = 256  # `_exp_kernel` goes through its range this many logits at a time (in L1)


def cut_kind(top_k: int, top_p: float, vocab: int) -> str:
    """How `distribution_row` finds the kept tokens: "none" (every token kept, no histogram),
    "top-k" (the histogram's counts find the k-th token, then top-p walks them) or "top-p"
    (top-p alone: the histogram's masses find the edge)."""
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
         their sum; when top-k or top-p is on, also a histogram of the logits in BUCKETS bins
         from the largest down, with each bin's count (top-k) or mass (top-p alone);
      3. the edge (`_find_cut`): with top-k, the counts find the bin of the k-th token, and
         the tokens of the bins down to it are sorted and walked for top-p; with top-p alone,
         the masses find the bin where the mass before a token reaches top_p, and only that
         bin's tokens are sorted. Sorted by logit then id, as the reference sorts, so the kept
         set is exactly the reference's: the tokens up to a cut (logit, id). On the threads
         again, out = e / (the kept tokens' sum of e) up to the cut, 0 after it.
    exp is monotone, so ordering by logit is ordering by probability. The row is cut into
    N_ROW_CHUNKS fixed ranges whose sums are added in a fixed order: the same bits whatever the
    number of threads. logits: (vocab,) float32 or float64; temperature > 0.
    """
    hi = float(logits.max())
    if not hi < np.inf:
        raise ValueError("the logits contain NaN or +inf: no distribution can be made from them")
    if hi == -np.inf:
        raise ValueError("every logit is -inf: no token has any probability")
    vocab = logits.shape[0]
    kind = cut_kind(top_k, top_p, vocab)
    cut_on = kind != "none"
    scale = 0.0
    if cut_on:
        lo = float(logits.min())
        if lo == -np.inf:  # masked tokens (a cheap head's unscored ones) have a bin of their own
            lo = float(logits[logits > -np.inf].min())
        scale = (BUCKETS - 1) / (hi - lo) if hi > lo else 0.0
    mass = np.zeros((N_ROW_CHUNKS, BUCKETS + 1 if cut_on else 1))
    count = np.zeros((N_ROW_CHUNKS, BUCKETS + 1 if kind == "top-k" else 0), np.int64)
    bins = np.empty(vocab if cut_on else 0, np.int16)
    _exp_kernel(logits, hi, temperature, scale, out, mass, count, bins)
    if not cut_on:
        _scale_kernel(logits, -np.inf, vocab, 1.0 / mass[:, 0].sum(), out)  # every token kept
        return
    cut_logit, cut_id, kept_mass = _find_cut(logits, out, bins, mass, count, top_k, top_p)
    _scale_kernel(logits, cut_logit, cut_id, 1.0 / kept_mass, out)


@njit(parallel=True, cache=True)
def _exp_kernel(logits, hi, temperature, scale, out, mass, count, bins):
    """Pass 2 on the threads, chunk by chunk (`_exp_chunk`)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    cut_on = bins.shape[0] > 0
    for c in prange(N_ROW_CHUNKS):
        a, b = c * step, min(n, (c + 1) * step)
        chunk_bins = bins[a:b] if cut_on else bins
        _exp_chunk(logits[a:b], hi, temperature, scale, out[a:b], mass[c], count[c], chunk_bins)


@njit(cache=True)
def _exp_chunk(logits, hi, temperature, scale, out, mass, count, bins):
    """out = exp((logits - hi) / T); its sum in mass[0] or, when bins has room (top-k or top-p
    on), each logit's bin in bins and each bin's count (top-k on: count has room) or mass (top-p
    alone). BLOCK64 logits at a time, so that each pass over a block finds it in L1. (The
    chunk's arrays are slices whose indices start at 0, which lets LLVM vectorize the loops.)"""
    scratch = np.empty((2, BLOCK64), np.int64)
    cut_on, counting = bins.shape[0] > 0, count.shape[0] > 0
    for b0 in range(0, logits.shape[0], BLOCK64):
        b1 = min(b0 + BLOCK64, logits.shape[0])
        block = out[b0:b1]
        _shift_and_scale(logits[b0:b1], hi, 1.0 / temperature, block)
        _exp64_block(block, scratch)
        if not cut_on:
            mass[0] += ordered_sum(block)
            continue
        _bin_block(logits[b0:b1], hi, scale, bins[b0:b1])
        if counting:  # top-k finds its edge by counts
            for i in range(b0, b1):
                count[bins[i]] += 1
        else:  # top-p alone, by mass
            for i in range(b0, b1):
                mass[bins[i]] += out[i]


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


@njit(cache=True)
def _bin_block(logits, hi, scale, bins):
    """Each logit's histogram bin: 0 holds the largest, BUCKETS the -inf ones."""
    for i in range(logits.shape[0]):
        v = np.float64(logits[i])
        b = (hi - v) * scale if v > -np.inf else BUCKETS
        bins[i] = np.int16(b if b < BUCKETS - 1 else BUCKETS - 1) if v > -np.inf else BUCKETS


@njit(cache=True)
def _find_cut(logits, e, bins, mass_c, count_c, top_k, top_p):
    """Pass 3's edge: (cut logit, cut id, the kept tokens' mass). Token i is kept iff it comes
    no later than the cut in the reference's order: a larger logit, or the same and id <= cut id.
    """
    n = logits.shape[0]
    if 0 < top_k < n:
        # top-k: the bins down to the one holding the k-th token, sorted; every token at least
        # as large as the k-th is kept (ties too), then top-p walks them in order
        count = np.zeros(count_c.shape[1], np.int64)  # the chunks' counts, in a fixed order
        for c in range(count_c.shape[0]):
            count += count_c[c]
        seen, b = 0, 0
        while seen + count[b] < top_k:
            seen += count[b]
            b += 1
        ids = _bin_members(logits, bins, 0, b)
        cut_logit = np.float64(logits[ids[top_k - 1]])
        kept_mass = 0.0
        for i in ids:
            if np.float64(logits[i]) < cut_logit:
                break
            kept_mass += e[i]
        if top_p >= 1.0:
            return cut_logit, n, kept_mass
        return _walk_top_p(logits, e, ids, cut_logit, top_p * kept_mass, 0.0, n)
    # top-p alone: the bins' masses find the bin where the mass before a token reaches
    # top_p * total; only that bin's tokens are sorted
    mass = np.zeros(mass_c.shape[1])  # the chunks' histograms, added in a fixed order
    for c in range(mass_c.shape[0]):
        mass += mass_c[c]
    threshold, before, b = top_p * mass.sum(), 0.0, 0
    while b < BUCKETS and before + mass[b] < threshold:
        before += mass[b]
        b += 1
    ids = _bin_members(logits, bins, b, b)
    return _walk_top_p(logits, e, ids, -np.inf, threshold, before, n)


@njit(cache=True)
def _walk_top_p(logits, e, ids, cut_logit, threshold, before, n):
    """Walk ids (sorted) keeping each token while the mass before it, starting at `before`, is
    below the threshold (and its logit is not below cut_logit): (cut logit, cut id, kept mass)."""
    last = -1
    for i in ids:
        if before >= threshold or np.float64(logits[i]) < cut_logit:
            break
        last, before = i, before + e[i]
    if last < 0:  # rounding walked past every bin: everything (that top-k kept) stays
        return cut_logit, n, before
    return np.float64(logits[last]), last, before


@njit(parallel=True, cache=True)
def _bin_members(logits, bins, b0, b1):
    """The ids in bins b0..b1, sorted by logit from the largest, ties by id (the reference's
    order)."""
    n = logits.shape[0]
    step = -(-n // N_ROW_CHUNKS)
    first = np.zeros(N_ROW_CHUNKS + 1, np.int64)  # where each chunk's members go
    for c in prange(N_ROW_CHUNKS):
        first[c + 1] = _count_in_chunk(bins[c * step : min(n, (c + 1) * step)], b0, b1)
    first = np.cumsum(first)
    ids = np.empty(first[N_ROW_CHUNKS], np.int64)
    for c in prange(N_ROW_CHUNKS):
        chunk = bins[c * step : min(n, (c + 1) * step)]
        _find_in_chunk(chunk, b0, b1, c * step, ids[first[c] :])
    values = np.empty(ids.shape[0])
    for j in range(ids.shape[0]):
        values[j] = -np.float64(logits[ids[j]])
    return ids[np.argsort(values, kind="mergesort")]  # stable: equal logits stay in id order


@njit(cache=True)
def _count_in_chunk(bins, b0, b1):
    n = 0
    for i in range(bins.shape[0]):
        n += (bins[i] >= b0) & (bins[i] <= b1)
    return n


@njit(cache=True)
def _find_in_chunk(bins, b0, b1, offset, ids):
    j = 0
    for i in range(bins.shape[0]):
        if b0 <= bins[i] <= b1:
            ids[j] = offset + i
            j += 1


@njit(parallel=True, cache=True)
def _scale_kernel(logits, cut_logit, cut_id, factor, out):
    """Pass 3 on the threads: out[i] *= factor up to the cut, 0 after it (`_scale_chunk`)."""
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
    values fail the first comparison), then the chunks' lists merged. An argpartition of
    262,144 values took milliseconds; this takes a fraction of one."""
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
    """best[:] = the ids of values' n largest, largest first, ties by id (-1 while unfilled)."""
    n, filled = best.shape[0], 0
    for i in range(values.shape[0]):
        v = values[i]
        if filled == n and not v > values[best[n - 1] - offset]:
            continue  # not above the n-th best (an equal value has a larger id: it loses)
        j = filled if filled < n else n - 1  # insert, shifting the smaller ones down
        while j > 0 and v > values[best[j - 1] - offset]:
            best[j] = best[j - 1]
            j -= 1
        best[j] = offset + i
        filled = min(filled + 1, n)
