"""Lesson 3's checks (lessons/03_greedy_speculative.ipynb): the greedy rule and the rollback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from minispec.exercises.judging import (
    Case,
    Wrong,
    judge,
    name_of,
    number_reader,
    report,
    same_value,
)
from minispec.speculative import accept_greedy


def check_accept_greedy(fn: Callable) -> None:
    """fn(target_argmax, drafts) = (n_accepted, next_token), the greedy rule."""
    report(fn, grade_accept_greedy)


def greedy_inputs() -> list[tuple[str, list[int], list[int]]]:
    """(name, target_argmax (n+1,), drafts (n,)): the edge cases first, then random ones."""
    inputs = [
        ("every draft right", [5, 9, 7, 3], [5, 9, 7]),
        ("the second draft wrong, the third right again", [5, 1, 7, 3], [5, 9, 7]),
        ("the first draft wrong", [8, 2], [4]),
        ("nothing drafted (a lookup miss)", [6], []),
        ("the last of four drafts wrong", [1, 2, 3, 4, 5], [1, 2, 3, 9]),
    ]
    rng = np.random.default_rng(3)
    for i in range(20):
        n = int(rng.integers(1, 9))
        argmax = rng.integers(0, 4, n + 1).tolist()
        drafts = [a if rng.random() < 0.7 else int(rng.integers(0, 4)) for a in argmax[:n]]
        inputs.append((f"random case {i}", argmax, drafts))
    return inputs


def greedy_mistakes(argmax: list[int], drafts: list[int]) -> dict[str, tuple]:
    """What each common mistake returns on one case."""
    n = len(drafts)
    j = accept_greedy(np.array(argmax), drafts).n_accepted
    matches = sum(d == a for d, a in zip(drafts, argmax, strict=False))
    shifted = 0
    while shifted < n and drafts[shifted] == argmax[shifted + 1]:
        shifted += 1
    return {
        "stop at the first mismatch: every later draft was guessed after the rejected one, so "
        "it is worthless": (matches, argmax[j]),
        "at the first mismatch emit the target's choice there, target_argmax[j] (the "
        "correction), not the draft": (j, drafts[j] if j < n else argmax[n]),
        "when every draft is accepted, the verify pass's last row is free: emit "
        "target_argmax[n] (the bonus token)": (
            j,
            argmax[j] if j < n else drafts[-1] if n else None,
        ),
        "row i of the verify pass is the target's choice for the position of drafts[i] "
        "(the rows start at the newest token), so compare drafts[i] with target_argmax[i]": (
            shifted,
            argmax[min(shifted + 1, n)],
        ),
    }


def grade_accept_greedy(fn: Callable) -> str:
    cases = []
    for name, argmax, drafts in greedy_inputs():
        verdict = accept_greedy(np.array(argmax), drafts)
        want = (verdict.n_accepted, verdict.next_token)
        args = (np.array(argmax), list(drafts))
        cases.append(Case(name, args, want, greedy_mistakes(argmax, drafts)))

    def read(got: object, case: Case) -> tuple[int, int]:
        try:
            return int(got[0]), int(got[1])  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            raise Wrong(
                f"{name_of(fn)} must return (n_accepted, next_token), got {got!r}"
            ) from None

    def show(case: Case, got: tuple) -> str:
        argmax, drafts = case.args
        return (
            f"{case.name}: target_argmax {argmax.tolist()}, drafts {drafts}: expected "
            f"{case.want}, got {got}"
        )

    judge(fn, cases, read, same_value, show)
    return f"{name_of(fn)} agrees with minispec.accept_greedy on {len(cases)} cases"


def check_rollback_length(fn: Callable) -> None:
    """fn(kv_before, n_drafted, n_accepted) = the target cache's length after the rollback."""
    report(fn, grade_rollback_length)


def grade_rollback_length(fn: Callable) -> str:
    cases = []
    # The first case tells every mistake below apart (no two give the same length).
    for kv, n, j in [(20, 5, 2), (20, 4, 0), (20, 4, 4), (137, 8, 5), (5, 1, 0), (300, 16, 11)]:
        mistakes = {
            "the length depends on how many drafts were accepted (n_accepted), not on how many "
            "were drafted": kv + n,
            "roll back to the accepted length, not the drafted length: the rejected drafts' keys "
            "and values must go, or later tokens attend to them": kv + 1 + n,
            "the verify pass also wrote the newest token (the one before the drafts): keep it "
            "too, kv_before + 1 + n_accepted": kv + j,
            "the corrected (or bonus) token is not in the cache yet: the target has not read it; "
            "it is the next step's newest token": kv + 2 + j,
            "the accepted drafts stay: the target computed their keys and values in the verify "
            "pass, the same as decoding would": kv + 1,
        }
        name = f"kv_before={kv}, n_drafted={n}, n_accepted={j}"
        # The newest token and the j accepted drafts stay.
        cases.append(Case(name, (kv, n, j), kv + 1 + j, mistakes))

    def show(case: Case, got: float) -> str:
        return f"{case.name}: expected {case.want}, got {got:g}"

    judge(fn, cases, number_reader(fn), same_value, show)
    return f"{name_of(fn)} keeps exactly the newest token and the accepted drafts"
