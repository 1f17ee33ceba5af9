"""The Gemma 3 text architecture as one dataclass, read from and written to `config.json`.

Field names follow Hugging Face's `Gemma3TextConfig`, so a folder we write is a real checkpoint
and a folder a user downloaded reads without translation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minispec.errors import InputError


def _default_layer_types(n_layers: int, pattern: int = 6) -> list[str]:
    """Gemma 3 interleaves 5 sliding-window layers with 1 global one (Gemma 3 report, sec. 2)."""
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
    ]


@dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int = 262_144
    hidden_size: int = 640  # d_model
    intermediate_size: int = 2048  # FFN width
    num_hidden_layers: int = 18
    num_attention_heads: int = 4  # query heads
    num_key_value_heads: int = 1  # grouped-query attention: 4 query heads share 1 KV head
    head_dim: int = 256
    max_position_embeddings: int = 32_768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0  # RoPE base on global layers
    rope_local_base_freq: float = 10_000.0  # RoPE base on sliding-window layers
    query_pre_attn_scalar: float = 256.0  # queries are scaled by query_pre_attn_scalar ** -0.5
    sliding_window: int = 512  # a sliding layer's query sees itself and the 511 keys before it
    layer_types: list[str] = field(default_factory=lambda: _default_layer_types(18))
    bos_token_id: int = 2
    eos_token_id: int = 1
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if len(self.layer_types) != self.num_hidden_layers:
            raise InputError(
                f"config: layer_types has {len(self.layer_types)} entries but "
                f"num_hidden_layers is {self.num_hidden_layers}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                "config: num_attention_heads must be a multiple of num_key_value_heads"
            )

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    def to_hf_dict(self) -> dict:
        """The `config.json` Hugging Face transformers reads as a `Gemma3ForCausalLM`."""
        d = asdict(self)
        # transformers 5 validates types strictly: its Gemma3TextConfig declares this field an int.
        if float(self.query_pre_attn_scalar).is_integer():
            d["query_pre_attn_scalar"] = int(self.query_pre_attn_scalar)
        d.update(
            architectures=["Gemma3ForCausalLM"],
            model_type="gemma3_text",
            hidden_activation="gelu_pytorch_tanh",
            attention_bias=False,
            attention_dropout=0.0,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            rope_scaling=None,
            tie_word_embeddings=True,
            torch_dtype="float32",
            use_cache=True,
        )
        return d


def config_from_dict(d: dict) -> GemmaConfig:
    """Read a Hugging Face Gemma 3 text config (also the multimodal wrapper, newer RoPE keys)."""
    if "text_config" in d:  # a Gemma3ForConditionalGeneration checkpoint: the LM is inside
        d = {**d["text_config"], **{k: d[k] for k in ("bos_token_id", "eos_token_id") if k in d}}
    kwargs = {k: d[k] for k in GemmaConfig.__dataclass_fields__ if d.get(k) is not None}
    rope = d.get("rope_parameters")  # transformers >= 5 nests the two RoPE bases per layer type
    if isinstance(rope, dict):
        if "full_attention" in rope:
            kwargs["rope_theta"] = rope["full_attention"].get(
                "rope_theta", kwargs.get("rope_theta")
            )
        if "sliding_attention" in rope:
            kwargs["rope_local_base_freq"] = rope["sliding_attention"].get("rope_theta")
    if isinstance(kwargs.get("eos_token_id"), list):
        kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
    if "layer_types" not in kwargs:
        n = kwargs.get("num_hidden_layers", GemmaConfig.num_hidden_layers)
        pattern = d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6
        kwargs["layer_types"] = _default_layer_types(n, pattern)
    return GemmaConfig(**kwargs)


def save_config(config: GemmaConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
