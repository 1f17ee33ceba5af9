"""Getting runs for the app: the model (loaded once per server), generations, measurements, uploads.

Uses only minispec's public API: `load_model`, `tiny_model`, the drafters' specs and
`make_drafter`, `speculative_generate`, `generate`, `roofline`'s measurements, the tokenizer and
the trace. Everything the page measures is measured and kept here, as plain data; nothing here
draws on the page except through the callbacks (loading progress, live text) the caller passes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from minispec.drafters import DRAFTER_SPECS, make_drafter
from minispec.generate import generate
from minispec.loading import load_model
from minispec.roofline import T_VALUES, fma_rate, fmas_per_token, forward_times
from minispec.sampling import SamplingParams
from minispec.speculative import speculative_generate
from minispec.story import Story, story_from_trace
from minispec.tiny import tiny_model
from minispec.tokenizer import decode, encode
from minispec.trace import Trace

if TYPE_CHECKING:
    from minispec.model import Model

# MINISPEC_APP_MODEL: "gemma" (default, Gemma 3 270M), "tiny" (a tiny random model with a byte
# tokenizer: the tests use it, it runs in milliseconds), or a path to a checkpoint folder/.gguf.
MODEL_ENV = "MINISPEC_APP_MODEL"

# The drafters the page offers: every one the package lists that needs no file named (no
# "model:PATH") and is a drafter ("none" is plain decoding, the baseline the page measures anyway).
OFFERED = tuple(spec for spec in DRAFTER_SPECS if spec != "none" and ":" not in spec)
# The comparison starts with each idea alone; the "A+B" combinations are one click away.
COMPARED = tuple(spec for spec in OFFERED if "+" not in spec)


def model_choice() -> str:
    return os.environ.get(MODEL_ENV, "gemma").strip() or "gemma"


def model_title(name: str) -> str:
    return "Gemma 3 270M" if name.startswith("gemma-3-270m") else name


@dataclass
class Store:
    """What the server keeps between page loads and users: one model, its drafters, timings.

    One lock: a 2-core machine runs one generation at a time, and drafters keep state.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    models: dict[str, Model] = field(default_factory=dict)
    drafters: dict[tuple[str, str], object] = field(default_factory=dict)
    timings: dict[str, ForwardTimes] = field(default_factory=dict)  # per model name


def get_model(store: Store, choice: str, progress: Callable[[str, int, int], None] | None) -> Model:
    """The model for `choice`, loaded on first use (converting the weights on the very first)."""
    with store.lock:
        if choice not in store.models:
            if choice == "tiny":
                model = tiny_model()
            else:  # (load_model warms the model up too)
                model = load_model(None if choice == "gemma" else choice, progress=progress)
            store.models[choice] = model
        return store.models[choice]


def get_drafter(store: Store, model: Model, spec: str) -> object:
    """Drafters are built once per model (the int8 copy takes seconds to quantize)."""
    key = (model.name, spec)
    if key not in store.drafters:
        store.drafters[key] = make_drafter(spec, model)
    return store.drafters[key]


@dataclass(frozen=True)
class Settings:
    prompt: str
    drafter: str
    k: int
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int
    tree: int | None = None  # drafted nodes per step; None: a chain of k

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, 0, self.top_p)

    @property
    def shape(self) -> str:
        """The draft's shape in words: "a chain of k = 4" or "a tree of 8 nodes"."""
        return f"a tree of {self.tree} nodes" if self.tree else f"a chain of k = {self.k}"


TREE_NODES = range(4, 17)  # the node budgets the page offers
TREE_DEFAULT = 8


MAX_NEW_TOKENS = 512  # the app keeps runs short enough to step through


def check_settings(s: Settings) -> None:
    """Raise ValueError with a sentence to show when a setting cannot work."""
    if not s.prompt.strip():
        raise ValueError("The prompt is empty: type some text or pick one of the presets.")
    if not 1 <= s.max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"New tokens must be between 1 and {MAX_NEW_TOKENS}.")
    if s.tree is not None and s.tree not in TREE_NODES:
        raise ValueError(
            f"A tree has {TREE_NODES[0]} to {TREE_NODES[-1]} nodes per step, not {s.tree}."
        )
    s.sampling  # noqa: B018 -- SamplingParams checks temperature and top-p


@dataclass
class Run:
    """One generation as the page keeps it: the story to show and the live measurements."""

    story: Story
    source: str  # "model" (run in this session) or "replay" (a trace file)
    model_name: str
    settings: Settings | None = None
    plain_tokens_per_s: float | None = None  # plain decoding, same prompt, same session


LIVE_EVERY_S = 1.0  # the text shown while decoding is refreshed at most this often


def run_speculative(
    store: Store, model: Model, s: Settings, on_text: Callable[[str], None] | None = None
) -> Run:
    """Speculative decoding with the trace on; on_text gets the text so far, at most every
    LIVE_EVERY_S seconds. Each refresh is a message to the browser, which then redraws the page
    on the same cores as the model: refreshed at every token (several per step), that redrawing
    halved the speed the page measured (docs/probes/app_vs_cli.py)."""
    check_settings(s)
    ids = encode(model.tokenizer, s.prompt)
    new: list[int] = []
    shown = [time.perf_counter()]

    def on_token(token: int) -> None:
        new.append(token)
        if on_text is not None and time.perf_counter() - shown[0] >= LIVE_EVERY_S:
            on_text(decode(model.tokenizer, new))
            shown[0] = time.perf_counter()

    g = speculate(store, model, ids, s, s.drafter, on_token=on_token, trace_top=6)
    return Run(story_from_trace(g.trace), "model", model.name, s)


def speculate(store: Store, model: Model, ids: list[int], s: Settings, spec: str, **options):
    """One speculative run with these settings and the drafter named by spec (one at a time)."""
    if s.tree is not None:  # a chain passes no `tree`: its call is the chain's, as it always was
        options["tree"] = s.tree
    with store.lock:
        drafter = get_drafter(store, model, spec)
        return speculative_generate(
            model,
            ids,
            drafter,
            k=s.k,
            max_new_tokens=s.max_new_tokens,
            sampling=s.sampling,
            seed=s.seed,
            **options,
        )


def plain_key(model: Model, s: Settings) -> tuple:
    """Plain decoding speed depends on the prompt, the length and the sampling, not the drafter."""
    return (model.name, s.prompt, s.max_new_tokens, s.temperature, s.top_p, s.seed)


def plain_tokens_per_s(store: Store, model: Model, s: Settings) -> float:
    """Plain decoding (one forward per token) on the same prompt and settings: tokens/s."""
    ids = encode(model.tokenizer, s.prompt)
    with store.lock:
        g = generate(model, ids, s.max_new_tokens, sampling=s.sampling, seed=s.seed)
    return g.tokens_per_s


def plain_speed(store: Store, model: Model, s: Settings, measured: dict) -> float:
    """Plain decoding tokens/s for these settings, measured once per `measured` (the caller
    keeps one per session: {plain_key: tokens/s})."""
    key = plain_key(model, s)
    if key not in measured:
        measured[key] = plain_tokens_per_s(store, model, s)
    return measured[key]


def run_each_drafter(
    store: Store,
    model: Model,
    s: Settings,
    specs: list[str],
    on_start: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """The same prompt and settings with each drafter in turn: the numbers for the app's table.

    (`bench.drafter_speedups` is the command line's measurement, over several prompts.)
    """
    check_settings(s)
    with store.lock:  # every drafter first: one that cannot draft for this model stops here
        for spec in specs:
            get_drafter(store, model, spec)
    ids = encode(model.tokenizer, s.prompt)
    rows = []
    for spec in specs:
        if on_start is not None:
            on_start(spec)
        g = speculate(store, model, ids, s, spec, trace=False)
        st_ = g.stats
        rows.append(
            {
                "drafter": spec,
                "alpha": st_.alpha,
                "tau": st_.tau,
                "expected_tau": st_.expected_tau,
                "tokens_per_s": st_.tokens_per_s,
                "draft_s": st_.draft_s,
                "verify_s": st_.verify_s,
                "text": g.text,
                "new_tokens": len(g.ids),
            }
        )
    return rows


@dataclass(frozen=True)
class Comparison:
    """Each drafter on one prompt and its settings (`run_each_drafter`'s rows), and plain
    decoding's tokens/s on the same, the speed to beat."""

    rows: list[dict[str, object]]
    plain_tokens_per_s: float


def comparison_key(model: Model, s: Settings, specs: list[str]) -> tuple:
    return (model.name, s, tuple(specs))


def compare_drafters(
    store: Store,
    model: Model,
    s: Settings,
    specs: list[str],
    measured: dict,
    on_start: Callable[[str], None] | None = None,
) -> Comparison:
    """Plain decoding (once per `measured`, see `plain_speed`), then each drafter in turn."""
    plain = plain_speed(store, model, s, measured)
    return Comparison(run_each_drafter(store, model, s, specs, on_start), plain)


@dataclass(frozen=True)
class ShapeComparison:
    """The same prompt, settings and drafter drafted as a chain of k and as a tree of N nodes:
    one row each ({shape, tree, tau, alpha, tokens_per_s, draft_s, verify_s, new_tokens, text}),
    and plain decoding's tokens/s on the same."""

    rows: list[dict[str, object]]
    plain_tokens_per_s: float


def shape_pair(s: Settings) -> tuple[Settings, Settings]:
    """The chain and the tree to compare: the run's own shape and the other one (a chain run is
    compared with the default tree, a tree run with the chain of its k)."""
    return replace(s, tree=None), replace(s, tree=s.tree or TREE_DEFAULT)


def shape_key(model: Model, s: Settings) -> tuple:
    return (model.name, *shape_pair(s))


def compare_shapes(
    store: Store,
    model: Model,
    s: Settings,
    measured: dict,
    on_start: Callable[[str], None] | None = None,
) -> ShapeComparison:
    """Plain decoding (once per `measured`, see `plain_speed`), then the chain, then the tree."""
    check_settings(s)
    plain = plain_speed(store, model, s, measured)
    ids = encode(model.tokenizer, s.prompt)
    rows = []
    for shape in shape_pair(s):
        if on_start is not None:
            on_start(shape.shape)
        g = speculate(store, model, ids, shape, s.drafter, trace=False)
        rows.append(
            {
                "shape": shape.shape,
                "tree": shape.tree,
                "tau": g.stats.tau,
                "alpha": g.stats.alpha,
                "tokens_per_s": g.stats.tokens_per_s,
                "draft_s": g.stats.draft_s,
                "verify_s": g.stats.verify_s,
                "new_tokens": len(g.ids),
                "text": g.text,
            }
        )
    return ShapeComparison(rows, plain)


VERIFY_T_MAX = max(T_VALUES)  # the passes a verification makes (k + 1 positions)
PREFILL_T = (64, 256)  # passes as long as a prompt's prefill, where compute takes over


@dataclass(frozen=True)
class ForwardTimes:
    """Milliseconds per forward pass of one model over T new positions: {T: {min, median,
    arithmetic}}, arithmetic being the least time T tokens' multiply-adds can take at the rate
    this machine's kernel reaches on weights in cache (the roofline's other roof)."""

    ms: dict[int, dict[str, float]]

    @property
    def one_ms(self) -> float:
        """A pass over one token: a plain decoding step."""
        return self.ms[min(self.ms)]["median"]

    @property
    def verify_t(self) -> int:
        """The longest pass measured that a verification makes."""
        return max(t for t in self.ms if t <= VERIFY_T_MAX)

    @property
    def verify_ratio(self) -> float:
        """How many one-token passes the longest verification pass costs."""
        return self.ms[self.verify_t]["median"] / self.one_ms

    @property
    def longest(self) -> int:
        """The longest pass measured: a prompt's prefill."""
        return max(self.ms)

    @property
    def per_position_ms(self) -> float:
        """The longest pass's time per position."""
        return self.ms[self.longest]["median"] / self.longest


def measured_forward_times(store: Store, model: Model) -> ForwardTimes | None:
    """This model's forward times if they have been measured on this server, else None."""
    return store.timings.get(model.name)


def measure_forward_times(store: Store, model: Model, repeats: int = 3) -> ForwardTimes:
    """Forward passes over T = 1..16 new positions (what verifying costs) and over a prompt's
    length (what a prefill costs), timed once per model and kept in the store."""
    if model.name not in store.timings:
        with store.lock:
            t_values = T_VALUES + PREFILL_T
            times = forward_times(model, t_values=t_values, repeats=repeats)
            rates = fma_rate(model.weights, t_values, packed=model.fast)
            fmas = fmas_per_token(model)
            for T in t_values:
                times[T]["arithmetic"] = 1000 * T * fmas / rates[T]
            store.timings[model.name] = ForwardTimes(times)
    return store.timings[model.name]


# ------------------------------------------------------------------------------------ replay


def run_from_trace_file(data: bytes) -> Run:
    """A run rebuilt from an uploaded trace; ValueError with a readable reason if it is not one."""
    try:
        d = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"This file is not JSON, so not a minispec trace ({err}).") from err
    if not isinstance(d, dict):
        raise ValueError("This JSON file is not a minispec trace (it is not an object).")
    try:
        trace = Trace.from_dict(d)
        story = story_from_trace(trace)
    except (TypeError, KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"This file is not a complete minispec trace ({err!r}).") from err
    except ValueError as err:
        raise ValueError(f"This file is not a usable minispec trace: {err}") from err
    return Run(story, "replay", str(trace.model))
