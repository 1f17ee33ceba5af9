"""The lessons' exercises check themselves: `check_<exercise>(your_function)` prints a verdict.

Each check runs the learner's function on cases it makes up (random inputs from fixed seeds,
and the edge cases people miss) and prints one line:

    not yet: ...   the function still raises NotImplementedError (as the notebooks ship it)
    right: ...     it agrees with minispec on every case
    wrong: ...     a hint at the likely mistake, and the case that showed it

A check never raises: a crash inside the learner's function is reported as "wrong", with the
case it crashed on. The hints come from mistakes people really make (published implementations
made several of them): each check knows what each mistake would return, and names the one the
learner's answer matches. Answers: lessons/solutions/. tests/test_exercises.py holds every check
to those answers and to the wrong versions.

Notation as in Leviathan et al. 2023: p = target distribution, q = draft distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from minispec.config import GemmaConfig
from minispec.model import rms_norm, rope
from minispec.sampling import SamplingParams, probabilities
from minispec.speculative import accept_greedy, residual_distribution
from minispec.stats import expected_tokens_per_forward

# ----------------------------------------------------------------------------- the machinery


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
    results = [read(attempt(fn, *case.args, case=case.name), case) for case in cases]
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


# -------------------------------------------------------------------- lesson 1: the forward pass


def check_rms_norm(fn: Callable) -> None:
    """fn(x, w, eps) = x / sqrt(mean(x^2) + eps) * (1 + w), over the last axis (Gemma's RMSNorm)."""
    report(fn, grade_rms_norm)


def grade_rms_norm(fn: Callable) -> str:
    rng = np.random.default_rng(1)
    eps = 1e-6
    inputs = [
        ("x of shape (3, 8)", rng.standard_normal((3, 8))),
        (
            "x of shape (2, 4, 16), one row per head as QK-norm uses it",
            rng.standard_normal((2, 4, 16)),
        ),
        ("a tiny x (values near 1e-4), where eps matters", 1e-4 * rng.standard_normal((2, 8))),
        ("x all zeros", np.zeros((2, 8))),
        ("rows of very different sizes", rng.standard_normal((2, 8)) * np.array([[0.01], [100]])),
        ("x of shape (5, 640), Gemma's width", 30 * rng.standard_normal((5, 640))),
    ]
    cases = []
    for name, x in inputs:
        x = x.astype(np.float32)
        w = (0.3 * rng.standard_normal(x.shape[-1])).astype(np.float32)
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        ms = np.mean(x64 * x64, axis=-1, keepdims=True)
        centred = x64 - x64.mean(axis=-1, keepdims=True)
        with np.errstate(all="ignore"):
            mistakes = {
                "multiply by (1 + w), not by w: Gemma stores each gain as its offset from 1, so "
                "a norm with w = 0 leaves the scale alone": x64 / np.sqrt(ms + eps) * w64,
                "add eps inside the square root, sqrt(mean(x^2) + eps): without it a row of "
                "zeros divides 0 by 0": x64 / np.sqrt(ms) * (1 + w64),
                "eps goes inside the square root: sqrt(mean(x^2) + eps), not sqrt(...) + eps": (
                    x64 / (np.sqrt(ms) + eps) * (1 + w64)
                ),
                "normalise each row on its own: the mean is over the last axis only "
                "(axis=-1, keepdims=True)": x64 / np.sqrt(np.mean(x64 * x64) + eps) * (1 + w64),
                "RMSNorm does not subtract the mean (that is LayerNorm): divide x itself by its "
                "root mean square": centred
                / np.sqrt(np.mean(centred**2, -1, keepdims=True) + eps)
                * (1 + w64),
                "divide by the square root of mean(x^2) + eps, not by the mean itself": (
                    x64 / (ms + eps) * (1 + w64)
                ),
            }
        cases.append(Case(name, (x, w, eps), rms_norm(x, w, eps), mistakes))
    judge(fn, cases, array_reader(fn), same_array, largest_difference)
    return f"{name_of(fn)} matches minispec.model.rms_norm on {len(cases)} cases"


def check_rope(fn: Callable) -> None:
    """fn(x, positions, base): rotate-half RoPE of x (T, n_heads, head_dim) at the positions."""
    report(fn, grade_rope)


def grade_rope(fn: Callable) -> str:
    rng = np.random.default_rng(2)
    inputs = [  # (name, n_heads, head_dim, positions, base)
        ("T=3, 2 heads of 8 dims, positions 0..2, base 10,000", 2, 8, [0, 1, 2], 10_000.0),
        ("position 0 alone (RoPE must leave it unchanged)", 1, 8, [0], 10_000.0),
        ("positions 100..103 (decoding after a KV cache)", 1, 16, [100, 101, 102, 103], 10_000.0),
        ("Gemma's head_dim 256, positions 511 and 512, base 1,000,000", 4, 256, [511, 512], 1e6),
        ("a small base, 10", 2, 8, [3, 7], 10.0),
    ]
    cases = []
    for name, heads, d, positions, base in inputs:
        pos = np.array(positions)
        x = rng.standard_normal((len(positions), heads, d)).astype(np.float32)
        mistakes = {
            "pair dimension i with i + d/2 (rotate-half, as Gemma and Hugging Face do), not "
            "the adjacent dimensions 2i and 2i+1 (the RoFormer paper's layout)": rope_interleaved(
                x, pos, base
            ),
            "the frequencies are base^(-2i/d) for i = 0..d/2-1, i.e. "
            "base ** (-np.arange(0, d, 2) / d)": rope_variant(x, pos, base, freq_step=1),
            "the rotation goes the other way: (x1 cos - x2 sin, x2 cos + x1 sin)": rope_variant(
                x, -pos, base
            ),
            "rotate by the positions you are given: after a KV cache they do not start at 0": rope(
                x, np.arange(len(pos)), base
            ),
        }
        cases.append(Case(name, (x, pos, base), rope(x, pos, base), mistakes))
    judge(fn, cases, array_reader(fn), same_array, largest_difference)
    return f"{name_of(fn)} matches minispec.model.rope on {len(cases)} cases"


def rope_interleaved(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """The mistake: RoPE pairing dimensions (2i, 2i+1) instead of (i, i + d/2)."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-np.arange(0, d, 2) / d)  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty(x.shape)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, odd * cos + even * sin
    return out


def rope_variant(
    x: np.ndarray, positions: np.ndarray, base: float, freq_step: int = 2
) -> np.ndarray:
    """Rotate-half RoPE with inv_freq = base^(-freq_step * i / d): the right step is 2."""
    d = x.shape[-1]
    angles = positions[:, None] * base ** (-freq_step * np.arange(d // 2) / d)  # (T, d/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# ------------------------------------------------------------ lesson 2: decoding is memory-bound

FLOAT32 = 4  # bytes


def config_cases() -> list[tuple[str, GemmaConfig]]:
    """Gemma 3 270M, a Gemma 3 1B-shaped config and a made-up one with 2 KV heads."""
    one_b = GemmaConfig(
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        layer_types=[
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)
        ],
    )
    other = GemmaConfig(
        vocab_size=32_000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        sliding_window=128,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )
    return [
        ("Gemma 3 270M", GemmaConfig()),
        ("a Gemma 3 1B shape", one_b),
        ("a made-up config", other),
    ]


def weight_parts(c: GemmaConfig) -> dict[str, int]:
    """Weight bytes of one forward pass, by part (float32); the tied head counted once."""
    d, ff, n_layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    q_width, kv_width = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return {
        "head": FLOAT32 * c.vocab_size * d,
        "attention": FLOAT32 * n_layers * (2 * q_width * d + 2 * kv_width * d),
        "mlp": FLOAT32 * n_layers * 3 * ff * d,
        "norms": FLOAT32 * (n_layers * (4 * d + 2 * c.head_dim) + d),
    }


def kv_bytes_read(c: GemmaConfig, context: int, heads: int | None = None) -> int:
    """Keys and values one decoding step reads: context + 1 positions, a window on sliding layers.

    heads: key/value heads per layer (default the config's; the mistake uses the query heads).
    """
    heads = c.num_key_value_heads if heads is None else heads
    seen = [
        min(context + 1, c.sliding_window) if c.is_sliding(i) else context + 1
        for i in range(c.num_hidden_layers)
    ]
    return FLOAT32 * 2 * heads * c.head_dim * sum(seen)


def show_bytes(case: Case, got: float) -> str:
    return f"{case.name}: {got:,.0f} bytes, expected {case.want:,.0f} ({got - case.want:+,.0f})"


def check_weight_bytes(fn: Callable) -> None:
    """fn(config) = bytes of float32 weights one decoding step reads (every matrix once)."""
    report(fn, grade_weight_bytes)


def weight_bytes_answers(c: GemmaConfig) -> tuple[int, dict[str, float]]:
    """The weight bytes of config c, and what each common mistake gives instead."""
    parts = weight_parts(c)
    want = sum(parts.values())
    n_layers, d, hd = c.num_hidden_layers, c.hidden_size, c.head_dim
    q_width, extra_kv_heads = (
        c.num_attention_heads * hd,
        c.num_attention_heads - c.num_key_value_heads,
    )
    mistakes = {
        "the output head: logits = h @ embed.T reads the whole (vocab, d_model) embedding "
        "every step (the lookup at the input reads one row)": want - parts["head"],
        "the head is tied to the embedding: the same (vocab, d_model) matrix, read once": (
            want + parts["head"]
        ),
        "bytes, not numbers: a float32 is 4 bytes": want / FLOAT32,
        "k_proj and v_proj have num_key_value_heads * head_dim rows (grouped-query "
        "attention shares each key/value head)": want
        + FLOAT32 * n_layers * 2 * extra_kv_heads * hd * d,
        "the gated MLP has three matrices (gate, up, down), each d_model x d_ff": (
            want - FLOAT32 * n_layers * c.intermediate_size * d
        ),
        "q_proj is (num_attention_heads * head_dim, d_model): Gemma's heads are wider than "
        "d_model / num_attention_heads": want - FLOAT32 * n_layers * 2 * (q_width - d) * d,
    }
    return want, mistakes


def grade_weight_bytes(fn: Callable) -> str:
    # The norm vectors are 0.02 % of the bytes: forgetting them is fine.
    cases = [
        Case(name, (c,), *weight_bytes_answers(c), slack=weight_parts(c)["norms"])
        for name, c in config_cases()
    ]
    judge(fn, cases, number_reader(fn), same_number, show_bytes)
    return f"{name_of(fn)} gives every config's weight bytes (the tied head counted once)"


def check_bytes_per_token(fn: Callable) -> None:
    """fn(config, context) = bytes one decoding step reads after `context` cached positions."""
    report(fn, grade_bytes_per_token)


def grade_bytes_per_token(fn: Callable) -> str:
    cases = []
    for name, c in config_cases():
        weights, weight_mistakes = weight_bytes_answers(c)
        # Forgive the norms and one position per layer (whether the new token's own key counts).
        slack = weight_parts(c)["norms"] + kv_bytes_read(c, 0)
        no_window = replace(c, sliding_window=10**9)
        all_windowed = replace(c, layer_types=["sliding_attention"] * c.num_hidden_layers)
        for context in (100, 1000, 20_000):
            kv = kv_bytes_read(c, context)
            mistakes = {
                "the KV cache: each step reads every cached key and value it attends over": weights,
                "values too: the cache holds a key and a value per position": weights + kv / 2,
                "sliding layers (5 of every 6 in Gemma 3) read at most sliding_window positions": (
                    weights + kv_bytes_read(no_window, context)
                ),
                "the global layers (every 6th) read the whole context, not a window": (
                    weights + kv_bytes_read(all_windowed, context)
                ),
                "keys and values have num_key_value_heads heads, not num_attention_heads "
                "(grouped-query attention)": weights
                + kv_bytes_read(c, context, heads=c.num_attention_heads),
            }
            for hint, wrong_weights in weight_mistakes.items():
                mistakes[
                    f"the weights are off, the KV reads right (check_weight_bytes): {hint}"
                ] = wrong_weights + kv
            name_here = f"{name} after {context:,} cached positions"
            cases.append(Case(name_here, (c, context), weights + kv, mistakes, slack=slack))

    judge(fn, cases, number_reader(fn), same_number, show_bytes)
    return f"{name_of(fn)} adds up weights and KV cache reads on {len(cases)} cases"


# ---------------------------------------------------------- lesson 3: greedy speculative decoding


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
    for kv, n, j in [(20, 4, 2), (20, 4, 0), (20, 4, 4), (137, 8, 5), (5, 1, 0), (300, 16, 11)]:
        mistakes = {
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


# ------------------------------------------------------------------ lesson 4: speculative sampling


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
        }
        case = Case(name, (p, q), p, mistakes)
        rng = np.random.default_rng(5)
        counts = np.zeros(p.size)
        for _ in range(draws):
            x = int(rng.choice(p.size, p=q))
            token = attempt(fn, p.copy(), q.copy(), x, rng, case=name)
            try:
                counts[int(token)] += 1  # type: ignore[arg-type]
            except (TypeError, ValueError, IndexError):
                raise Wrong(f"{name_of(fn)} returned {token!r}, not a token id ({name})") from None
        cases.append(case)
        histograms.append(counts / draws)

    def show(case: Case, seen: np.ndarray) -> str:
        return f"{case.name}: emitted tokens {fmt(seen)}, p {fmt(case.want)}"

    # Sampling noise is about 0.005 in total variation at 8,000 draws.
    def same(seen: np.ndarray, want: object, case: Case) -> bool:
        return want is not None and total_variation(seen, want) < 0.03

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
        want = (probabilities(target, sampling), probabilities(draft, sampling))
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


# ------------------------------------------------------------- lesson 5: drafters and the speedup


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


__all__ = [
    "check_accept_greedy",
    "check_accept_or_reject",
    "check_best_k",
    "check_bytes_per_token",
    "check_expected_tau",
    "check_residual",
    "check_rms_norm",
    "check_rollback_length",
    "check_rope",
    "check_shape_both",
    "check_weight_bytes",
]
