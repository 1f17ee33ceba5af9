"""The MTP drafter's training data, made here from text on the machine: nothing is downloaded.

Five sources of documents, so the drafter sees prose as well as code:

    prose        Python's own reference documentation (pydoc's topics, `pydoc_data`)
    docstrings   the docstrings of the standard library's modules (read with `ast`, not imported)
    code         the standard library's source files
    own          the target's own sampled continuations of varied prompts (stories, letters,
                 news, recipes, dialogue, code), drawn with int8 weights, which are faster and
                 nearly always agree
    greedy       the target's own greedy continuations of passages cut from those samples: what
                 the drafter reads when it runs greedy, a prompt and then the target's own
                 choices, repetitions and all (a 270M base model's greedy text soon loops)

Each document is tokenised and the documents of one source are cut into chunks of S tokens
(each starting with <bos>). A document goes wholly to training or to the held-out split, by a
hash of its name, so held-out figures are on text the drafter never saw.

Then one teacher-forced forward pass of the target per chunk (prefill is fast, generation is
not) gives, at every position, what the drafter reads and learns: the last block's output h
(before the final norm), the keys and values cached by layer L, and the target's argmax, the
label (self-distillation).

The labels of the training chunks are the target's argmax over the tokens that occur in the
training text (about 10,000 ids), not over all 262,144: scoring the full tied head at every
position costs twice the rest of the pass (2.4 s against 0.9 s for a 512-token chunk), and the
target's choice is nearly always a token the text contains (99.1 % of positions on the first
run's 197,632, whose labels were full-vocabulary). At the other 0.9 % the label is the target's
best token among those ids, which is also the best a drafter with a head of them could do. The
held-out chunks get the exact full-vocabulary argmax, so held-out figures are honest.
"""

from __future__ import annotations

import ast
import hashlib
import math
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from minispec.kernels import linear, select_rows
from minispec.kv_cache import new_cache
from minispec.model import Model, forward_hidden, ops
from minispec.train.recipe import SHIPPED, Recipe


@dataclass
class Batch:
    """B documents of S tokens, as the target saw them in one teacher-forced pass each."""

    tokens: np.ndarray  # (B, S) int64
    hidden: np.ndarray  # (B, S, D) the target's last block output, before its final norm
    keys: np.ndarray  # (B, S, G, hd) the target's cached keys of layer L
    values: np.ndarray  # (B, S, G, hd)
    labels: np.ndarray  # (B, S) int64: the target's argmax at each position (its next token)


@dataclass
class TrainData:
    """Teacher-forced documents (`data_from_chunks`), split by document into train and held out."""

    tokens: np.ndarray  # (n, S)
    hidden: np.ndarray  # (n, S, D)
    keys: np.ndarray  # (n, S, G, hd)
    values: np.ndarray
    labels: np.ndarray  # (n, S)
    held_out: np.ndarray  # (n,) bool
    source: np.ndarray  # (n,) str: "prose", "docstrings", "code", "own", "greedy"

    def batch(self, rows: np.ndarray) -> Batch:
        return Batch(*(getattr(self, f.name)[rows] for f in fields(Batch)))


# Prompts for the target's own continuations: varied on purpose (the drafter is judged on
# narrative prose and letters as well as code).
OWN_PROMPTS = [
    "Once upon a time, in a small village by the sea, there lived",
    "Dear Margaret,\n\nThank you so much for your letter. I",
    "The old clockmaker wound every clock in the shop one last time. He",
    "BREAKING NEWS: City council votes to",
    "My grandmother's apple pie recipe\n\nIngredients:\n",
    '"Where have you been?" she asked. "I\'ve been waiting for hours."\n\n',
    "Chapter 1\n\nThe train was late, as it always was on Mondays.",
    "Dear Sir or Madam,\n\nI am writing to apply for the position of",
    "The history of the bicycle begins in the early nineteenth century, when",
    "Hi Tom,\n\nJust a quick note to let you know that",
    "In this tutorial, we will learn how to",
    "The weather today was strange. In the morning",
    "She opened the envelope slowly, afraid of what she might find inside.",
    "Top 10 tips for a better night's sleep:\n\n1.",
    "The meeting began at nine o'clock sharp. The director",
    "It was the coldest winter anyone could remember.",
    "Review: The new restaurant on Main Street",
    "To whom it may concern,\n\nI would like to recommend",
    "The scientists gathered around the screen as the first images arrived.",
    "Grandpa always said that the river remembers everything.",
    'def parse_config(path):\n    """Read a configuration file and',
    "import numpy as np\n\n\ndef moving_average(x, n):\n",
    'class Stack:\n    """A last-in, first-out stack."""\n\n    def __init__(self):\n',
    "# A simple web server in Python\nfrom http.server import",
    "The soldiers marched through the night, and at dawn",
    "Dear diary,\n\nToday was the best day of my life. I",
    "How to plant tomatoes in your garden\n\nFirst,",
    "The detective looked at the body and then at the open window.",
    "Once the guests had left, Anna sat down at the piano and",
    "Professor Hill began the lecture by asking a simple question:",
]

# Shares of the positions; the greedy continuations take what is left (about a tenth).
SHARES = {"prose": 0.45, "docstrings": 0.22, "code": 0.18, "own": 0.05}
# The own samples are few documents (one per prompt): hold out a larger share of them, so that
# some land in the held-out split at all (8 % of ~10,000 tokens is less than one chunk).
OWN_HELD_OUT = 0.25
# The greedy continuations' prompts: windows of the own samples, about as long as a user's prompt
GREEDY_WINDOW = 48  # tokens in a prompt
GREEDY_STRIDE = 50  # a window starts every this many tokens of a sample


def held_out(name: str, fraction: float) -> bool:
    """Whether document `name` is held out: a stable hash, the same on every machine."""
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return h < fraction * 16**8


def stdlib_files() -> list[Path]:
    """The standard library's top-level modules, sorted (no tests, no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith(("test", "_")))


def prose_documents() -> list[tuple[str, str]]:
    """pydoc's topics: the language reference as English prose, one document per topic."""
    from pydoc_data.topics import topics

    return [(f"prose:{name}", topics[name]) for name in sorted(topics)]


def docstring_documents() -> list[tuple[str, str]]:
    """Each standard-library module's docstrings (module, classes, functions), as one text."""
    docs = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        texts = [ast.get_docstring(n) for n in nodes]
        text = "\n\n".join(t for t in texts if t and len(t) > 40)
        if text:
            docs.append((f"docstrings:{path.stem}", text))
    return docs


def code_documents() -> list[tuple[str, str]]:
    return [
        (f"code:{p.stem}", p.read_text(encoding="utf-8", errors="replace")) for p in stdlib_files()
    ]


def int8_weights(target: Model) -> Model:
    """The target with int8 weights, for drawing its own text: faster, and nearly always the
    same choices. A target already in int8 is itself."""
    from minispec.drafters.draft_model import quantized_copy

    return quantized_copy(target) if target.weights == "float32" else target


def own_documents(
    target: Model, n_tokens: int, seed: int = 0, say: Callable[[str], None] = print
) -> list[tuple[str, str]]:
    """The target's own continuations of OWN_PROMPTS, sampled at temperature 1 (int8 weights).

    Prompt i is continued by up to n_tokens / len(OWN_PROMPTS) tokens with seed + i, all prompts
    decoded together (`generate_batch`, which gives each the tokens `generate` would); prompts
    are kept in order until n_tokens are made.
    """
    from minispec.generate import generate_batch
    from minispec.sampling import SamplingParams
    from minispec.tokenizer import encode

    if n_tokens <= 0:
        return []
    fast = int8_weights(target)
    per_prompt = max(16, n_tokens // len(OWN_PROMPTS))
    temperature_1 = SamplingParams(temperature=1.0)
    docs: list[tuple[str, str]] = []
    made = 0
    while made < n_tokens and len(docs) < len(OWN_PROMPTS):
        # As many prompts as the tokens still wanted need if none stops early at <eos>.
        wanted = math.ceil((n_tokens - made) / per_prompt)
        batch = range(len(docs), min(len(OWN_PROMPTS), len(docs) + wanted))
        prompts = [encode(target.tokenizer, OWN_PROMPTS[i]) for i in batch]
        seeds = [seed + i for i in batch]
        outs = generate_batch(
            fast, prompts, per_prompt, temperature_1, seeds, _every(25, say, "own", made)
        )
        for i, out in zip(batch, outs, strict=True):
            if made >= n_tokens:
                break
            docs.append((f"own:{i}", OWN_PROMPTS[i] + out.text))
            made += len(out.ids)
    return docs


def greedy_documents(
    target: Model,
    samples: list[tuple[str, str]],
    new_tokens: int,
    say: Callable[[str], None] = print,
) -> list[tuple[str, str]]:
    """The target's own greedy continuations (int8 weights) of passages cut from `samples`.

    At run time a greedy drafter reads a prompt and then the target's own greedy choices, which
    in a small base model soon repeat whole sentences: text unlike any document above, and where
    a drafter that attends to the context can learn to copy. Each sample gives a prompt of
    GREEDY_WINDOW tokens every GREEDY_STRIDE tokens; all are continued together. A continuation
    is named `<sample>/greedy@<start>`, so it lands in its sample's split (`chunk_documents`).
    """
    from minispec.generate import decode_text, generate_batch
    from minispec.tokenizer import encode

    if new_tokens <= 0 or not samples:
        return []
    fast = int8_weights(target)
    bos = target.config.bos_token_id
    names, prompts = [], []
    for name, text in samples:
        ids = encode(target.tokenizer, text, add_bos=False)
        for start in range(0, len(ids) - GREEDY_WINDOW + 1, GREEDY_STRIDE):
            names.append(f"{name}/greedy@{start}")
            prompts.append([bos, *ids[start : start + GREEDY_WINDOW]])
    say(f"greedy continuations: {len(prompts)} prompts of {GREEDY_WINDOW} tokens")
    outs = generate_batch(fast, prompts, new_tokens, on_step=_every(10, say, "greedy"))
    return [
        (name, decode_text(target, prompt[1:]) + out.text)
        for name, prompt, out in zip(names, prompts, outs, strict=True)
    ]


def _every(n: int, say: Callable[[str], None], what: str, before: int = 0) -> Callable[[int], None]:
    """An on_step for generate_batch that reports the tokens made (plus before) every n steps."""
    steps = 0

    def on_step(made: int) -> None:
        nonlocal steps
        steps += 1
        if steps % n == 0:
            say(f"{what} continuations: {before + made} tokens made")

    return on_step


def chunk_documents(
    target: Model,
    docs: list[tuple[str, str]],
    length: int,
    budget: int,
    fraction: float,
    per_doc: int = 4,
) -> tuple[list[np.ndarray], list[bool]]:
    """Cut one source's documents into <bos> + (length - 1)-token chunks, about `budget` tokens.

    Documents are taken in a fixed shuffled order, at most `per_doc` chunks' worth of each (so
    many documents are seen, not a few long ones). Train and held-out documents fill separate
    streams (held out: about `fraction` of the budget), so no chunk mixes the two. A document
    named `parent/child` goes where its parent goes.
    """
    from minispec.tokenizer import encode

    order = np.random.default_rng(0).permutation(len(docs))
    room = {False: int(budget * (1 - fraction)), True: int(budget * fraction)}
    streams: dict[bool, list[int]] = {False: [], True: []}
    sep = encode(target.tokenizer, "\n\n", add_bos=False)
    for i in order:
        name, text = docs[i]
        split = held_out(name.split("/")[0], fraction)
        if len(streams[split]) >= room[split]:
            if all(len(streams[k]) >= room[k] for k in streams):
                break
            continue
        ids = encode(target.tokenizer, text, add_bos=False)[: per_doc * (length - 1)]
        streams[split] += ids + sep
    chunks, split = [], []
    bos = target.config.bos_token_id
    for is_held, stream in streams.items():
        stream = stream[: max(room[is_held], length - 1)]
        for start in range(0, len(stream) - (length - 1) + 1, length - 1):
            chunks.append(np.array([bos, *stream[start : start + length - 1]], np.int64))
            split.append(is_held)
    return chunks, split


def teacher_forced(
    target: Model,
    chunks: list[np.ndarray],
    kv_layer: int,
    say: Callable[[str], None] = print,
    label_ids: np.ndarray | None = None,
    exact: list[bool] | None = None,
) -> dict[str, np.ndarray]:
    """One forward pass of the target per chunk: hidden states, layer-L keys/values, argmaxes.

    label_ids: score only these tokens for the label (see the module doc), except in the chunks
    where exact[i] is True, which get the argmax over the whole vocabulary. None: all exact.
    """
    n, S = len(chunks), len(chunks[0])
    c = target.config
    out = {
        "tokens": np.stack(chunks),
        "hidden": np.empty((n, S, c.hidden_size), np.float32),
        "keys": np.empty((n, S, c.num_key_value_heads, c.head_dim), np.float32),
        "values": np.empty((n, S, c.num_key_value_heads, c.head_dim), np.float32),
        "labels": np.empty((n, S), np.int64),
    }
    label_head = None if label_ids is None else select_rows(target.params.embed, label_ids)
    for i, chunk in enumerate(chunks):
        cache = new_cache(c, capacity=S)
        full = label_head is None or (exact is not None and exact[i])
        f = forward_hidden(target, chunk, cache, head=full)
        out["hidden"][i] = f.hidden
        if full:
            out["labels"][i] = np.argmax(f.logits, axis=-1)
        else:  # (S, |label_ids|): the final norm and the tied head's rows of label_ids only
            norm = ops(target.fast).rms_norm  # as the target's own head
            h = norm(f.hidden, target.params.final_norm, c.rms_norm_eps)
            out["labels"][i] = label_ids[np.argmax(linear(h, label_head), axis=-1)]
        out["keys"][i] = cache.keys[kv_layer, :S]
        out["values"][i] = cache.values[kv_layer, :S]
        if (i + 1) % 10 == 0 or i + 1 == n:
            say(f"positions prepared: {(i + 1) * S} of {n * S}")
    return out


def data_from_chunks(
    target: Model,
    chunks: list[np.ndarray],
    held_out: list[bool],
    source: list[str],
    kv_layer: int,
    say: Callable[[str], None] = print,
    label_ids: np.ndarray | None = None,
) -> TrainData:
    """TrainData from chunks of equal length: the target's teacher-forced pass over each.

    held_out[i], source[i]: chunk i's split and where its text came from. label_ids: as for
    `teacher_forced`; the held-out chunks always get the full-vocabulary argmax.
    """
    arrays = teacher_forced(target, chunks, kv_layer, say, label_ids, exact=held_out)
    return TrainData(**arrays, held_out=np.array(held_out, bool), source=np.array(source))


def make_data(
    target: Model,
    kv_layer: int,
    recipe: Recipe = SHIPPED,
    say: Callable[[str], None] = print,
) -> TrainData:
    """Everything above, with the recipe's data settings: documents, chunks, the teacher-forced
    passes. Deterministic per recipe."""
    r = recipe
    positions, length, held_out_fraction = r.positions, r.length, r.held_out_fraction
    fast = int8_weights(target)  # made once for both kinds of own text
    sources = {
        "prose": prose_documents(),
        "docstrings": docstring_documents(),
        "code": code_documents(),
        "own": own_documents(fast, r.own_tokens, r.seed, say),
    }
    sources["greedy"] = greedy_documents(fast, sources["own"], r.greedy_tokens, say)
    chunks, split, source = [], [], []
    for name, docs in sources.items():
        budget = (
            positions - sum(len(c) for c in chunks)
            if name == "greedy"
            else int(SHARES[name] * positions)
        )
        # pydoc's few long topics are most of the prose: let each give more chunks
        per_doc = 24 if name == "prose" else 4
        own = name in ("own", "greedy")
        fraction = max(held_out_fraction, OWN_HELD_OUT) if own else held_out_fraction
        c, s = chunk_documents(target, docs, length, budget, fraction, per_doc)
        chunks += c
        split += s
        source += [name] * len(c)
        say(f"{name}: {len(c)} chunks of {length} tokens ({sum(s)} held out)")
    label_ids = np.unique(
        np.concatenate([c for c, held in zip(chunks, split, strict=True) if not held])
    )
    say(f"labels: the target's argmax over the {label_ids.size} tokens of the training text")
    return data_from_chunks(target, chunks, split, source, kv_layer, say, label_ids)


def save_data(path: str | Path, data: TrainData) -> None:
    """The prepared data as one .npz (plain arrays, read back without pickle)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: getattr(data, k) for k in vars(data)})


def load_data(path: str | Path) -> TrainData:
    with np.load(path, allow_pickle=False) as f:
        return TrainData(**{k: f[k] for k in f.files})
