"""The judging every lesson's checks share: run the learner's function, name the mistake.

A check makes up `Case`s (an input, the right result, what each known mistake returns on it),
and `judge` runs the learner's function on them: `attempt` turns a crash into a verdict, a
reader (`array_reader`, `number_reader`) turns the result into something to compare, and
`name_mistake` picks the hint of the mistake that explains the results. `report` prints the
verdict in one line: not yet / right / wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Wrong(Exception):
    """A case the learner's function got wrong; the message is the hint."""


def report(fn: Callable, grade: Callable[[Callable], str]) -> None:
    """Run grade(fn) and print its verdict in one line: not yet / right / wrong."""
    try:
        detail = grade(fn)
    except NotImplementedError:
        print(
            f"not yet: {name_of(fn)} still raises NotImplementedError. Write its body, run its "
            "cell, then run this check again."
        )
    except Wrong as hint:
        print(f"wrong: {hint}")
    else:
        print(f"right: {detail}")


def name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def attempt(fn: Callable, *args: object, case: str) -> object:
    """fn(*args), with a crash turned into a verdict that names the case."""
    try:
        with np.errstate(all="ignore"):  # 0/0 is a mistake to report, not a warning to print
            return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # any crash in the learner's code is a verdict, not a traceback
        raise Wrong(f"{name_of(fn)} raised {type(err).__name__}: {err} (on {case})") from None


def as_array(got: object, shape: tuple[int, ...], fn: Callable, case: str) -> np.ndarray:
    """The learner's result as float64 of the expected shape, or a verdict saying what it was."""
    try:
        arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Wrong(f"{name_of(fn)} returned {type(got).__name__}, not an array ({case})") from None
    if arr.shape != shape:
        raise Wrong(f"{name_of(fn)} returned shape {arr.shape}, expected {shape} ({case})")
    return arr


def close(got: object, want: object, rtol: float = 1e-4) -> bool:
    """Equal up to float32 rounding, relative to the size of the values (None: never)."""
    if want is None:
        return False
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    return bool(np.allclose(got, want, rtol=rtol, atol=1e-6 * scale, equal_nan=False))


@dataclass
class Case:
    """One made-up input, its right result, and what each known mistake returns on it."""

    name: str  # how the verdict names the case
    args: tuple  # the learner's function is called as fn(*args)
    want: object
    mistakes: dict[str, object] = field(default_factory=dict)  # hint -> that mistake's result
    slack: float = 0.0  # how far a number may be from want and still be right (same_number)


# Comparisons: same(got, want, case) says whether the learner's result is `want` (a right
# answer or a mistake's) on that case; want None never matches.


def same_array(got: np.ndarray, want: object, case: Case) -> bool:
    return close(got, want)


def same_value(got: object, want: object, case: Case) -> bool:
    return want is not None and got == want


def same_number(got: float, want: object, case: Case) -> bool:
    """Equal up to case.slack (default: rounding, 1e-9 of the value)."""
    if want is None:
        return False
    return abs(got - want) <= (case.slack or 1e-9 * max(1.0, abs(want)))


def judge(
    fn: Callable,
    cases: list[Case],
    read: Callable[[object, Case], object],
    same: Callable[[object, object, Case], bool],
    show: Callable[[Case, object], str],
) -> None:
    """Run fn on every case; raise Wrong with a hint unless each result is the right one.

    read(result, case) turns a result into what `same` compares (or raises Wrong: a result of
    the wrong kind); show(case, got) describes a wrong result in a few words.
    """
    results: list[object] = []
    for case in cases:
        try:
            results.append(read(attempt(fn, *case.args, case=case.name), case))
        except Wrong:
            # An earlier wrong result names the mistake better than a later crash does.
            name_mistake(cases[: len(results)], results, same, show)
            raise
    name_mistake(cases, results, same, show)


def name_mistake(
    cases: list[Case],
    results: list[object],
    same: Callable[[object, object, Case], bool],
    show: Callable[[Case, object], str],
) -> None:
    """Raise Wrong on the first wrong result, naming the mistake that explains the results.

    First choice: a mistake that reproduces the learner's result on every case; else one that
    reproduces it on the first wrong case; else just what went wrong there.
    """
    wrong = [
        (case, got)
        for case, got in zip(cases, results, strict=True)
        if not same(got, case.want, case)
    ]
    if not wrong:
        return
    case, got = wrong[0]

    def explains(hint: str, case: Case, got: object) -> bool:
        return same(got, case.mistakes.get(hint, case.want), case)

    everywhere = [
        hint
        for hint in case.mistakes
        if all(explains(hint, c, g) for c, g in zip(cases, results, strict=True))
    ]
    here = [hint for hint in case.mistakes if same(got, case.mistakes[hint], case)]
    hint = (everywhere or here or [None])[0]
    detail = show(case, got)
    raise Wrong(f"{hint} ({detail})" if hint else detail)


def array_reader(fn: Callable) -> Callable[[object, Case], np.ndarray]:
    """read() for a function that returns an array shaped like case.want."""
    return lambda got, case: as_array(got, np.shape(case.want), fn, case.name)


def number_reader(fn: Callable) -> Callable[[object, Case], float]:
    return lambda got, case: number(got, fn, case.name)


def largest_difference(case: Case, got: np.ndarray) -> str:
    if np.isnan(got).any():
        return f"nan on {case.name}"
    return f"off by up to {float(np.max(np.abs(got - case.want))):.3g} on {case.name}"


def fmt(values: object) -> str:
    """An array on one line, rounded: [0.45 0.25 0.15]."""
    return np.array2string(
        np.asarray(values), precision=3, max_line_width=10**6, suppress_small=True
    )


def number(got: object, fn: Callable, case: str) -> float:
    try:
        value = float(got)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Wrong(f"{name_of(fn)} returned {got!r}, not a number ({case})") from None
    if not np.isfinite(value):
        raise Wrong(f"{name_of(fn)} returned {value} on {case}")
    return value
