"""minispec's app: speculative decoding on Gemma 3 270M, one decision at a time.

    streamlit run viz/app.py

MINISPEC_APP_MODEL=tiny runs it on a tiny random model (what the tests do); a recorded trace
replays without any model. The page reads only minispec's public API and its trace.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `viz` (and `minispec`) from a clone

import streamlit as st  # noqa: E402

from minispec.drafters import drafter_summary  # noqa: E402
from minispec.measure import PROMPTS  # noqa: E402
from minispec.replay_html import replay_html  # noqa: E402
from minispec.story import tree_budget  # noqa: E402
from minispec.trace import trace_json  # noqa: E402
from viz import look, panels, runs  # noqa: E402

PRESETS = {
    "Code to edit": (
        "def mean(values):\n"
        '    """Return the arithmetic mean of a list of numbers."""\n'
        "    total = 0.0\n"
        "    for value in values:\n"
        "        total += value\n"
        "    return total / len(values)\n"
        "\n\n"
        "# The same function, renamed to average:\n"
        "def average(values):\n"
    ),
    "A list": "The planets of the solar system, in order from the Sun:\n1. Mercury\n2. Venus\n3.",
    "Prose": PROMPTS["prose"],
    "A repeated passage": (
        "Copy the passage exactly.\n\n"
        "Passage: The river rises in the hills, runs past the old mill and the stone bridge, and "
        "reaches the sea at the harbour town.\n\n"
        "Copy: The river rises in the hills,"
    ),
    "Your own text": "",
}

st.set_page_config(page_title="minispec · speculative decoding", page_icon="🔭", layout="wide")
st.html(look.CSS)
state = st.session_state
state.setdefault("run", None)  # the Run on show
state.setdefault("step", 0)  # its step on show (0-based)
state.setdefault("playing", False)
state.setdefault("plain", {})  # plain decoding tokens/s, per (model, prompt, settings)
state.setdefault("compare", {})  # drafter comparisons, per (model, settings)
state.setdefault("shapes", {})  # a tree against a chain, per (model, chain, tree settings)
state.setdefault("prompt", PRESETS["Code to edit"])


@st.cache_resource(show_spinner=False)
def server_store() -> runs.Store:
    """The model, drafters and forward timings, shared by every visitor of this server."""
    return runs.Store()


def use_preset() -> None:
    # Only the preset box writes into the prompt box, never the other way round: a callback that
    # changed the preset when the text was edited raced the browser and lost the user's text.
    if state.preset != "Your own text":
        state.prompt = PRESETS[state.preset]


def show_run(run: runs.Run) -> None:
    state.run, state.step, state.playing = run, 0, False


# ------------------------------------------------------------------------------- the sidebar

with st.sidebar:
    st.markdown("### minispec")
    mode = st.radio("Source", ["Run the model", "Replay a trace file"], key="mode", horizontal=True)
    go = False
    if mode == "Run the model":
        st.selectbox("Prompt", list(PRESETS), key="preset", on_change=use_preset)
        st.text_area(
            "Prompt text",
            key="prompt",
            height=170,
            label_visibility="collapsed",
        )
        drafter = st.selectbox(
            "Drafter",
            list(runs.OFFERED),
            key="drafter",
            help="\n".join(f"- **{spec}**: {drafter_summary(spec)}" for spec in runs.OFFERED),
        )
        shape = st.radio(
            "Draft shape",
            ["Chain", "Tree"],
            key="shape",
            horizontal=True,
            help="A chain: k guesses in a row. A tree: up to N guesses, several candidates where "
            "the drafter is unsure; the target checks every path in the same one pass.",
        )
        if shape == "Tree":
            nodes = st.number_input(
                "N, tree nodes per step",
                min_value=runs.TREE_NODES[0],
                max_value=runs.TREE_NODES[-1],
                value=runs.TREE_DEFAULT,
                step=1,
                key="nodes",
                help=f"{runs.TREE_NODES[0]} to {runs.TREE_NODES[-1]}",
            )
        a, b = st.columns(2)
        k = a.number_input(
            "k, guesses per step",
            value=4,
            step=1,
            key="k",
            help="1 to 16"
            if shape == "Chain"
            else "1 to 16. A tree run does not use k: the Numbers tab compares the tree with the "
            "chain of k.",
        )
        n_new = b.number_input("New tokens", value=24, step=8, key="n_new")
        temperature = a.number_input(
            "Temperature", value=0.7, step=0.1, key="temperature", help="0 = greedy"
        )
        top_p = b.number_input("Top-p", value=0.95, step=0.05, key="top_p", help="(0, 1], 1 = off")
        seed = a.number_input("Seed", value=0, step=1, key="seed")
        go = st.button("Run", type="primary", key="go", width="stretch")
        settings = runs.Settings(
            state.prompt,
            drafter,
            int(k),
            float(temperature),
            float(top_p),
            int(seed),
            int(n_new),
            int(nodes) if shape == "Tree" else None,
        )
    else:
        upload = st.file_uploader("A trace saved from this app (JSON)", type=["json"], key="upload")
        if upload is not None and state.get("upload_id") != upload.file_id:
            state.upload_id = upload.file_id
            try:
                show_run(runs.run_from_trace_file(upload.getvalue()))
                state.upload_error = None
            except ValueError as err:
                state.upload_error = str(err)
        if upload is None:
            state.upload_id, state.upload_error = None, None
        if state.get("upload_error"):
            st.error(state.upload_error)
    st.select_slider("Seconds per step when playing", [0.5, 1.0, 2.0, 3.0], value=1.0, key="speed")

# ------------------------------------------------------------------------------- the page

st.title("Speculative decoding, step by step")
st.markdown(
    "A language model writes one token per forward pass, and every pass reads all of the "
    "model's weights. **Speculative decoding** lets a cheap *drafter* guess the next k tokens, "
    "then the real model, the *target* (here Gemma 3 270M), checks all k guesses in **one** pass. "
    "It keeps the guesses it agrees with and replaces the first one it does not, so the text "
    "follows exactly the target's own distribution (greedy: it is the very same text), for fewer "
    "passes."
)
st.html(look.legend())
GUIDE = (
    "1. Pick a prompt and a drafter in the sidebar and press **Run**: Gemma writes a "
    "continuation while the drafter guesses ahead.\n"
    "2. Each **step** is one round. The drafter guesses k tokens (amber). Gemma checks all of "
    "them in a single forward pass and keeps the guesses it agrees with (green). Then it adds "
    "one token of its own: a **correction** (blue) where it disagreed, or a **bonus** (purple) "
    "when it agreed with every guess. So each step adds at least one token, often several.\n"
    "3. **Next step**, **Previous step** and **Play** walk through the steps; panels 1 to 6 "
    "show each part of a step in the order it happens.\n"
    "4. **Numbers** shows what this saved, measured live on this machine; **Compare "
    "drafters** runs each drafter on your prompt.\n"
    "5. **Download the trace** to replay this run later, anywhere, without the model, or "
    "**Download as a web page** to share it as one file that opens in any browser."
)
guide = st.empty()  # filled once we know whether there is a run to show

store = server_store()
model = None
if mode == "Run the model":
    choice = runs.model_choice()
    if choice not in store.models:
        bar = st.progress(0.0, text="Loading the model: reading its weights…")
        note = st.caption(
            "The first start on a machine converts the packaged weights and compiles the "
            "kernels, which takes a while; later starts read both from disk in seconds."
        )
        started: dict[str, float] = {}  # when each stage began, for its time left

        def progress(what: str, done: int, total: int) -> None:
            t0 = started.setdefault(what, time.perf_counter() - 1e-9)
            left = (time.perf_counter() - t0) / done * (total - done)
            bar.progress(
                done / max(total, 1),
                text=f"Loading the model: {what} {done} of {total}"
                + (f", about {left:.0f} s left" if done < total and left >= 1 else ""),
            )

        try:
            model = runs.get_model(store, choice, progress)
        except Exception as err:  # shown in the page, never as a traceback
            st.error(f"The model could not be loaded: {err}")
            st.stop()
        bar.empty()
        note.empty()
    model = runs.get_model(store, choice, progress=None)  # loaded: returns at once

    if go:
        slot = st.empty()
        try:
            runs.check_settings(settings)
            with slot.status(
                f"Decoding with the {settings.drafter} drafter ({settings.shape}), then without "
                "one for the speedup…",
                expanded=True,
            ):
                live = st.empty()
                run = runs.run_speculative(
                    store, model, settings, on_text=lambda text: live.code(text, language=None)
                )
                run.plain_tokens_per_s = runs.plain_speed(store, model, settings, state.plain)
            show_run(run)
        except ValueError as err:  # a setting the engine refuses: its message says what to change
            st.error(str(err))
        except Exception as err:  # anything else: a message in the page, never a traceback
            st.error(f"The run failed: {type(err).__name__}: {err}")
        finally:
            slot.empty()

run: runs.Run | None = state.run
if run is None:  # the first visit: the guide in full; afterwards one click away
    guide.container(border=True).markdown("**How to read this page**\n\n" + GUIDE)
else:
    guide.expander("How to read this page").markdown(GUIDE)
if run is None:
    st.info(
        "Pick a prompt and a drafter in the sidebar and press **Run**, or replay a trace file. "
        "Then step through the decoding one draft-and-check at a time."
    )
    st.stop()

story = run.story
head, download = st.columns([4, 1])
s = story.trace.sampling
budget = tree_budget(story.trace)
head.markdown(
    f"**{runs.model_title(run.model_name)}** · drafter **{story.trace.drafter}** · "
    + (f"a tree of up to {budget} nodes · " if budget else f"k = {story.trace.k} · ")
    + ("greedy" if s["greedy"] else f"temperature {s['temperature']:g}, top-p {s['top_p']:g}")
    + f" · seed {story.trace.seed} · {len(story.new)} new tokens in {story.n_steps} steps"
    + (" · *replayed from a trace file*" if run.source == "replay" else "")
)
download.download_button(
    "Download the trace",
    lambda: trace_json(story.trace),  # made when clicked
    file_name="minispec-trace.json",
    mime="application/json",
    on_click="ignore",
    key="download",
)
download.download_button(
    "Download as a web page",
    lambda: replay_html(story.trace),  # made when clicked: opens offline, no Python needed
    file_name="minispec-replay.html",
    mime="text/html",
    on_click="ignore",
    key="download_html",
)

# The tabs keep their selection across reruns (key) and only the open one runs (on_change).
tab_steps, tab_numbers, tab_compare = st.tabs(
    ["Step by step", "Numbers", "Compare drafters"], key="tab", on_change="rerun"
)
if tab_steps.open:
    with tab_steps:
        panels.stepper(story)
if tab_numbers.open:
    with tab_numbers:
        panels.numbers(run)
        times = None if model is None else runs.measured_forward_times(store, model)
        if panels.forward_time_section(times, has_model=model is not None):
            with st.spinner("Timing forward passes over T = 1 to 256 positions…"):
                times = runs.measure_forward_times(store, model)
            panels.forward_time_chart(times)
        shown = run.settings if model is not None else None  # the run's own prompt, settings
        if panels.shape_section(model is not None, shown):
            slot = st.empty()
            try:
                with slot.status("Plain decoding, the baseline…") as box:
                    state.shapes[runs.shape_key(model, shown)] = runs.compare_shapes(
                        store,
                        model,
                        shown,
                        state.plain,
                        on_start=lambda what: box.update(label=f"Decoding with {what}…"),
                    )
            except ValueError as err:  # a setting the engine refuses
                st.error(str(err))
            finally:
                slot.empty()
        if shown is not None and runs.shape_key(model, shown) in state.shapes:
            panels.shape_comparison(state.shapes[runs.shape_key(model, shown)])
if tab_compare.open:
    with tab_compare:
        if model is None:
            st.info("Comparing drafters runs the model: choose **Run the model** in the sidebar.")
        else:
            specs, pressed = panels.compare_controls()
            key = runs.comparison_key(model, settings, specs)
            if pressed:
                slot = st.empty()
                try:
                    with slot.status("Plain decoding, the baseline…") as box:
                        state.compare[key] = runs.compare_drafters(
                            store,
                            model,
                            settings,
                            specs,
                            state.plain,
                            on_start=lambda spec: box.update(
                                label=f"Decoding with the {spec} drafter…"
                            ),
                        )
                except (ValueError, OSError) as err:  # e.g. a drafter's weights that do not fit
                    st.error(str(err))
                finally:
                    slot.empty()
            if key in state.compare:
                panels.comparison(state.compare[key])
