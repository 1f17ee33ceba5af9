"""Token trees accepted: the rule at one node, the walk over a tree, the loop, the trace.

Notation: p = target, q = draft. The promise: whatever tree the drafter proposes, a tree step
emits its tokens with exactly the target's law (greedy: exactly its argmaxes). Checked
1. exactly, at one node: the law of the emitted token, summed over every ordered draw of the
   siblings and every branch of the rule (`sibling_trials`), is p; a tempting wrong rule is not;
2. exactly, over a whole step on tiny models: the first two tokens of one tree step, summed
   over every tree the drafter can draw and every branch of `accept_tree_sampled`, have the
   target's two-token law;
3. greedy: the loop with trees gives plain greedy decoding's tokens, and its cache is a fresh
   prefill's;
4. statistically on Gemma 3 270M (slow): a chi-square test of the first emitted token.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from test_acceptance_rule import FALSE_FAILURE, FixedDraws, chi_square_p_value

import minispec.tree as tree_module
from minispec.acceptance import acceptance_probability, residual_distribution
from minispec.drafters.base import Draft, one_hot
from minispec.errors import InputError
from minispec.exercises.lesson6 import ordered_draws  # the lesson's enumeration, reused
from minispec.generate import generate
from minispec.kv_cache import new_cache
from minispec.model import forward
from minispec.sampling import SamplingParams, distribution, sample
from minispec.speculative import (
    MAX_TREE_NODES,
    RowsOnDemand,
    accept_greedy,
    accept_or_reject,
    prefill,
    speculative_generate,
    tree_step,
    verify_tree,
)
from minispec.tiny import tiny_model
from minispec.trace import STEP_FIELDS, TREE_FIELDS, Trace, replay, replayed_ids, stats_from_trace
from minispec.tree import (
    SAMPLED,
    TOP,
    SiblingVerdict,
    TokenTree,
    Trial,
    accept_tree_greedy,
    accept_tree_sampled,
    ancestor_mask,
    chain,
    sibling_rule,
    sibling_trials,
)

# ------------------------------------------------------------------- the rule at one node


def emission_law(trials: list[Trial], vocab: int) -> np.ndarray:
    """P(the node emits x): sibling i is tried if all before it were rejected; if all were, the
    token comes from the last residual."""
    law, reach = np.zeros(vocab), 1.0
    for t in trials:
        law[t.token] += reach * t.accept_probability
        reach *= 1.0 - t.accept_probability
    return law + reach * trials[-1].residual


def sampled_law(p: np.ndarray, q: np.ndarray, m: int, trials_of=None) -> np.ndarray:
    """The law of the emitted token when m siblings are drawn from q without replacement."""
    trials_of = trials_of or (lambda cands: sibling_trials(p, q, cands, SAMPLED))
    return sum(prob * emission_law(trials_of(seq), p.size) for seq, prob in ordered_draws(q, m))


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """p and q over 5 or 6 tokens, with zeros on either side and ties within each."""
    vocab = int(rng.integers(5, 7))
    p, q = rng.dirichlet(np.full(vocab, 0.7)), rng.dirichlet(np.full(vocab, 0.7))
    p[rng.integers(vocab)] = 0.0  # a token the target never emits (top-k, top-p)
    q[rng.integers(vocab)] = 0.0  # a token the drafter never proposes
    a, b = rng.choice(vocab, 2, replace=False)
    p[b] = p[a]  # ties
    a, b = rng.choice(np.flatnonzero(q), 2, replace=False)
    q[b] = q[a]
    return p / p.sum(), q / q.sum()


CASES = [random_case(np.random.default_rng(seed)) for seed in range(40)]


@pytest.mark.parametrize("m", [1, 2, 3])
def test_sampled_siblings_emit_exactly_p(m):
    for p, q in CASES:
        np.testing.assert_allclose(sampled_law(p, q, m), p, atol=1e-12, rtol=0)


@pytest.mark.parametrize("b", [1, 2, 3])
def test_top_siblings_emit_exactly_p(b):
    rng = np.random.default_rng(1)
    for p, q in CASES:
        top = np.argsort(-q, kind="stable")[:b].tolist()  # the drafter's most likely, ties too
        any_b = rng.choice(p.size, b, replace=False).tolist()  # any deterministic choice works
        for candidates in (top, any_b):
            law = emission_law(sibling_trials(p, None, candidates, TOP), p.size)
            np.testing.assert_allclose(law, p, atol=1e-12, rtol=0)


def wrong_trials(p: np.ndarray, q: np.ndarray, candidates: list[int]) -> list[Trial]:
    """The tempting wrong rule: the chain's test p_i(c) / q(c) against the ORIGINAL q for every
    sibling, and the chain's residual norm(max(p_i - q, 0)), tried siblings left in q. (Right
    for siblings drawn independently, with replacement; these were drawn without.)"""
    trials, p_i = [], p
    for c in candidates:
        a = acceptance_probability(p_i, q, c)
        p_next = residual_distribution(p_i, q)
        trials.append(Trial(c, float(p_i[c]), float(q[c]), a, p_next))
        p_i = p_next
    return trials


def test_the_wrong_rule_does_not_emit_p():
    """So the right rule matters: the same cases, the same draws, a different law."""
    worst = 0.0
    for p, q in CASES:
        for m in (2, 3):
            law = sampled_law(p, q, m, lambda cands, p=p, q=q: wrong_trials(p, q, cands))
            worst = max(worst, float(np.abs(law - p).max()))
    assert worst > 1e-3
    for p, q in CASES:  # one sibling: the two rules are the chain's, and agree
        np.testing.assert_allclose(
            sampled_law(p, q, 1, lambda cands, p=p, q=q: wrong_trials(p, q, cands)), p, atol=1e-12
        )


def test_the_rule_stops_at_the_first_acceptance_and_draws_u_per_trial():
    p, q = np.array([0.1, 0.5, 0.4, 0.0]), np.array([0.5, 0.2, 0.3, 0.0])
    trials = sibling_trials(p, q, [0, 2, 1], SAMPLED)
    assert trials[0].accept_probability == pytest.approx(0.2)  # 0.1 / 0.5
    np.testing.assert_allclose(trials[0].residual, [0, 0.3, 0.1, 0] / np.float64(0.4))
    # second stage: p_1 = (0, .75, .25, 0), q_1 = q without token 0 = (0, .4, .6, 0)
    assert trials[1].accept_probability == pytest.approx(0.25 / 0.6)
    v = sibling_rule(p, q, [0, 2, 1], SAMPLED, FixedDraws([0.5, 0.1]))
    assert v.accepted == 1 and [t.accepted for t in v.trials] == [False, True]
    assert [t.u for t in v.trials] == [0.5, 0.1] and v.residual is None
    v = sibling_rule(p, q, [0, 2], SAMPLED, FixedDraws([0.5, 0.9]))
    assert v.accepted is None and len(v.trials) == 2
    np.testing.assert_allclose(v.residual, [0, 1, 0, 0])  # norm(max(p_1 - q_1, 0))
    np.testing.assert_allclose(v.residual, trials[1].residual)
    assert trials[2].accept_probability == 1.0  # then token 1 is all p_2 and all q_2 hold
    # TOP: accept with p(c), then zero it
    v = sibling_rule(p, None, [1, 2], TOP, FixedDraws([0.6, 0.7]))
    assert [t.accept_probability for t in v.trials] == pytest.approx([0.5, 0.8])
    assert v.accepted == 1


def test_a_sibling_q_never_proposed_is_refused():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.6, 0.4, 0.0])
    with pytest.raises(ValueError, match="probability 0"):
        sibling_trials(p, q, [2], SAMPLED)
    with pytest.raises(ValueError, match="drawn twice"):
        sibling_trials(p, q, [0, 0], SAMPLED)
    with pytest.raises(ValueError, match="need the q"):
        sibling_trials(p, None, [0], SAMPLED)


def test_a_rejection_only_rounding_allows_leaves_a_distribution():
    """p a hair under q everywhere (its sum one ulp short of 1): the residual max(p - q, 0) is
    all zeros. The rule falls back to p, as the chain's does, instead of dividing by 0."""
    q = np.array([0.5, 0.5])
    p = np.array([np.nextafter(0.5, 0), 0.5])
    v = sibling_rule(p, q, [0], SAMPLED, FixedDraws([np.nextafter(1.0, 0)]))
    assert v.accepted is None and np.all(np.isfinite(v.residual)) and v.residual.sum() > 0.99
    assert sample(v.residual, np.random.default_rng(0)) in (0, 1)


# ------------------------------------------------------------- on a chain, the chain's rule


def test_on_a_chain_greedy_is_the_chains_greedy_rule():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(0, 5))
        best = rng.integers(0, 4, n + 1)
        drafts = [int(b) if rng.random() < 0.6 else int(rng.integers(0, 4)) for b in best[:n]]
        want = accept_greedy(best, drafts)
        got = accept_tree_greedy(chain([9, *drafts]), best)
        assert (got.n_accepted, got.next_token, got.kind) == (
            want.n_accepted,
            want.next_token,
            want.kind,
        )
        assert got.decisions == [d.accepted for d in want.decisions]


@pytest.mark.parametrize("proposal", [SAMPLED, TOP])
def test_on_a_chain_sampled_is_accept_or_reject_draw_for_draw(proposal):
    rng = np.random.default_rng(3)
    vocab = 7
    for seed in range(300):
        n = int(rng.integers(0, 5))
        p = rng.dirichlet(np.full(vocab, 0.5), n + 1)  # (n+1, vocab)
        q = rng.dirichlet(np.full(vocab, 0.5), n)  # (n, vocab)
        drafts = [sample(row, rng) for row in q]
        if proposal == TOP:
            q = one_hot(drafts, vocab)  # the chain's q for a drafter without probabilities
        qs = {i: q[i] for i in range(n)} if proposal == SAMPLED else {}
        tree = TokenTree([0, *drafts], list(range(-1, n)), proposal, q=qs)
        want = accept_or_reject(p, q, drafts, np.random.default_rng(seed))
        got = accept_tree_sampled(tree, p, np.random.default_rng(seed))
        assert (got.n_accepted, got.next_token, got.kind) == (
            want.n_accepted,
            want.next_token,
            want.kind,
        )
        us = [t.u for s in got.siblings.values() for t in s.trials]
        assert us == [d.u for d in want.decisions]
        if want.residual is not None:
            assert np.array_equal(got.residual, want.residual)


# -------------------------------------------- one tree step on tiny models: the exact law

LAW_SAMPLING = SamplingParams(temperature=0.8, top_k=3)  # supports of 3 tokens: few trees
WIDTHS = (2, 2)  # the root has 2 children, each of them 2: 6 nodes, depth 2
CONTEXT = [2, 5, 6]  # the prompt and the newest token (the root)


def draw_siblings(q: np.ndarray, width: int, rng: np.random.Generator) -> list[int]:
    """width tokens from q without replacement, in the order drawn."""
    out, rest = [], q.copy()
    for _ in range(min(width, np.count_nonzero(q))):
        out.append(sample(rest, rng))
        rest[out[-1]] = 0.0
    return out


class TreeDrafter:
    """Trees from a draft model: WIDTHS[d] children per node of depth d, drawn without
    replacement from its q (sampled) or its most likely tokens (greedy)."""

    vocab_size = None
    name = "test-tree"

    def __init__(self, draft, widths=WIDTHS) -> None:
        self.draft, self.widths = draft, widths

    def reset(self, target) -> None:
        pass

    def rollback(self, n_tokens: int) -> None:
        pass

    def propose(self, ctx, k, sampling, rng) -> Draft:
        return Draft([])

    def q(self, tokens: list[int], sampling: SamplingParams) -> np.ndarray:
        logits = forward(self.draft, tokens, new_cache(self.draft.config), last_only=True)[-1]
        return distribution(logits, sampling)

    def propose_tree(self, ctx, n_nodes, sampling, rng) -> TokenTree:
        tokens, parents, qs = [ctx.tokens[-1]], [-1], {}
        frontier = [(0, list(ctx.tokens))]  # (node, its path's tokens)
        for width in self.widths:
            deeper = []
            for node, path in frontier:
                q = self.q(path, sampling)
                if sampling.greedy:
                    kids = np.argsort(-q, kind="stable")[:width].tolist()
                else:
                    kids, qs[node] = draw_siblings(q, width, rng), q
                for t in kids[: n_nodes - len(tokens) + 1]:
                    tokens.append(t)
                    parents.append(node)
                    deeper.append((len(tokens) - 1, [*path, t]))
            frontier = deeper
        return TokenTree(tokens, parents, TOP if sampling.greedy else SAMPLED, q=qs)


def every_tree(drafter: TreeDrafter, context: list[int], sampling: SamplingParams):
    """Every depth-2 tree the drafter can draw, with its probability (`TreeDrafter.propose_tree`
    draws one: the root's children in BFS order, then each one's children)."""
    b1, b2 = drafter.widths
    q_root = drafter.q(context, sampling)
    for first, prob in ordered_draws(q_root, b1):
        q_kids = [drafter.q([*context, c], sampling) for c in first]
        for seconds in itertools.product(*[list(ordered_draws(q, b2)) for q in q_kids]):
            tokens, parents = [context[-1], *first], [-1] + [0] * b1
            qs, p_tree = {0: q_root}, prob
            for i, (kids, p_kids) in enumerate(seconds):
                tokens += kids
                parents += [i + 1] * b2
                qs[i + 1], p_tree = q_kids[i], p_tree * p_kids
            yield TokenTree(tokens, parents, SAMPLED, q=qs), p_tree


class Script:
    """A stand-in generator whose uniform draws are given; past them it returns 0.0."""

    def __init__(self, draws: list[float]) -> None:
        self.draws, self.n = draws, 0

    def random(self) -> float:
        u = self.draws[self.n] if self.n < len(self.draws) else 0.0
        self.n += 1
        return u


REJECT = float(np.nextafter(1.0, 0.0))  # u >= a for every a < 1


def rule_branches(tree: TokenTree, p_rows, rule=accept_tree_sampled) -> list:
    """Every way the rule's uniform draws can go, with its probability: [(verdict, prob)].

    A trial accepts when u = 0 (if a > 0: probability a) and rejects when u = REJECT
    (probability 1 - a); the final draw takes each token x of positive mass by a u in the
    middle of x's interval of the cumulative sum (probability dist(x))."""
    out = []

    def explore(draws: list[float], prob: float) -> None:
        verdict = rule(tree, p_rows, Script(draws))
        trials = [t for s in verdict.siblings.values() for t in s.trials]
        for t, u in zip(trials, draws, strict=False):  # the rule did what the draws said
            assert t.accepted == (u == 0.0)
        i = len(draws)
        if i < len(trials):
            a = trials[i].accept_probability
            if a > 0:
                explore([*draws, 0.0], prob * a)
            if a < 1:
                explore([*draws, REJECT], prob * (1 - a))
            return
        dist = verdict.residual if verdict.kind == "corrected" else p_rows[verdict.path[-1]]
        cdf = np.cumsum(dist)
        for x in np.flatnonzero(dist):
            final = rule(tree, p_rows, Script([*draws, (cdf[x] - dist[x] / 2) / cdf[-1]]))
            assert final.next_token == x
            out.append((final, prob * dist[x]))

    explore([], 1.0)
    return out


@pytest.fixture(scope="module")
def law_models():
    target = tiny_model(3, vocab_size=8, num_hidden_layers=2)
    return target, TreeDrafter(tiny_model(4, vocab_size=8, num_hidden_layers=2))


def two_token_law_of_one_step(target, drafter, rule=accept_tree_sampled) -> np.ndarray:
    """P(x1, x2): the first two tokens one tree step emits, summed over every tree and branch.
    A step that emits one token leaves x2 to the next step, a fresh start after x1, which draws
    it from p(. | x1) (the first-token part of this same law checks that a step does)."""
    vocab = target.config.vocab_size
    law = np.zeros((vocab, vocab))
    cache = new_cache(target.config)
    forward(target, CONTEXT[:-1], cache)
    base = cache.length
    for tree, p_tree in every_tree(drafter, CONTEXT, LAW_SAMPLING):
        cache.truncate(base)
        out = verify_tree(target, cache, tree)
        p_rows = RowsOnDemand(out.logits, LAW_SAMPLING)
        for verdict, prob in rule_branches(tree, p_rows, rule):
            emitted = [tree.tokens[n] for n in verdict.path[1:]] + [verdict.next_token]
            if len(emitted) >= 2:
                law[emitted[0], emitted[1]] += p_tree * prob
            else:
                law[emitted[0]] += p_tree * prob * target_row(target, [*CONTEXT, emitted[0]])
    return law


def target_row(model, tokens: list[int]) -> np.ndarray:
    """p(. | tokens), by plain decoding: the reference the tree's law is held to."""
    key = (id(model), tuple(tokens))
    if key not in TARGET_ROWS:
        logits = forward(model, tokens, new_cache(model.config), last_only=True)[-1]
        TARGET_ROWS[key] = distribution(logits, LAW_SAMPLING)
    return TARGET_ROWS[key]


TARGET_ROWS: dict = {}


def test_one_tree_step_has_the_targets_two_token_law(law_models):
    target, drafter = law_models
    law = two_token_law_of_one_step(target, drafter)
    p1 = target_row(target, CONTEXT)
    want = np.stack([p1[a] * target_row(target, [*CONTEXT, a]) for a in range(p1.size)])
    assert np.count_nonzero(want) >= 6  # not a degenerate case
    np.testing.assert_allclose(law, want, atol=1e-12, rtol=0)


def wrong_sibling_rule(p, q, candidates, proposal, rng) -> SiblingVerdict:
    """`wrong_trials`' rule with draws, in place of `sibling_rule`."""
    trials = wrong_trials(p, q, list(candidates))
    for i, t in enumerate(trials):
        t.u = float(rng.random())
        t.accepted = t.u < t.accept_probability
        if t.accepted:
            t.residual = None
            return SiblingVerdict(i, trials[: i + 1], None)
    return SiblingVerdict(None, trials, trials[-1].residual)


def test_the_same_sum_catches_the_wrong_rule_in_a_tree(law_models, monkeypatch):
    target, drafter = law_models
    monkeypatch.setattr(tree_module, "sibling_rule", wrong_sibling_rule)
    law = two_token_law_of_one_step(target, drafter)
    p1 = target_row(target, CONTEXT)
    want = np.stack([p1[a] * target_row(target, [*CONTEXT, a]) for a in range(p1.size)])
    assert np.abs(law - want).max() > 1e-3


# -------------------------------------------------------------------- the loop, greedy


@pytest.fixture(scope="module")
def target():
    return tiny_model(seed=0)


N_NEW = 20
PROMPT = "the cat sat on the mat; the cat"


class ScriptedTreeDrafter:
    """Trees around the known greedy continuation: at each node `width` wrong tokens, and on the
    right path, where right(i) says so, the right token too, at a place that varies."""

    vocab_size = None

    def __init__(self, n_prompt, truth, right, width=2, depth=3, name="scripted-tree") -> None:
        self.n_prompt, self.truth, self.right = n_prompt, truth, right
        self.width, self.depth, self.name = width, depth, name

    def reset(self, target) -> None:
        pass

    def rollback(self, n_tokens: int) -> None:
        pass

    def propose(self, ctx, k, sampling, rng) -> Draft:
        return Draft([])

    def propose_tree(self, ctx, n_nodes, sampling, rng) -> TokenTree:
        tokens, parents = [ctx.tokens[-1]], [-1]
        frontier = [(0, len(ctx.tokens) - self.n_prompt, True, 0)]  # node, index, right, depth
        while frontier and len(tokens) - 1 < n_nodes:
            node, i, on_truth, depth = frontier.pop(0)
            if i >= len(self.truth) or depth == self.depth:
                continue
            kids = [(self.truth[i] + 1 + w) % 260 for w in range(self.width)]
            if on_truth and self.right(i):
                kids.insert(i % (self.width + 1), self.truth[i])
            for t in kids[: n_nodes - len(tokens) + 1]:
                tokens.append(t)
                parents.append(node)
                frontier.append(
                    (len(tokens) - 1, i + 1, on_truth and t == self.truth[i], depth + 1)
                )
        return TokenTree(tokens, parents, TOP)


SCRIPTS = {
    "always-right": lambda i: True,
    "never-right": lambda i: False,
    "partly-right": lambda i: i % 4 != 3,
}


@pytest.fixture(scope="module")
def plain(target):
    ids = target.tokenizer.encode(PROMPT).ids
    return ids, generate(target, ids, N_NEW, stop_at_eos=False).ids


@pytest.mark.parametrize("n_nodes", [1, 2, 5, 9, 30])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_greedy_tree_decoding_is_plain_greedy(target, plain, script, n_nodes):
    ids, expected = plain
    d = ScriptedTreeDrafter(len(ids), expected, SCRIPTS[script])
    got = speculative_generate(
        target, ids, d, max_new_tokens=N_NEW, stop_at_eos=False, tree=n_nodes
    )
    assert got.ids == expected
    s = got.stats
    assert s.new_tokens == N_NEW == 1 + s.emitted and s.target_forwards == s.steps + 1
    if script == "never-right":
        assert s.accepted == 0 and s.tau == 1.0
    if script == "always-right":
        assert s.accepted > 0 and (s.tau > 2 or n_nodes < 9)


def test_greedy_with_a_draft_models_trees_is_plain_greedy(target, plain):
    ids, expected = plain
    d = TreeDrafter(tiny_model(seed=7), widths=(3, 2, 1))
    got = speculative_generate(target, ids, d, max_new_tokens=N_NEW, stop_at_eos=False, tree=12)
    assert got.ids == expected


def test_compaction_leaves_the_cache_of_a_fresh_prefill(target, plain):
    ids, expected = plain
    d = ScriptedTreeDrafter(len(ids), expected, SCRIPTS["partly-right"], width=3)
    rng = np.random.default_rng(0)
    state, _ = prefill(target, ids, SamplingParams(), rng, capacity=8)  # the buffer must grow
    paths = set()
    while len(state.new_ids) < N_NEW:
        step = tree_step(target, state, d, 10, SamplingParams(), rng)
        paths.add(len(step.verdict.path))
        assert step.kv_after == step.kv_before + len(step.verdict.path)
        fresh = new_cache(target.config, len(state.tokens))
        forward(target, state.tokens[:-1], fresh)
        assert state.cache.length == fresh.length
        assert np.array_equal(state.cache.keys[:, : fresh.length], fresh.keys[:, : fresh.length])
        assert np.array_equal(
            state.cache.values[:, : fresh.length], fresh.values[:, : fresh.length]
        )
    assert state.new_ids[:N_NEW] == expected
    assert len(paths) > 1  # rejected early and late


def test_eos_and_max_new_tokens_cut_a_tree_step_like_a_chain(target):
    ids = target.tokenizer.encode("hello hello hello world").ids  # reaches <eos>, see
    expected = generate(target, ids, 60).ids  # test_speculative
    d = ScriptedTreeDrafter(len(ids), expected, SCRIPTS["always-right"])
    got = speculative_generate(target, ids, d, max_new_tokens=60, tree=9)
    assert got.ids == expected and got.stopped_by == "eos"
    for n in (1, 2, 3, 7):
        got = speculative_generate(target, ids, d, max_new_tokens=n, stop_at_eos=False, tree=9)
        assert got.ids == expected[:n]


def test_bad_tree_settings_give_one_clear_error(target, plain):
    ids, expected = plain
    d = ScriptedTreeDrafter(len(ids), expected, SCRIPTS["always-right"])
    for bad in (0, MAX_TREE_NODES + 1):
        with pytest.raises(InputError, match=f"must be in 1..{MAX_TREE_NODES}"):
            speculative_generate(target, ids, d, tree=bad)

    class ChainOnly:
        name, vocab_size = "chain-only", None

    with pytest.raises(InputError, match="chain-only cannot draft token trees"):
        speculative_generate(target, ids, ChainOnly(), tree=4)

    class TooBig(ScriptedTreeDrafter):
        def propose_tree(self, ctx, n_nodes, sampling, rng):
            siblings = list(range(5, 6 + n_nodes))  # one node too many
            return TokenTree([ctx.tokens[-1], *siblings], [-1] + [0] * len(siblings))

    with pytest.raises(ValueError, match="more than"):
        speculative_generate(target, ids, TooBig(0, [], None), tree=3)
    got = speculative_generate(target, ids, None, max_new_tokens=5, stop_at_eos=False, tree=4)
    assert got.ids == generate(target, ids, 5, stop_at_eos=False).ids  # no drafter: plain


# ------------------------------------------------------------------------------- the trace

STEP_KEYS = set(STEP_FIELDS)


@pytest.fixture(scope="module")
def tree_runs(target, plain):
    ids, expected = plain
    scripted = ScriptedTreeDrafter(len(ids), expected, SCRIPTS["partly-right"])
    sampled = SamplingParams(temperature=0.9, top_k=20)
    drafter = TreeDrafter(tiny_model(seed=7), widths=(3, 2))
    return {
        "greedy": speculative_generate(target, ids, scripted, 4, N_NEW, stop_at_eos=False, tree=7),
        "sampled": speculative_generate(
            target, ids, drafter, 4, 24, sampled, seed=3, stop_at_eos=False, tree=9
        ),
    }


@pytest.mark.parametrize("run", ["greedy", "sampled"])
def test_tree_records_are_complete_and_consistent(tree_runs, run):
    g = tree_runs[run]
    trace, greedy = g.trace, g.trace.sampling["greedy"]
    assert trace.tree == (7 if run == "greedy" else 9) and trace.k == trace.tree
    context = len(trace.prompt_ids) + 1
    for i, r in enumerate(trace.steps):
        assert set(r) == STEP_KEYS and set(r["tree"]) == set(TREE_FIELDS)
        t, n, j = r["tree"], len(r["drafted"]), r["accepted"]
        assert r["step"] == i and r["context_length"] == context
        # the chain's fields: the accepted path, then the first sibling rejected at its end
        path = t["path"]
        assert j == len(path) - 1 and [d["token"] for d in r["drafted"][:j]] == [
            t["nodes"][node]["token"] for node in path[1:]
        ]
        assert len(r["target"]) == n + 1 and len(r["decisions"]) == n
        assert [d["accepted"] for d in r["decisions"]] == [True] * j + [False] * (n - j)
        assert r["next_token"]["kind"] == ("bonus" if n == j else "corrected")
        assert r["emitted"] == [d["token"] for d in r["drafted"][:j]] + [r["next_token"]["token"]]
        assert (r["residual_top"] is not None) == (n > j and not greedy)
        for d in r["decisions"]:
            assert d["ratio"] == pytest.approx(d["p"] / d["q"])
            if not greedy:
                assert d["accept_probability"] == pytest.approx(min(1.0, d["ratio"]))
                assert d["accepted"] == (d["u"] < d["accept_probability"])
        # the tree
        parents = [node["parent"] for node in t["nodes"]]
        assert t["mask"] == ancestor_mask(parents).astype(int).tolist()
        assert t["proposal"] == ("top" if greedy or n == 0 else "sampled")  # n = 0: no room
        on_path = {node["node"] for node in t["nodes"] if node["verdict"] == "accepted"}
        assert on_path == set(path)
        tried = {trial["node"]: trial for s in t["siblings"] for trial in s["trials"]}
        for node in t["nodes"][1:]:
            assert (node["verdict"] != "untried") == (node["node"] in tried)
            assert 0 <= node["p"] <= 1 and (node["q"] is None) == greedy
        for s in t["siblings"]:
            assert s["node"] in path
            flags = [trial["accepted"] for trial in s["trials"]]
            assert flags == [False] * (len(flags) - 1) + [flags[-1]]  # stops at an acceptance
            for trial in s["trials"]:
                if not greedy:
                    assert trial["accepted"] == (trial["u"] < trial["accept_probability"])
                    assert trial["accept_probability"] == pytest.approx(
                        min(1.0, trial["p"] / trial["q"])
                    )
                    assert (trial["residual_top"] is None) == trial["accepted"]
        kv = t["kv"]
        assert kv["before"] == r["kv_length_before"] == context - 1
        assert kv["after"] == r["kv_length_after"] == kv["before"] + len(path)
        assert kv["written"] == len(t["nodes"])
        assert kv["moved"] == [
            [kv["before"] + node, kv["before"] + d] for d, node in enumerate(path) if node != d
        ]
        context += len(r["emitted"])
    assert any(len(r["tree"]["siblings"]) > 0 for r in trace.steps)


def test_tree_traces_round_trip_replay_and_recount(tree_runs):
    for g in tree_runs.values():
        loaded = Trace.from_dict(json.loads(json.dumps(g.trace.to_dict())))
        assert replayed_ids(loaded) == g.ids  # the chain fields suffice
        recount = stats_from_trace(loaded)
        for key in ("steps", "drafted", "verified", "accepted", "emitted", "new_tokens"):
            assert getattr(recount, key) == getattr(g.stats, key), key
        assert recount.drafted == sum(len(r["tree"]["nodes"]) - 1 for r in loaded.steps)
        assert recount.alpha == g.stats.alpha and recount.tau == g.stats.tau
        assert recount.draft_lengths == g.stats.draft_lengths


def test_a_trace_without_the_tree_keys_still_loads_and_replays(target, plain):
    """A trace written before trees: no "tree" at the top, none in the steps."""
    ids, expected = plain
    g = speculative_generate(target, ids, None, 4, 8, stop_at_eos=False)
    assert g.trace.tree is None and all("tree" not in r for r in g.trace.steps)
    d = g.trace.to_dict()
    del d["tree"]
    old = Trace.from_dict(d)
    assert old.tree is None and replayed_ids(old) == g.ids and len(list(replay(old))) == 7


# ------------------------------------------------------------------ the real Gemma 3 270M


@pytest.mark.slow
def test_real_model_first_token_of_a_sampled_tree_has_the_targets_law(real_checkpoint):
    """Depth-1 trees of 3 siblings drawn without replacement from an honest q (the target's own
    distribution at temperature 0.5, as sure of itself as a good drafter), 20,000 steps after
    one prompt: the first emitted token passes a chi-square test against p; the wrong rule's
    fails (false failure rate 1e-4, as in test_acceptance_rule)."""
    from minispec.loading import load_model
    from minispec.tokenizer import encode

    model = load_model(real_checkpoint)
    ids = encode(model.tokenizer, "The weather tomorrow will be")
    logits = forward(model, ids, new_cache(model.config), last_only=True)[-1]
    p_full = distribution(logits, SamplingParams(temperature=1.0, top_k=12))
    q_full = distribution(logits, SamplingParams(temperature=0.5, top_k=12))
    # The rule sees the rows restricted to the tokens either side can emit: zeros elsewhere,
    # so the law is the same, and 40,000 steps take seconds instead of minutes.
    tokens = np.union1d(np.flatnonzero(p_full), np.flatnonzero(q_full))
    p, q = p_full[tokens], q_full[tokens]

    def first_tokens(rule, n: int, seed: int) -> dict:
        rng, counts = np.random.default_rng(seed), {}
        for _ in range(n):
            kids = draw_siblings(q, 3, rng)
            tree = TokenTree([0, *kids], [-1, 0, 0, 0], SAMPLED, q={0: q})
            # rows 1..3 feed only the bonus, the second token, which this test does not count
            verdict = rule(tree, [p] * 4, rng)
            first = tree.tokens[verdict.path[1]] if verdict.n_accepted else verdict.next_token
            counts[(first,)] = counts.get((first,), 0) + 1
        return counts

    def wrong_rule(tree, p_rows, rng):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tree_module, "sibling_rule", wrong_sibling_rule)
            return accept_tree_sampled(tree, p_rows, rng)

    joint = {(i,): float(p[i]) for i in np.flatnonzero(p)}
    n = 20_000
    assert chi_square_p_value(first_tokens(accept_tree_sampled, n, 0), joint, n) > FALSE_FAILURE
    assert chi_square_p_value(first_tokens(wrong_rule, n, 1), joint, n) < FALSE_FAILURE
