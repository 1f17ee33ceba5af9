"""The forward pass on tiny random Gemma 3 models: cache, rollback, masks, a dense reference."""

from types import SimpleNamespace

import numpy as np
import pytest

from minispec.kernels import PackedWeight, unpack
from minispec.kv_cache import new_cache
from minispec.model import (
    FAST,
    READABLE,
    forward,
    key_bounds,
    key_mask,
    ops,
    reference,
    rms_norm,
    rope,
    visible_keys,
)
from minispec.tiny import tiny_model

RNG = np.random.default_rng(0)


def dense_reference_logits(model, tokens):
    """The whole sequence at once with an explicit (T, T) mask: a second, independent route."""
    c, p = model.config, model.params
    tokens = np.asarray(tokens)
    T, hd = len(tokens), c.head_dim
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]

    def plain(w):  # the packed matrices as plain (d_out, d_in) ones
        return unpack(w) if isinstance(w, PackedWeight) else w

    embed = plain(p.embed)  # (vocab, d_model)
    x = embed[tokens] * np.sqrt(c.hidden_size)
    for n, L in enumerate(p.layers):
        L = SimpleNamespace(
            **{f: unpack(w) if isinstance(w, PackedWeight) else w for f, w in vars(L).items()}
        )
        sliding = c.layer_types[n] == "sliding_attention"
        mask = (j <= i) & ((i - j < c.sliding_window) if sliding else True)
        base = c.rope_local_base_freq if sliding else c.rope_theta
        h = rms_norm(x, L.input_layernorm, c.rms_norm_eps)
        q = (h @ L.q_proj.T).reshape(T, -1, hd)
        k = (h @ L.k_proj.T).reshape(T, -1, hd)
        v = (h @ L.v_proj.T).reshape(T, -1, hd)
        q = rope(rms_norm(q, L.q_norm, c.rms_norm_eps), np.arange(T), base) / np.sqrt(
            c.query_pre_attn_scalar
        )
        k = rope(rms_norm(k, L.k_norm, c.rms_norm_eps), np.arange(T), base)
        group = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k)
        scores = np.where(mask, scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        a = np.einsum("hqk,khd->qhd", w, v).reshape(T, -1)
        x = x + rms_norm(a @ L.o_proj.T, L.post_attention_layernorm, c.rms_norm_eps)
        h = rms_norm(x, L.pre_feedforward_layernorm, c.rms_norm_eps)
        g = h @ L.gate_proj.T
        gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        m = (gelu * (h @ L.up_proj.T)) @ L.down_proj.T
        x = x + rms_norm(m, L.post_feedforward_layernorm, c.rms_norm_eps)
    return rms_norm(x, p.final_norm, c.rms_norm_eps) @ embed.T


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


def tokens(n, vocab=260):
    return RNG.integers(4, vocab, size=n).tolist()


@pytest.mark.parametrize("n", [1, 5, 8, 9, 30])
def test_forward_matches_dense_reference(model, n):
    ids = tokens(n)
    ours = forward(model, ids, new_cache(model.config))
    np.testing.assert_allclose(ours, dense_reference_logits(model, ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 30])
def test_plain_numpy_model_matches_the_packed_one(model, n):
    """Plain matrices take NumPy's route (BLAS products, `attend`): the same logits, to rounding."""
    ids = tokens(n)
    plain = reference(model)
    assert isinstance(plain.params.layers[0].q_proj, np.ndarray)
    ours = forward(model, ids, new_cache(model.config))
    np.testing.assert_allclose(forward(plain, ids, new_cache(model.config)), ours, atol=1e-5)


def test_incremental_decoding_equals_one_full_forward(model):
    ids = tokens(40)
    full = forward(model, ids, new_cache(model.config))
    cache = new_cache(model.config, capacity=4)  # also exercises the buffer growing
    steps = [forward(model, ids[:13], cache)]
    steps += [forward(model, [t], cache) for t in ids[13:20]]
    steps.append(forward(model, ids[20:], cache))
    np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 40


@pytest.mark.parametrize("keep", [3, 8, 9, 15, 17])
def test_truncate_then_reappend_equals_never_appended(model, keep):
    """Roll back across the sliding window's edge (window 8) and write different tokens."""
    ids, junk = tokens(20), tokens(6)
    clean = new_cache(model.config)
    expected = forward(model, ids, clean)

    cache = new_cache(model.config)
    forward(model, ids[:keep], cache)
    forward(model, junk, cache)  # drafted tokens that get rejected
    cache.truncate(keep)
    got = forward(model, ids[keep:], cache)
    np.testing.assert_allclose(got, expected[keep:], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cache.keys[:, :20], clean.keys[:, :20], atol=1e-5)


def test_truncate_rejects_growing():
    cache = new_cache(tiny_model().config)
    with pytest.raises(ValueError, match="holds 0 positions"):
        cache.truncate(1)


def test_sliding_window_edge():
    """One sliding layer, window 8: position 7 still sees token 0, position 8 no longer does."""
    model = tiny_model(seed=2, num_hidden_layers=1, layer_types=["sliding_attention"])
    ids = tokens(12)
    changed = [ids[0] + 1] + ids[1:]
    a = forward(model, ids, new_cache(model.config))
    b = forward(model, changed, new_cache(model.config))
    assert not np.allclose(a[7], b[7])  # 7 - 0 < 8: inside the window
    np.testing.assert_array_equal(a[8:], b[8:])  # 8 - 0 >= 8: outside


@pytest.mark.parametrize("window", [None, 1, 4])
def test_key_mask_is_key_bounds(window):
    """The mask says what the bounds say: query i sees key j iff 0 <= i - j < window."""
    positions = np.array([0, 1, 3, 4, 9])
    mask = key_mask(key_bounds(positions, window), 12)
    for row, i in zip(mask, positions, strict=True):
        want = [0 <= i - j < (window or 10**9) for j in range(12)]
        assert row.tolist() == want
        assert np.flatnonzero(row).tolist() == list(range(12))[visible_keys(int(i), window)]


def test_model_fast_picks_the_path():
    """`Model.fast` names the path, `ops` is where it is chosen; `reference` is the readable one."""
    model = tiny_model(seed=1)
    assert model.fast and ops(model.fast) is FAST
    assert not reference(model).fast and ops(reference(model).fast) is READABLE


def test_global_layer_sees_everything():
    model = tiny_model(seed=2, num_hidden_layers=1, layer_types=["full_attention"])
    ids = tokens(12)
    a = forward(model, ids, new_cache(model.config))
    b = forward(model, [ids[0] + 1] + ids[1:], new_cache(model.config))
    assert not np.allclose(a[11], b[11])


def test_rope_depends_only_on_distance():
    q, k = RNG.standard_normal((1, 1, 16)), RNG.standard_normal((1, 1, 16))
    dots = [
        float((rope(q, np.array([m + 5]), 1e4) * rope(k, np.array([m]), 1e4)).sum())
        for m in (0, 7, 100)
    ]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rope(q, np.array([9]), 1e4)), np.linalg.norm(q))


def test_rms_norm_uses_one_plus_w():
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(
        np.sqrt(np.mean(rms_norm(x, np.zeros(8), 0.0) ** 2, -1)), 1, rtol=1e-5
    )
    np.testing.assert_allclose(rms_norm(x, np.ones(8), 0.0), 2 * rms_norm(x, np.zeros(8), 0.0))


def test_bad_tokens_are_refused(model):
    with pytest.raises(ValueError, match="no tokens"):
        forward(model, [], new_cache(model.config))
    with pytest.raises(ValueError, match="must be in"):
        forward(model, [10_000], new_cache(model.config))
