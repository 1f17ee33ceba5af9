"""Token trees: the mask, one verify pass over every node, and the cache after compaction.

The promise that makes greedy tree decoding exact: node i's logits in the tree pass are bit for
bit the logits plain decoding gives after the path root -> i, and after `compact` the cache is
bit for bit what a fresh prefill of the accepted text writes.
"""

import numpy as np
import pytest

from minispec.kv_cache import new_cache
from minispec.model import forward, forward_hidden, reference
from minispec.tiny import tiny_model
from minispec.tree import (
    SAMPLED,
    TokenTree,
    ancestor_mask,
    chain,
    compact,
    depths,
    path_to,
    tree_mask,
)

#         0 ── 1 ── 2 ── 3
#         │    └─── 6
#         └─── 4 ── 5 ── 7
PARENTS = [-1, 0, 1, 2, 0, 4, 1, 5]


def test_the_mask_shows_each_node_its_path_and_nothing_else():
    mask = ancestor_mask(PARENTS)
    assert mask[3].tolist() == [True, True, True, True, False, False, False, False]
    assert mask[6].tolist() == [True, True, False, False, False, False, True, False]
    assert mask[7].tolist() == [True, False, False, False, True, True, False, True]
    assert depths(PARENTS).tolist() == [0, 1, 2, 3, 1, 2, 2, 3]
    assert path_to(PARENTS, 7) == [0, 4, 5, 7]


def test_a_chain_is_the_tree_with_the_causal_mask():
    tree = chain([9, 8, 7, 6])
    assert tree.parents == [-1, 0, 1, 2]
    assert np.array_equal(ancestor_mask(tree.parents), np.tril(np.ones((4, 4), bool)))


@pytest.mark.parametrize(
    "tokens, parents, proposal, problem",
    [
        ([1, 2], [0, 0], "top", "root"),
        ([1, 2, 3], [-1, 2, 0], "top", "before"),
        ([1, 2, 2], [-1, 0, 0], "top", "repeats"),
        ([1, 2], [-1, 0], "beam", "proposal"),
    ],
)
def test_a_malformed_tree_is_refused(tokens, parents, proposal, problem):
    with pytest.raises(ValueError, match=problem):
        TokenTree(tokens, parents, proposal)


def tree_tokens(rng):
    """Distinct siblings: a tree never proposes one token twice under one parent."""
    return rng.choice(np.arange(4, 260), size=len(PARENTS), replace=False).tolist()


def verify_tree(model, context, tokens, parents):
    """The tree pass after a prefix: (logits (n + 1, vocab), hidden, cache)."""
    cache = new_cache(model.config, capacity=64)
    forward(model, context[:-1], cache)
    out = forward_hidden(model, tokens, cache, tree=tree_mask(parents, cache.length))
    return out.logits, out.hidden, cache


def decode_path(model, context, path_tokens):
    """Plain decoding, one token at a time: each token's logits, and the cache."""
    cache = new_cache(model.config, capacity=64)
    forward(model, context[:-1], cache)
    rows = [forward(model, [t], cache)[0] for t in path_tokens]
    return np.stack(rows), cache


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("weights", ["float32", "int8"])
def test_every_node_sees_what_plain_decoding_of_its_path_sees(fast, weights):
    model = tiny_model(seed=5, weights=weights)
    model = model if fast else reference(model)
    rng = np.random.default_rng(1)
    context = rng.integers(4, 260, 23).tolist()
    tokens = [context[-1]] + tree_tokens(rng)[1:]
    logits, _, _ = verify_tree(model, context, tokens, PARENTS)
    for node in range(len(PARENTS)):
        path = path_to(PARENTS, node)
        rows, _ = decode_path(model, context, [tokens[i] for i in path])
        if fast:  # the kernels: the same bits
            assert np.array_equal(logits[node], rows[-1]), f"node {node}"
        else:  # BLAS promises no bits across shapes, only the same numbers
            np.testing.assert_allclose(logits[node], rows[-1], rtol=1e-4, atol=1e-4)


def test_the_sliding_window_is_cut_at_the_paths_position():
    """A prefix longer than the window: a node of depth d reads the window its path would."""
    model = tiny_model(seed=2)
    window = model.config.sliding_window
    rng = np.random.default_rng(2)
    context = rng.integers(4, 260, window + 5).tolist()
    tokens = [context[-1]] + tree_tokens(rng)[1:]
    logits, _, _ = verify_tree(model, context, tokens, PARENTS)
    for node in (3, 6, 7):
        rows, _ = decode_path(model, context, [tokens[i] for i in path_to(PARENTS, node)])
        assert np.array_equal(logits[node], rows[-1]), f"node {node}"


@pytest.mark.parametrize("accepted", [[0], [0, 1, 6], [0, 4, 5, 7], [0, 1, 2, 3]])
def test_compaction_leaves_the_cache_of_a_fresh_prefill(accepted):
    model = tiny_model(seed=4)
    rng = np.random.default_rng(3)
    context = rng.integers(4, 260, 30).tolist()
    tokens = [context[-1]] + tree_tokens(rng)[1:]
    _, _, cache = verify_tree(model, context, tokens, PARENTS)
    base = len(context) - 1
    prefix_keys = cache.keys[:, :base].copy()
    compact(cache, base, accepted)
    fresh = new_cache(model.config, capacity=64)
    forward(model, context + [tokens[i] for i in accepted[1:]], fresh)
    assert cache.length == fresh.length == base + len(accepted)
    assert np.array_equal(cache.keys[:, : cache.length], fresh.keys[:, : fresh.length])
    assert np.array_equal(cache.values[:, : cache.length], fresh.values[:, : fresh.length])
    assert np.array_equal(cache.keys[:, :base], prefix_keys)


def test_a_tree_of_sampled_siblings_keeps_its_q():
    q = np.full(5, 0.2)
    tree = TokenTree([1, 2, 3], [-1, 0, 0], SAMPLED, q={0: q})
    assert tree.children(0) == [1, 2] and tree.q[0] is q and tree.n_drafted == 2


@pytest.mark.slow
def test_real_model_tree_nodes_match_plain_decoding(real_checkpoint):
    from minispec.loading import load_model

    model = load_model(real_checkpoint)
    rng = np.random.default_rng(7)
    context = rng.integers(4, model.config.vocab_size, 120).tolist()
    tokens = [context[-1]] + rng.choice(model.config.vocab_size, 7, replace=False).tolist()
    logits, _, _ = verify_tree(model, context, tokens, PARENTS)
    for node in (3, 6, 7):
        rows, _ = decode_path(model, context, [tokens[i] for i in path_to(PARENTS, node)])
        assert np.array_equal(logits[node], rows[-1]), f"node {node}"
