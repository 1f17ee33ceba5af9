"""minispec: a readable NumPy reference of Gemma 3 and of speculative decoding.

One import gives what a notebook or a script needs (`import minispec as ms`):

    ms.load_model()                      Gemma 3 270M (or any Gemma 3 checkpoint); ms.tiny_model()
    ms.reference(model)                  the same model on the plain NumPy path
    ms.encode / ms.decode                text <-> token ids
    ms.new_cache / ms.forward            a KV cache; append tokens, get their logits
    ms.generate                          plain decoding (greedy, or ms.SamplingParams)
    ms.speculative_generate              draft -> verify -> accept -> roll back
    ms.make_drafter                      a drafter from its spec; ms.DRAFTERS lists every spec
    ms.accept_greedy, ms.accept_or_reject, ms.residual_distribution   the acceptance rule
    ms.save_trace / ms.load_trace        a run's step-by-step record, as JSON

Importing loads no weights and compiles nothing; `load_model` compiles the Numba kernels
(`kernels.warmup`), or reads them from Numba's on-disk cache after the first time.
"""

from minispec.drafters import DRAFTERS, make_drafter
from minispec.generate import generate
from minispec.kv_cache import new_cache
from minispec.loading import load_model
from minispec.model import forward, reference
from minispec.sampling import SamplingParams
from minispec.speculative import (
    accept_greedy,
    accept_or_reject,
    residual_distribution,
    speculative_generate,
)
from minispec.tiny import tiny_model
from minispec.tokenizer import decode, encode
from minispec.trace import load_trace, save_trace

__all__ = [
    "DRAFTERS",
    "SamplingParams",
    "accept_greedy",
    "accept_or_reject",
    "decode",
    "encode",
    "forward",
    "generate",
    "load_model",
    "load_trace",
    "make_drafter",
    "new_cache",
    "reference",
    "residual_distribution",
    "save_trace",
    "speculative_generate",
    "tiny_model",
]
