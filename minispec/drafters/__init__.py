"""Drafters: cheap guesses of the target's next tokens, one module per idea.

base.py          the protocol every drafter follows (`Drafter`, `Draft`, `DraftContext`)
ngram.py         prompt lookup: copy what followed the same n-gram earlier
early_exit.py    the target's own first layers and output head
draft_model.py   a separate draft model with the target's vocabulary (int8, model:PATH)
mtp.py           a trained multi-token-prediction drafter on the target's hidden state
fallback.py      A, and B whenever A proposes nothing ("A+B")
tree_search.py   how a model drafter grows a tree of guesses (EAGLE-2), one batched pass per depth
registry.py      every drafter by its spec, what it is in plain words (`DRAFTERS`), and
                 `make_drafter`, which builds one from its spec
"""

from __future__ import annotations

from minispec.drafters.base import Draft, DraftContext, Drafter
from minispec.drafters.draft_model import DraftModelDrafter, check_same_vocabulary, quantized_copy
from minispec.drafters.early_exit import EarlyExitDrafter
from minispec.drafters.fallback import FallbackDrafter
from minispec.drafters.mtp import MTPDrafter
from minispec.drafters.ngram import NgramDrafter
from minispec.drafters.registry import (
    DRAFTER_SPECS,
    DRAFTERS,
    SPEC_FORMS,
    DrafterKind,
    check_drafter_spec,
    drafter_summary,
    drafter_words,
    make_drafter,
    spec_from_name,
)

__all__ = [
    "DRAFTERS",
    "DRAFTER_SPECS",
    "SPEC_FORMS",
    "Draft",
    "DraftContext",
    "DraftModelDrafter",
    "Drafter",
    "DrafterKind",
    "EarlyExitDrafter",
    "FallbackDrafter",
    "MTPDrafter",
    "NgramDrafter",
    "check_drafter_spec",
    "check_same_vocabulary",
    "drafter_summary",
    "drafter_words",
    "make_drafter",
    "quantized_copy",
    "spec_from_name",
]
