"""Drafters: cheap guesses of the target's next tokens, one module per idea.

    ngram        prompt lookup: copy what followed the same n-gram earlier   (ngram.py)
    early-exit   the target's own first layers and output head               (early_exit.py)
    int8         the target with int8 weights, as a separate draft model     (draft_model.py)
    model:PATH   any checkpoint with the target's vocabulary                 (draft_model.py)
    mtp          a trained multi-token-prediction drafter reading the target's
                 hidden state and KV cache (mtp:PATH for other weights)      (mtp.py)
    A+B          A, and B whenever A proposes nothing (e.g. ngram+mtp)       (fallback.py)

All follow the protocol in base.py; `make_drafter` builds one from the strings above.
"""

from __future__ import annotations

import re

from minispec.drafters.base import Draft, DraftContext, Drafter
from minispec.drafters.draft_model import DraftModelDrafter, check_same_vocabulary, quantized_copy
from minispec.drafters.early_exit import EarlyExitDrafter, default_head_size
from minispec.drafters.fallback import FallbackDrafter
from minispec.drafters.mtp import MTPDrafter
from minispec.drafters.ngram import NgramDrafter
from minispec.model import Model

DRAFTER_SPECS = ("none", "ngram", "early-exit", "int8", "model:PATH", "mtp", "ngram+mtp")
# One drafter's spec; "A+B" joins two (so a model:PATH or mtp:PATH cannot hold a "+").
SPEC = re.compile(r"ngram|int8|early-exit(:\d+(:\d+)?)?|model:[^+]+|mtp(:[^+]+)?")


def check_drafter_spec(spec: str) -> None:
    """Raise ValueError unless spec names a drafter (checks the form only, loads nothing)."""
    parts = spec.split("+")
    if not (spec == "none" or all(SPEC.fullmatch(part) for part in parts)):
        raise ValueError(
            f"unknown drafter {spec!r}: use one of {', '.join(DRAFTER_SPECS)} "
            "(early-exit also as early-exit:LAYERS or early-exit:LAYERS:HEAD_SIZE; mtp also as "
            "mtp:PATH to a trained drafter's .safetensors; A+B: A, and B when A has nothing)"
        )


def make_drafter(spec: str, target: Model, **opts: object) -> Drafter | None:
    """Build a drafter from its command-line name; "none" gives None (plain decoding).

    spec: "ngram", "early-exit", "int8", "model:PATH" or "none". Options, by drafter:
    ngram: max_n (3), min_n (1). early-exit: layers (5/6 of the target's), head_size (16,384
    candidate tokens for a large vocabulary, else all; 0 = the full head); also written
    "early-exit:L" and "early-exit:L:N". model:PATH: weights ("float32" or "int8").
    mtp: the shipped weights for Gemma 3 270M; mtp:PATH: weights made by `minispec train-mtp`.
    "A+B" (e.g. "ngram+mtp"): a `FallbackDrafter`, A's draft when it has one, else B's.
    """
    check_drafter_spec(spec)
    if "+" in spec:
        return FallbackDrafter([make_drafter(part, target, **opts) for part in spec.split("+")])
    name, _, arg = spec.partition(":")
    if name == "none":
        return None
    if name == "ngram":
        return NgramDrafter(max_n=int(opts.get("max_n", 3)), min_n=int(opts.get("min_n", 1)))
    if name == "early-exit":
        layers, _, head = arg.partition(":")
        n_layers = int(layers) if layers else opts.get("layers")
        head_size = int(head) if head else opts.get("head_size", default_head_size(target))
        return EarlyExitDrafter(target, n_layers=n_layers, head_size=head_size or None)
    if name == "mtp":
        from minispec.drafters.mtp import load_drafter

        return load_drafter(target, arg or None)
    if name == "int8":
        return DraftModelDrafter(quantized_copy(target), name="int8-draft")
    from minispec.loading import load_model  # name == "model": a checkpoint to load

    draft = load_model(arg, weights=str(opts.get("weights", "float32")))
    check_same_vocabulary(target, draft)
    return DraftModelDrafter(draft)


__all__ = [
    "Draft",
    "DraftContext",
    "DraftModelDrafter",
    "Drafter",
    "EarlyExitDrafter",
    "FallbackDrafter",
    "MTPDrafter",
    "NgramDrafter",
    "check_drafter_spec",
    "make_drafter",
    "quantized_copy",
]
