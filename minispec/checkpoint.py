"""A Gemma 3 checkpoint folder: which tensors it holds, writing one whole, reading one as NumPy.

The folder is Hugging Face's layout, so one downloaded from the Hub reads the same way as the one
minispec makes from the packaged GGUF (minispec.gguf_file):

    config.json        the architecture, Hugging Face field names (minispec.config)
    model.safetensors  the tensors (one file, or the shards of a large model), Hugging Face names
    tokenizer.json     the tokenizer (minispec.tokenizer)

Every problem raises `WeightsError` with one line naming the file, the tensor and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from minispec.config import GemmaConfig, config_from_dict
from minispec.errors import InputError

try:  # POSIX: a lock the kernel drops when its process dies, however it dies
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Multimodal Gemma 3 checkpoints (Gemma3ForConditionalGeneration) keep the language model under a
# prefix: `model.language_model.` since transformers 4.52, `language_model.model.` before.
MULTIMODAL_PREFIXES = ("model.language_model.", "language_model.model.")


class WeightsError(InputError):
    """A checkpoint or GGUF file that cannot be loaded. The message names the file and the fix."""


# --- which tensors -------------------------------------------------------------------------------


def layer_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """The 13 tensors of one block: name inside `model.layers.{i}.` -> [out, in] shape.

    The one list of them: the model names its Layer fields after the last part of each name
    (`self_attn.q_proj` -> `q_proj`), and the GGUF reader maps llama.cpp's names onto these.
    """
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {
        "input_layernorm": (d,),
        "self_attn.q_proj": (q, d),
        "self_attn.k_proj": (kv, d),
        "self_attn.v_proj": (kv, d),
        "self_attn.q_norm": (hd,),  # QK-norm: over head_dim, shared by the heads
        "self_attn.k_norm": (hd,),
        "self_attn.o_proj": (d, q),
        "post_attention_layernorm": (d,),
        "pre_feedforward_layernorm": (d,),
        "mlp.gate_proj": (f, d),
        "mlp.up_proj": (f, d),
        "mlp.down_proj": (d, f),
        "post_feedforward_layernorm": (d,),
    }


def layer_tensor(i: int, name: str) -> str:
    """`layer_tensor(3, "self_attn.q_proj")` -> `model.layers.3.self_attn.q_proj.weight`."""
    return f"model.layers.{i}.{name}.weight"


def expected_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    """The Hugging Face name and [out, in] shape of every tensor the config implies."""
    shapes = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size)}
    for i in range(config.num_hidden_layers):
        shapes.update({layer_tensor(i, n): s for n, s in layer_shapes(config).items()})
    shapes["model.norm.weight"] = (config.hidden_size,)
    return shapes


def is_checkpoint(folder: Path) -> bool:
    """A folder with a config.json and at least one *.safetensors file."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


# --- writing a folder whole ----------------------------------------------------------------------

# A work folder younger than this is never taken for abandoned: between creating a folder and
# locking it, its process holds no lock yet.
_GRACE_S = 60.0


@contextmanager
def work_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new temporary folder in `parent`, locked while this process works in it, then removed.

    The lock (flock on the folder itself) is what tells a later process that a folder left
    behind is abandoned (`is_abandoned`): the kernel releases it when its process exits, even
    killed or crashed, so a folder nobody holds is one nobody is still writing.
    """
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(folder, os.O_RDONLY) if fcntl else None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # already renamed away if it became a result
        if fd is not None:
            os.close(fd)  # releases the lock


def is_abandoned(folder: Path) -> bool:
    """A work folder that no running process holds (and not just created). Without flock
    (Windows) only a folder untouched for a day counts."""
    try:
        age = time.time() - folder.stat().st_mtime
    except OSError:
        return False
    if fcntl is None:
        return age > 86_400
    if age < _GRACE_S:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # another process holds it: still being written
        return False
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `out_dir`; rename it to `out_dir` if the block succeeds.

    A crash, an exception or Ctrl-C leaves no `out_dir` behind, so a folder in the cache is always
    complete. If another process finished the same folder first, its copy is kept and ours dropped.
    """
    with work_folder(out_dir.parent, prefix=f".{out_dir.name}.tmp-") as tmp:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is an ordinary folder
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_checkpoint(out_dir):
                raise


# --- reading a folder ----------------------------------------------------------------------------

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
