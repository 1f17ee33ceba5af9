"""Batch invariance: a position's logits do not depend on how many positions share the forward.

Verifying k drafts is one forward of k+1 tokens; plain decoding is k+1 forwards of one token.
If the two gave different bits, greedy speculative decoding could pick a different token where
the top two logits nearly tie. With the streaming kernels (one fixed summation order per output)
and attention computed one query at a time, they are bit-identical (np.array_equal), for a
verify pass and for a whole prompt alike.
"""

import numpy as np
import pytest

from minispec.kv_cache import new_cache
from minispec.model import forward
from minispec.tiny import tiny_model


def one_forward_and_one_by_one(model, context, new):
    together = new_cache(model.config)
    forward(model, context, together)
    rows = forward(model, new, together)  # (T, vocab) in one pass
    alone = new_cache(model.config)
    forward(model, context, alone)
    singles = np.concatenate([forward(model, [t], alone) for t in new])  # T passes of one
    return rows, singles, together, alone


@pytest.mark.parametrize("weights", ["float32", "int8"])
@pytest.mark.parametrize("T", [1, 2, 5, 9, 16, 17, 60])  # 60: a prompt, two row blocks
def test_tiny_model_is_batch_invariant(weights, T):
    model = tiny_model(seed=3, weights=weights)
    rng = np.random.default_rng(T)
    context, new = rng.integers(4, 260, 20).tolist(), rng.integers(4, 260, T).tolist()
    rows, singles, a, b = one_forward_and_one_by_one(model, context, new)
    assert np.array_equal(rows, singles)
    assert np.array_equal(a.keys[:, : a.length], b.keys[:, : b.length])


@pytest.fixture(scope="module")
def real_model(real_checkpoint):
    from minispec.loading import load_model

    return load_model(real_checkpoint)


@pytest.mark.slow
@pytest.mark.parametrize("T", [2, 5, 17, 60])  # 60: a prompt's worth, two row blocks
def test_real_model_is_batch_invariant(real_model, T):
    model = real_model
    rng = np.random.default_rng(T)
    context = rng.integers(4, model.config.vocab_size, 300).tolist()
    new = rng.integers(4, model.config.vocab_size, T).tolist()
    rows, singles, _, _ = one_forward_and_one_by_one(model, context, new)
    assert np.array_equal(rows, singles)
