"""The Streamlit app, driven by `streamlit.testing.v1.AppTest` on the tiny random model (seconds).

MINISPEC_APP_MODEL=tiny makes the app load `tiny_model()` instead of Gemma 3 270M. The tests click
as a learner would: run, step forward and back, jump, play, replay a saved trace, upload junk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from minispec.drafters import DraftModelDrafter, make_drafter, mtp
from minispec.drafters.mtp import config_for, init_params, save_mtp
from minispec.sampling import SamplingParams
from minispec.speculative import speculative_generate
from minispec.tiny import tiny_model
from minispec.tokenizer import encode
from minispec.trace import replayed_ids, trace_json

APP = str(Path(__file__).resolve().parents[1] / "viz" / "app.py")
SHIPPED_MTP = mtp.DEFAULT_WEIGHTS  # Gemma 3 270M's (the fixture below swaps in the tiny model's)


@pytest.fixture(scope="module")
def tiny_mtp_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MTP drafter for the tiny model (untrained: the app only needs one that fits it)."""
    target = tiny_model()
    cfg = config_for(target, width=16, d_ff=32, head_size=64)
    head_ids = np.arange(cfg.head_size)
    d = target.config.hidden_size
    p = init_params(cfg, target, head_ids, np.ones(d, np.float32), np.zeros(d, np.float32), 0)
    path = tmp_path_factory.mktemp("mtp") / "tiny-mtp.safetensors"
    save_mtp(path, p, cfg, target)
    return path


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tiny_mtp_weights: Path) -> AppTest:
    monkeypatch.setenv("MINISPEC_APP_MODEL", "tiny")
    # The shipped MTP weights are Gemma 3 270M's: the tiny model's own stand in for them.
    monkeypatch.setattr(mtp, "DEFAULT_WEIGHTS", tiny_mtp_weights)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def step_title(at: AppTest) -> str:
    titles = [h.value for h in at.subheader if h.value.startswith("Step ")]
    assert len(titles) == 1, titles
    return titles[0]


def step_text(at: AppTest) -> str:
    """Everything the step panel writes as text (markdown and captions)."""
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert not at.warning, [w.value for w in at.warning]


def run_model(at: AppTest, **widgets: object) -> AppTest:
    for key, value in widgets.items():
        if key == "prompt":
            at.text_area(key="prompt").set_value(value)
        else:
            at.number_input(key=key).set_value(value)
    return at.button(key="go").click().run()


def test_starts_without_a_run(app: AppTest) -> None:
    no_errors(app)
    assert app.title[0].value == "Speculative decoding, step by step"
    assert any("press **Run**" in i.value for i in app.info)


def test_run_then_step_forward_and_back(app: AppTest) -> None:
    run_model(app, k=4)
    no_errors(app)
    n = app.session_state.run.story.n_steps
    assert n >= 2
    assert step_title(app) == f"Step 1 of {n}"
    first = step_text(app)

    app.button(key="next").click().run()
    no_errors(app)
    assert step_title(app) == f"Step 2 of {n}"
    assert step_text(app) != first  # the panel shows another step

    app.button(key="prev").click().run()
    assert step_title(app) == f"Step 1 of {n}"
    assert step_text(app) == first

    app.slider(key="jump").set_value(n).run()
    assert step_title(app) == f"Step {n} of {n}"
    assert app.button(key="next").disabled


def test_step_panel_shows_every_part_of_a_step(app: AppTest) -> None:
    run_model(app, k=3)
    text = step_text(app)
    for part in (
        "1 · The context so far",
        "2 · The drafter guesses",
        "3 · One verification pass",
        "5 · The ",
        "6 · Roll back the KV cache",
        "KV cache length:",
    ):
        assert part in text
    record = app.session_state.run.story.steps[0]
    before, after = record["kv_length_before"], record["kv_length_after"]
    assert f"**{before}** before" in text and f"**{after}** after the rollback" in text
    if record["drafted"]:
        assert "4 · Accept or reject" in text
        assert len(app.get("plotly_chart")) >= 2  # p against q, the draw, the next token
    assert "Sibling by sibling" not in text and not app.session_state.run.settings.tree


@pytest.mark.parametrize(
    "drafter, temperature, k",
    [
        ("ngram", 0.0, 4),
        ("early-exit", 0.7, 3),
        ("int8", 0.0, 2),
        ("int8", 1.0, 16),
        ("mtp", 0.0, 3),
        ("mtp", 0.8, 4),
        ("ngram+mtp", 0.0, 4),
        ("ngram+mtp", 0.7, 3),
    ],
)
def test_every_drafter_greedy_and_sampled(
    app: AppTest, drafter: str, temperature: float, k: int
) -> None:
    app.selectbox(key="drafter").set_value(drafter)
    run_model(app, temperature=temperature, k=k, n_new=20)
    no_errors(app)
    story = app.session_state.run.story
    assert story.trace.k == k and story.trace.sampling["greedy"] == (temperature == 0)
    for _ in range(min(story.n_steps, 3) - 1):
        app.button(key="next").click().run()
        no_errors(app)
    text = step_text(app)
    record = story.steps[app.session_state.step]
    if record["decisions"]:
        assert ("the top of p is" in text) == (temperature == 0)
        assert ("u = " in text) == (temperature > 0)


def tick(app: AppTest) -> AppTest:
    """A rerun as the play timer makes it, once its interval has passed."""
    app.session_state["played_at"] = 0.0
    return app.run()


def test_play_advances_and_pauses(app: AppTest) -> None:
    run_model(app)
    n = app.session_state.run.story.n_steps
    app.button(key="play").click().run()  # starts on the current step
    assert app.session_state.playing
    start = app.session_state.step
    tick(app)  # what the fragment's timer does every second or so
    tick(app)
    assert app.session_state.step == min(start + 2, n - 1)
    assert step_title(app) == f"Step {app.session_state.step + 1} of {n}"
    assert app.button(key="play").label == "Pause"
    app.button(key="play").click().run()
    assert not app.session_state.playing
    stopped = app.session_state.step
    tick(app)
    assert app.session_state.step == stopped


def test_play_stops_at_the_last_step(app: AppTest) -> None:
    run_model(app, n_new=8)
    n = app.session_state.run.story.n_steps
    app.button(key="play").click().run()
    for _ in range(n + 1):
        tick(app)
    assert app.session_state.step == n - 1
    assert not app.session_state.playing
    no_errors(app)


@pytest.mark.parametrize(
    "widgets, message",
    [
        ({"prompt": "   "}, "The prompt is empty"),
        ({"k": 0}, "k (tokens drafted per step) must be in 1..16"),
        ({"k": 17}, "k (tokens drafted per step) must be in 1..16"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top-p must be in (0, 1]"),
        ({"n_new": 0}, "New tokens must be between"),
    ],
)
def test_bad_settings_show_a_message(app: AppTest, widgets: dict, message: str) -> None:
    run_model(app, **widgets)
    assert not app.exception
    assert any(message in e.value for e in app.error), [e.value for e in app.error]
    assert app.session_state.run is None


def test_numbers_and_compare_tabs(app: AppTest) -> None:
    run_model(app, n_new=12)
    app.session_state["tab"] = "Numbers"
    app.run()
    no_errors(app)
    labels = [m.label for m in app.metric]
    assert "Acceptance rate α" in labels and "Speedup" in labels
    speedup = next(m for m in app.metric if m.label == "Speedup").value
    assert speedup.endswith("×")  # plain decoding was measured in this session

    app.session_state["tab"] = "Compare drafters"
    app.run()
    app.button(key="compare_go").click().run()
    no_errors(app)
    table = app.dataframe[0].value
    assert list(table["drafter"]) == ["ngram", "early-exit", "int8", "mtp"]


def test_numbers_show_the_prefill_and_where_compute_takes_over(app: AppTest) -> None:
    run_model(app, n_new=8)
    app.session_state["tab"] = "Numbers"
    app.run()
    stats = app.session_state.run.story.stats
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Prefill"] == f"{1000 * stats.prefill_s:.0f} ms" and stats.prefill_s > 0
    n_prompt = len(app.session_state.run.story.trace.prompt_ids)
    assert metrics["Prompt tokens per second"] == f"{n_prompt / stats.prefill_s:.0f}"
    assert metrics["Decoding"] == f"{stats.decode_s:.2f} s"
    app.button(key="bench").click().run()
    no_errors(app)
    chart = json.loads(app.get("plotly_chart")[-1].proto.spec)
    measured = chart["data"][1]
    assert measured["x"] == [1, 2, 4, 5, 8, 16, 64, 256]  # verify lengths, then prefill lengths
    assert chart["layout"]["xaxis"]["type"] == "log"
    arithmetic = chart["data"][2]  # the roof of the multiply-adds: T = 256 costs far more than 1
    assert arithmetic["x"] == measured["x"] and arithmetic["line"]["dash"] == "dot"
    assert min(arithmetic["y"]) > 0 and arithmetic["y"][-1] > 4 * arithmetic["y"][0]
    assert any("compute-bound" in c.value and "dotted" in c.value for c in app.caption)


LESSONS = Path(APP).parents[1] / "lessons"
LEARN_MORE = re.compile(r"Learn more: `lessons/([^`]+\.ipynb)`")


def in_order(node: object) -> list:
    """The page's elements in the order they are drawn (a depth-first walk of the tree)."""
    children = getattr(node, "children", None)
    if children is None:
        return [node]
    return [leaf for key in sorted(children) for leaf in in_order(children[key])]


def lessons_by_panel(at: AppTest) -> dict[str, list[str]]:
    """Each panel heading (#### ...) on the page -> the lessons its explanation names."""
    named, heading = {}, None
    for el in in_order(at.main):
        kind, value = getattr(el, "type", ""), str(getattr(el, "value", ""))
        if kind == "markdown" and value.startswith("#### "):
            heading = value
            named[heading] = []
        elif kind == "caption" and heading is not None:
            named[heading] += LEARN_MORE.findall(value)
            heading = None  # only the caption right under the heading explains it
    return named


@pytest.mark.parametrize("temperature, rule", [(0.0, "03_greedy"), (0.8, "04_speculative_samp")])
def test_each_panel_names_the_lesson_that_explains_it(
    app: AppTest, temperature: float, rule: str
) -> None:
    app.selectbox(key="drafter").set_value("int8")  # it drafts in every step, so panel 4 shows
    run_model(app, k=3, temperature=temperature)
    no_errors(app)
    step_panels = lessons_by_panel(app)
    assert any(h.startswith("#### 4 · ") for h in step_panels)
    app.session_state["tab"] = "Numbers"
    app.run()
    numbers = lessons_by_panel(app)
    app.session_state["tab"] = "Compare drafters"
    app.run()
    compare = [LEARN_MORE.findall(c.value) for c in app.caption]
    assert ["05_drafters_and_speedup.ipynb"] in compare
    for heading, lessons in {**step_panels, **numbers}.items():
        assert len(lessons) == 1, f"panel {heading!r} names no lesson (or several): {lessons}"
        assert (LESSONS / lessons[0]).is_file(), f"{heading!r} names a missing {lessons[0]}"
    for number in (4, 5):  # the rule's panels: the greedy rule or speculative sampling
        (lesson,) = next(v for h, v in step_panels.items() if h.startswith(f"#### {number} · "))
        assert lesson.startswith(rule), (number, lesson)
    shown = {lesson for lessons in {**step_panels, **numbers}.values() for lesson in lessons}
    assert {"02_memory_bound.ipynb", "05_drafters_and_speedup.ipynb"} <= shown


def saved_trace(tmp_path: Path) -> tuple[Path, object]:
    model = tiny_model()
    ids = encode(model.tokenizer, "the trace of a run; the trace of a run")
    g = speculative_generate(model, ids, make_drafter("ngram", model), k=3, max_new_tokens=16)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(g.trace.to_dict()))
    return path, g


def trace_bytes(model: object, drafter: object) -> bytes:
    """A greedy run of `model` with this drafter, saved as the app's download saves it."""
    ids = encode(model.tokenizer, "the words of each drafter; the words of each drafter")
    g = speculative_generate(model, ids, drafter, k=3, max_new_tokens=12)
    return trace_json(g.trace).encode()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.radio(key="mode").set_value("Replay a trace file").run()
    at.file_uploader(key="upload").set_value((name, data, "application/json"))
    return at.run()


def test_saved_trace_replays_without_the_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path, g = saved_trace(tmp_path)
    # A model the app could not load: replay must not need one.
    monkeypatch.setenv("MINISPEC_APP_MODEL", str(tmp_path / "no-such-model"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["mode"] = "Replay a trace file"
    at.run()
    no_errors(at)
    at.file_uploader(key="upload").upload("run.json", path.read_bytes(), "application/json")
    at.run()
    no_errors(at)
    run = at.session_state.run
    assert run.source == "replay"
    assert [t.token for t in run.story.new] == g.ids
    n = len(g.trace.steps)
    assert step_title(at) == f"Step 1 of {n}"
    at.button(key="next").click().run()
    assert step_title(at) == f"Step 2 of {n}"
    at.session_state["tab"] = "Numbers"
    at.run()
    no_errors(at)
    alpha = next(m for m in at.metric if m.label == "Acceptance rate α").value
    assert alpha == f"{g.stats.alpha:.0%}"


def test_downloaded_trace_loads_back(app: AppTest) -> None:
    from viz.runs import run_from_trace_file

    run_model(app, n_new=10)
    run = app.session_state.run
    again = run_from_trace_file(trace_json(run.story.trace).encode())
    assert [t.token for t in again.story.new] == [t.token for t in run.story.new]
    assert again.story.steps == run.story.steps


def test_the_run_downloads_as_a_trace_and_as_a_web_page(app: AppTest) -> None:
    """Both downloads sit side by side; the web page is `replay_html` of the run's trace."""
    from minispec.replay_html import replay_html

    run_model(app, n_new=10)
    no_errors(app)
    labels = [b.label for b in app.download_button]
    assert labels == ["Download the trace", "Download as a web page"]
    page = replay_html(app.session_state.run.story.trace)
    assert page.startswith("<!DOCTYPE html>") and "minispec-data" in page


DRAFTER_KINDS = [  # each kind of drafter a trace can name, and how panel 2 must introduce it
    ("ngram", "The **n-gram drafter**"),
    ("early-exit", "The **early-exit drafter**"),
    ("int8", "The **int8 drafter**"),
    ("model", "The **draft model**"),
    ("mtp", "The **MTP drafter**"),
    ("none", "**No drafter**"),
]


@pytest.mark.parametrize("kind, words", DRAFTER_KINDS)
def test_a_replayed_trace_explains_its_own_drafter(app: AppTest, kind: str, words: str) -> None:
    target = tiny_model()
    if kind == "model":  # what make_drafter("model:PATH") builds, without a checkpoint on disk
        drafter = DraftModelDrafter(tiny_model(seed=1))
    else:
        drafter = make_drafter(kind, target)  # "none": None, plain decoding steps
    upload(app, f"{kind}.json", trace_bytes(target, drafter))
    no_errors(app)
    assert app.session_state.run.source == "replay"
    shown = [c.value for c in app.caption]
    others = [w for k, w in DRAFTER_KINDS if k != kind]
    assert any(c.startswith(words) for c in shown), shown
    assert not any(w in c for c in shown for w in others), shown


def test_the_drafter_choice_offers_mtp_and_says_what_it_reads(app: AppTest) -> None:
    box = app.selectbox(key="drafter")
    assert "mtp" in box.options
    assert "hidden state" in box.help and "KV cache" in box.help
    box.set_value("mtp")
    run_model(app, k=3, n_new=16)
    no_errors(app)
    story = app.session_state.run.story
    assert story.trace.drafter == "mtp" and story.n_steps >= 1
    assert len(story.steps[0]["drafted"]) == 3  # it always has a guess (fewer only near the end)
    words = next(c.value for c in app.caption if c.value.startswith("The **MTP drafter**"))
    for fact in ("**hidden state**", "**KV cache**", "needs none of its own", "nothing to roll"):
        assert fact in words


def test_the_drafter_choice_lists_exactly_the_registry(app: AppTest) -> None:
    """Every drafter the package lists that needs no file named, each with its line of words."""
    from minispec.drafters import DRAFTER_SPECS, drafter_summary

    box = app.selectbox(key="drafter")
    assert box.options == [s for s in DRAFTER_SPECS if s != "none" and ":" not in s]
    assert "ngram+mtp" in box.options
    for spec in box.options:
        assert f"**{spec}**: {drafter_summary(spec)}" in box.help


def test_a_replayed_trace_is_explained_by_its_spec_not_its_name(app: AppTest) -> None:
    target = tiny_model()
    d = json.loads(trace_bytes(target, make_drafter("early-exit", target)))
    assert d["drafter_spec"] == "early-exit"
    d["drafter"] = "a name no kind of drafter reports"
    upload(app, "renamed.json", json.dumps(d).encode())
    no_errors(app)
    assert any(c.value.startswith("The **early-exit drafter**") for c in app.caption)
    del d["drafter_spec"]  # an older trace: its name is all there is
    upload(app, "older.json", json.dumps(d).encode())
    no_errors(app)
    assert any(c.value.startswith("The drafter a name no kind") for c in app.caption)


def test_a_replayed_fallback_trace_explains_both_drafters(app: AppTest) -> None:
    target = tiny_model()
    upload(app, "ngram+mtp.json", trace_bytes(target, make_drafter("ngram+mtp", target)))
    no_errors(app)
    shown = [c.value for c in app.caption]
    assert any(
        c.startswith("The **n-gram drafter**") and "The **MTP drafter**" in c for c in shown
    ), shown


def test_mtp_weights_made_for_another_model_show_a_message(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped weights refuse the tiny model: the page says so and how to train one."""
    monkeypatch.setattr(mtp, "DEFAULT_WEIGHTS", SHIPPED_MTP)
    st.cache_resource.clear()  # the server's store may hold a tiny mtp drafter from another test
    app.selectbox(key="drafter").set_value("mtp")
    run_model(app, n_new=8)
    assert not app.exception
    assert any("train-mtp" in e.value for e in app.error), [e.value for e in app.error]
    assert app.session_state.run is None


def test_a_step_cut_short_by_eos_shows_only_what_it_emitted(app: AppTest) -> None:
    target = tiny_model()
    d = json.loads(trace_bytes(target, make_drafter("int8", target)))
    i = next(i for i, r in enumerate(d["steps"]) if r["accepted"] >= 2)
    d["steps"] = d["steps"][: i + 1]  # as if the step's first accepted draft were <eos>
    d["steps"][i]["emitted"] = d["steps"][i]["emitted"][:1]
    d["steps"][i]["emitted_text"] = None
    upload(app, "eos.json", json.dumps(d).encode())
    no_errors(app)
    story = app.session_state.run.story
    assert [t.token for t in story.new] == replayed_ids(story.trace)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\xff not text", "not JSON"),
        (b"{ half an object", "not JSON"),
        (b"[1, 2, 3]", "not a minispec trace"),
        (b'{"format": "something-else"}', "not a minispec trace"),
        (b'{"format": "minispec-trace", "version": 1}', "not a complete minispec trace"),
    ],
)
def test_a_file_that_is_not_a_trace_shows_an_error(app: AppTest, data: bytes, message: str) -> None:
    upload(app, "bad.json", data)
    assert not app.exception
    assert any(message in e.value for e in app.error), [e.value for e in app.error]
    assert app.session_state.run is None


def test_a_trace_with_mangled_steps_shows_an_error(app: AppTest, tmp_path: Path) -> None:
    path, _ = saved_trace(tmp_path)
    d = json.loads(path.read_text())
    d["steps"][1]["emitted"] = [0, 0, 0, 0, 0, 0]  # does not follow from the decisions
    upload(app, "mangled.json", json.dumps(d).encode())
    assert not app.exception
    assert any("not a usable minispec trace" in e.value for e in app.error)
    del d["steps"][1]["target"]
    upload(app, "missing.json", json.dumps(d).encode())
    assert not app.exception
    assert app.error
    d = json.loads(path.read_text())
    d["sampling"] = "hot"
    upload(app, "header.json", json.dumps(d).encode())
    assert not app.exception
    assert any("'sampling' must hold" in e.value for e in app.error)


def test_a_model_that_cannot_load_shows_a_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MINISPEC_APP_MODEL", str(tmp_path / "no-such-model"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert any("could not be loaded" in e.value for e in at.error)


def test_presets_fill_the_prompt_and_own_text_keeps_it(app: AppTest) -> None:
    app.selectbox(key="preset").set_value("A list").run()
    assert app.text_area(key="prompt").value.startswith("The planets")
    app.text_area(key="prompt").set_value("Once upon a time").run()
    app.selectbox(key="preset").set_value("Your own text").run()
    assert app.text_area(key="prompt").value == "Once upon a time"
    run_model(app, n_new=6)
    assert app.session_state.run.story.prompt_text.endswith("Once upon a time")


# The app reads only minispec's public API: these names, nothing from model, kv_cache, kernels.
PUBLIC = {
    "minispec.drafters": {
        "DRAFTER_SPECS",
        "drafter_summary",
        "drafter_words",
        "make_drafter",
        "spec_from_name",
    },
    "minispec.generate": {"generate"},
    "minispec.loading": {"load_model"},
    "minispec.measure": {"PROMPTS"},  # the benchmark's prompts: the prose preset
    "minispec.model": {"Model"},  # for type hints only
    "minispec.palette": {"COLOURS", "NAMES", "NODE_COLOURS", "SECTIONS", "TINTS", "VERDICTS"},
    "minispec.replay_html": {"replay_html"},
    "minispec.roofline": {"T_VALUES", "fma_rate", "fmas_per_token", "forward_times"},
    "minispec.sampling": {"SamplingParams"},
    "minispec.speculative": {"speculative_generate"},
    "minispec.stats": {"Stats", "expected_tokens_per_forward"},
    "minispec.story": {  # a trace read as the page shows it (also the replay page's)
        "Story",
        "Token",
        "draft_fate",
        "step_summary",
        "story_from_trace",
        "token_label",
        "tree_budget",
        "tree_summary",
    },
    "minispec.tiny": {"tiny_model"},
    "minispec.tokenizer": {"encode", "decode"},
    "minispec.trace": {
        "STEP_FIELDS",
        "ReplayStep",
        "Trace",
        "replay",
        "stats_from_trace",
        "trace_json",
    },
}


@pytest.mark.parametrize("path", sorted((Path(APP).parent).glob("*.py")), ids=lambda p: p.name)
def test_the_app_uses_only_the_public_api(path: Path) -> None:
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("minispec") for a in node.names), path
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minispec"):
            names = {a.name for a in node.names}
            assert names <= PUBLIC.get(node.module, set()), (path.name, node.module, names)


def test_a_run_of_one_token_has_no_steps_and_still_shows(app: AppTest) -> None:
    run_model(app, n_new=1)
    no_errors(app)
    assert app.session_state.run.story.n_steps == 0
    assert any("no speculative steps" in i.value for i in app.info)
    app.session_state["tab"] = "Numbers"
    app.run()
    no_errors(app)


# ------------------------------------------------------------------------------ token trees


def ancestors(parents: list[int], node: int) -> list[int]:
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def tree_block(r: dict, newest: int, greedy: bool, vocab: int) -> dict:
    """A chain step record's "tree" block, as the tree loop writes one: the chain's drafts are
    one branch, and each node of it gets one more candidate, a sibling listed after it. Nodes
    are numbered depth by depth (d_1, its sibling, d_2, its sibling, ...), so the accepted path
    is not the first nodes and the compaction has rows to move."""
    drafted, j, decisions = r["drafted"], r["accepted"], r["decisions"]
    nodes = [{"node": 0, "token": newest, "text": None, "parent": None, "depth": 0}]
    nodes[0].update(q=None, p=None, verdict="accepted")
    chain_nodes, siblings = [0], []
    for i, d in enumerate(drafted):  # d_{i+1}, child of the chain's node at depth i
        parent = chain_nodes[-1]
        rejected_here = i == j and i < len(decisions)  # the chain's first rejection
        p = decisions[i]["p"] if i < len(decisions) else 0.3
        verdict = "accepted" if i < j else "rejected" if rejected_here else "untried"
        child = {"token": d["token"], "text": d["text"], "p": p, "q": d["q"], "verdict": verdict}
        other = (d["token"] + 1) % vocab  # a second candidate, never kept
        sibling = {"token": other, "text": None, "p": 0.01, "q": 0.2}
        sibling["verdict"] = "rejected" if rejected_here else "untried"
        for entry in (child, sibling):
            entry.update(node=len(nodes), parent=parent, depth=i + 1)
            nodes.append(entry)
        chain_nodes.append(child["node"])
        if i <= j and verdict != "untried":
            trials = []
            for entry in (child, sibling)[: 1 if verdict == "accepted" else 2]:
                kept = entry["verdict"] == "accepted"
                a = float(kept) if greedy else min(1.0, entry["p"] / entry["q"])
                u = None if greedy else (0.0 if entry["verdict"] == "accepted" else (1 + a) / 2)
                trials.append(
                    {
                        "node": entry["node"],
                        "token": entry["token"],
                        "p": entry["p"],
                        "q": entry["q"],
                        "accept_probability": a,
                        "u": u,
                        "accepted": entry["verdict"] == "accepted",
                        "residual_top": None
                        if greedy or entry["verdict"] == "accepted"
                        else [{"token": r["next_token"]["token"], "text": None, "prob": 0.6}],
                    }
                )
            siblings.append({"node": parent, "trials": trials})
    parents = [-1] + [n["parent"] for n in nodes[1:]]
    path = chain_nodes[: j + 1]
    mask = [
        [int(c in ancestors(parents, row)) for c in range(len(nodes))] for row in range(len(nodes))
    ]
    base = r["kv_length_before"]
    moved = [[base + node, base + at] for at, node in enumerate(path) if node != at]
    kv = {"before": base, "written": len(nodes), "after": base + len(path), "moved": moved}
    proposal = "top" if greedy else "sampled"
    return {
        "proposal": proposal,
        "nodes": nodes,
        "mask": mask,
        "path": path,
        "siblings": siblings,
        "kv": kv,
    }


def tree_trace(greedy: bool) -> dict:
    """A run of the tiny model recorded as a tree run: every step with its "tree" block."""
    from minispec.trace import Trace, replay

    model = tiny_model()
    ids = encode(model.tokenizer, "the words of a tree; the words of a tree")
    sampling = SamplingParams(0.0 if greedy else 0.8, 0, 1.0)
    g = speculative_generate(
        model,
        ids,
        make_drafter("early-exit", model),
        k=3,
        max_new_tokens=16,
        sampling=sampling,
        seed=1,
    )
    d = g.trace.to_dict()
    vocab = model.config.vocab_size
    for s in replay(Trace.from_dict(d)):
        s.record["tree"] = tree_block(s.record, s.context[-1], greedy, vocab)
    d["tree"] = 2 * 3
    return d


def tree_html(at: AppTest) -> str:
    """The tree drawing's HTML (the one html element that holds an svg)."""
    drawings = [h.proto.body for h in at.html if 'class="ms-tree"' in h.proto.body]
    assert len(drawings) == 1, len(drawings)
    return drawings[0]


def check_tree_step(at: AppTest, record: dict) -> None:
    """The step on show draws this record's tree: every node, the path, the mask, the trials."""
    t = record["tree"]
    n = len(t["nodes"])
    text = step_text(at)
    for part in (
        f"2 · The drafter's tree: {n - 1} node{'s' if n != 2 else ''}",
        "3 · One pass over the tree, and its mask",
        "4 · Sibling by sibling",
        "6 · Compact the KV cache",
    ):
        assert part in text, part
    assert "1 · The context so far" in text and "Accept or reject, guess by guess" not in text
    drawing = tree_html(at)
    assert drawing.count('class="ms-node') == n  # every node, the root included
    assert drawing.count('class="ms-node ms-path"') == len(t["path"])
    assert drawing.count('class="ms-next"') == 1  # the target's own token after the path
    (mask,) = [
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap"
    ]
    z = mask["data"][0]["z"]
    assert len(z) == n and all(len(row) == n for row in z)
    assert [[int(v > 0) for v in row] for row in z] == t["mask"]
    assert mask["data"][0]["y"][0].startswith("0 ")  # rows and columns labelled by tokens
    tried = [trial for group in t["siblings"] for trial in group["trials"]]
    tables = [df.value for df in at.dataframe]
    assert len(tables) == (1 if tried else 0)  # one table down the path, if anything was tried
    table = tables[0] if tried else {"verdict": []}
    assert len(table["verdict"]) == len(tried)
    assert list(table["verdict"]) == [
        "kept" if trial["accepted"] else "rejected" for trial in tried
    ]
    kv = t["kv"]
    assert (
        f"**{kv['before']}** before → **{kv['before'] + kv['written']}** after verifying → "
        f"**{kv['after']}** after the compaction" in text
    )


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_a_tree_trace_replays_with_its_tree(app: AppTest, greedy: bool) -> None:
    d = tree_trace(greedy)
    upload(app, "tree.json", json.dumps(d).encode())
    no_errors(app)
    story = app.session_state.run.story
    assert story.n_steps >= 2
    assert any("a tree of up to 6 nodes" in m.value for m in app.markdown)
    for i in range(story.n_steps):
        assert step_title(app) == f"Step {i + 1} of {story.n_steps}"
        check_tree_step(app, story.steps[i])
        tree_panels = tuple(f"#### {n} · " for n in range(2, 7))  # the tree to the compaction
        named = {h: v for h, v in lessons_by_panel(app).items() if h.startswith(tree_panels)}
        assert named and all(v == ["06_token_trees.ipynb"] for v in named.values()), named
        charts = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
        draws = [c for c in charts if "line-ns-open" in json.dumps(c["data"])]
        assert len(draws) == (0 if greedy else 1)  # every u drawn, in one chart
        if draws:
            tried = [tr for g in story.steps[i]["tree"]["siblings"] for tr in g["trials"]]
            assert draws[0]["data"][-1]["x"] == [tr["u"] for tr in tried][::-1]
        if i < story.n_steps - 1:
            app.button(key="next").click().run()
            no_errors(app)
    moved = [m for r in story.steps for m in r["tree"]["kv"]["moved"]]
    assert moved, "the synthetic trees put the path off the first rows: rows must move"


def test_a_tree_record_that_does_not_add_up_shows_an_error(app: AppTest) -> None:
    d = tree_trace(greedy=True)
    d["steps"][0]["tree"]["mask"] = d["steps"][0]["tree"]["mask"][:-1]
    upload(app, "tree.json", json.dumps(d).encode())
    assert not app.exception
    assert any("mask" in e.value for e in app.error), [e.value for e in app.error]
    d = tree_trace(greedy=True)
    d["steps"][0]["tree"]["path"] = [0, 2]  # node 2 is the first node's sibling, rejected
    upload(app, "tree.json", json.dumps(d).encode())
    assert any("accepted path" in e.value for e in app.error), [e.value for e in app.error]


def test_the_default_draft_shape_is_the_chain(app: AppTest) -> None:
    assert app.radio(key="shape").value == "Chain"
    assert not [n for n in app.number_input if n.key == "nodes"]  # the tree's N appears with it
    app.radio(key="shape").set_value("Tree").run()
    nodes = app.number_input(key="nodes")
    assert nodes.value == 8 and nodes.min == 4 and nodes.max == 16


def test_a_tree_setting_out_of_range_is_refused() -> None:
    from viz.runs import Settings, check_settings

    for n in (3, 17):
        with pytest.raises(ValueError, match="4 to 16 nodes"):
            check_settings(Settings("text", "ngram", 4, 0.0, 1.0, 0, 8, tree=n))
    check_settings(Settings("text", "ngram", 4, 0.0, 1.0, 0, 8, tree=4))


@pytest.mark.parametrize("drafter, temperature", [("int8", 0.0), ("int8", 0.8), ("ngram", 0.0)])
def test_a_tree_run_shows_its_tree(app: AppTest, drafter: str, temperature: float) -> None:
    app.radio(key="shape").set_value("Tree").run()
    app.selectbox(key="drafter").set_value(drafter)
    app.number_input(key="nodes").set_value(6)
    run_model(app, temperature=temperature, n_new=16)
    no_errors(app)
    run = app.session_state.run
    assert run.settings.tree == 6
    trees = [r["tree"] for r in run.story.steps if r.get("tree") is not None]
    assert trees and all(len(t["nodes"]) - 1 <= 6 for t in trees)
    for i, r in enumerate(run.story.steps[:3]):
        if r.get("tree") is not None:
            check_tree_step(app, r)
        if i < run.story.n_steps - 1:
            app.button(key="next").click().run()
            no_errors(app)


def test_numbers_compare_a_tree_with_a_chain(app: AppTest) -> None:
    run_model(app, k=3, n_new=12)
    app.session_state["tab"] = "Numbers"
    app.run()
    no_errors(app)
    app.button(key="shapes_go").click().run()
    no_errors(app)
    table = next(df.value for df in app.dataframe if "draft shape" in df.value.columns)
    assert list(table["draft shape"]) == ["a chain of k = 3", "a tree of 8 nodes"]
    assert all(table["tokens/s"] > 0) and all(table["tokens / forward (τ)"] >= 1)
    app.run()  # kept: shown again without running anything
    assert any("draft shape" in df.value.columns for df in app.dataframe)
