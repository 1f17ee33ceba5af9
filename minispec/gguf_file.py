"""llama.cpp's GGUF file of a Gemma 3, turned into a Hugging Face checkpoint folder in float32.

The one place that knows llama.cpp's conventions. What its `convert_hf_to_gguf.py` (class
`Gemma3Model`) did, and what we undo:

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
  gives a model that still runs but predicts nonsense (gemma3-notes: the loss rises several-fold).
* **Q and K are not permuted.** For Llama, llama.cpp reorders the rows of q_proj and k_proj (its
  RoPE pairs neighbouring dimensions, Hugging Face pairs dimension i with i + d/2). For Gemma 3 it
  uses the NeoX-style rotation, which is Hugging Face's, and leaves the rows as they are.
* **What the metadata lacks.** The GGUF has no local (sliding-window) RoPE base, no query scale and
  no layer pattern: llama.cpp hard-codes them for Gemma 3, so we do too (`config_from_gguf`).

The folder written is a real checkpoint: `transformers.AutoModelForCausalLM.from_pretrained(folder)`
loads it and computes the same logits as transformers reading the GGUF itself. Nothing is
half-written: a conversion writes a temporary folder next to the destination and renames it into
place only when complete (`checkpoint.atomic_folder`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import quants
from safetensors.numpy import save_file

from minispec.checkpoint import (
    WeightsError,
    atomic_folder,
    expected_shapes,
    layer_tensor,
)
from minispec.config import GemmaConfig, _default_layer_types, save_config
from minispec.tokenizer import tokenizer_config, tokenizer_from_gguf

Progress = Callable[[str, int, int], None]  # (what is done, e.g. "kernels compiled", done, total)

# llama.cpp's per-layer names (blk.{i}.KEY.weight) -> Gemma's (checkpoint.layer_shapes' names)
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


def gguf_to_hf_names(num_layers: int) -> dict[str, str]:
    """Every llama.cpp tensor name of a Gemma 3 GGUF, mapped to its Hugging Face name."""
    names = {f"{g}.weight": f"{h}.weight" for g, h in GGUF_GLOBAL_NAMES.items()}
    for i in range(num_layers):
        for g, h in GGUF_LAYER_NAMES.items():
            names[f"blk.{i}.{g}.weight"] = layer_tensor(i, h)
    return names


def is_norm(hf_name: str) -> bool:
    """RMSNorm weights: the ones llama.cpp stores as 1 + w."""
    return hf_name.endswith("norm.weight")


def default_progress(what: str, done: int, total: int) -> None:
    """Progress on one terminal line: `tensors converted from x.gguf: 120/236`. Into a file or a
    pipe (a log), only the finished line: a log has no line to redraw."""
    if not sys.stderr.isatty():
        if done == total:
            print(f"{what}: {done}/{total}", file=sys.stderr, flush=True)
        return
    end = "\n" if done == total else ""
    print(f"\r{what}: {done}/{total}", end=end, file=sys.stderr, flush=True)


# --- reading a GGUF ------------------------------------------------------------------------------


class FastGGUFReader(gguf.GGUFReader):
    """`gguf.GGUFReader`, several times faster on Gemma's 262,144-token vocabulary.

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
    `progress("tensors converted from NAME.gguf", done, total)` is called after each tensor.
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
                progress(f"tensors converted from {gguf_path.name}", done, len(sources))
        # transformers refuses safetensors files whose metadata lacks a "format" it knows
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "model.safetensors").chmod(0o644)  # safetensors creates it private
    return out_dir
