"""The Numba kernels: every product with a weight, the elementwise steps, attention over the KV
cache and the sampling rows, each batch invariant (row t of a batch has the bits of row t alone).

One module per concern:

- `packing`: weights packed once into panels of 16 rows (`pack`, `quantize_int8`, `unpack`,
  `take_rows`, `select_rows`, `PackedWeight`);
- `matmul`: `linear`, y = x @ w.T, by a register tile written in LLVM IR; its shape follows the
  CPU (AVX-512 or AVX2: `LANES`, `TILE_ROWS`, `TILE_COLS`, `FEW_ROWS`) and `matmul_path`;
- `pointwise`: RMSNorm, GeGLU, RoPE and the vectorized exp (`rms_norm_rows`, `gelu_gate`,
  `rope_rows`);
- `attention`: softmax(q K^T) V over the cache with the same tile (`attend_each`, `as_panels`);
- `distribution`: a sampling distribution, a draw and the top few from one row of 262,144
  (`distribution_row`, `sample_row`, `top_n`);
- `variants`: every compiled variant, found from the tests that choose them, and `warmup`.

`from minispec import kernels; kernels.linear(...)` and `from minispec.kernels import linear`
both work: the public names of the modules are re-exported here. A constant is read where it
is defined: a probe that changes one before compiling sets it on its module
(`kernels.matmul.PREFETCH`), not here.

Threads and compilation: the kernels run on Numba's thread pool (`numba.set_num_threads(n)`
changes it; results do not depend on the thread count). The tiles are split statically over
the threads: Numba's dynamic scheduling (`set_parallel_chunksize`) was slower when we tried
it. Compiled code is cached on disk (`cache=True`: in `__pycache__` beside each module, or
under NUMBA_CACHE_DIR), so only the very first run compiles (docs/benchmarks.md, "Compiling
the kernels"); `warmup()`, which `load_model` calls, does it up front. Numba checks a cached
kernel against its own file only, yet attention compiles in matmul's tile and pointwise's exp:
so `_forget_stale_cache` drops the package's cached kernels whenever any of its files changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba


def _forget_stale_cache() -> None:
    """Delete this package's cached kernels when any of its source files changed since they
    were cached (a stamp of all the files, kept beside the cache).

    Why: a kernel that calls a function of another module (attention's `_tile` and `_exp_row`)
    holds that function's compiled code, but Numba's cache checks only the caller's own file,
    so a change to the tile would otherwise leave attention running the old one.
    """
    here = Path(__file__).resolve().parent
    sources = b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))
    stamp = hashlib.sha256(sources).hexdigest()
    places = [here / "__pycache__"]
    if numba.config.CACHE_DIR:  # Numba's own layout: <dir>/<folder name>_<sha1 of its path>
        sub = f"{here.name}_{hashlib.sha1(str(here).encode()).hexdigest()}"
        places.append(Path(numba.config.CACHE_DIR) / sub)
    for place in places:
        mark = place / "minispec-kernels.stamp"
        try:
            if not place.is_dir() or (mark.exists() and mark.read_text() == stamp):
                continue
            for cached in [*place.glob("*.nbi"), *place.glob("*.nbc")]:
                cached.unlink(missing_ok=True)
            mark.write_text(stamp)
        except OSError:  # a read-only install: its cache is as it was shipped
            pass


_forget_stale_cache()

from minispec.kernels.attention import (  # noqa: E402
    N_ATTENTION_CHUNKS,
    as_panels,
    attend_each,
    attention_variant,
)
from minispec.kernels.distribution import (  # noqa: E402
    BLOCK64,
    BUCKETS,
    GROUPS,
    N_ROW_CHUNKS,
    cut_kind,
    distribution_row,
    log_partition,
    sample_row,
    top_n,
)
from minispec.kernels.matmul import (  # noqa: E402
    FEW_PANELS,
    FEW_ROWS,
    K_BLOCK,
    LANES,
    N_CHUNKS,
    PREFETCH,
    PREFETCH_ROWS,
    ROW_BLOCK,
    TILE_COLS,
    TILE_PANELS,
    TILE_ROWS,
    WIDE_PANELS,
    linear,
    matmul_path,
)
from minispec.kernels.packing import (  # noqa: E402
    PAD_ROWS,
    PANEL,
    PackedWeight,
    pack,
    quantize_int8,
    select_rows,
    take_rows,
    unpack,
)
from minispec.kernels.pointwise import (  # noqa: E402
    SERIAL_SIZE,
    gelu_gate,
    on_the_pool,
    rms_norm_rows,
    rope_rows,
)
from minispec.kernels.variants import all_variants, warmup  # noqa: E402

__all__ = [
    "BLOCK64",
    "BUCKETS",
    "FEW_PANELS",
    "FEW_ROWS",
    "GROUPS",
    "K_BLOCK",
    "LANES",
    "N_ATTENTION_CHUNKS",
    "N_CHUNKS",
    "N_ROW_CHUNKS",
    "PAD_ROWS",
    "PANEL",
    "PREFETCH",
    "PREFETCH_ROWS",
    "ROW_BLOCK",
    "SERIAL_SIZE",
    "TILE_COLS",
    "TILE_PANELS",
    "TILE_ROWS",
    "WIDE_PANELS",
    "PackedWeight",
    "as_panels",
    "attend_each",
    "attention_variant",
    "cut_kind",
    "distribution_row",
    "log_partition",
    "gelu_gate",
    "linear",
    "matmul_path",
    "on_the_pool",
    "pack",
    "quantize_int8",
    "rms_norm_rows",
    "rope_rows",
    "sample_row",
    "select_rows",
    "take_rows",
    "top_n",
    "unpack",
    "all_variants",
    "warmup",
]
