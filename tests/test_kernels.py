"""The matmul kernels: agreement with float64 NumPy, batch invariance, int8, dispatch, errors."""

import numpy as np
import pytest

from minispec import kernels
from minispec.kernels import (
    PackedWeight,
    linear,
    pack,
    quantize_int8,
    select_rows,
    take_rows,
    unpack,
)

RTOL = 1e-5
VERIFY_ROWS = 17  # the rows of a verify pass with the largest k (16)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_close(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """|y - x @ w.T| <= RTOL * (|x| @ |w|.T), the scale a float32 dot product can be trusted to.

    Relative to the sum of |terms| rather than to |y|: an output near zero after cancellation
    has no meaningful relative error.
    """
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 @ w64.T
    bound = RTOL * (np.abs(x64) @ np.abs(w64).T) + 1e-30
    assert y.shape == ref.shape and y.dtype == np.float32
    worst = float(np.max(np.abs(y - ref) / bound))
    assert worst <= 1.0, f"error {worst:.3g} x the bound"


SHAPES = [(7, 7), (33, 257), (257, 33), (641, 641), (640, 2048), (2048, 640), (1024, 640), (9, 1)]


@pytest.mark.parametrize("T", [1, 2, 5, 8, 9, 16, 17, 60])
@pytest.mark.parametrize("d_out,d_in", SHAPES)
def test_float32_matches_numpy(T: int, d_out: int, d_in: int) -> None:
    rng = _rng(T * 1000 + d_out)
    x = rng.standard_normal((T, d_in), dtype=np.float32)
    w = rng.standard_normal((d_out, d_in), dtype=np.float32)
    _assert_close(linear(x, pack(w)), x, w)


@pytest.mark.parametrize("T", [1, 2, 5, 8, 9, 16, 17, 60])
@pytest.mark.parametrize("d_out,d_in", SHAPES)
def test_int8_matches_dequantized(T: int, d_out: int, d_in: int) -> None:
    rng = _rng(T * 1000 + d_out + 1)
    x = rng.standard_normal((T, d_in), dtype=np.float32)
    wq = quantize_int8(rng.standard_normal((d_out, d_in), dtype=np.float32))
    _assert_close(linear(x, wq), x, unpack(wq))


@pytest.mark.parametrize("T", [1, 5, 16, 17])
def test_non_contiguous_x(T: int) -> None:
    rng = _rng(3)
    w = rng.standard_normal((257, 33), dtype=np.float32)
    wide = rng.standard_normal((T, 70), dtype=np.float32)
    column_slice = wide[:, 5:71:2]  # (T, 33), strided columns
    transposed = np.ascontiguousarray(wide[:, :33].T).T  # (T, 33), Fortran order
    for x in (column_slice, transposed):
        assert T == 1 or not x.flags.c_contiguous
        _assert_close(linear(x, pack(w)), x, w)
        _assert_close(linear(x, quantize_int8(w)), x, unpack(quantize_int8(w)))


@pytest.mark.parametrize("d_out,d_in", [(7, 7), (33, 257), (641, 640), (1030, 641)])
def test_batch_invariance_float32(d_out: int, d_in: int) -> None:
    """Row t of a T-row product is bit-identical to the 1-row product, for every T up to 60."""
    rng = _rng(4)
    x = rng.standard_normal((60, d_in), dtype=np.float32)
    w = pack(rng.standard_normal((d_out, d_in), dtype=np.float32))
    single = np.concatenate([linear(x[t : t + 1], w) for t in range(60)])
    for T in [*range(1, VERIFY_ROWS + 1), 18, 60]:  # 60: a second block of ROW_BLOCK rows
        assert np.array_equal(linear(x[:T], w), single[:T]), f"T={T}"
        assert np.array_equal(linear(x[T - 1 : T], w), single[T - 1 : T])


@pytest.mark.parametrize("d_out,d_in", [(7, 7), (33, 257), (641, 640), (1030, 641)])
def test_batch_invariance_int8(d_out: int, d_in: int) -> None:
    rng = _rng(5)
    x = rng.standard_normal((60, d_in), dtype=np.float32)
    wq = quantize_int8(rng.standard_normal((d_out, d_in), dtype=np.float32))
    single = np.concatenate([linear(x[t : t + 1], wq) for t in range(60)])
    for T in [*range(1, VERIFY_ROWS + 1), 18, 60]:
        assert np.array_equal(linear(x[:T], wq), single[:T]), f"T={T}"


@pytest.mark.parametrize("d_out,d_in", [(7, 7), (33, 257), (1030, 641)])
def test_int8_equals_float32_on_dequantized(d_out: int, d_in: int) -> None:
    """The int8 tile dequantizes each weight, then does the float32 arithmetic: the same bits."""
    rng = _rng(9)
    x = rng.standard_normal((VERIFY_ROWS, d_in), dtype=np.float32)
    wq = quantize_int8(rng.standard_normal((d_out, d_in), dtype=np.float32))
    w = pack(unpack(wq))
    for T in (1, 2, 5, VERIFY_ROWS):
        assert np.array_equal(linear(x[:T], wq), linear(x[:T], w)), f"T={T}"


def test_batch_invariance_any_position() -> None:
    """A row gives the same bits wherever it sits in the batch (first, middle, last, padded)."""
    rng = _rng(6)
    w = pack(rng.standard_normal((300, 96), dtype=np.float32))
    row = rng.standard_normal((1, 96), dtype=np.float32)
    alone = linear(row, w)
    for T in (2, 3, 7, 16):
        for pos in (0, T // 2, T - 1):
            x = rng.standard_normal((T, 96), dtype=np.float32)
            x[pos] = row[0]
            assert np.array_equal(linear(x, w)[pos], alone[0]), (T, pos)


def test_int8_quantization_error_bound() -> None:
    rng = _rng(7)
    w = rng.standard_normal((500, 300), dtype=np.float32) * rng.uniform(0.01, 3, (500, 1))
    w[3] = 0.0  # an all-zero row must not divide by zero
    wq = quantize_int8(w)
    assert wq.dtype == np.int8 and wq.shape == w.shape and wq.panels.shape == (32, 300, 16)
    scale = wq.scale[:500]  # (512,): rows padded to a multiple of 32
    assert wq.scale.dtype == np.float32 and wq.scale.shape == (512,)
    assert np.abs(wq.panels).max() <= 127
    np.testing.assert_allclose(scale[4:], np.abs(w[4:]).max(axis=1) / 127, rtol=1e-6)
    err = np.abs(unpack(wq) - w)
    assert np.all(err <= scale[:, None] * (0.5 + 1e-4))  # at most half a step per weight
    assert not unpack(wq)[3].any()


def test_int8_from_packed_equals_int8_from_plain() -> None:
    """Quantizing works on the panels: from a packed weight, the same q and scales, per row."""
    rng = _rng(11)
    w = (rng.standard_normal((37, 29)) * rng.uniform(0.1, 2, (37, 1))).astype(np.float32)
    a, b = quantize_int8(w), quantize_int8(pack(w))
    assert np.array_equal(a.panels, b.panels) and np.array_equal(a.scale, b.scale)
    scale = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)  # row by row
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    assert np.array_equal(unpack(a), q.astype(np.float32) * scale[:, None])
    with pytest.raises(ValueError, match="int8 already"):
        quantize_int8(a)


def test_dispatch_packed_to_the_kernel_plain_to_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = _rng(8)
    w = rng.standard_normal((300, 64), dtype=np.float32)
    calls = []
    real = kernels.matmul._matmul_kernel
    monkeypatch.setattr(
        kernels.matmul, "_matmul_kernel", lambda *a: calls.append(a[0].shape) or real(*a)
    )
    for T in (1, VERIFY_ROWS, 40):
        x = rng.standard_normal((T, 64), dtype=np.float32)
        _assert_close(linear(x, pack(w)), x, w)
        _assert_close(linear(x, w), x, w)  # a plain matrix: x @ w.T, NumPy's BLAS
    assert calls == [(1, 64), (VERIFY_ROWS, 64), (40, 64)]


def test_pack_unpack_and_rows() -> None:
    """Panels hold w[16p + l, k] at [p, k, l]; rows and sub-matrices come back exactly."""
    rng = _rng(10)
    w = rng.standard_normal((37, 11), dtype=np.float32)
    pw = pack(w)
    assert pw.shape == (37, 11) and pw.panels.shape == (4, 11, 16)  # 37 rows padded to 64
    assert pw.panels[1, 4, 3] == w[19, 4] and not pw.panels[2:, :, 5:].any()
    assert np.array_equal(unpack(pw), w)
    rows = np.array([36, 0, 9, 9])
    assert np.array_equal(take_rows(pw, rows), w[rows])
    assert np.array_equal(unpack(select_rows(pw, rows)), w[rows])
    wq = quantize_int8(w)
    assert np.array_equal(take_rows(wq, rows), unpack(wq)[rows])
    assert np.array_equal(unpack(select_rows(wq, rows)), unpack(wq)[rows])


def test_nan_propagates() -> None:
    x = np.ones((2, 16), np.float32)
    x[1, 3] = np.nan
    y = linear(x, pack(np.ones((8, 16), np.float32)))
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()


@pytest.mark.parametrize(
    "x,w,match",
    [
        (np.ones((2, 8)), np.ones((4, 8), np.float32), "float32"),  # float64 x
        (np.ones((2, 8), np.float32), np.ones((4, 8)), "float32"),  # float64 w
        (np.ones(8, np.float32), np.ones((4, 8), np.float32), r"\(8,\)"),  # 1-D x
        (np.ones((2, 8), np.float32), np.ones((4, 9), np.float32), r"\(2, 8\).*\(4, 9\)"),
        (np.ones((2, 8), np.float32), quantize_int8(np.ones((4, 9), np.float32)), r"\(4, 9\)"),
    ],
)
def test_bad_input_raises(x, w, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        linear(x, w)


def test_bad_packed_weight_raises() -> None:
    x = np.ones((1, 8), np.float32)
    no_scale = PackedWeight(np.ones((2, 8, 16), np.int8), None, 32)
    with pytest.raises(ValueError, match="int8 panels with one float32 scale"):
        linear(x, no_scale)
    with pytest.raises(ValueError, match=r"panels must be \(2n, d_in, 16\)"):
        linear(x, PackedWeight(np.ones((1, 8, 16), np.float32), None, 16))
    with pytest.raises(ValueError, match="2-D"):
        pack(np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"non-empty.*\(5, 0\)"):
        pack(np.ones((5, 0), np.float32))


# A script for a fresh process: warm the kernels up as `load_model` does, then decode in every
# way the package can (prompt, plain, batched, speculative with each drafter, greedy and sampled)
# and print, as JSON, each kernel variant the work compiled after the warm-up.
_AFTER_WARMUP_SCRIPT = """
import json, sys, types
import numpy as np
from numba.core.dispatcher import Dispatcher
import minispec as ms
from minispec import kernels
from minispec.generate import generate_batch
from minispec.sampling import GREEDY

def compiled():  # every kernel of every module of the package
    modules = [m for m in vars(kernels).values() if isinstance(m, types.ModuleType)]
    found = {f"{m.__name__}.{n}": d for m in modules for n, d in vars(m).items()
             if isinstance(d, Dispatcher)}
    return {n: {str(s) for s in d.signatures} for n, d in found.items()}

gemma = sys.argv[1] == "gemma"
model = ms.load_model() if gemma else ms.tiny_model()
if not gemma:
    kernels.warmup()  # load_model does it; a tiny model is built without it
before = compiled()
rng = np.random.default_rng(0)
prompt = [int(t) for t in rng.integers(3, 200, 300)]
ms.forward(model, prompt, ms.new_cache(model.config), last_only=True)  # a long prompt
sampled = ms.SamplingParams(0.7, 0, 0.95)
for sampling in (GREEDY, sampled):
    ms.generate(model, prompt[:20], 6, sampling=sampling, seed=0)
    generate_batch(model, [prompt[:9], prompt[:15]], 4, sampling=sampling, seeds=[0, 1])
    for spec in ["ngram", "early-exit", "int8"] + (["mtp", "ngram+mtp"] if gemma else []):
        drafter = ms.make_drafter(spec, model)
        ms.speculative_generate(model, prompt[:40], drafter, k=4, max_new_tokens=8,
                                sampling=sampling, seed=0, trace_top=6)
after = compiled()
print(json.dumps({n: sorted(after[n] - before.get(n, set())) for n in after
                  if after[n] - before.get(n, set())}))
"""


def _compiled_after_warmup(which: str, env: dict | None = None) -> dict:
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _AFTER_WARMUP_SCRIPT, which],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_warmup_compiles_what_the_tiny_model_uses() -> None:
    """After `warmup`, no decoding of a tiny model compiles anything: a first timed run
    measures the model, not Numba. (A fresh process: this one has compiled other variants.)"""
    assert _compiled_after_warmup("tiny") == {}


def test_warmup_covers_the_other_tile_width(tmp_path) -> None:
    """The same on a narrower instruction set: where the attention leaves one thread for the pool
    depends on the tile's width (32 columns with AVX-512, 16 with AVX2), so a warm-up tuned on
    one CPU can miss a variant on another (it did: on AVX-512 a verify pass compiled a threaded
    attention). On an AVX-512 machine this checks AVX2's tile too; on an AVX2 one, SSE4.2's,
    which is as wide as its own."""
    env, _ = _other_isa_env(tmp_path)
    assert _compiled_after_warmup("tiny", env) == {}


def test_warmup_calls_every_variant_the_dispatch_tests_can_choose() -> None:
    """Whatever shape comes, the variant its dispatch test chooses is one `warmup` compiles:
    asked over far more shapes than `all_variants` asks, no test answers anything new."""
    from minispec.kernels import attention, distribution, matmul, pointwise
    from minispec.kernels.variants import all_variants

    warmed = set(all_variants())
    warmed_attention = {key[1] for key in warmed if key[0] == "attend_each"}
    for kind in ("float32", "int8"):
        for T in range(1, 300):
            assert ("linear", kind, matmul.matmul_path(T, kind == "int8")) in warmed, (kind, T)
    for n in range(1, 5 * kernels.SERIAL_SIZE, 7):
        for step in ("rms_norm_rows", "gelu_gate"):
            assert (step, pointwise.on_the_pool(n)) in warmed, (step, n)
    for n_kv in (1, 2, 4):
        for group in (1, 2, 4, 8):
            for head_dim in range(4, 300, 4):
                for T in range(1, 160):
                    v = attention.attention_variant(T, group * n_kv, n_kv, head_dim)
                    assert v in warmed_attention, (T, group, n_kv, head_dim)
    for dtype in ("float32", "float64"):
        for vocab in (2, 64, 262_144):
            for top_k in (0, 1, 5, vocab - 1, vocab, vocab + 1):
                for top_p in (0.01, 0.5, 0.99, 1.0):
                    kind = distribution.cut_kind(top_k, top_p, vocab)
                    assert ("distribution_row", dtype, kind) in warmed, (top_k, top_p, vocab)
        assert ("top_n", dtype) in warmed


@pytest.mark.slow
def test_warmup_in_load_model_compiles_what_gemma_uses() -> None:
    """The same for Gemma 3 270M and every drafter: `load_model` leaves nothing to compile.
    Before, the app's first Run compiled three threaded kernels (about 20 s) and showed a
    13-second prefill and a 0.17x speedup."""
    assert _compiled_after_warmup("gemma") == {}


# ----------------------------------------------------------------------------- attention


def _attention_case(T: int, n_heads: int, n_kv: int, window: int | None, seed: int = 0):
    from minispec.model import visible_keys

    rng = _rng(seed)
    start, head_dim = 40, 24
    q = rng.standard_normal((T, n_heads, head_dim), dtype=np.float32)
    keys = rng.standard_normal((start + T + 5, n_kv, head_dim), dtype=np.float32)
    values = rng.standard_normal(keys.shape, dtype=np.float32)
    seen = [visible_keys(start + t, window) for t in range(T)]
    return q, keys, values, seen


@pytest.mark.parametrize("T", [1, 2, 5, 17])
@pytest.mark.parametrize("n_heads,n_kv,window", [(4, 1, None), (4, 2, 8), (3, 3, None)])
def test_attention_kernel_matches_attend(T: int, n_heads: int, n_kv: int, window) -> None:
    from minispec.model import attend

    q, keys, values, seen = _attention_case(T, n_heads, n_kv, window)
    bounds = np.array([(s.start, s.stop) for s in seen])
    got = kernels.attend_each(q, keys, values, bounds)
    want = np.stack([attend(q[t], keys[s], values[s]) for t, s in enumerate(seen)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_kernel_is_batch_invariant() -> None:
    q, keys, values, seen = _attention_case(9, 4, 2, 12)
    bounds = np.array([(s.start, s.stop) for s in seen])
    together = kernels.attend_each(q, keys, values, bounds)
    alone = [kernels.attend_each(q[t : t + 1], keys, values, bounds[t : t + 1]) for t in range(9)]
    assert np.array_equal(together, np.concatenate(alone))


def test_attention_kernel_bad_shapes() -> None:
    q, keys, values, _ = _attention_case(2, 4, 1, None)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.attend_each(q, keys[:, :, :5], values, np.array([(0, 41), (0, 42)]))


def test_rope_rows_equals_rope_bit_for_bit() -> None:
    from minispec.model import rope, rope_angles

    x = _rng(3).standard_normal((7, 4, 256), dtype=np.float32) * 30
    positions = np.arange(500, 507)
    for base in (10_000.0, 1_000_000.0):
        cos, sin = rope_angles(positions, base, 256)
        assert np.array_equal(kernels.rope_rows(x, cos, sin), rope(x, positions, base))
    with pytest.raises(ValueError, match="rope_rows"):
        kernels.rope_rows(x, cos[:, :5], sin[:, :5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("squared", [False, True])
def test_ordered_sum_adds_in_the_order_it_names(dtype, squared: bool) -> None:
    """`ordered_sum`'s order is its own, not the compiler's: 16 running sums, then those in turn,
    then the tail. Terms of very different sizes make any other order give other bits."""
    from minispec.kernels.pointwise import SUM_LANES, ordered_sum

    rng = _rng(8)
    for n in (1, 15, 16, 17, 47, 640, 1000):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
        terms = a * a if squared else a
        whole = n - n % SUM_LANES
        lanes = np.zeros(SUM_LANES, dtype)
        for i in range(0, whole, SUM_LANES):
            lanes += terms[i : i + SUM_LANES]  # lane by lane: each lane's own running sum
        total = lanes[0]
        for v in [*lanes[1:], *terms[whole:]]:
            total = dtype(total + v)
        assert ordered_sum(a, squared) == total, n


def test_one_thread_and_the_pool_give_the_same_bits() -> None:
    """Decoding's few rows stay on the calling thread (`SERIAL_SIZE`, one attention chunk); a
    prompt's go to the pool. Both run the same row loops, so a row's bits must not change."""
    rng = _rng(4)
    x = rng.standard_normal((40, 640), dtype=np.float32) * 4
    w = rng.standard_normal(640, dtype=np.float32)
    pool, alone = np.empty_like(x), np.empty_like(x)
    kernels.pointwise._rms_norm_kernel(x, w, np.float32(1e-6), pool)
    kernels.pointwise._rms_norm_serial(x, w, np.float32(1e-6), alone)
    assert np.array_equal(pool, alone)
    kernels.pointwise._gelu_gate_kernel(x, x[::-1].copy(), pool)
    kernels.pointwise._gelu_gate_serial(x, x[::-1].copy(), alone)
    assert np.array_equal(pool, alone)
    q, keys, values, seen = _attention_case(9, 4, 2, 12)
    bounds = np.array([(s.start, s.stop) for s in seen])
    vt = kernels.as_panels(
        np.concatenate([values, np.zeros((*values.shape[:2], 8))], 2)
        .astype(np.float32)
        .transpose(1, 0, 2)
    )
    pool, alone = np.empty_like(q), np.empty_like(q)
    no_tree = np.int64(keys.shape[0]), np.ones((9, 1), np.bool_)  # `attend_each` without a tree
    kernels.attention._attend_kernel(keys, q, vt, bounds, *no_tree, pool)
    kernels.attention._attend_serial(keys, q, vt, bounds, *no_tree, alone)
    assert np.array_equal(pool, alone)
    assert np.array_equal(pool, kernels.attend_each(q, keys, values, bounds))


# A script for another process, compiled for another instruction set: it prints the tile shape
# it chose and saves its products, which must equal this process's bit for bit.
_OTHER_ISA_SCRIPT = """
import sys
import numpy as np
from minispec import kernels
rng = np.random.default_rng(12)
w = rng.standard_normal((1030, 641), dtype=np.float32)
x = rng.standard_normal((60, 641), dtype=np.float32)
products = [kernels.linear(x, kernels.pack(w)), kernels.linear(x, kernels.quantize_int8(w))]
rows = [kernels.linear(x[:1], kernels.pack(w)), kernels.linear(x[:1], kernels.quantize_int8(w))]
rows.append(kernels.linear(x[:3], kernels.pack(w)))  # AVX2's few-rows tile
np.save(sys.argv[1], np.stack(products + [np.resize(r, products[0].shape) for r in rows]))
print(kernels.LANES, kernels.TILE_PANELS, kernels.TILE_ROWS)
"""


def _other_isa_env(tmp_path) -> tuple[dict, str]:
    """An environment in which Numba compiles for a narrower instruction set than this CPU's
    (AVX2 where it has AVX-512, SSE4.2 where it has AVX2), and the tile that process prints."""
    import os

    if kernels.LANES == 16:
        cpu, features = "haswell", "+avx,+avx2,+fma,+f16c,+sse4.2,+popcnt,-avx512f"
    else:
        cpu, features = "nehalem", "+sse4.2,+popcnt,-avx,-avx2,-fma,-avx512f"
    env = {
        **os.environ,
        "NUMBA_CPU_NAME": cpu,
        "NUMBA_CPU_FEATURES": features,
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
    }
    return env, "8 1 6"


def test_same_bits_from_another_instruction_set(tmp_path) -> None:
    """The tile differs with the CPU (AVX-512: 12 rows x 32 columns of 16-lane vectors; AVX2:
    6 x 16 of 8-lane ones), but every output is the same k-ordered FMA chain, so the products
    are bit-identical. Here another process compiles the kernels for a narrower instruction set
    (AVX2 where this machine has AVX-512, SSE4.2 where it has AVX2) and must agree exactly."""
    import subprocess
    import sys

    env, want = _other_isa_env(tmp_path)
    out = tmp_path / "products.npy"
    run = subprocess.run(
        [sys.executable, "-c", _OTHER_ISA_SCRIPT, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == want
    theirs = np.load(out)  # a plain float32 array: no pickle
    rng = _rng(12)
    w = rng.standard_normal((1030, 641), dtype=np.float32)
    x = rng.standard_normal((60, 641), dtype=np.float32)
    assert np.array_equal(theirs[0], linear(x, pack(w)))
    assert np.array_equal(theirs[1], linear(x, quantize_int8(w)))
    # one row goes through the wide one-row tile (WIDE_PANELS panels): the same bits too
    assert np.array_equal(theirs[2, 0], linear(x[:1], pack(w))[0])
    assert np.array_equal(theirs[3, 0], linear(x[:1], quantize_int8(w))[0])
    # three rows: AVX2's few-rows tile (2 panels), here or there; the same bits as in 60 rows
    assert np.array_equal(theirs[4, :3], linear(x[:3], pack(w)))
    assert np.array_equal(theirs[4, :3], theirs[0, :3])
