"""Lesson 5's checks (lessons/05_drafters_and_speedup.ipynb): tau and the fastest k."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from minispec.exercises.judging import (
    Case,
    Wrong,
    judge,
    name_of,
    number,
    number_reader,
    report,
    same_number,
    same_value,
)
from minispec.stats import expected_tokens_per_forward


def check_expected_tau(fn: Callable) -> None:
    """fn(alpha, k) = expected tokens per target forward, (1 - alpha^(k+1)) / (1 - alpha)."""
    report(fn, grade_expected_tau)


AT_ONE = (
    "at alpha = 1 every draft is accepted: tau = k + 1, the formula's limit (the division by "
    "1 - alpha needs that case on its own)"
)


def grade_expected_tau(fn: Callable) -> str:
    cases = []
    for alpha, k in [(0.0, 4), (0.5, 1), (0.8, 4), (0.95, 8), (0.3, 16), (0.6, 3), (1.0, 4)]:
        want = expected_tokens_per_forward(alpha, k)
        mistakes = {
            "count the corrected or bonus token: each step emits one token more than it "
            "accepts, so tau = 1 + alpha + ... + alpha^k": want - 1,
            "the sum runs to alpha^k (k drafted tokens, plus the one the target always adds): "
            "(1 - alpha^(k+1)) / (1 - alpha)": k if alpha == 1 else (1 - alpha**k) / (1 - alpha),
            "draft i counts only if drafts 1..i-1 were accepted too, so its chance is alpha^i, "
            "not alpha: the sum is geometric, not 1 + k alpha": 1 + k * alpha,
        }
        cases.append(Case(f"alpha={alpha}, k={k}", (alpha, k), want, mistakes))

    def read(got: object, case: Case) -> float:
        try:
            return number(got, fn, case.name)
        except Wrong:
            if case.args[0] == 1.0:
                raise Wrong(AT_ONE) from None
            raise

    def show(case: Case, got: float) -> str:
        return f"{case.name}: expected {case.want:.4f}, got {got:.4f}"

    try:
        judge(fn, cases, read, same_number, show)
    except Wrong as wrong:
        if "ZeroDivisionError" in str(wrong):
            raise Wrong(AT_ONE) from None
        raise
    return f"{name_of(fn)} is (1 - alpha^(k+1)) / (1 - alpha), with k + 1 at alpha = 1"


def check_best_k(fn: Callable) -> None:
    """fn(alpha, draft_ms, forward_ms) = the k with the most tokens per second.

    forward_ms[T]: the target's time for one forward of T tokens; a step with k drafts costs
    k * draft_ms + forward_ms[k + 1] and emits (1 - alpha^(k+1)) / (1 - alpha) tokens on average.
    """
    report(fn, grade_best_k)


def step_speed(
    alpha: float, k: int, draft_ms: float, verify_ms: float, bonus: bool = True
) -> float:
    """Tokens per millisecond of a step with k drafts (without the bonus token: one fewer)."""
    tokens = expected_tokens_per_forward(alpha, k) - (0 if bonus else 1)
    return tokens / (k * draft_ms + verify_ms)


def fastest(ks: Sequence[int], speed_of: Callable[[int], float]) -> int:
    return max(ks, key=speed_of)  # max keeps the first, the smallest k, on a tie


def best_k_inputs() -> list[tuple[str, float, float, dict[int, float]]]:
    """(name, alpha, draft_ms, forward_ms): rising verify costs, cheap and dear drafts."""
    ts = range(1, 18)
    return [
        (
            "a cheap draft, verify cost rising 1.5 ms per row",
            0.8,
            0.5,
            {t: 40 + 1.5 * t for t in ts},
        ),
        (
            "a flat verify cost up to 8 rows, steep after",
            0.9,
            0.3,
            {t: 40 + 0.3 * t if t <= 8 else 42.4 + 12 * (t - 8) for t in ts},
        ),
        ("a dear draft (a tenth of a target forward)", 0.7, 4.0, {t: 40 + 1.0 * t for t in ts}),
        ("an almost free, almost perfect draft", 0.97, 0.05, {t: 40 + 2.5 * t for t in ts}),
        ("a poor draft", 0.3, 2.0, {t: 40 + 1.0 * t for t in ts}),
    ]


def best_k_answers(
    alpha: float, draft_ms: float, forward_ms: dict[int, float]
) -> tuple[int, dict[str, int]]:
    """The fastest k, and the k each common mistake picks instead."""
    ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]

    def best(verify_ms: Callable[[int], float], cost: float = draft_ms, bonus: bool = True) -> int:
        return fastest(ks, lambda k: step_speed(alpha, k, cost, verify_ms(k), bonus))

    mistakes = {
        "verifying k drafts is a forward over k + 1 tokens (the newest one and the drafts): "
        "forward_ms[k + 1]": best(lambda k: forward_ms.get(k, np.inf)),
        "drafting costs time too: k * draft_ms per step": best(
            lambda k: forward_ms[k + 1], cost=0.0
        ),
        "the verify pass grows with its rows: use forward_ms[k + 1], not forward_ms[1]": best(
            lambda k: forward_ms[1]
        ),
        "count the corrected or bonus token: a step emits (1 - alpha^(k+1)) / (1 - alpha)": best(
            lambda k: forward_ms[k + 1], bonus=False
        ),
        "more tokens per step is not more tokens per second: divide by the step's time": max(ks),
    }
    return best(lambda k: forward_ms[k + 1]), mistakes


def grade_best_k(fn: Callable) -> str:
    cases = []
    for name, alpha, draft_ms, forward_ms in best_k_inputs():
        want, mistakes = best_k_answers(alpha, draft_ms, forward_ms)
        shown = f"alpha={alpha}, draft_ms={draft_ms}, {name}"
        cases.append(Case(shown, (alpha, draft_ms, dict(forward_ms)), want, mistakes))

    def show(case: Case, got: float) -> str:
        return f"{case.name}: expected k = {case.want}, got {got:g}"

    judge(fn, cases, number_reader(fn), same_value, show)
    return f"{name_of(fn)} finds the fastest k on {len(cases)} cost profiles"
