"""The accept/reject rule (Leviathan et al. 2023, Algorithm 1): exact, empirical, statistical.

Notation: p = target, q = draft. The rule must emit every token with probability exactly p(x),
whatever q is. Three checks of increasing reach:
1. exact: summing the accept and reject branches analytically gives p (to 1e-9);
2. empirical: the measured acceptance rate is sum_x min(p(x), q(x));
3. statistical: the joint distribution of the first three tokens of speculative sampling with
   two tiny models (temperature and top-p on) passes a chi-square test against the target's own,
   and the same test fails for two deliberately wrong rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minispec.kv_cache import new_cache
from minispec.model import forward
from minispec.sampling import SamplingParams, distribution, sample
from minispec.speculative import (
    Verdict,
    accept_greedy,
    accept_or_reject,
    acceptance_probability,
    residual_distribution,
)
from minispec.tiny import tiny_model

V = 10


def random_pair(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A target p and a draft q over V tokens, in several shapes of disagreement."""
    p = rng.dirichlet(np.full(V, 0.5))
    q = rng.dirichlet(np.full(V, 0.5))
    if kind == "one-hot q":  # a drafter without probabilities (prompt lookup)
        q = np.eye(V)[rng.integers(V)]
    elif kind == "sparse":  # top-k / top-p cuts leave zeros on either side
        p[rng.choice(V, 4, replace=False)] = 0
        q[rng.choice(V, 4, replace=False)] = 0
        p, q = p / p.sum(), q / q.sum()
    elif kind == "equal":
        q = p.copy()
    return p, q


def emission_probabilities(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """P(the step emits y) for one drafted position, summed over x ~ q and both branches."""
    accept = np.array([acceptance_probability(p, q, x) if q[x] > 0 else 0.0 for x in range(V)])
    p_reject = float(np.sum(q * (1 - accept)))
    residual = residual_distribution(p, q)
    return q * accept + p_reject * residual


@pytest.mark.parametrize("kind", ["dense", "one-hot q", "sparse", "equal"])
def test_emitted_distribution_is_exactly_p(kind):
    rng = np.random.default_rng(0)
    for _ in range(200):
        p, q = random_pair(rng, kind)
        np.testing.assert_allclose(emission_probabilities(p, q), p, atol=1e-9, rtol=0)


def test_acceptance_probability_and_residual_by_hand():
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.6, 0.2])
    assert acceptance_probability(p, q, 0) == 1.0  # p > q: always accepted
    assert acceptance_probability(p, q, 1) == pytest.approx(0.5)  # accepted half the time
    np.testing.assert_allclose(residual_distribution(p, q), [1.0, 0.0, 0.0])  # only 0 is short
    with pytest.raises(ValueError, match="probability 0"):
        acceptance_probability(p, np.array([1.0, 0.0, 0.0]), 1)


class FixedDraws:
    """A stand-in random generator that returns the uniform draws it is given, in order."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_sampled_rule_accepts_exactly_when_u_is_below_the_ratio():
    p = np.array([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    q = np.array([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])
    # position 0: ratio 0.6 / 0.8 = 0.75; position 1: ratio 0.2 / 0.25 = 0.8
    v = accept_or_reject(p, q, [1, 1], rng=FixedDraws([0.7, 0.81, 0.0]))
    assert [d.accepted for d in v.decisions] == [True, False]
    assert v.n_accepted == 1 and v.kind == "corrected"
    # the residual at position 1 is norm(max(0, p - q)) = token 2 only
    np.testing.assert_allclose(v.residual, [0, 0, 1])
    assert v.next_token == 2
    assert v.decisions[0].accept_probability == pytest.approx(0.75)
    v = accept_or_reject(p, q, [1, 1], rng=FixedDraws([0.74, 0.79, 0.5]))
    assert v.n_accepted == 2 and v.kind == "bonus" and v.next_token == 1  # 0.5 lands on token 1


def test_greedy_rule_accepts_while_the_draft_is_the_argmax():
    p = np.eye(5)[[3, 1, 4, 0]] * 0.9 + 0.02  # argmaxes 3, 1, 4, 0
    best = np.argmax(p, axis=-1)
    v = accept_greedy(best, [3, 1, 2])
    assert (v.n_accepted, v.next_token, v.kind) == (2, 4, "corrected")
    assert [d.u for d in v.decisions] == [None] * 3
    assert [d.accepted for d in v.decisions] == [True, True, False]
    v = accept_greedy(best, [3, 1, 4])
    assert (v.n_accepted, v.next_token, v.kind) == (3, 0, "bonus")
    v = accept_greedy(best[:1], [])
    assert (v.n_accepted, v.next_token, v.kind) == (0, 3, "bonus")  # nothing drafted: plain step


@pytest.mark.parametrize("kind", ["dense", "one-hot q", "sparse"])
def test_measured_acceptance_is_sum_of_min_p_q(kind):
    """alpha = sum_x min(p(x), q(x)) (Leviathan et al., Corollary 3.6), within 4.5 sigma."""
    rng = np.random.default_rng(1)
    p, q = random_pair(rng, kind)
    p_next = np.full(V, 1 / V)
    n, accepted = 20_000, 0
    for _ in range(n):
        x = sample(q, rng)
        accepted += accept_or_reject(np.stack([p, p_next]), q[None], [x], rng).n_accepted
    alpha = np.minimum(p, q).sum()
    sigma = math.sqrt(alpha * (1 - alpha) / n)
    assert abs(accepted / n - alpha) <= 4.5 * sigma + 1e-12


# ---------------------------------------------------------------- statistical, joint of 3 tokens

PROMPT = (2, 5)
SAMPLING = SamplingParams(temperature=0.7, top_p=0.85)
N_TOKENS, K = 3, 2  # three emitted tokens; the first step drafts two (n >= 1 always here)
FALSE_FAILURE = 1e-4  # one chi-square test per correct rule: P(fail | rule correct) = 1e-4


class TableModel:
    """A tiny model's exact distributions, computed once per context and remembered."""

    def __init__(self, seed: int, sampling: SamplingParams) -> None:
        self.model = tiny_model(seed, vocab_size=8, num_hidden_layers=2)
        self.sampling, self.rows, self.cdfs = sampling, {}, {}

    def __call__(self, context: tuple[int, ...]) -> np.ndarray:
        if context not in self.rows:
            ids = list(PROMPT + context)
            logits = forward(self.model, ids, new_cache(self.model.config), last_only=True)[-1]
            self.rows[context] = distribution(logits, self.sampling)  # as the engine does
            self.cdfs[context] = np.cumsum(self.rows[context])
        return self.rows[context]

    def draw(self, context: tuple[int, ...], rng: np.random.Generator) -> int:
        """`sample(self(context), rng)`, with the cumulative sum kept (the test's hot loop)."""
        self(context)
        cdf = self.cdfs[context]
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), cdf.size - 1))


def speculative_run(target, draft_q, drafted_from, rule, rng) -> tuple[int, ...]:
    """The first N_TOKENS tokens of speculative sampling: the engine's loop over table models.

    target(ctx) = p; drafted_from(ctx) is what the drafter samples from; draft_q(ctx) is the q it
    reports to the rule (the same distribution, unless a test breaks that on purpose).
    """
    out = [target.draw((), rng)]  # the prefill's token
    while len(out) < N_TOKENS:
        n = min(K, N_TOKENS - len(out))  # drafts past the third token would not be looked at
        drafts: list[int] = []
        for _ in range(n):
            drafts.append(drafted_from.draw(tuple(out + drafts), rng))
        p = np.stack([target(tuple(out + drafts[:i])) for i in range(n + 1)])  # (n+1, V)
        q = np.stack([draft_q(tuple(out + drafts[:i])) for i in range(n)])  # (n, V)
        verdict = rule(p, q, drafts, rng)
        out += drafts[: verdict.n_accepted] + [verdict.next_token]
    return tuple(out[:N_TOKENS])


def joint_of_target(target) -> dict[tuple[int, ...], float]:
    """P(y1, y2, y3) = p(y1) p(y2 | y1) p(y3 | y1 y2), exactly."""
    joint = {}
    p1 = target(())
    for a in np.flatnonzero(p1):
        p2 = target((a,))
        for b in np.flatnonzero(p2):
            p3 = target((a, b))
            for c in np.flatnonzero(p3):
                joint[(int(a), int(b), int(c))] = p1[a] * p2[b] * p3[c]
    return joint


def chi2_sf(x: float, df: int) -> float:
    """P(chi2_df > x) = 1 - P(df/2, x/2), the regularized lower incomplete gamma by its series."""
    a, z = df / 2, x / 2
    term = total = 1.0 / a
    n = 0
    while term > 1e-17 * total:
        n += 1
        term *= z / (a + n)
        total += term
    return max(0.0, 1.0 - math.exp(-z + a * math.log(z) - math.lgamma(a)) * total)


def chi_square_p_value(counts: dict, joint: dict, n: int) -> float:
    """Pearson's test; cells expected fewer than 5 times are pooled into one."""
    if set(counts) - set(joint):
        return 0.0  # it emitted a sequence the target can never produce
    expected = {cell: n * prob for cell, prob in joint.items()}
    big = [cell for cell, e in expected.items() if e >= 5]
    obs = [counts.get(cell, 0) for cell in big]
    exp = [expected[cell] for cell in big]
    rest_obs, rest_exp = n - sum(obs), n - sum(exp)
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    obs, exp = np.array(obs, float), np.array(exp, float)
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return chi2_sf(stat, len(exp) - 1)


def test_chi2_sf_against_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-6)
    assert chi2_sf(124.3421134, 100) == pytest.approx(0.05, rel=1e-4)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-6)


@pytest.fixture(scope="module")
def models():
    return TableModel(3, SAMPLING), TableModel(4, SAMPLING)


def sample_counts(target, draft_q, drafted_from, rule, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        seq = speculative_run(target, draft_q, drafted_from, rule, rng)
        counts[seq] = counts.get(seq, 0) + 1
    return counts


def test_speculative_sampling_has_the_targets_joint_distribution(models):
    """100,000 runs, temperature 0.7 and top-p 0.85 on both p and q; false failure rate 1e-4."""
    target, draft = models
    n = 100_000
    counts = sample_counts(target, draft, draft, accept_or_reject, n, seed=0)
    joint = joint_of_target(target)
    assert math.isclose(sum(joint.values()), 1.0, rel_tol=1e-9)
    assert chi_square_p_value(counts, joint, n) > FALSE_FAILURE


def accept_every_draft(p, q, drafts, rng):
    """A wrong rule: trust the drafter blindly, then take the bonus token from p."""
    return Verdict(len(drafts), sample(p[len(drafts)], rng), "bonus", [], None)


def test_the_chi_square_test_catches_a_rule_that_accepts_every_draft(models):
    target, draft = models
    n = 20_000  # fewer runs than the real test, so failing here is the stronger evidence
    counts = sample_counts(target, draft, draft, accept_every_draft, n, seed=1)
    assert chi_square_p_value(counts, joint_of_target(target), n) < FALSE_FAILURE


def test_the_chi_square_test_catches_q_without_temperature_and_top_p(models):
    """The common bug: the draft samples from its tempered q, but the rule is shown softmax(z)."""
    target, draft = models
    untempered = TableModel(4, SamplingParams(temperature=1.0))
    n = 20_000
    counts = sample_counts(target, untempered, draft, accept_or_reject, n, seed=2)
    assert chi_square_p_value(counts, joint_of_target(target), n) < FALSE_FAILURE


def test_wide_flat_rows_keep_the_targets_distribution():
    """The first token a step emits has exactly p's distribution on wide, flat rows too: 20,000
    tokens, temperature 1.5 and top-p 0.9 on both sides, so each nucleus holds thousands of
    tokens (the top-p edge falls deep in the row). Tokens are pooled into 40 cells of equal
    mass under p, plus one cell for the tokens top-p removed, which must never come out."""
    rng = np.random.default_rng(5)
    vocab, n, shaping = 20_000, 20_000, SamplingParams(temperature=1.5, top_p=0.9)
    target_logits = rng.standard_normal(vocab).astype(np.float32)
    draft_logits = target_logits + 0.7 * rng.standard_normal(vocab).astype(np.float32)
    p = np.stack([distribution(target_logits, shaping), distribution(-target_logits, shaping)])
    q = distribution(draft_logits, shaping)[None]
    assert np.count_nonzero(p[0]) > 5_000 and np.count_nonzero(q) > 5_000
    order = np.argsort(-p[0], kind="stable")
    cell = np.full(vocab, 40)  # cell 40: removed by top-p
    kept = order[p[0][order] > 0]
    cell[kept] = np.minimum((np.cumsum(p[0][kept]) - p[0][kept]) * 40, 39).astype(int)

    def emitted_counts(rule) -> np.ndarray:
        counts = np.zeros(41, int)
        for _ in range(n):
            x = sample(q[0], rng)
            verdict = rule(p, q, [x], rng)
            counts[cell[x if verdict.n_accepted else verdict.next_token]] += 1
        return counts

    def p_value(counts: np.ndarray) -> float:
        if counts[40]:
            return 0.0  # a token top-p removed came out
        expected = n * np.bincount(cell[kept], weights=p[0][kept], minlength=40)[:40]
        stat = float(np.sum((counts[:40] - expected) ** 2 / expected))
        return chi2_sf(stat, 39)

    assert p_value(emitted_counts(accept_or_reject)) > FALSE_FAILURE
    assert p_value(emitted_counts(accept_every_draft)) < FALSE_FAILURE  # emits q: caught
