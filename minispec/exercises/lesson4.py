"""Lesson 4's checks (lessons/04_speculative_sampling.ipynb): the residual, accept-or-reject,
p and q shaped alike.

Notation as in Leviathan et al. 2023: p = target distribution, q = draft distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minispec.exercises.judging import (
    Case,
    Wrong,
    array_reader,
    as_array,
    attempt,
    close,
    fmt,
    judge,
    name_mistake,
    name_of,
    report,
    same_array,
)
from minispec.sampling import SamplingParams, distribution
from minispec.speculative import residual_distribution


def distribution_inputs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, p, q): small vocabularies where the mistakes differ clearly."""
    rng = np.random.default_rng(4)
    one_hot = np.zeros(6)
    one_hot[2] = 1.0  # a drafter without probabilities (prompt lookup): q is one-hot
    return [
        (
            "p and q of 6 tokens",
            np.array([0.45, 0.25, 0.15, 0.1, 0.05, 0.0]),
            np.array([0.1, 0.1, 0.4, 0.2, 0.1, 0.1]),
        ),
        (
            "q one-hot on token 2 (a prompt-lookup draft)",
            np.array([0.3, 0.1, 0.3, 0.2, 0.1, 0.0]),
            one_hot,
        ),
        ("random p and q over 8 tokens", rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8))),
    ]


def check_residual(fn: Callable) -> None:
    """fn(p, q) = norm(max(0, p - q)), the distribution to sample after a rejection."""
    report(fn, grade_residual)


def grade_residual(fn: Callable) -> str:
    cases = []
    for name, p, q in distribution_inputs():
        mistakes = {
            "divide by its sum: the residual is a distribution (it sums to 1)": np.maximum(
                p - q, 0
            ),
            "clip at zero, max(0, p - q): where q over-covers p there is nothing left to give": (
                (p - q) / np.sum(p - q) if np.sum(p - q) else p - q
            ),
            "it is p's mass that q under-covers, max(0, p - q) (p the target), not q - p": (
                residual_distribution(q, p)
            ),
            "after a rejection, sample from what p has beyond q, not from p itself": p,
        }
        cases.append(Case(name, (p.copy(), q.copy()), residual_distribution(p, q), mistakes))

    def show(case: Case, got: np.ndarray) -> str:
        return f"{case.name}: expected {fmt(case.want)}, got {fmt(got)}"

    judge(fn, cases, array_reader(fn), same_array, show)
    return f"{name_of(fn)} matches minispec.residual_distribution on {len(cases)} cases"


def check_accept_or_reject(fn: Callable, draws: int = 8000) -> None:
    """fn(p, q, x, rng) = the token emitted for a draft x ~ q: x if kept, else a residual sample.

    Right when the emitted tokens follow p exactly, whatever q is: the check draws x ~ q itself,
    calls fn `draws` times per case and compares the histogram with p.
    """
    report(fn, lambda f: grade_accept_or_reject(f, draws))


def emitted_distribution(q: np.ndarray, accept: np.ndarray, after: np.ndarray) -> np.ndarray:
    """P(emit x) when x ~ q is kept with probability accept[x], else a token ~ `after` comes out."""
    kept = q * accept
    return kept + (1.0 - kept.sum()) * after


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def grade_accept_or_reject(fn: Callable, draws: int) -> str:
    def show(case: Case, seen: np.ndarray) -> str:
        return f"{case.name}: emitted tokens {fmt(seen)}, p {fmt(case.want)}"

    # Sampling noise is about 0.005 in total variation at 8,000 draws.
    def same(seen: np.ndarray, want: object, case: Case) -> bool:
        return want is not None and total_variation(seen, want) < 0.03

    cases, histograms = [], []
    for name, p, q in distribution_inputs():
        with np.errstate(divide="ignore", invalid="ignore"):
            rule = np.minimum(1.0, np.where(q > 0, p / q, 1.0))
            swapped = np.minimum(1.0, np.where(p > 0, q / p, 1.0))
        residual = residual_distribution(p, q)
        mistakes = {
            "a drafted token is not always kept: test it with u < min(1, p(x) / q(x))": q,
            "accept with probability min(1, p(x) / q(x)) (Leviathan et al.; Chen et al. swap the "
            "letters, so q/p there means the same thing)": emitted_distribution(
                q, swapped, residual
            ),
            "after a rejection, sample from norm(max(0, p - q)), not from p: p's own mass on x "
            "was already given its chance": emitted_distribution(q, rule, p),
            "the acceptance test is u < min(1, p(x) / q(x)): p(x) alone ignores how often the "
            "draft proposes x": emitted_distribution(q, p, residual),
            "accept x with probability min(1, p(x) / q(x)), not only when p(x) >= q(x): a token "
            "the draft over-proposed is still kept part of the time": emitted_distribution(
                q, (p >= q).astype(np.float64), residual
            ),
        }
        case = Case(name, (p, q), p, mistakes)
        rng = np.random.default_rng(5)
        counts = np.zeros(p.size)
        try:
            for _ in range(draws):
                x = int(rng.choice(p.size, p=q))
                token = attempt(fn, p.copy(), q.copy(), x, rng, case=name)
                try:
                    counts[int(token)] += 1  # type: ignore[arg-type]
                except (TypeError, ValueError, IndexError):
                    raise Wrong(
                        f"{name_of(fn)} returned {token!r}, not a token id ({name})"
                    ) from None
        except Wrong:
            name_mistake(cases, histograms, same, show)  # an earlier wrong case names it better
            raise
        cases.append(case)
        histograms.append(counts / draws)

    name_mistake(cases, histograms, same, show)
    return f"{name_of(fn)} emits tokens distributed as p ({draws:,} draws on each of 3 cases)"


def check_shape_both(fn: Callable) -> None:
    """fn(target_logits, draft_logits, sampling) = (p, q), both shaped by the same settings."""
    report(fn, grade_shape_both)


ANYTHING_ELSE = "anything else"  # in a mistake's (p, q): this side may be anything


def grade_shape_both(fn: Callable) -> str:
    rng = np.random.default_rng(6)
    settings = [
        SamplingParams(temperature=0.6),
        SamplingParams(temperature=1.5, top_p=0.9),
        SamplingParams(temperature=0.8, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.5),
    ]
    cases = []
    for sampling in settings:
        target, draft = 3 * rng.standard_normal(50), 3 * rng.standard_normal(50)
        want = (distribution(target, sampling), distribution(draft, sampling))
        mistakes = {
            "shape q exactly as p: with the temperature, top-k or top-p on p only, the rule "
            "compares p with a q the draft did not sample from, and the output is silently off "
            "(jaymody/speculative-sampling PR #4, vLLM PRs #10198 and #27077)": (
                want[0],
                ANYTHING_ELSE,
            ),
            "shape p exactly as q: the target's p must be the distribution you want the output "
            "to have, with the same temperature, top-k and top-p": (ANYTHING_ELSE, want[1]),
            "p is the target's (the first logits), q the draft's: the letters follow Leviathan "
            "et al.": (want[1], want[0]),
        }
        cases.append(Case(f"{sampling}", (target, draft, sampling), want, mistakes))

    def read(got: object, case: Case) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise Wrong(f"{name_of(fn)} must return (p, q), got {type(got).__name__}")
        return tuple(as_array(g, case.want[0].shape, fn, case.name) for g in got)

    def same(got: tuple, want: tuple | None, case: Case) -> bool:
        if want is None:
            return False
        return all(w is ANYTHING_ELSE or close(g, w) for g, w in zip(got, want, strict=True))

    judge(fn, cases, read, same, lambda case, got: f"p or q is off with {case.name}")
    return f"{name_of(fn)} shapes p and q with the same settings ({len(settings)} settings)"
