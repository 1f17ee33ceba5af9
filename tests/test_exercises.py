"""The lessons' checks: each says "right" to the solution, "not yet" to the stub the notebook ships,
and "wrong" with the matching hint to the mistakes people really make. Fast: no real model."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from test_lessons import solution_module

from minispec import exercises as ex
from minispec.sampling import SamplingParams, distribution

S1 = solution_module("01_forward_pass")
S2 = solution_module("02_memory_bound")
S3 = solution_module("03_greedy_speculative")
S4 = solution_module("04_speculative_sampling")
S5 = solution_module("05_drafters_and_speedup")
S6 = solution_module("06_token_trees")

# (check, the lesson's solution); every check the lessons call
CHECKS = {
    "rms_norm": (ex.check_rms_norm, S1.my_rms_norm),
    "rope": (ex.check_rope, S1.my_rope),
    "weight_bytes": (ex.check_weight_bytes, S2.my_weight_bytes),
    "bytes_per_token": (ex.check_bytes_per_token, S2.my_bytes_per_token),
    "accept_greedy": (ex.check_accept_greedy, S3.my_accept_greedy),
    "rollback_length": (ex.check_rollback_length, S3.my_rollback_length),
    "residual": (ex.check_residual, S4.my_residual),
    "accept_or_reject": (ex.check_accept_or_reject, S4.my_accept_or_reject),
    "shape_both": (ex.check_shape_both, S4.my_shape_both),
    "query_only_attention": (ex.check_query_only_attention, S5.my_query_only_attention),
    "expected_tau": (ex.check_expected_tau, S5.my_expected_tau),
    "best_k": (ex.check_best_k, S5.my_best_k),
    "ancestor_mask": (ex.check_ancestor_mask, S6.my_ancestor_mask),
    "sibling_rule": (ex.check_sibling_rule, S6.my_sibling_rule),
}


def verdict(check: Callable, fn: Callable, capsys: pytest.CaptureFixture) -> str:
    check(fn)
    out = capsys.readouterr().out
    assert out.count("\n") == 1, f"a check prints one line, got {out!r}"
    return out.strip()


def stub(*args: object) -> object:
    raise NotImplementedError("write this function")


@pytest.mark.parametrize("name", CHECKS)
def test_the_solution_is_right(name: str, capsys: pytest.CaptureFixture) -> None:
    check, solution = CHECKS[name]
    assert verdict(check, solution, capsys).startswith("right: ")


@pytest.mark.parametrize("name", CHECKS)
def test_the_stub_is_not_yet(name: str, capsys: pytest.CaptureFixture) -> None:
    check, _ = CHECKS[name]
    out = verdict(check, stub, capsys)
    assert out.startswith("not yet: stub still raises NotImplementedError")


@pytest.mark.parametrize("name", CHECKS)
def test_a_crash_is_a_verdict_not_a_traceback(name: str, capsys: pytest.CaptureFixture) -> None:
    def crashes(*args: object) -> object:
        raise KeyError("oops")

    check, _ = CHECKS[name]
    out = verdict(check, crashes, capsys)
    assert out.startswith("wrong: crashes raised KeyError") and "(on " in out


@pytest.mark.parametrize("name", CHECKS)
def test_returning_nothing_is_wrong(name: str, capsys: pytest.CaptureFixture) -> None:
    check, _ = CHECKS[name]
    assert verdict(check, lambda *args: None, capsys).startswith("wrong: ")


def wrong(check: Callable, fn: Callable, capsys: pytest.CaptureFixture) -> str:
    out = verdict(check, fn, capsys)
    assert out.startswith("wrong: "), out
    return out


# ------------------------------------------------------------------------------- lesson 1


def rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


RMS_NORM_MISTAKES = {
    "not by the standard deviation": lambda x, w, eps: (
        x / np.sqrt(x.var(-1, keepdims=True) + eps) * (1 + w)
    ),
    "multiply by (1 + w)": lambda x, w, eps: x / rms(x) * w,
    "eps goes inside the square root": lambda x, w, eps: (
        x / (np.sqrt(np.mean(x * x, -1, keepdims=True)) + eps) * (1 + w)
    ),
    "the mean is over the last axis only": lambda x, w, eps: (
        x / np.sqrt(np.mean(x * x) + eps) * (1 + w)
    ),
    "does not subtract the mean": lambda x, w, eps: (
        (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * (1 + w)
    ),
    "without it a row of zeros divides 0 by 0": lambda x, w, eps: (
        x / np.sqrt(np.mean(x * x, -1, keepdims=True)) * (1 + w)
    ),
    "not by the mean itself": lambda x, w, eps: (
        x / (np.mean(x * x, -1, keepdims=True) + eps) * (1 + w)
    ),
}


def test_an_earlier_wrong_case_is_named_before_a_later_crash(
    capsys: pytest.CaptureFixture,
) -> None:
    def w_only_then_crash(x, w, eps):
        if x.ndim == 3:
            raise IndexError("a later case crashes")
        return x / rms(x) * w

    assert "multiply by (1 + w)" in wrong(ex.check_rms_norm, w_only_then_crash, capsys)


@pytest.mark.parametrize("hint", RMS_NORM_MISTAKES)
def test_rms_norm_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_rms_norm, RMS_NORM_MISTAKES[hint], capsys)


def test_rms_norm_float64_is_right(capsys: pytest.CaptureFixture) -> None:
    def in_float64(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        return S1.my_rms_norm(x.astype(np.float64), w.astype(np.float64), eps)

    assert verdict(ex.check_rms_norm, in_float64, capsys).startswith("right: ")


def test_rms_norm_wrong_shape_is_named(capsys: pytest.CaptureFixture) -> None:
    out = wrong(ex.check_rms_norm, lambda x, w, eps: x.reshape(-1), capsys)
    assert "returned shape (24,), expected (3, 8)" in out


ROPE_MISTAKES = {
    "not the adjacent dimensions 2i and 2i+1": ex.rope_interleaved,
    "base ** (-np.arange(0, d, 2) / d)": lambda x, pos, base: ex.rope_variant(x, pos, base, 1),
    "the rotation goes the other way": lambda x, pos, base: S1.my_rope(x, -pos, base),
    "after a KV cache they do not start at 0": lambda x, pos, base: S1.my_rope(
        x, np.arange(len(pos)), base
    ),
}


@pytest.mark.parametrize("hint", ROPE_MISTAKES)
def test_rope_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_rope, ROPE_MISTAKES[hint], capsys)


def test_rope_identity_is_wrong_without_a_known_hint(capsys: pytest.CaptureFixture) -> None:
    out = wrong(ex.check_rope, lambda x, pos, base: x, capsys)
    assert "off by up to" in out and "T=3, 2 heads" in out


# ------------------------------------------------------------------------------- lesson 2


def layers_only(c):  # the embedding lookup reads one row... and the head is forgotten
    return S2.my_weight_bytes(c) - 4 * c.vocab_size * c.hidden_size


WEIGHT_BYTES_MISTAKES = {
    "the output head": layers_only,
    "read once": lambda c: S2.my_weight_bytes(c) + 4 * c.vocab_size * c.hidden_size,
    "a float32 is 4 bytes": lambda c: S2.my_weight_bytes(c) // 4,
    "grouped-query": lambda c: (
        S2.my_weight_bytes(c)
        + 4 * c.num_hidden_layers * 2 * (c.num_attention_heads - 1) * c.head_dim * c.hidden_size
    ),
    "three matrices": lambda c: (
        S2.my_weight_bytes(c) - 4 * c.num_hidden_layers * c.intermediate_size * c.hidden_size
    ),
    "wider than d_model / num_attention_heads": lambda c: (
        S2.my_weight_bytes(c)
        - 4
        * c.num_hidden_layers
        * 2
        * (c.num_attention_heads * c.head_dim - c.hidden_size)
        * c.hidden_size
    ),
}


@pytest.mark.parametrize("hint", WEIGHT_BYTES_MISTAKES)
def test_weight_bytes_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_weight_bytes, WEIGHT_BYTES_MISTAKES[hint], capsys)


def test_weight_bytes_with_the_norms_is_right_too(capsys: pytest.CaptureFixture) -> None:
    def with_norms(c):
        norms = c.num_hidden_layers * (4 * c.hidden_size + 2 * c.head_dim) + c.hidden_size
        return S2.my_weight_bytes(c) + 4 * norms

    assert verdict(ex.check_weight_bytes, with_norms, capsys).startswith("right: ")


def test_weight_bytes_answer_key_is_roofline_weight_bytes() -> None:
    """The check's answer and `roofline.weight_bytes` (which sums a model's arrays) agree."""
    import minispec as ms
    from minispec import roofline

    model = ms.reference(ms.tiny_model())  # plain matrices: packed ones carry padding
    assert sum(ex.weight_parts(model.config).values()) == roofline.weight_bytes(model)


def kv_part(c, context: int, heads: int, window: int | None, windowed: Callable[[int], bool]):
    per_position = 2 * heads * c.head_dim * 4
    seen = [
        min(context + 1, window) if window and windowed(i) else context + 1
        for i in range(c.num_hidden_layers)
    ]
    return per_position * sum(seen)


BYTES_PER_TOKEN_MISTAKES = {
    "the KV cache": lambda c, n: S2.my_weight_bytes(c),
    "values too": lambda c, n: (
        S2.my_weight_bytes(c)
        + kv_part(c, n, c.num_key_value_heads, c.sliding_window, c.is_sliding) // 2
    ),
    "read at most sliding_window positions": lambda c, n: (
        S2.my_weight_bytes(c) + kv_part(c, n, c.num_key_value_heads, None, c.is_sliding)
    ),
    "read the whole context, not a window": lambda c, n: (
        S2.my_weight_bytes(c)
        + kv_part(c, n, c.num_key_value_heads, c.sliding_window, lambda i: True)
    ),
    "not num_attention_heads": lambda c, n: (
        S2.my_weight_bytes(c) + kv_part(c, n, c.num_attention_heads, c.sliding_window, c.is_sliding)
    ),
    "the KV reads right (check_weight_bytes): the output head": lambda c, n: (
        layers_only(c) + kv_part(c, n, c.num_key_value_heads, c.sliding_window, c.is_sliding)
    ),
}


@pytest.mark.parametrize("hint", BYTES_PER_TOKEN_MISTAKES)
def test_bytes_per_token_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_bytes_per_token, BYTES_PER_TOKEN_MISTAKES[hint], capsys)


def test_bytes_per_token_without_the_own_key_is_named(capsys: pytest.CaptureFixture) -> None:
    def cached_positions_only(c, context):
        return S2.my_bytes_per_token(c, context - 1)

    assert "context + 1 positions" in wrong(ex.check_bytes_per_token, cached_positions_only, capsys)


def test_bytes_per_token_with_gemmas_layer_pattern_written_in_is_named(
    capsys: pytest.CaptureFixture,
) -> None:
    def every_sixth(c, context):
        per_position = 2 * c.num_key_value_heads * c.head_dim * 4
        seen = sum(
            context + 1 if (i + 1) % 6 == 0 else min(context + 1, c.sliding_window)
            for i in range(c.num_hidden_layers)
        )
        return S2.my_weight_bytes(c) + per_position * seen

    assert "config.is_sliding(i)" in wrong(ex.check_bytes_per_token, every_sixth, capsys)


# ------------------------------------------------------------------------------- lesson 3


def all_matches(argmax, drafts):
    j, _ = S3.my_accept_greedy(argmax, drafts)
    return sum(int(d == a) for d, a in zip(drafts, argmax, strict=False)), int(argmax[j])


def emits_the_draft(argmax, drafts):
    j, token = S3.my_accept_greedy(argmax, drafts)
    return j, drafts[j] if j < len(drafts) else token


def no_bonus(argmax, drafts):
    j, token = S3.my_accept_greedy(argmax, drafts)
    return (j, drafts[-1]) if drafts and j == len(drafts) else (j, token)


def shifted_rows(argmax, drafts):
    j = 0
    while j < len(drafts) and drafts[j] == argmax[j + 1]:
        j += 1
    return j, int(argmax[min(j + 1, len(drafts))])


GREEDY_MISTAKES = {
    "stop at the first mismatch": all_matches,
    "(the correction), not the draft": emits_the_draft,
    "(the bonus token)": no_bonus,
    "compare drafts[i] with target_argmax[i]": shifted_rows,
}


@pytest.mark.parametrize("hint", GREEDY_MISTAKES)
def test_accept_greedy_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_accept_greedy, GREEDY_MISTAKES[hint], capsys)


def test_accept_greedy_list_answer_is_right(capsys: pytest.CaptureFixture) -> None:
    as_list = lambda argmax, drafts: list(S3.my_accept_greedy(argmax, drafts))  # noqa: E731
    assert verdict(ex.check_accept_greedy, as_list, capsys).startswith("right: ")


ROLLBACK_MISTAKES = {
    "not on how many were drafted": lambda kv, n, j: kv + n,
    "not the drafted length": lambda kv, n, j: kv + 1 + n,
    "the verify pass also wrote the newest token": lambda kv, n, j: kv + j,
    "the corrected (or bonus) token is not in the cache yet": lambda kv, n, j: kv + 2 + j,
    "the accepted drafts stay": lambda kv, n, j: kv + 1,
}


@pytest.mark.parametrize("hint", ROLLBACK_MISTAKES)
def test_rollback_length_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_rollback_length, ROLLBACK_MISTAKES[hint], capsys)


# ------------------------------------------------------------------------------- lesson 4


RESIDUAL_MISTAKES = {
    "divide by its sum": lambda p, q: np.maximum(p - q, 0),
    "clip at zero": lambda p, q: (p - q) / np.sum(p - q),
    "not q - p": lambda p, q: S4.my_residual(q, p),
    "not from p itself": lambda p, q: p,
}


@pytest.mark.parametrize("hint", RESIDUAL_MISTAKES)
def test_residual_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_residual, RESIDUAL_MISTAKES[hint], capsys)


def chen_letters(p, q, x, rng):  # min(1, q/p): Chen et al.'s formula with Leviathan's letters
    ratio = q[x] / p[x] if p[x] > 0 else np.inf
    return x if rng.random() < min(1.0, ratio) else int(rng.choice(len(p), p=S4.my_residual(p, q)))


def resample_p(p, q, x, rng):
    return x if rng.random() < min(1.0, p[x] / q[x]) else int(rng.choice(len(p), p=p))


def accept_with_p(p, q, x, rng):
    return x if rng.random() < p[x] else int(rng.choice(len(p), p=S4.my_residual(p, q)))


def accept_if_p_at_least_q(p, q, x, rng):
    return x if p[x] >= q[x] else int(rng.choice(len(p), p=S4.my_residual(p, q)))


ACCEPT_OR_REJECT_MISTAKES = {
    "not only when p(x) >= q(x)": accept_if_p_at_least_q,
    "accept with probability min(1, p(x) / q(x))": chen_letters,
    "not from p: p's own mass": resample_p,
    "p(x) alone ignores how often": accept_with_p,
    "a drafted token is not always kept": lambda p, q, x, rng: x,
}


@pytest.mark.parametrize("hint", ACCEPT_OR_REJECT_MISTAKES)
def test_accept_or_reject_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_accept_or_reject, ACCEPT_OR_REJECT_MISTAKES[hint], capsys)


def test_accept_or_reject_with_the_package_rule_is_right(capsys: pytest.CaptureFixture) -> None:
    """minispec's own accept_or_reject, wrapped to the exercise's signature, passes."""
    import minispec as ms

    def package(p, q, x, rng):
        verdict = ms.accept_or_reject(np.stack([p, p]), q[None], [x], rng)
        return x if verdict.n_accepted else verdict.next_token

    assert verdict(ex.check_accept_or_reject, package, capsys).startswith("right: ")


def plain(logits):
    return distribution(logits, SamplingParams(temperature=1.0))


SHAPE_BOTH_MISTAKES = {
    "with the temperature, top-k or top-p on p only": lambda t, d, s: (
        distribution(t, s),
        plain(d),
    ),
    "shape p exactly as q": lambda t, d, s: (plain(t), distribution(d, s)),
    "p is the target's": lambda t, d, s: (distribution(d, s), distribution(t, s)),
}


@pytest.mark.parametrize("hint", SHAPE_BOTH_MISTAKES)
def test_shape_both_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_shape_both, SHAPE_BOTH_MISTAKES[hint], capsys)


def test_shape_both_top_p_on_p_only_is_wrong(capsys: pytest.CaptureFixture) -> None:
    def top_p_on_p_only(t, d, s):
        return distribution(t, s), distribution(d, SamplingParams(temperature=s.temperature))

    assert "on p only" in wrong(ex.check_shape_both, top_p_on_p_only, capsys)


# ------------------------------------------------------------------------------- lesson 5


def window_start(t: int, window: int | None) -> int:
    return 0 if window is None else max(0, t - window + 1)


def attention_by(
    start: Callable = window_start,
    stop: Callable = lambda t, n, capacity: min(t + 1, n),
    kv_head: Callable = lambda h, n_heads, n_kv: h // (n_heads // n_kv),
    scaled: bool = True,
    axis: int = -1,
    zero_hidden: bool = False,
) -> Callable:
    """The drafter's attention as a learner writes it, with one mistake chosen by the options."""

    def attention(q, keys, values, position, cached, window, scale):
        n_heads, n_kv = q.shape[0], keys.shape[1]
        s0, s1 = start(position, window), stop(position, cached, len(keys))
        rows = np.arange(len(keys)) if zero_hidden else np.arange(s0, s1)
        heads = [kv_head(h, n_heads, n_kv) for h in range(n_heads)]
        k, v = keys[rows][:, heads], values[rows][:, heads]  # (S, n_heads, head_dim)
        scores = np.einsum("hd,shd->hs", q * (scale if scaled else 1.0), k)
        if zero_hidden:
            scores[:, (rows < s0) | (rows >= s1)] = 0.0
        w = np.exp(scores - scores.max(axis, keepdims=True))
        return np.einsum("hs,shd->hd", w / w.sum(axis, keepdims=True), v)

    return attention


ATTENTION_MISTAKES = {
    "scale the scores": attention_by(scaled=False),
    "only rows 0..cached-1 of the buffer": attention_by(stop=lambda t, n, capacity: t + 1),
    "attend only to the keys the query may see": attention_by(
        start=lambda t, w: 0, stop=lambda t, n, capacity: capacity
    ),
    "sees keys 0..t only (causal)": attention_by(stop=lambda t, n, capacity: n),
    "the query sees its own position too": attention_by(stop=lambda t, n, capacity: min(t, n)),
    "on a sliding layer the query sees only": attention_by(start=lambda t, w: 0),
    "t itself included": attention_by(start=lambda t, w: 0 if w is None else max(0, t - w)),
    "heads share key/value heads in blocks": attention_by(
        kv_head=lambda h, n_heads, n_kv: h % n_kv
    ),
    "the softmax runs over the keys": attention_by(axis=0),
    "not a score of 0": attention_by(zero_hidden=True),
}


@pytest.mark.parametrize("hint", ATTENTION_MISTAKES)
def test_query_only_attention_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_query_only_attention, ATTENTION_MISTAKES[hint], capsys)


def test_query_only_attention_with_a_mask_and_repeated_heads_is_right(
    capsys: pytest.CaptureFixture,
) -> None:
    """Written another way: float32, q scaled in place, a -inf mask, np.repeat for the groups."""

    def masked(q, keys, values, position, cached, window, scale):
        q *= np.float32(scale)
        group = q.shape[0] // keys.shape[1]
        k, v = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
        s = np.arange(len(keys))
        seen = (s <= position) & (s < cached) & (window is None or s > position - (window or 0))
        scores = np.where(seen[None, :], np.einsum("hd,shd->hs", q, k), -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        return np.einsum("hs,shd->hd", w / w.sum(-1, keepdims=True), v)

    assert verdict(ex.check_query_only_attention, masked, capsys).startswith("right: ")


def test_query_only_attention_cases_agree_with_the_drafter() -> None:
    """The check's answer is the target's attention, and through W_o the drafter's own."""
    inputs = ex.attention_inputs()
    assert sum(i.drafted is not None for i in inputs) >= 2
    for i in inputs:
        want = ex.target_attention(i)
        if i.drafted is not None:
            assert ex.close(want.reshape(1, -1) @ i.o_proj.T, i.drafted)
        distinct = [h for h, m in ex.attention_mistakes(i).items() if not ex.close(m, want)]
        assert distinct, i.name  # each case shows at least one mistake


def test_best_k_is_the_answer_key() -> None:
    for _, alpha, draft_ms, forward_ms in ex.best_k_inputs():
        assert ex.best_k(alpha, draft_ms, forward_ms) == S5.my_best_k(alpha, draft_ms, forward_ms)


def tau_without_the_bonus(alpha, k):
    return S5.my_expected_tau(alpha, k) - 1


def k_terms(alpha, k):
    return k if alpha == 1 else (1 - alpha**k) / (1 - alpha)


TAU_MISTAKES = {
    "count the corrected or bonus token": tau_without_the_bonus,
    "the sum runs to alpha^k": k_terms,
    "not 1 + k alpha": lambda alpha, k: 1 + k * alpha,
    "at alpha = 1 every draft is accepted": lambda alpha, k: (1 - alpha ** (k + 1)) / (1 - alpha),
}


@pytest.mark.parametrize("hint", TAU_MISTAKES)
def test_expected_tau_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_expected_tau, TAU_MISTAKES[hint], capsys)


def test_expected_tau_numpy_division_at_one_is_named(capsys: pytest.CaptureFixture) -> None:
    def numpy_formula(alpha, k):
        return (1 - np.float64(alpha) ** (k + 1)) / (1 - np.float64(alpha))  # nan at 1

    assert "at alpha = 1" in wrong(ex.check_expected_tau, numpy_formula, capsys)


def best_by(score: Callable[[float, int, float, dict], float]) -> Callable:
    def best_k(alpha, draft_ms, forward_ms):
        ks = [k for k in range(1, max(forward_ms)) if k + 1 in forward_ms]
        return max(ks, key=lambda k: score(alpha, k, draft_ms, forward_ms))

    return best_k


tau = S5.my_expected_tau
BEST_K_MISTAKES = {
    "forward_ms[k + 1]": best_by(lambda a, k, c, f: tau(a, k) / (k * c + f[k])),
    "drafting costs time too": best_by(lambda a, k, c, f: tau(a, k) / f[k + 1]),
    "not forward_ms[1]": best_by(lambda a, k, c, f: tau(a, k) / (k * c + f[1])),
    "count the corrected or bonus token": best_by(
        lambda a, k, c, f: (tau(a, k) - 1) / (k * c + f[k + 1])
    ),
    "divide by the step's time": best_by(lambda a, k, c, f: tau(a, k)),
}


@pytest.mark.parametrize("hint", BEST_K_MISTAKES)
def test_best_k_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_best_k, BEST_K_MISTAKES[hint], capsys)


# ------------------------------------------------------------------------------- lesson 6


def mask_by(
    self_too: bool = True,
    all_ancestors: bool = True,
    stop_at_root: bool = False,
    transposed: bool = False,
) -> Callable:
    """The tree mask as a learner writes it, with one mistake chosen by the options."""

    def mask(parents):
        n = len(parents)
        m = np.zeros((n, n), dtype=bool)
        for i in range(n):
            j = i if self_too else parents[i]
            while j != -1 and not (stop_at_root and j == 0 and i != 0):
                m[i, j] = True
                j = parents[j] if all_ancestors or j == i else -1
        return m.T if transposed else m

    return mask


def causal(parents):
    return np.tril(np.ones((len(parents), len(parents)), dtype=bool))


def shallower(parents):
    d = np.zeros(len(parents), int)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return (d[None, :] < d[:, None]) | np.eye(len(parents), dtype=bool)


MASK_MISTAKES = {
    "put True on the diagonal": mask_by(self_too=False),
    "not only its parent": mask_by(all_ancestors=False),
    "you have the transpose": mask_by(transposed=True),
    "a tree is not a chain": causal,
    "the root (node 0, the newest token) is an ancestor of every node": mask_by(stop_at_root=True),
    "not every node of a smaller depth": shallower,
    "an additive mask of 0 and -inf": lambda parents: np.where(
        S6.my_ancestor_mask(parents), 0.0, -np.inf
    ),
}


@pytest.mark.parametrize("hint", MASK_MISTAKES)
def test_ancestor_mask_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_ancestor_mask, MASK_MISTAKES[hint], capsys)


def test_ancestor_mask_as_ints_or_from_path_to_is_right(capsys: pytest.CaptureFixture) -> None:
    from minispec.tree import path_to

    def from_paths(parents):
        m = np.zeros((len(parents), len(parents)), dtype=np.int64)
        for i in range(len(parents)):
            m[i, path_to(parents, i)] = 1
        return m

    assert verdict(ex.check_ancestor_mask, from_paths, capsys).startswith("right: ")


def test_ancestor_mask_cases_show_every_mistake() -> None:
    """Each mistake differs from the right mask on some tree, and no two mistakes coincide."""
    from minispec.tree import ancestor_mask

    results = {}
    for hint in ex.mask_mistakes([-1]):
        results[hint] = [ex.mask_mistakes(parents)[hint] for _, parents in ex.MASK_TREES]
    right = [ancestor_mask(parents) for _, parents in ex.MASK_TREES]
    for hint, masks in results.items():
        assert any(not np.array_equal(m, r) for m, r in zip(masks, right, strict=True)), hint
    for a, b in itertools.combinations(results, 2):
        assert any(not np.array_equal(x, y) for x, y in zip(results[a], results[b], strict=True)), (
            a,
            b,
        )


def rule_by(
    renorm_p: bool = True,
    drop_tried: bool = True,
    renorm_q: bool = True,
    top_as: str = "one-hot",
    zero_top: bool = True,
    clip: bool = True,
    update_p: bool = True,
    ratio: Callable = lambda p, q: p / q,
) -> Callable:
    """The sibling rule as a learner writes it, with one mistake chosen by the options.

    top_as: how "top" siblings are judged: "one-hot" (right), "q" (the chain's p/q against the
    drafter's q, tried ones kept), "q without the tried" (as if drawn), "p" for sampled ones
    too ("p everywhere")."""

    def rule(p, q, candidates, proposal):
        p0 = np.asarray(p, dtype=np.float64)
        p, q = p0.copy(), np.asarray(q, dtype=np.float64).copy()
        drawn = proposal == "sampled" if top_as != "p everywhere" else False
        if proposal == "top" and top_as in ("q", "q without the tried"):
            drawn, drop_tried_here = True, top_as == "q without the tried"
        else:
            drop_tried_here = drop_tried
        accept = []
        for c in candidates:
            q_i = q if drawn else np.eye(len(p))[c]
            judged = p if update_p else p0
            accept.append(min(1.0, ratio(judged[c], q_i[c])))
            if drawn or zero_top:
                left = judged - q_i
                left = np.maximum(left, 0.0) if clip else left
                p = left / left.sum() if renorm_p else left
            if drawn and drop_tried_here:
                q = q.copy()
                q[c] = 0.0
                q = q / q.sum() if renorm_q else q
        return accept, p

    return rule


SIBLING_MISTAKES = {
    "after a rejection renormalise": rule_by(renorm_p=False),
    "judging it against the original q is the rule for independent draws": rule_by(
        drop_tried=False
    ),
    "removing c_i from q leaves q_i minus one token: renormalise it": rule_by(renorm_q=False),
    "the chain's test p_i / q with the drafter's q": rule_by(top_as="q"),
    "even with the tried ones removed": rule_by(top_as="q without the tried"),
    "zero p_i(c) and renormalise": rule_by(zero_top=False),
    "not with p_i(c_i), which is the rule for top siblings only": rule_by(top_as="p everywhere"),
    "not against p again": rule_by(update_p=False),
    "Chen et al. swap the letters": rule_by(ratio=lambda p, q: q / p if p > 0 else np.inf),
    "clip at zero, max(p_i - q_i, 0)": rule_by(clip=False),
    "it cannot exceed 1": lambda p, q, c, proposal: (
        [2.0 * a for a in S6.my_sibling_rule(p, q, c, proposal)[0]],
        S6.my_sibling_rule(p, q, c, proposal)[1],
    ),
}


@pytest.mark.parametrize("hint", SIBLING_MISTAKES)
def test_sibling_rule_mistakes(hint: str, capsys: pytest.CaptureFixture) -> None:
    assert hint in wrong(ex.check_sibling_rule, SIBLING_MISTAKES[hint], capsys)


def test_sibling_rule_answer_key_is_the_package_rule_and_emits_p() -> None:
    """The check's answer is `tree.sibling_trials`, and its law, over every ordered draw, is p."""
    residual_read = 0
    for _, p, q, candidates, proposal in ex.SIBLING_CASES:
        p, q = np.array(p), np.array(q)
        accept, residual = ex.sibling_answer(p, q, candidates, proposal)
        mine = S6.my_sibling_rule(p, q, candidates, proposal)
        assert ex.close(accept, mine[0]) and ex.close(residual, mine[1])
        law = ex.rule_law(ex.sibling_answer, p, q, len(candidates), proposal)
        np.testing.assert_allclose(law, p, atol=1e-12)
        residual_read += accept[-1] < 1  # else the residual is never drawn from
    assert residual_read >= len(ex.SIBLING_CASES) - 1


def test_the_chain_rule_on_top_siblings_does_not_emit_p() -> None:
    """The tempting wrong rule of the lesson: p/q against the drafter's q, tried ones kept."""
    chain_on_top = rule_by(top_as="q")
    worst = 0.0
    for _, p, q, candidates, proposal in ex.SIBLING_CASES:
        if proposal == "top" and len(candidates) > 1:
            p, q = np.array(p), np.array(q)
            law = ex.rule_law(chain_on_top, p, q, len(candidates), "top")
            worst = max(worst, float(np.abs(law - p).max()))
    assert worst > 1e-2


def test_every_check_is_tested() -> None:
    checks = {n.removeprefix("check_") for n in ex.__all__ if n.startswith("check_")}
    assert checks == set(CHECKS)
