"""Every drafter the package can build, in one table: its spec, how to build it, what it is.

A spec names a drafter as `--drafter` and `make_drafter` take it: "ngram", "early-exit:12",
"mtp:PATH", or "A+B" for A's draft, and B's whenever A proposes nothing (fallback.py). Each
row of `DRAFTERS` holds a kind's spec, its factory, and two descriptions in plain words: a
line for lists (the command line's help, the app's drafter choice) and a paragraph for the
app's step panel. The command line, the app and the package's docstrings read this table.

`make_drafter` writes the spec onto the drafter it builds (`drafter.spec`), and the trace records
it, so a replayed run is explained by what built it, not by the drafter's display name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace

from minispec.config import GemmaConfig
from minispec.drafters.base import Drafter
from minispec.drafters.draft_model import DraftModelDrafter, check_same_vocabulary, quantized_copy
from minispec.drafters.early_exit import EarlyExitDrafter, default_exit_layer, default_head_size
from minispec.drafters.fallback import FallbackDrafter
from minispec.drafters.ngram import NgramDrafter
from minispec.errors import InputError
from minispec.model import Model


@dataclass(frozen=True)
class DrafterKind:
    """One kind of drafter: how a spec names it, how it is built, what it is in plain words."""

    spec: str  # its spec as the help lists it ("PATH" stands for a path)
    build: Callable[[Model, str, dict], Drafter | None]  # (target, the text after ":", options)
    summary: str  # one line, for lists of drafters
    words: str  # the app's paragraph about it (markdown)
    arg: str = ""  # a regex of what may follow its name in a spec
    forms: str = ""  # those forms, in words, for help and error messages
    named: str = ""  # a regex of the `name` its drafter reports (traces that record no spec)


GEMMA = GemmaConfig()  # Gemma 3 270M, the target the app and the descriptions speak of
INT8_NAME = "int8-draft"  # the int8 drafter's display name


def build_ngram(target: Model, arg: str, opts: dict) -> Drafter:
    return NgramDrafter(max_n=int(opts.get("max_n", 3)), min_n=int(opts.get("min_n", 1)))


def build_early_exit(target: Model, arg: str, opts: dict) -> Drafter:
    """ "early-exit[:LAYERS[:HEAD_SIZE]]", or the options layers and head_size (0: full head)."""
    layers, _, head = arg.partition(":")
    n_layers = int(layers) if layers else opts.get("layers")
    head_size = int(head) if head else opts.get("head_size", default_head_size(target))
    return EarlyExitDrafter(target, n_layers=n_layers, head_size=head_size or None)


def build_int8(target: Model, arg: str, opts: dict) -> Drafter:
    return DraftModelDrafter(quantized_copy(target), name=INT8_NAME)


def build_draft_model(target: Model, arg: str, opts: dict) -> Drafter:
    """A checkpoint at the path arg, with the option weights ("float32" or "int8")."""
    from minispec.loading import load_model  # loading imports the kernels' warm-up: only here

    draft = load_model(arg, weights=str(opts.get("weights", "float32")))
    check_same_vocabulary(target, draft)
    return DraftModelDrafter(draft)


def build_mtp(target: Model, arg: str, opts: dict) -> Drafter:
    """The weights at the path arg, or those shipped for Gemma 3 270M."""
    from minispec.drafters.mtp import load_drafter

    return load_drafter(target, arg or None)


def early_exit_share() -> Fraction:
    """The share of Gemma 3 270M's layers the default early exit runs (15 of 18: 5/6)."""
    return Fraction(default_exit_layer(GEMMA.num_hidden_layers), GEMMA.num_hidden_layers)


def early_exit_words() -> str:
    share = early_exit_share()
    head = default_head_size(SimpleNamespace(config=GEMMA))  # it reads only the config
    return (
        f"The **early-exit drafter** runs only Gemma's first layers ({share.numerator} in "
        f"{share.denominator}) and a cut-down output head that scores only likely candidates "
        f"({head:,} of Gemma's {GEMMA.vocab_size:,} tokens): a cheaper, rougher Gemma. It "
        "samples its guesses one by one from its own distribution q."
    )


DRAFTERS: dict[str, DrafterKind] = {  # a spec's name (before any ":") -> its kind
    "none": DrafterKind(
        "none",
        lambda target, arg, opts: None,
        "no drafter: plain decoding, one target forward per token",
        "**No drafter**: nothing is guessed, so every step is one plain decoding step.",
        named="none",
    ),
    "ngram": DrafterKind(
        "ngram",
        build_ngram,
        "copies what followed the same words earlier in the text (no model at all)",
        "The **n-gram drafter** looks for the last few tokens earlier in the text and proposes "
        "what followed them there. It is not a model and has no probabilities: q = 1 for its "
        "guess.",
        named=r"ngram\(.*\)",
    ),
    "early-exit": DrafterKind(
        "early-exit",
        build_early_exit,
        f"Gemma's own first {early_exit_share()} of layers, then a cut-down output head",
        early_exit_words(),
        arg=r"(:\d+(:\d+)?)?",
        forms="early-exit:LAYERS or early-exit:LAYERS:HEAD_SIZE",
        named=r"early-exit\(.*\)",
    ),
    "int8": DrafterKind(
        "int8",
        build_int8,
        "a copy of Gemma with 8-bit weights: a quarter of the bytes to read",
        "The **int8 drafter** is a copy of Gemma with 8-bit weights, a quarter of the bytes to "
        "read. It samples its guesses one by one from its own distribution q.",
        named=re.escape(INT8_NAME),
    ),
    "model": DrafterKind(
        "model:PATH",
        build_draft_model,
        "any checkpoint with Gemma's vocabulary, as a separate draft model",
        "The **draft model** is a separate checkpoint with Gemma's vocabulary, loaded from a "
        "path (`--drafter model:PATH`). It samples its guesses one by one from its own "
        "distribution q.",
        arg=r":[^+]+",  # a path: any text but "+", which joins two drafters
        named=r"draft-model\(.*\)",
    ),
    "mtp": DrafterKind(
        "mtp",
        build_mtp,
        "a small trained network reading Gemma's last hidden state and its KV cache "
        "(no memory of its own)",
        "The **MTP drafter** (multi-token prediction) is a small trained network, not a copy of "
        "Gemma. It reads what Gemma has already computed: Gemma's last **hidden state**, the "
        "vector that predicted the newest token, and Gemma's own **KV cache** of one layer, the "
        "keys and values of every earlier token, which it attends to with queries only. Because "
        "that memory is Gemma's, it needs none of its own: nothing to fill from the prompt, "
        "nothing to roll back when a guess is rejected, and it writes nothing into Gemma's "
        "cache. Each further guess feeds its own output state back in. Its cheap head scores "
        "only the few thousand tokens Gemma predicts most often, and it samples its guesses "
        "from its own distribution q over them.",
        arg=r"(:[^+]+)?",
        forms="mtp:PATH to a trained drafter's .safetensors",
        named="mtp",
    ),
}

FALLBACKS = ("ngram+mtp",)  # the "A+B" drafters worth listing by name
FALLBACK_FORM = "A+B: A, and B when A has nothing"

# Every spec a user can pick from a list (the command line's help, the app).
DRAFTER_SPECS = tuple(kind.spec for kind in DRAFTERS.values()) + FALLBACKS

# One part of an "A+B" spec: any drafter but none.
PART = re.compile("|".join(re.escape(n) + k.arg for n, k in DRAFTERS.items() if n != "none"))

SPEC_FORMS = "; ".join(
    [f"{name} also as {kind.forms}" for name, kind in DRAFTERS.items() if kind.forms]
    + [FALLBACK_FORM]
)  # the forms beyond DRAFTER_SPECS, in words


def check_drafter_spec(spec: str) -> None:
    """Raise InputError unless spec names a drafter (checks the form only, loads nothing)."""
    if not (spec == "none" or all(PART.fullmatch(part) for part in spec.split("+"))):
        raise InputError(
            f"unknown drafter {spec!r}: use one of {', '.join(DRAFTER_SPECS)} ({SPEC_FORMS})"
        )


def make_drafter(spec: str, target: Model, **opts: object) -> Drafter | None:
    """Build a drafter from its spec (see `DRAFTERS`); "none" gives None (plain decoding).

    Options, by drafter: ngram: max_n (3), min_n (1). early-exit: layers (`default_exit_layer`),
    head_size (`default_head_size`; 0 = the full head). model:PATH: weights ("float32" or "int8").
    "A+B" (e.g. "ngram+mtp"): a `FallbackDrafter`, A's draft when it has one, else B's.
    The drafter keeps its spec as `drafter.spec`, which the trace records.
    """
    check_drafter_spec(spec)
    if "+" in spec:
        drafter = FallbackDrafter([make_drafter(part, target, **opts) for part in spec.split("+")])
    else:
        name, _, arg = spec.partition(":")
        drafter = DRAFTERS[name].build(target, arg, opts)
    if drafter is not None:
        drafter.spec = spec
    return drafter


def spec_from_name(name: str) -> str | None:
    """The spec of the kind of drafter whose display name this is (None if no kind's): for
    traces that record only the name. A fallback's name joins its parts' with "+"."""
    parts = [
        next((n for n, k in DRAFTERS.items() if re.fullmatch(k.named, part)), None)
        for part in name.split("+")
    ]
    return "+".join(parts) if None not in parts else None


def kinds(spec: str) -> list[DrafterKind]:
    """The kind of each drafter a checked spec joins (one, or A and B of "A+B")."""
    return [DRAFTERS[part.partition(":")[0]] for part in spec.split("+")]


def drafter_summary(spec: str) -> str:
    """A spec's one line in plain words; "A+B" says which is asked first."""
    first, *rest = spec.split("+")
    if not rest:
        return kinds(spec)[0].summary
    return f"{first} first; {', then '.join(rest)} whenever {first} proposes nothing"


def drafter_words(spec: str) -> str:
    """The app's paragraph about the drafter a spec names; "A+B": A's, then B's."""
    first, *rest = kinds(spec)
    return " ".join(
        [first.words] + [f"When it has nothing to propose: {kind.words}" for kind in rest]
    )
