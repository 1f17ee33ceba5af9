"""Draft trees: every drafter's `propose_tree`, and the EAGLE-2 growth they share.

What must hold for the tree verifier to be exact: the tree is well formed and within its
budget, the target's cache is as it was, a greedy tree's top path is the chain the drafter
would have drafted, each node's scores are bit for bit what drafting its path one token at a
time gives (a depth drafted in one batched pass), and sampled children are distinct draws
from the q stored with their parent, in draw order.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from minispec.drafters import (
    DraftContext,
    DraftModelDrafter,
    EarlyExitDrafter,
    FallbackDrafter,
    MTPDrafter,
    NgramDrafter,
    make_drafter,
)
from minispec.drafters.early_exit import early_exit_hidden
from minispec.drafters.mtp import config_for, head_logits, init_params, mtp_step, visible
from minispec.drafters.tree_search import (
    Candidates,
    TreeShape,
    default_shape,
    draw_without_replacement,
    grow_tree,
    most_likely,
    softmax_at,
)
from minispec.errors import InputError
from minispec.kernels import take_rows
from minispec.kv_cache import new_cache
from minispec.model import forward, softmax
from minispec.sampling import SamplingParams
from minispec.speculative import prefill
from minispec.tiny import tiny_model
from minispec.tree import SAMPLED, TOP, TokenTree, path_to

GREEDY = SamplingParams()
SAMPLING = SamplingParams(temperature=0.8, top_p=0.9)
TEXT = "the cat sat on the mat; the cat ate"


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0)


def context_for(model, tokens):
    """A DraftContext as the loop builds it: the cache holds all but the newest token."""
    state, _ = prefill(model, tokens[:-1], GREEDY, np.random.default_rng(0), capacity=64)
    state.tokens[-1] = tokens[-1]
    return DraftContext(state.tokens, model, state.cache, state.hidden)


def tiny_mtp(target, seed=0):
    """An untrained MTP drafter with non-trivial scores (random matrices, a random mean)."""
    cfg = config_for(target, width=16, d_ff=32, head_size=120)
    d = target.config.hidden_size
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(d).astype(np.float32)
    params = init_params(cfg, target, np.arange(4, 124), np.ones(d, np.float32), mean, seed)
    return MTPDrafter(target, params, cfg)


MODEL_DRAFTERS = ["mtp", "early-exit", "early-exit-cheap", "draft-model", "int8"]


def make(name, target):
    """A fresh drafter of each kind, reset for the target."""
    d = {
        "mtp": lambda: tiny_mtp(target),
        "early-exit": lambda: EarlyExitDrafter(target, n_layers=3),
        "early-exit-cheap": lambda: EarlyExitDrafter(target, n_layers=3, head_size=100),
        "draft-model": lambda: DraftModelDrafter(tiny_model(seed=7)),
        "int8": lambda: make_drafter("int8", target),
        "ngram": lambda: NgramDrafter(),
    }[name]()
    d.reset(target)
    return d


def path_rows(drafter, ctx, path_tokens):
    """The drafter's raw scores after root, root + path[:1], ..., drafted one token at a time
    (the chain's own steps, along a given path): (len(path) + 1) rows (vocab,)."""
    tokens = [ctx.tokens[-1], *path_tokens]
    if isinstance(drafter, MTPDrafter):
        d, cache = drafter, ctx.target_cache
        n, cfg = cache.length, d.cfg
        keys, values = cache.keys[cfg.kv_layer, :n], cache.values[cfg.kv_layer, :n]
        h, rows = np.asarray(ctx.target_hidden, np.float32)[None], []
        for j, token in enumerate(tokens):
            pos = np.array([n + j])
            e = take_rows(ctx.target.params.embed, np.array([token])) * d.embed_scale
            bounds = visible(pos, n, cfg.window)
            h = mtp_step(d.step_params, cfg, e, h, keys, values, pos, bounds, d.fast)
            scores = head_logits(h, d.final_norm, d.head_rows, cfg.eps, d.fast)  # (1, |S|)
            rows.append(d.full_logits(scores[0]))
        return rows
    if isinstance(drafter, EarlyExitDrafter):
        cache, start = ctx.target_cache, ctx.target_cache.length
        extra = drafter.context_rows(ctx.tokens)
        rows = [
            drafter.head(early_exit_hidden(ctx.target, [t], cache, drafter.n_layers), extra)
            for t in tokens
        ]
        cache.truncate(start)
        return rows
    cache = new_cache(drafter.draft.config, capacity=64)
    rows = [forward(drafter.draft, ctx.tokens, cache, last_only=True)[-1]]
    return rows + [forward(drafter.draft, [t], cache)[0] for t in path_tokens]


def top_path(tree: TokenTree) -> list[int]:
    """The drafted tokens along the first child of every node, from the root down."""
    node, tokens = 0, []
    while children := tree.children(node):
        node = children[0]
        tokens.append(tree.tokens[node])
    return tokens


# ------------------------------------------------------------------------ every drafter


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLING], ids=["greedy", "sampled"])
@pytest.mark.parametrize("n_nodes", [1, 6, 13])
@pytest.mark.parametrize("name", [*MODEL_DRAFTERS, "ngram"])
def test_a_tree_is_well_formed_within_budget_and_leaves_the_target_cache(
    target, name, n_nodes, sampling
):
    tokens = target.tokenizer.encode(TEXT).ids
    ctx = context_for(target, tokens)
    cache = ctx.target_cache
    n = cache.length
    keys, values = cache.keys[:, :n].copy(), cache.values[:, :n].copy()
    tree = make(name, target).propose_tree(ctx, n_nodes, sampling, np.random.default_rng(1))
    TokenTree(tree.tokens, tree.parents, tree.proposal)  # the checks, once more
    assert tree.tokens[0] == tokens[-1] and 1 <= tree.n_drafted <= n_nodes
    if name != "ngram":  # a model drafter always fills its budget
        assert tree.n_drafted == n_nodes
    proposal = SAMPLED if name != "ngram" and not sampling.greedy else TOP
    assert tree.proposal == proposal
    assert cache.length == n
    np.testing.assert_array_equal(cache.keys[:, :n], keys)
    np.testing.assert_array_equal(cache.values[:, :n], values)


@pytest.mark.parametrize("name", MODEL_DRAFTERS)
def test_greedy_top_path_is_the_chain_and_every_row_is_the_chains(target, name):
    tokens = target.tokenizer.encode(TEXT).ids
    ctx = context_for(target, tokens)
    drafter = make(name, target)
    tree = drafter.propose_tree(ctx, 10, GREEDY, None)
    assert tree.q == {}  # greedy: no q
    path = top_path(tree)
    drafter.reset(target)  # the draft model's cache: start afresh, as the tree did
    chain = drafter.propose(ctx, len(path), GREEDY, None)
    assert chain.tokens == path
    for node, row in tree.logit_rows.items():  # each expanded node: batched == one by one
        drafted = [tree.tokens[i] for i in path_to(tree.parents, node)[1:]]
        np.testing.assert_array_equal(row, path_rows(drafter, ctx, drafted)[-1])
    # the children are the node's most likely tokens, most likely first
    for node, row in tree.logit_rows.items():
        kids = [tree.tokens[i] for i in tree.children(node)]
        assert kids == most_likely(row, 4)[: len(kids)]


@pytest.mark.parametrize("name", MODEL_DRAFTERS)
def test_sampled_children_are_distinct_draws_from_the_stored_q(target, name):
    tokens = target.tokenizer.encode(TEXT).ids
    ctx = context_for(target, tokens)
    drafter = make(name, target)
    tree = drafter.propose_tree(ctx, 10, SAMPLING, np.random.default_rng(3))
    for node in range(tree.n_drafted + 1):
        kids = tree.children(node)
        if not kids:
            continue
        q = tree.q[node]
        np.testing.assert_allclose(q.sum(), 1.0)
        assert all(q[tree.tokens[k]] > 0 for k in kids)
        assert len({tree.tokens[k] for k in kids}) == len(kids)
    # the root's q is the chain's first: the same distribution, shaped the same way
    drafter.reset(target)
    chain = drafter.propose(ctx, 1, SAMPLING, np.random.default_rng(3))
    np.testing.assert_array_equal(tree.q[0], chain.q[0])


def test_gumbel_top_k_draws_without_replacement():
    """Ordered pairs of the first two draws: P(a, b) = q(a) q(b) / (1 - q(a))."""
    q = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    n = 4000
    counts: dict[tuple[int, int], int] = {}
    for seed in range(n):
        a, b = draw_without_replacement(q, 2, np.random.default_rng(seed))
        counts[a, b] = counts.get((a, b), 0) + 1
    pairs = [(a, b) for a in range(4) for b in range(4) if a != b]
    assert set(counts) <= set(pairs)  # distinct, and never a token of probability 0
    expected = np.array([n * q[a] * q[b] / (1 - q[a]) for a, b in pairs])
    seen = np.array([counts.get(p, 0) for p in pairs])
    chi2 = float(np.sum((seen - expected) ** 2 / expected))
    assert chi2 < chi2_quantile_999(len(pairs) - 1)


def test_the_root_children_of_a_sampled_tree_are_drawn_in_order(target):
    """At drafter level, over seeds: the first child is a draw from q, the second a draw from
    q without the first, P(second = b) = sum over a != b of q(a) q(b) / (1 - q(a))."""
    tokens = target.tokenizer.encode(TEXT).ids
    ctx = context_for(target, tokens)
    drafter = make("mtp", target)
    sampling = SamplingParams(temperature=0.2)  # a few likely tokens: cells worth counting
    n = 600
    drawn = []
    for seed in range(n):
        tree = drafter.propose_tree(ctx, 2, sampling, np.random.default_rng(seed))
        drawn.append([tree.tokens[i] for i in tree.children(0)])
    assert all(len(pair) == 2 for pair in drawn)  # two children fill a budget of two
    q = tree.q[0]
    second = q * np.sum(q / (1 - q)) - q * q / (1 - q)  # (vocab,) the second draw's law
    for j, law in enumerate([q, second]):
        likely = np.flatnonzero(law * n >= 20)  # cells with enough expected counts
        expected = np.append(n * law[likely], n * (1 - law[likely].sum()))  # the rest pooled
        seen = [sum(pair[j] == t for pair in drawn) for t in likely]
        seen = np.array([*seen, n - sum(seen)])
        chi2 = float(np.sum((seen - expected) ** 2 / expected))
        assert len(likely) >= 3 and chi2 < chi2_quantile_999(len(likely))


def chi2_quantile_999(df: int) -> float:
    """The chi-square distribution's 0.999 quantile (Wilson & Hilferty 1931: within 1 %)."""
    z = 3.0902  # the standard normal's 0.999 quantile
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


# ----------------------------------------------------------------------------- the growth


def fake_drafter(peaked: bool, vocab: int = 50):
    """Scores that are sure of token 7 everywhere (peaked) or flat over 5 tokens."""

    def score(c, frontier):
        rows = np.full((len(frontier), vocab), -np.inf, np.float32)
        rows[:, 5:10] = 0.0
        if peaked:
            rows[:, 7] = 8.0
        return rows

    return score


def test_confident_paths_grow_deep_and_unsure_ones_wide():
    deep = grow_tree(1, fake_drafter(peaked=True), 8, GREEDY, None)
    wide = grow_tree(1, fake_drafter(peaked=False), 8, GREEDY, None)
    assert max(len(path_to(deep.parents, i)) for i in range(9)) - 1 == 8  # a chain of 7s
    assert top_path(deep) == [7] * 8
    assert len(wide.children(0)) == default_shape(8).width  # four equally likely first tokens
    assert max(len(path_to(wide.parents, i)) for i in range(9)) - 1 <= 2


def test_the_kept_nodes_are_the_best_scored_and_closed():
    shape = TreeShape(width=3, beam=2, depth=4)
    rng = np.random.default_rng(0)

    def score(c, frontier):
        return rng.standard_normal((len(frontier), 30)).astype(np.float32)

    tree = grow_tree(1, score, 7, GREEDY, None, shape=shape)
    assert tree.n_drafted == 7
    q = {node: softmax(row.astype(np.float64)) for node, row in tree.logit_rows.items()}
    path_score = [1.0]
    for i in range(1, 8):
        path_score.append(path_score[tree.parents[i]] * q[tree.parents[i]][tree.tokens[i]])
    for node, row in tree.logit_rows.items():
        ranked = most_likely(row, shape.width)
        kids = [tree.tokens[i] for i in tree.children(node)]
        assert kids == ranked[: len(kids)]  # closed: a child only with every earlier sibling
        for token in ranked[len(kids) :]:  # a child left out scores no better than any kept
            assert path_score[node] * q[node][token] <= min(path_score[1:]) * (1 + 1e-12)
    with pytest.raises(InputError, match="n_nodes"):
        grow_tree(1, score, -1, GREEDY, None)
    assert grow_tree(1, score, 0, GREEDY, None).n_drafted == 0


def path_scores(vocab: int = 30, sure: float = 0.0):
    """A drafter whose scores depend on a node's path alone (not on the order it is asked),
    and which counts the rows it scores. sure > 0: token 3 ahead of the rest by that much."""
    rows_scored = []

    def score(c, frontier):
        rows = []
        for node in frontier:
            path = tuple(c.tokens[i] for i in path_to(c.parents, node))
            seed = zlib.crc32(repr(path).encode())
            row = np.random.default_rng(seed).standard_normal(vocab).astype(np.float32)
            row[3] += sure
            rows.append(row)
        rows_scored.append(len(frontier))
        return np.stack(rows)

    return score, rows_scored


def unpruned_best(root: int, score, n: int, shape: TreeShape) -> list[tuple[int, ...]]:
    """The paths of the n best nodes when every beam node is expanded for `depth` passes."""
    c = Candidates([root], [-1], [0], [1.0])
    frontier = [0]
    for _ in range(shape.depth):
        born = []
        for node, row in zip(frontier, score(c, frontier), strict=True):
            kids = most_likely(row, shape.width)
            for token, qj in zip(kids, softmax_at(row, kids), strict=True):
                c.tokens.append(token)
                c.parents.append(node)
                c.depths.append(c.depths[node] + 1)
                c.scores.append(c.scores[node] * min(float(qj), 1.0))
                born.append(len(c.tokens) - 1)
        frontier = sorted(born, key=lambda i: (-c.scores[i], i))[: shape.beam]
    keep = sorted(range(1, len(c.tokens)), key=lambda i: (-c.scores[i], i))[:n]
    return sorted(tuple(c.tokens[j] for j in path_to(c.parents, i)) for i in keep)


@pytest.mark.parametrize("sure, n", [(0.0, 8), (4.0, 8), (6.0, 12)])
def test_pruning_the_frontier_keeps_the_same_tree_and_scores_fewer_rows(sure, n):
    # (sure 4 or 6: several frontier nodes still have kept descendants after n are drafted,
    # so a prune that keeps only the best frontier node gives another tree)
    shape = TreeShape(width=4, beam=4, depth=8)
    score, rows = path_scores(sure=sure)
    tree = grow_tree(1, score, n, GREEDY, None, shape=shape)
    kept = sorted(tuple(tree.tokens[j] for j in path_to(tree.parents, i)) for i in range(1, n + 1))
    pruned_rows = sum(rows)
    full, all_rows = path_scores(sure=sure)
    assert kept == unpruned_best(1, full, n, shape)
    assert pruned_rows < sum(all_rows)  # the nodes that could not make the cut were not scored


# --------------------------------------------------------------------------- prompt lookup


def test_ngram_two_earlier_matches_give_two_branches(target):
    tokens = [1, 2, 3, 7, 8, 4, 1, 2, 3, 9, 10, 5, 1, 2, 3]
    ctx = DraftContext(tokens, target, new_cache(target.config, 8), np.zeros(64, np.float32))
    tree = NgramDrafter().propose_tree(ctx, 4, GREEDY, None)
    # the latest match (9, 10, ...) first at each depth, the older (7, 8, ...) second
    assert tree.tokens == [3, 9, 7, 10, 8] and tree.parents == [-1, 0, 0, 1, 2]
    assert tree.proposal == TOP and tree.q == {}


def test_ngram_one_match_is_the_chain_and_shared_beginnings_merge(target):
    one = [5, 1, 2, 8, 6, 2, 7, 1, 2]
    ctx = DraftContext(one, target, new_cache(target.config, 8), np.zeros(64, np.float32))
    tree = NgramDrafter().propose_tree(ctx, 4, GREEDY, None)
    assert top_path(tree) == NgramDrafter().propose(ctx, 4, GREEDY, None).tokens
    assert tree.parents == [-1, 0, 1, 2, 3]  # a chain
    shared = [1, 2, 5, 6, 1, 2, 5, 7, 1, 2]
    ctx = DraftContext(shared, target, new_cache(target.config, 8), np.zeros(64, np.float32))
    tree = NgramDrafter().propose_tree(ctx, 3, GREEDY, None)
    assert tree.tokens == [2, 5, 7, 6] and tree.parents == [-1, 0, 1, 1]
    none = DraftContext([1, 2, 3], target, new_cache(target.config, 8), np.zeros(64, np.float32))
    assert NgramDrafter().propose_tree(none, 4, GREEDY, None).n_drafted == 0


def test_fallback_proposes_the_first_non_empty_tree(target):
    d = FallbackDrafter([NgramDrafter(), tiny_mtp(target)])
    repeat = target.tokenizer.encode("abc abc ab").ids
    tree = d.propose_tree(context_for(target, repeat), 5, GREEDY, None)
    assert d.last_used == "ngram(3..1)" and tree.proposal == TOP
    fresh = [2, 4, 5, 6, 7]
    tree = d.propose_tree(context_for(target, fresh), 5, GREEDY, None)
    assert d.last_used == "mtp" and tree.n_drafted == 5


# ------------------------------------------------------------------------ the draft's cache


def test_the_int8_drafters_cache_after_rollback_is_a_fresh_prefill(target):
    drafter = make("int8", target)
    tokens = target.tokenizer.encode(TEXT).ids
    for _ in range(3):  # draft a tree, accept its first two tokens and a correction, again
        ctx = context_for(target, tokens)
        tree = drafter.propose_tree(ctx, 8, GREEDY, None)
        accepted = top_path(tree)[:2]
        drafter.rollback(len(tokens) + len(accepted))
        fresh = new_cache(drafter.draft.config, capacity=64)
        forward(drafter.draft, tokens, fresh)
        n = drafter.cache.length
        assert n == len(tokens)  # the tree's rows are gone; the accepted are fed next time
        np.testing.assert_array_equal(drafter.cache.keys[:, :n], fresh.keys[:, :n])
        np.testing.assert_array_equal(drafter.cache.values[:, :n], fresh.values[:, :n])
        tokens = tokens + accepted + [42]


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_trees_of_mtp_and_early_exit_are_the_chains(real_checkpoint):
    from minispec.drafters.mtp import load_drafter
    from minispec.loading import load_model
    from minispec.tokenizer import encode

    model = load_model(real_checkpoint)
    ids = encode(model.tokenizer, "def fibonacci(n):\n    if n < 2:\n        return n\n")
    ctx = context_for_real(model, ids)
    for drafter in (load_drafter(model), make_drafter("early-exit", model)):
        n = ctx.target_cache.length
        tree = drafter.propose_tree(ctx, 8, GREEDY, None)
        assert tree.n_drafted == 8 and ctx.target_cache.length == n
        chain = drafter.propose(ctx, len(top_path(tree)), GREEDY, None)
        assert chain.tokens == top_path(tree)
        for node, row in tree.logit_rows.items():
            drafted = [tree.tokens[i] for i in path_to(tree.parents, node)[1:]]
            np.testing.assert_array_equal(row, path_rows(drafter, ctx, drafted)[-1])


def context_for_real(model, ids):
    state, _ = prefill(model, ids, GREEDY, np.random.default_rng(0), capacity=256)
    return DraftContext(state.tokens, model, state.cache, state.hidden)
