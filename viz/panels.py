"""The page's panels, each with its short plain-language explanation beside it.

Every panel draws from a `Run` (its `Story`, rebuilt from the trace) and from numbers `runs`
measured in this session; none reaches into the model or measures anything. A panel with a
button returns whether it was pressed, and the page does the work.
"""

from __future__ import annotations

import time

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from minispec.drafters import drafter_words, spec_from_name
from minispec.palette import SECTIONS, VERDICTS
from minispec.story import Story, draft_fate, step_summary, token_label, tree_summary
from minispec.trace import Trace
from viz import charts, look, runs
from viz.runs import Run


def drafter_explanation(trace: Trace) -> str:
    """What the trace's drafter is, in plain words: from the spec that built it, or for a trace
    that records none (an older one, or a drafter built by hand), from its kind of name."""
    spec = trace.drafter_spec or spec_from_name(trace.drafter)
    return drafter_words(spec) if spec else f"The drafter {trace.drafter}."


def learn_more(words: str, lesson: str) -> str:
    """A panel's words, then the lesson notebook that explains it (a path: no network needed)."""
    return f"{words}  \nLearn more: `lessons/{lesson}.ipynb`"


def rule_lesson(greedy: bool) -> str:
    """The lesson of the acceptance rule this run used."""
    return "03_greedy_speculative" if greedy else "04_speculative_sampling"


TREE_LESSON = "06_token_trees"  # every panel of a tree step: its tree, mask, siblings, compaction


def section(number: int, title: str, words: str, lesson: str) -> None:
    st.markdown(f"#### {number} · {title}")
    st.caption(learn_more(words, lesson))


# ------------------------------------------------------------------------------ the step view

QUIET = {"displayModeBar": False}  # plotly charts without their toolbar


def step_panel(story: Story, i: int) -> None:
    """One draft-verify step, in the order it happens: the sections 1 to 6 of the page."""
    r = story.steps[i]
    if r.get("tree") is not None:
        tree_step_panel(story, i)
        return
    greedy = bool(story.trace.sampling.get("greedy"))
    newest = story.new[story.contexts[i] - 1].text if story.contexts[i] else "…"
    st.subheader(f"Step {i + 1} of {story.n_steps}")
    st.markdown(step_summary(r))
    left, right = st.columns(2, gap="large")
    with left:
        context_section(story, i)
    with right:
        draft_section(story.trace, r)
    verification_section(r, newest)
    if r["drafted"]:
        decision_section(r, i, greedy)
    left, right = st.columns(2, gap="large")
    with left:
        next_token_section(r, i, greedy)
    with right:
        rollback_section(r, newest)


def context_section(story: Story, i: int) -> None:
    section(
        1,
        SECTIONS["context"],
        f"What the model has read: {story.steps[i]['context_length']} tokens. Gemma keeps all "
        "but the newest one in its KV cache, its memory of earlier positions; the newest token, "
        "at the end, is read in this step.",
        "02_memory_bound",
    )
    st.html(look.context_html(story, i))


def draft_section(trace: Trace, r: dict) -> None:
    n = len(r["drafted"])
    section(
        2,
        f"{SECTIONS['draft']} {n} token{'s' if n != 1 else ''} (k = {trace.k})",
        drafter_explanation(trace) + (" This time it had nothing to propose." if n == 0 else ""),
        "05_drafters_and_speedup",
    )
    if n:
        st.html(look.draft_chips(r["drafted"]))


def verification_section(r: dict, newest: str) -> None:
    n = len(r["drafted"])
    section(
        3,
        f"{SECTIONS['verify']} over {n + 1} position{'s' if n else ''}",
        f"Gemma reads the newest token and the {n} guesses together, in one forward pass "
        f"({1000 * r['verify_s']:.0f} ms here). Each position sees only the tokens before it, so "
        f"the pass returns {n + 1} next-token distributions p: one to check each guess, and one "
        "more for the token after the last guess.",
        "03_greedy_speculative",
    )
    st.html(f'<div style="overflow-x:auto">{look.verification_pass(r, newest)}</div>')


def decision_section(r: dict, i: int, greedy: bool) -> None:
    if greedy:
        rule = (
            "Temperature 0 (greedy): a guess is kept exactly when it is Gemma's own top "
            "choice. The bars show p and q at temperature 1, to see how close each call was."
        )
    else:
        rule = (
            "For each guess x, compare p(x), how likely Gemma finds it, with q(x), how likely "
            "the drafter found it. Keep x with probability min(1, p(x)/q(x)): draw a random u "
            "between 0 and 1 and keep x if it lands left of the black line, in the green zone. "
            "The first rejection ends the step; the guesses after it were built on a wrong "
            "token, so they are dropped unchecked."
        )
    section(4, SECTIONS["decide"], rule, rule_lesson(greedy))
    keys = [
        look.swatch("target") + "p: Gemma's probabilities",
        look.swatch("draft") + "q: the drafter's",
        "▶ marks the guess",
    ]
    if not greedy:
        keys.append("◆ the draw u, against the black line at min(1, p/q)")
    st.html('<div class="ms-legend">' + "".join(f"<span>{k}</span>" for k in keys) + "</div>")
    n, decisions, fates = len(r["drafted"]), r["decisions"], draft_fate(r)
    cols = st.columns(min(4, max(n, 2)), gap="medium")
    for d in decisions:
        pos = d["position"]
        with cols[pos % len(cols)]:
            fig = charts.p_vs_q(r["target"][pos], r["drafted"][pos], d, fates[pos])
            st.plotly_chart(fig, config=QUIET, key=f"pq-{i}-{pos}")
            if not greedy:
                st.plotly_chart(charts.draw(d), config=QUIET, key=f"u-{i}-{pos}")
            st.markdown(verdict_line(d, greedy))
    for pos in range(len(decisions), n):
        with cols[pos % len(cols)]:
            st.html(look.draft_chips([r["drafted"][pos]]))
            st.caption(f"d{pos + 1} is never checked: it is dropped with the rejection.")


def next_token_section(r: dict, i: int, greedy: bool) -> None:
    n, j, nxt = len(r["drafted"]), r["accepted"], r["next_token"]
    kind = nxt["kind"]
    if kind == "bonus":
        words = (
            f"All {n} guesses were accepted, so the last row of the same pass (p after the last "
            "guess) gives one more token for free: the bonus."
            if n
            else "With no guesses the pass is a plain decoding step: its one row p gives the token."
        )
        title = SECTIONS["bonus"]
    elif greedy:
        words = f"Guess d{j + 1} was not Gemma's top choice, so Gemma's top choice replaces it."
        title = SECTIONS["corrected"]
    else:
        words = (
            f"Guess d{j + 1} was rejected, so Gemma supplies this token instead. It is drawn "
            "not from p but from what is left of p where the drafter fell short, max(0, p − q), "
            "rescaled to sum to 1. With the acceptances, that makes every token come out exactly "
            "as if Gemma had sampled it alone."
        )
        title = SECTIONS["corrected"]
    section(5, title, words, rule_lesson(greedy))
    chip = look.chip(token_label(nxt), kind, f"{kind} · prob {nxt['prob']:.2f}")
    st.html(f'<div class="ms-chips">{chip}</div>')
    if r["residual_top"]:
        entries, label = r["residual_top"], "norm(max(0, p − q)), the residual"
    elif kind == "bonus":
        entries, label = r["target"][n]["top_p"], f"p after d{n}" if n else "p"
    else:
        entries, label = r["target"][j]["top_p"], f"p at d{j + 1}"
    fig = charts.next_token_choice(entries, nxt["token"], kind, label)
    st.plotly_chart(fig, config=QUIET, key=f"next-{i}")


def rollback_section(r: dict, newest: str) -> None:
    n, kind = len(r["drafted"]), r["next_token"]["kind"]
    before, after = r["kv_length_before"], r["kv_length_after"]
    section(
        6,
        SECTIONS["rollback"],
        f"The pass wrote {n + 1} positions into the cache. Those after the first rejection "
        "hold keys and values computed from discarded guesses, so the cache is cut back. "
        f"The new {kind} token is not in it yet: it is the newest token the next step reads.",
        "03_greedy_speculative",
    )
    st.html(look.cache_diagram(r, newest))
    st.markdown(
        f"KV cache length: **{before}** before → **{before + n + 1}** after verifying → "
        f"**{after}** after the rollback"
    )


def verdict_line(d: dict, greedy: bool) -> str:
    ok = f":{'green' if d['accepted'] else 'red'}[**{VERDICTS[bool(d['accepted'])]}**]"
    if greedy:
        top = "it" if d["accepted"] else "another token"
        return f"p = {d['p']:.3f}, q = {d['q']:.3f}; the top of p is {top} → {ok}"
    ratio = d["ratio"]
    ratio_s = f"{ratio:.2f}" if ratio is not None else "—"
    sign = "<" if d["accepted"] else "≥"
    return (
        f"p = {d['p']:.3f} · q = {d['q']:.3f} · p/q = {ratio_s}  \n"
        f"u = {d['u']:.3f} {sign} {d['accept_probability']:.3f} → {ok}"
    )


# ------------------------------------------------------------------------------ a tree step


BESIDE_PX = 640  # the widest tree drawing that fits beside its mask on a laptop's screen


def tree_step_panel(story: Story, i: int) -> None:
    """One step that drafted a token tree, in the order it happens: sections 1 to 6."""
    r = story.steps[i]
    greedy = bool(story.trace.sampling.get("greedy"))
    st.subheader(f"Step {i + 1} of {story.n_steps}")
    st.markdown(tree_summary(r))
    context_section(story, i)
    if look.tree_width(r) <= BESIDE_PX:
        left, right = st.columns([3, 2], gap="large")  # the tree is wider than the mask is
        with left:
            tree_section(r)
        mask_section(r, i, right, right)
    else:  # a deep tree takes the page's width; its mask goes under it, beside its words
        tree_section(r)
        words, chart = st.columns([2, 3], gap="large")
        mask_section(r, i, words, chart)
    sibling_section(r, i, greedy)
    left, right = st.columns(2, gap="large")
    with left:
        tree_next_token_section(r, i, greedy)
    with right:
        compaction_section(r)


def tree_section(r: dict) -> None:
    t = r["tree"]
    n = len(t["nodes"]) - 1
    how = (
        "At each node its candidates are drawn from q without replacement, in the order drawn "
        "(top to bottom)."
        if t["proposal"] == "sampled"
        else "At each node its candidates are its likeliest tokens, the likeliest on top."
    )
    section(
        2,
        f"{SECTIONS['tree']}: {n} node{'s' if n != 1 else ''}",
        "Instead of one line of guesses, the drafter proposes a tree: where it is unsure it keeps "
        f"several candidates, each the start of its own continuation. {how} The path the target "
        "accepted is drawn thick and green; red nodes were tried and rejected; grey ones were "
        "never tried, because the rule never reached them. Dashed, after the path: the token "
        "the target added. Each node shows p, the target's probability of it, and q, the "
        "drafter's, both at its parent.",
        TREE_LESSON,
    )
    st.html(look.tree_html(r))


def mask_section(r: dict, i: int, words: DeltaGenerator, chart: DeltaGenerator) -> None:
    """The mask's heading and words in the container `words`, its heatmap in `chart`."""
    t = r["tree"]
    n = len(t["nodes"]) - 1
    with words:
        mask_words(r, n)
    fig = charts.tree_mask(t)
    with chart:
        st.plotly_chart(fig, config=QUIET, key=f"mask-{i}", width=fig.layout.height)  # square


def mask_words(r: dict, n: int) -> None:
    section(
        3,
        SECTIONS["mask"],
        f"Gemma reads the newest token and all {n} nodes together, in one forward pass "
        f"({1000 * r['verify_s']:.0f} ms here). Each node may look only at its own path: "
        "its siblings and cousins are other futures. The mask says which: row = the node "
        "reading, column = a node it may attend to, besides every earlier token. Each node also "
        "takes the position of its depth, so its row of the output is the prediction that "
        "decoding its own path one token at a time would give. Green rows: the accepted path.",
        TREE_LESSON,
    )


def sibling_section(r: dict, i: int, greedy: bool) -> None:
    t = r["tree"]
    if greedy:
        rule = (
            "Temperature 0 (greedy): from the root along the path, the child that is Gemma's "
            "own top choice is kept, if there is one; the other children are rejected, and the "
            "walk ends at a node none of whose children is Gemma's choice."
        )
    else:
        rule = (
            "From the root along the path, the rule tries a node's children one by one, in the "
            "order proposed. A child x is kept with probability min(1, p(x)/q(x)): a draw u left "
            "of the black line keeps it. After each rejection p becomes the residual, "
            "norm(max(0, p − q)), what is left of p where the drafter's guess took too much, "
            "and the next sibling is judged against it. The first child kept extends the path; "
            "when all are rejected, the last residual gives the target's own token."
        )
    section(4, SECTIONS["siblings"], rule, TREE_LESSON)
    groups = [g for g in t["siblings"] if g["trials"]]
    if not groups:
        st.caption("The root had no children: nothing to try.")
        return
    nodes = t["nodes"]
    rows, trials, labels = [], [], []
    for g in groups:
        parent = f"{g['node']} {look.readable(token_label(nodes[g['node']]))}"
        for k, trial in enumerate(g["trials"]):
            text = look.readable(token_label(nodes[trial["node"]]))  # trials name their node
            rows.append({"at node": parent, **trial_row(k, trial, text, greedy)})
            trials.append(trial)
            labels.append(f"at {g['node']}, try {k + 1}: {text}")
    st.dataframe(rows, hide_index=True, key=f"trials-{i}")
    if not greedy and all(trial.get("u") is not None for trial in trials):
        st.plotly_chart(charts.sibling_trials(trials, labels), config=QUIET, key=f"sib-{i}")


def trial_row(k: int, trial: dict, text: str, greedy: bool) -> dict:
    """One sibling's trial as a table row: its numbers, its verdict, the residual after it."""

    def number(name: str) -> float | None:
        return None if trial.get(name) is None else round(float(trial[name]), 3)

    residual = trial.get("residual_top") or []
    row = {
        "try": k + 1,
        "node": trial["node"],
        "token": text,
        "p": number("p"),
        "q": number("q"),
    }
    if not greedy:
        row["min(1, p/q)"] = number("accept_probability")
        row["u"] = number("u")
    row["verdict"] = VERDICTS[bool(trial["accepted"])]
    if not greedy:
        row["residual's top after it"] = ", ".join(
            f"{look.readable(token_label(e))} {e['prob']:.2f}" for e in residual[:3]
        )
    return row


def tree_next_token_section(r: dict, i: int, greedy: bool) -> None:
    t, nxt = r["tree"], r["next_token"]
    kind, end = nxt["kind"], t["path"][-1]
    if kind == "bonus":
        words = (
            f"The path ended at node {end}, which has no children in the tree, so that node's "
            "own row of the same pass gives one more token for free: the bonus."
        )
        title = SECTIONS["bonus"]
    elif greedy:
        words = (
            f"No child of node {end}, the path's end, was Gemma's top choice, so Gemma's top "
            "choice there is the next token."
        )
        title = SECTIONS["corrected"]
    else:
        words = (
            f"Every child of node {end}, the path's end, was rejected, so Gemma supplies this "
            "token: drawn from the residual left after the last rejection. With the acceptances, "
            "that makes every token come out exactly as if Gemma had sampled it alone."
        )
        title = SECTIONS["corrected"]
    section(5, title, words, TREE_LESSON)
    chip = look.chip(token_label(nxt), kind, f"{kind} · prob {nxt['prob']:.2f}")
    st.html(f'<div class="ms-chips">{chip}</div>')
    trials = [tr for g in t["siblings"] if g["node"] == end for tr in g["trials"]]
    residual = r.get("residual_top") or (trials[-1].get("residual_top") if trials else None)
    row = r["target"][r["accepted"]]["top_p"] if r["accepted"] < len(r["target"]) else []
    if residual:
        entries, label = residual, "norm(max(0, p − q)), the last residual"
    elif row:
        entries, label = row, f"p at node {end}"
    else:
        return
    fig = charts.next_token_choice(entries, nxt["token"], kind, label)
    st.plotly_chart(fig, config=QUIET, key=f"next-{i}")


def compaction_section(r: dict) -> None:
    t = r["tree"]
    kv = t["kv"]
    before, written, after = kv["before"], kv["written"], kv["after"]
    section(
        6,
        SECTIONS["compact"],
        f"The pass wrote all {written} nodes into the cache, one row each, in node order. Only "
        "the accepted path's rows are worth keeping: they move to the rows right after the "
        "earlier ones, where decoding the same text one token at a time would have written them "
        "(each node already took the position of its depth, so its keys need no change), and "
        "the cache is cut after them. The new token is not in it yet: it is the newest token the "
        "next step reads.",
        TREE_LESSON,
    )
    st.html(look.compaction_html(r))
    moves = len(kv["moved"])
    st.markdown(
        f"KV cache length: **{before}** before → **{before + written}** after verifying → "
        f"**{after}** after the compaction; {moves} row{'s' if moves != 1 else ''} moved"
    )


# ------------------------------------------------------------------------------ the summary


def numbers(run: Run) -> None:
    """The run's own numbers, from its trace and the plain speed measured beside it."""
    stats = run.story.stats
    st.caption(
        learn_more(
            "Measured in this session, on this machine"
            + (" (recorded when the trace was made)." if run.source == "replay" else ".")
            + " Speeds include recording the trace, a few milliseconds per step.",
            "05_drafters_and_speedup",
        )
    )
    c = st.columns(5)
    c[0].metric(
        "Acceptance rate α",
        f"{stats.alpha:.0%}",
        help="accepted drafts / checked drafts: the estimate of α",
    )
    c[1].metric(
        "Tokens per target forward",
        f"{stats.tau:.2f}",
        delta=f"formula: {stats.expected_tau:.2f}",
        delta_color="off",
        delta_arrow="off",
        help="(1 − α^(k+1)) / (1 − α): what i.i.d. acceptances with rate α would give for k drafts",
    )
    c[2].metric("Speculative decoding", f"{stats.tokens_per_s:.1f} tok/s")
    plain = run.plain_tokens_per_s
    c[3].metric("Plain decoding", f"{plain:.1f} tok/s" if plain else "—")
    c[4].metric(
        "Speedup",
        f"{stats.tokens_per_s / plain:.2f}×" if plain else "—",
        help="speculative tokens/s divided by plain tokens/s, same prompt, same settings",
    )
    prompt_tokens = len(run.story.trace.prompt_ids)
    p = st.columns(5)
    p[0].metric(
        "Prefill",
        f"{1000 * stats.prefill_s:.0f} ms",
        help="one forward pass over the whole prompt, which also gives the first new token",
    )
    p[1].metric(
        "Prompt tokens per second",
        f"{prompt_tokens / stats.prefill_s:.0f}" if stats.prefill_s else "—",
        help=f"{prompt_tokens} prompt tokens in one pass: many positions share each weight read",
    )
    p[2].metric(
        "Decoding",
        f"{stats.decode_s:.2f} s",
        help="every step after the prefill: drafting, verifying, and recording the trace",
    )
    st.markdown(
        f"{stats.new_tokens} new tokens from **{stats.target_forwards}** target forward passes "
        f"(the prompt's pass and {stats.verify_forwards} verifications); plain decoding needs one "
        f"pass per token, {stats.new_tokens}. Drafting took {stats.draft_s:.2f} s, verifying "
        f"{stats.verify_s:.2f} s."
        + (
            " Averaged over the draft lengths actually proposed (fewer than k near the end, or "
            "none when the n-gram drafter finds no match), the formula gives "
            f"{stats.expected_tau_as_drafted:.2f}."
            if stats.expected_tau_as_drafted < stats.expected_tau - 0.005
            else ""
        )
    )
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.tau_curve(stats), config=QUIET)
        st.caption(
            "If each guess is accepted with chance α, a step yields 1 + α + … + α^k tokens. "
            "The dot is this run; it sits off the curve when acceptances are not independent or "
            "when the drafter proposed fewer than k."
        )
    with right:
        st.plotly_chart(charts.acceptance_by_position(stats), config=QUIET)
        st.caption("How often each drafted position survived, when it was checked at all.")
    if any(r.get("tree") is not None for r in run.story.steps):
        st.caption(
            "A tree run: its drafted positions are depths, and a depth counts as accepted when "
            "the rule kept one of the children it tried there, so α is the chance a step went "
            "one token deeper. k in the formula is the node budget."
        )


def forward_time_section(times: runs.ForwardTimes | None, has_model: bool) -> bool:
    """Why verifying k guesses costs about one token: the forward times against T, once
    measured; before that, a button to measure them (True when pressed)."""
    st.markdown("#### Why checking k guesses costs about one token")
    st.caption(
        learn_more(
            "A forward pass reads all of Gemma's weights from memory once, whatever the number "
            "of positions T it processes; on a CPU that reading, not the arithmetic, is most of "
            "the time. So one pass over k + 1 positions costs little more than one over a single "
            "token.",
            "02_memory_bound",
        )
    )
    if not has_model:
        st.info("The forward-time chart needs the model: choose **Run the model** in the sidebar.")
        return False
    if times is None:
        slot = st.empty()
        pressed = slot.button(
            "Measure forward time on this machine (about half a minute)", key="bench"
        )
        if pressed:
            slot.empty()
        return pressed
    forward_time_chart(times)
    return False


def forward_time_chart(times: runs.ForwardTimes) -> None:
    st.plotly_chart(charts.forward_time_vs_t(times.ms), config=QUIET)
    st.caption(
        f"One pass over {times.verify_t} positions took {times.verify_ratio:.1f}× the time of a "
        f"pass over one, not {times.verify_t}×. Further right the passes are a prompt's prefill: "
        f"over {times.longest} positions a pass costs {times.per_position_ms:.1f} ms per position "
        f"against {times.one_ms:.0f} ms for one token alone, and now the arithmetic, "
        "not the reading, sets the time: the pass has become compute-bound. The dotted line "
        "is the least time the multiply-adds alone could take (one per weight per position, "
        "at the rate this machine's kernel reaches on weights already in its caches): where "
        "the measured line runs along it, memory no longer matters. (Median of a few runs "
        "after a 256-token context; the whisker reaches down to the fastest run.)"
    )


def shape_section(has_model: bool, s: runs.Settings | None) -> bool:
    """A tree against a chain on this prompt: the words, and before the comparison is measured,
    a button to measure it (True when pressed)."""
    st.markdown("#### A tree against a chain")
    chain, tree = runs.shape_pair(s) if s is not None else (None, None)
    st.caption(
        learn_more(
            "The same prompt, drafter and sampling, drafted two ways, one after the other: "
            + (f"as {chain.shape} and as {tree.shape} per step. " if s is not None else "")
            + "A tree gives the target several candidates where the drafter is unsure, so more "
            "of its guesses survive per pass; it also costs more drafting, and a longer "
            "verification pass. τ is the tokens each target forward gave.",
            TREE_LESSON,
        )
    )
    if not has_model or s is None:
        st.info("Comparing a tree with a chain runs the model: choose **Run the model**.")
        return False
    return st.button(f"Run {chain.shape} and {tree.shape} on this prompt", key="shapes_go")


def shape_comparison(c: runs.ShapeComparison) -> None:
    rows, plain = c.rows, c.plain_tokens_per_s
    st.dataframe(
        [
            {
                "draft shape": r["shape"],
                "tokens / forward (τ)": round(r["tau"], 2),
                "tokens/s": round(r["tokens_per_s"], 2),
                "speedup": round(r["tokens_per_s"] / plain, 2) if plain else None,
                "drafting s": round(r["draft_s"], 2),
                "verifying s": round(r["verify_s"], 2),
                "new tokens": r["new_tokens"],
                "output": r["text"],
            }
            for r in rows
        ],
        hide_index=True,
        key="shapes_table",
    )
    st.plotly_chart(charts.shapes(rows, plain), config=QUIET)
    chain, tree = rows
    st.caption(
        f"Measured here: {chain['shape']} gave {chain['tau']:.2f} tokens per target forward and "
        f"{chain['tokens_per_s']:.1f} tokens/s; {tree['shape']} gave {tree['tau']:.2f} and "
        f"{tree['tokens_per_s']:.1f}. The dashed line is plain decoding on the same prompt."
    )


# ------------------------------------------------------------------------------ comparing


def comparison(c: runs.Comparison) -> None:
    rows, plain = c.rows, c.plain_tokens_per_s
    table = [
        {
            "drafter": r["drafter"],
            "α (acceptance)": round(r["alpha"], 3),
            "tokens / forward": round(r["tau"], 2),
            "formula": round(r["expected_tau"], 2),
            "tokens/s": round(r["tokens_per_s"], 2),
            "drafting s": round(r["draft_s"], 2),
            "verifying s": round(r["verify_s"], 2),
            "speedup": round(r["tokens_per_s"] / plain, 2) if plain else None,
            "output": r["text"],
        }
        for r in rows
    ]
    st.dataframe(table, hide_index=True)
    st.plotly_chart(charts.compare(rows, plain), config=QUIET)
    st.caption(
        "A high α is not enough: each step also pays for the drafting. Compare the seconds spent "
        "drafting with those spent verifying; the dashed line is plain decoding, one target "
        "forward per token, measured on the same prompt in this session."
    )


def compare_controls() -> tuple[list[str], bool]:
    """The drafters to compare, and whether the button to compare them was pressed."""
    st.caption(
        learn_more(
            "Each drafter on the prompt and settings in the sidebar, one after the other, "
            "against plain decoding measured in this session. A good drafter is cheap *and* "
            "often right: the n-gram drafter costs nothing but only helps when the text repeats "
            "itself; the model drafters guess everywhere but each guess costs a forward pass of "
            "their own; the MTP drafter guesses everywhere too, from Gemma's own hidden state and "
            "KV cache, with a network far smaller than Gemma.",
            "05_drafters_and_speedup",
        )
    )
    specs = st.multiselect("Drafters", list(runs.OFFERED), default=list(runs.COMPARED), key="cmp")
    return specs, st.button("Compare on this prompt", key="compare_go", disabled=not specs)


# ------------------------------------------------------------------------------ stepping


def stepper(story: Story) -> None:
    """The token strip, the step controls and the step panel, in a fragment that can play."""
    state = st.session_state
    playing = state.playing
    seconds = float(state.get("speed", 1.0))

    @st.fragment(run_every=seconds if playing else None)
    def steps_view() -> None:
        if state.playing != playing:  # Play or Pause pressed: rerun the page to (un)set the timer
            st.rerun()
        n = story.n_steps
        # Advance when the timer is due (any other rerun of the fragment leaves the step alone).
        now = time.monotonic()
        if state.playing and now - state.get("played_at", 0.0) >= 0.8 * seconds:
            if state.pop("just_started", False):
                pass  # show the step Play was pressed on first
            elif state.step < n - 1:
                state.step += 1
            else:  # the end: stop playing
                state.playing = False
                st.rerun()
            state.played_at = now
        state.step = min(max(state.step, 0), max(n - 1, 0))

        st.markdown(f"#### {SECTIONS['output']}")
        st.caption(
            learn_more(
                "Every new token, coloured by where it came from; hover a token for its step "
                "and probabilities. The step on show is outlined; later tokens are faded.",
                "03_greedy_speculative",
            )
        )
        st.html(look.token_strip(story, state.step if n else None))
        if n == 0:
            st.info(
                "This run has no speculative steps: its only token came from the prompt's pass."
            )
            return
        controls(n)
        step_panel(story, state.step)

    steps_view()


def controls(n: int) -> None:
    state = st.session_state
    prev, nxt, play, jump = st.columns([1.25, 1.1, 1, 3.6], vertical_alignment="bottom")
    prev.button(
        "Previous step",
        key="prev",
        icon=":material/skip_previous:",
        disabled=state.step == 0,
        on_click=go_to,
        args=(state.step - 1,),
        width="stretch",
    )
    nxt.button(
        "Next step",
        key="next",
        icon=":material/skip_next:",
        disabled=state.step >= n - 1,
        on_click=go_to,
        args=(state.step + 1,),
        width="stretch",
    )
    play.button(
        "Pause" if state.playing else "Play",
        key="play",
        icon=":material/pause:" if state.playing else ":material/play_arrow:",
        on_click=toggle_play,
        args=(n,),
        type="primary",
        width="stretch",
    )
    if n > 1:
        state.jump = state.step + 1  # the slider follows Next, Previous and Play
        jump.slider("Jump to step", 1, n, key="jump", on_change=jumped, disabled=state.playing)


def go_to(step: int) -> None:
    st.session_state.step, st.session_state.playing = step, False


def jumped() -> None:
    if st.session_state.jump - 1 != st.session_state.step:  # a move, not the slider catching up
        go_to(st.session_state.jump - 1)


def toggle_play(n: int) -> None:
    state = st.session_state
    state.playing = not state.playing
    if state.playing:
        state.just_started = True
        if state.step >= n - 1:
            state.step = 0
