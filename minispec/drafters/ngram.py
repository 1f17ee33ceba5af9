"""Prompt lookup: draft by copying what followed the same n-gram earlier in the context.

Saxena 2023 ("prompt lookup decoding"), the n-gram variant of Yang et al. 2023 (LLMA). When a
model edits code or quotes its input, the next tokens often already appear in the context: find
the longest recent suffix n-gram (n = max_n down to min_n) that occurred before, and propose the
k tokens that followed its most recent earlier occurrence. No model, no probabilities (q is
one-hot on the copied token), almost no cost: a miss just means a plain decoding step.
"""

from __future__ import annotations

import numpy as np

from minispec.drafters.base import Draft, DraftContext
from minispec.errors import InputError
from minispec.model import Model
from minispec.sampling import SamplingParams


def lookup(tokens: list[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """The up to k tokens that followed the latest earlier match of the longest suffix n-gram."""
    seq = np.asarray(tokens, dtype=np.int64)  # (S,)
    for n in range(min(max_n, len(seq) - 1), min_n - 1, -1):
        suffix = seq[-n:]
        # windows[i] = seq[i : i + n], for every start i whose n-gram ends before the suffix
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # (S - n, n)
        starts = np.flatnonzero((windows == suffix).all(axis=1))
        if starts.size:
            follow = int(starts[-1]) + n  # the most recent match
            return seq[follow : follow + k].tolist()
    return []


class NgramDrafter:
    """Prompt lookup with n-grams of max_n down to min_n tokens."""

    vocab_size = None  # copies tokens from the context: any vocabulary

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise InputError(f"n-gram sizes need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.name = f"ngram({max_n}..{min_n})"

    def reset(self, target: Model) -> None:
        pass  # stateless: every proposal reads the context afresh

    def propose(
        self, ctx: DraftContext, k: int, sampling: SamplingParams, rng: np.random.Generator
    ) -> Draft:
        return Draft(lookup(ctx.tokens, k, self.max_n, self.min_n), q=None)

    def rollback(self, n_tokens: int) -> None:
        pass
