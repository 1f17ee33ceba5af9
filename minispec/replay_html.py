"""A recorded run as one web page: step through every draft, verify and accept decision offline.

`minispec replay TRACE.json --html OUT.html` and the app's "Download as a web page" write it. The
page is a single file that needs nothing beside it: no server, no network, no Python. It shows
what the app's "Step by step" view shows: the whole output coloured by where each token came
from, Previous / Next / Play and a step slider (and the left and right arrow keys), and for the
step on show the context, the drafted tokens with q, the verification row with p, each guess's
p(x), q(x), the draw u against min(1, p/q) and the verdict, the correction or bonus token with the
distribution it was drawn from, the KV cache before and after the rollback, and the run's alpha
and tau beside the formula tau = (1 - alpha^(k+1)) / (1 - alpha).

How it is built: `check_trace` reads every field the page will show and names the first one
that is missing or wrong (an `InputError`, before anything is written). `page_view` adds what
the page needs beyond the trace itself: each new token's origin, the context before each step
and the statistics (from `minispec.story`, as the app has them), and the drafter's description.
`replay_html` embeds the trace and that view as JSON in a `<script type="application/json">`
element, beside a short hand-written script that draws a step from them, and the stylesheet.
Colours, legend words and section titles come from `minispec.palette`, the drafter's
description from the drafter registry, as in the app; nothing here loads or runs a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from html import escape
from pathlib import Path

from minispec.drafters import drafter_words, spec_from_name
from minispec.errors import InputError
from minispec.palette import COLOURS, NAMES, SECTIONS, TINTS, VERDICTS
from minispec.story import story_from_trace
from minispec.trace import FORMAT, OPTIONAL_STEP_FIELDS, STEP_FIELDS, VERSION, Trace, replay

NUMBER = (int, float)
NUMBER_OR_NULL = (int, float, type(None))

# ------------------------------------------------------------------------- checking the trace


def need(obj: dict, key: str, types: type | tuple, where: str) -> object:
    """obj[key], if it is there and of one of `types`; else an InputError naming the field."""
    name = f"{where}.{key}" if where else key
    if not isinstance(obj, dict) or key not in obj:
        raise InputError(f"the trace has no field {name!r}: not a complete minispec trace")
    value = obj[key]
    kinds = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in kinds)
        raise InputError(f"the trace's field {name!r} should be {wanted}, not {value!r:.40}")
    return value


def check_entries(entries: list, where: str) -> None:
    """A top-few list: [{token, prob}, ...]."""
    for i, e in enumerate(entries):
        need(e, "token", int, f"{where}[{i}]")
        need(e, "prob", NUMBER, f"{where}[{i}]")


def check_step(r: dict, i: int) -> None:
    """One step record: every field of `STEP_FIELDS` the page reads, with its documented type."""
    at = f"steps[{i}]"
    if not isinstance(r, dict):
        raise InputError(f"the trace's field {at!r} should be an object")
    missing = [name for name in STEP_FIELDS if name not in r and name not in OPTIONAL_STEP_FIELDS]
    if missing:
        raise InputError(f"the trace has no field '{at}.{missing[0]}': not a complete trace")
    for name in ("step", "context_length", "kv_length_before", "kv_length_after", "accepted"):
        need(r, name, int, at)
    for name in ("draft_s", "verify_s"):
        need(r, name, NUMBER, at)
    drafted = need(r, "drafted", list, at)
    for j, d in enumerate(drafted):
        for name, types in (("token", int), ("q", NUMBER), ("position", int)):
            need(d, name, types, f"{at}.drafted[{j}]")
    rows = need(r, "target", list, at)
    if len(rows) != len(drafted) + 1:
        raise InputError(f"the trace's field '{at}.target' should have {len(drafted) + 1} rows")
    for j, row in enumerate(rows):
        check_entries(need(row, "top_p", list, f"{at}.target[{j}]"), f"{at}.target[{j}].top_p")
    decisions = need(r, "decisions", list, at)
    for j, d in enumerate(decisions):
        where = f"{at}.decisions[{j}]"
        for name, types in (("token", int), ("p", NUMBER), ("q", NUMBER), ("accepted", bool)):
            need(d, name, types, where)
        for name in ("u", "ratio", "accept_probability"):
            need(d, name, NUMBER_OR_NULL, where)
    accepted = r["accepted"]
    if not 0 <= accepted <= len(drafted) or len(decisions) < accepted:
        raise InputError(f"the trace's field '{at}.accepted' ({accepted}) does not fit its drafts")
    nxt = need(r, "next_token", dict, at)
    need(nxt, "token", int, f"{at}.next_token")
    need(nxt, "prob", NUMBER, f"{at}.next_token")
    if need(nxt, "kind", str, f"{at}.next_token") not in ("corrected", "bonus"):
        raise InputError(f"the trace's field '{at}.next_token.kind' should be corrected or bonus")
    residual = need(r, "residual_top", (list, type(None)), at)
    if residual:
        check_entries(residual, f"{at}.residual_top")
    need(r, "emitted", list, at)


def check_trace(d: object) -> Trace:
    """The trace a page can be made of; InputError naming the first field it cannot show."""
    if not isinstance(d, dict):
        raise InputError("not a minispec trace: the JSON is not an object")
    if d.get("format") != FORMAT or d.get("version") != VERSION:
        Trace.from_dict(d)  # raises the InputError that says which
    for name, types in (
        ("model", str),
        ("drafter", str),
        ("k", int),
        ("sampling", dict),
        ("seed", int),
        ("prompt_ids", list),
        ("steps", list),
    ):
        need(d, name, types, "")
    need(d["sampling"], "greedy", bool, "sampling")
    for name in ("temperature", "top_p"):
        need(d["sampling"], name, NUMBER, "sampling")
    if "prompt_text" in d:
        need(d, "prompt_text", (str, type(None)), "")
    if d.get("first_token") is not None:
        need(d["first_token"], "token", int, "first_token")
        check_entries(need(d["first_token"], "top_p", list, "first_token"), "first_token.top_p")
    for i, r in enumerate(d["steps"]):
        check_step(r, i)
    trace = Trace.from_dict(d)
    for _ in replay(trace):  # the records must follow from one another (InputError if not)
        pass
    return trace


# ------------------------------------------------------------------------- what the page needs


def markdown_html(words: str) -> str:
    """The registry's descriptions use **bold** and `code` only: those, as HTML."""
    html = escape(words)
    html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", html)


def drafter_html(trace: Trace) -> str:
    """What the drafter is, in the app's words: from its spec, else from its kind of name."""
    spec = trace.drafter_spec or spec_from_name(trace.drafter)
    return markdown_html(drafter_words(spec) if spec else f"The drafter {trace.drafter}.")


def page_view(trace: Trace) -> dict:
    """What the script needs beside the trace: tokens by origin (`story_from_trace`, as the app
    has them), statistics, words, colours."""
    story = story_from_trace(trace)
    stats = story.stats
    return {
        "prompt": story.prompt_text,
        "tokens": [asdict(t) for t in story.new],
        "contexts": story.contexts,
        "alpha": stats.alpha,
        "tau": stats.tau,
        "expected_tau": stats.expected_tau,
        "expected_tau_as_drafted": stats.expected_tau_as_drafted,
        "drafter_html": drafter_html(trace),
        "colours": COLOURS,
        "tints": TINTS,
        "names": NAMES,
        "sections": SECTIONS,
        "verdicts": {"kept": VERDICTS[True], "rejected": VERDICTS[False]},
    }


def script_json(data: dict) -> str:
    """JSON that cannot end its <script> element: every "<" written as \\u003c."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def title_of(trace: Trace) -> str:
    s = trace.sampling
    how = "greedy" if s["greedy"] else f"temperature {s['temperature']:g}, top-p {s['top_p']:g}"
    return f"{trace.model} · drafter {trace.drafter} · k = {trace.k} · {how} · seed {trace.seed}"


def replay_html(trace: Trace | dict) -> str:
    """The page for a trace (a `Trace` or its JSON object), as one self-contained HTML text."""
    d = trace.to_dict() if isinstance(trace, Trace) else trace
    checked = check_trace(d)
    data = {"trace": checked.to_dict(), "view": page_view(checked)}
    return (
        PAGE.replace("__TITLE__", escape(title_of(checked)))
        .replace("__CSS__", CSS)
        .replace("__DATA__", script_json(data))
        .replace("__SCRIPT__", SCRIPT)
    )


def write_replay_html(trace_path: str | Path, out_path: str | Path) -> int:
    """Read a trace file, write its page; returns the page's size in bytes. Writes nothing when
    the trace is not one the page can show (InputError naming the field)."""
    try:
        d = json.loads(Path(trace_path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{trace_path} is not JSON, so not a minispec trace ({err})") from err
    page = replay_html(d).encode("utf-8")
    Path(out_path).write_bytes(page)
    return len(page)


# ------------------------------------------------------------------------- the page itself

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>minispec replay · __TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<h1>Speculative decoding, step by step</h1>
<p class="run">__TITLE__</p>
<div id="numbers" class="numbers"></div>
<div id="legend" class="legend"></div>
<h3 id="output-title"></h3>
<div id="strip" class="strip"></div>
<div class="controls">
  <button id="prev" type="button">◀ Previous step</button>
  <button id="next" type="button">Next step ▶</button>
  <button id="play" type="button">Play</button>
  <input id="slider" type="range" min="1" value="1" aria-label="Jump to step">
  <span id="counter"></span>
</div>
<main id="step"></main>
<p class="foot">Written by <code>minispec replay --html</code> from a recorded trace: every number
on this page is the trace's own. ← and → step through it.</p>
<script type="application/json" id="minispec-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2937;
  max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin: 0 0 0.3rem; }
h3 { font-size: 1.05rem; margin: 1.3rem 0 0.3rem; }
.run, .foot, .words { color: #4b5563; font-size: 0.9rem; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.numbers { display: flex; flex-wrap: wrap; gap: 1.5rem; margin: 0.6rem 0; }
.numbers b { font-size: 1.3rem; display: block; }
.legend { display: flex; flex-wrap: wrap; gap: 0.9rem; font-size: 0.85rem; margin: 0.5rem 0; }
.dot { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 3px;
  margin-right: 0.3rem; vertical-align: -0.1rem; }
.strip, .ctx { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  white-space: pre-wrap; word-break: break-word; line-height: 2; padding: 0.6rem 0.8rem;
  border: 1px solid #e5e7eb; border-radius: 0.5rem; }
.ctx { max-height: 9.5rem; overflow-y: auto; background: #f9fafb; font-size: 0.85rem; }
.prompt { color: #6b7280; }
.tok { border-radius: 4px; padding: 1px; margin: 0 0.5px; border-bottom: 3px solid; }
.future { opacity: 0.28; }
.now { outline: 2px solid #111827; outline-offset: 1px; }
.controls { display: flex; gap: 0.6rem; align-items: center; margin: 0.8rem 0; flex-wrap: wrap; }
.controls button { padding: 0.35rem 0.8rem; border: 1px solid #cbd5e1; border-radius: 0.4rem;
  background: #fff; cursor: pointer; font-size: 0.95rem; }
.controls button:disabled { opacity: 0.4; cursor: default; }
#play { background: #ef4444; color: #fff; border-color: #ef4444; }
#slider { flex: 1; min-width: 10rem; }
#counter { font-weight: 600; min-width: 8rem; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 0 2rem; }
@media (max-width: 800px) { .grid2 { grid-template-columns: 1fr; } }
.chips { display: flex; flex-wrap: wrap; gap: 0.45rem; margin: 0.2rem 0; }
.chip { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; border: 2px solid;
  border-radius: 0.45rem; padding: 0.25rem 0.55rem; min-width: 3.2rem; text-align: center;
  white-space: pre; display: inline-block; }
.chip small { display: block; font-size: 0.72rem; color: #4b5563; font-family: sans-serif; }
.chip.struck { text-decoration: line-through; opacity: 0.65; }
.pass { display: grid; gap: 0.3rem 0.45rem; align-items: center; overflow-x: auto; }
.pass .h { font-size: 0.75rem; color: #6b7280; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: 1rem; }
.card { border: 1px solid #e5e7eb; border-left: 5px solid; border-radius: 0.5rem;
  padding: 0.5rem 0.7rem; }
.card table { border-collapse: collapse; width: 100%; font-size: 0.85rem; }
.card td { padding: 1px 4px; }
.bar { height: 0.7rem; border-radius: 2px; min-width: 1px; }
.track { position: relative; height: 1.2rem; border-radius: 3px; margin: 0.4rem 0 0.2rem;
  border: 1px solid #e5e7eb; overflow: visible; }
.zone { position: absolute; top: 0; bottom: 0; }
.line { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #111827; }
.u { position: absolute; top: 0.1rem; width: 0.8rem; height: 0.8rem; margin-left: -0.4rem;
  transform: rotate(45deg); border: 1.5px solid #111827; }
.verdict { font-weight: 700; }
.cache { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; margin: 0.3rem 0; }
.cell { font-family: ui-monospace, monospace; font-size: 0.78rem; border: 1px solid;
  border-radius: 3px; padding: 2px 5px; white-space: pre; }
.cell.gone { text-decoration: line-through; opacity: 0.5; border-style: dashed; }
.cell.old { background: #f1f5f9; color: #475569; border-color: #cbd5e1; }
.dist td.t { font-family: ui-monospace, monospace; white-space: pre; }
"""

SCRIPT = r"""
"use strict";
// The run: {trace, view}, embedded by minispec/replay_html.py. Everything below reads only it.
const DATA = JSON.parse(document.getElementById("minispec-data").textContent);
const TRACE = DATA.trace, VIEW = DATA.view, STEPS = TRACE.steps, N = STEPS.length;
const GREEDY = TRACE.sampling.greedy, C = VIEW.colours, TINT = VIEW.tints;
const $ = (id) => document.getElementById(id);
let current = 0, timer = null;

// ---- small helpers: escaping, token text as the app shows it, numbers
const esc = (s) => String(s).replace(/[&<>"']/g, (c) =>
  ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const label = (e) => (typeof e.text === "string" ? e.text : "⟨" + e.token + "⟩");
const num = (x, digits) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
function visible(text) {  // a token alone: whitespace made visible
  if (text === "") return "∅";
  let shown = text.replace(/\n/g, "↵").replace(/\t/g, "⇥");
  if (shown.replace(/ /g, "") === "") shown = shown.replace(/ /g, "␣");
  return esc(shown);
}
const flowing = (text) => esc(text).replace(/\n/g, "↵\n").replace(/\t/g, "⇥\t");
const paint = (kind) => `border-color:${C[kind]};background:${TINT[kind]}`;
const dot = (kind) => `<span class="dot" style="background:${C[kind]}"></span>`;
const heading = (n, title) => `<h3>${n} · ${esc(title)}</h3>`;
function chip(text, kind, sub, struck) {
  const small = sub ? `<small>${esc(sub)}</small>` : "";
  return `<span class="chip${struck ? " struck" : ""}" style="${paint(kind)}">` +
    `${visible(text)}${small}</span>`;
}
const bar = (p, kind) =>
  `<div class="bar" style="width:${Math.max(0, Math.min(1, p)) * 100}%;` +
  `background:${C[kind]}"></div>`;

// ---- the parts that do not change with the step
function header() {
  const a = VIEW.alpha, k = TRACE.k;
  $("numbers").innerHTML =
    `<span>Acceptance rate α<b>${(100 * a).toFixed(0)}%</b></span>` +
    `<span>Tokens per target forward τ<b>${num(VIEW.tau, 2)}</b></span>` +
    `<span>τ = (1 − α<sup>k+1</sup>) / (1 − α), k = ${k}` +
    `<b>${num(VIEW.expected_tau, 2)}</b></span>` +
    `<span>New tokens<b>${VIEW.tokens.length} in ${plural(N, "step")}</b></span>`;
  if (VIEW.expected_tau_as_drafted < VIEW.expected_tau - 0.005) {  // the drafter proposed < k
    $("numbers").innerHTML += `<span class="words">Over the draft lengths actually proposed ` +
      `(fewer than k at times), the formula gives ${num(VIEW.expected_tau_as_drafted, 2)}.</span>`;
  }
  $("legend").innerHTML = Object.keys(VIEW.names)
    .map((kind) => `<span>${dot(kind)}${esc(VIEW.names[kind])}</span>`).join("");
  $("output-title").textContent = VIEW.sections.output;
}

function tokenSpan(t, cls) {  // one new token, coloured by origin; hover says step and p, q
  const where = t.step === null ? "prefill (before any step)" : "step " + (t.step + 1);
  let title = VIEW.names[t.source] + " · " + where;
  if (t.p !== null) title += " · p = " + num(t.p, 3);
  if (t.q !== null) title += " · q = " + num(t.q, 3);
  return `<span class="tok ${cls}" data-source="${t.source}" data-step="${t.step}" ` +
    `title="${esc(title)}" style="${paint(t.source)}">${flowing(t.text)}</span>`;
}

function prompt(tail) {  // the prompt in grey; `tail`: only its last characters
  let text = VIEW.prompt;
  if (tail && text.length > tail) text = "… " + text.slice(-tail);
  return `<span class="prompt">${flowing(text)}</span>`;
}

// ---- the step on show
function strip(i) {
  const spans = VIEW.tokens.map((t) => {
    const cls = t.step === null ? "" : t.step === i ? "now" : t.step > i ? "future" : "";
    return tokenSpan(t, cls);
  });
  $("strip").innerHTML = prompt(160) + spans.join("");
}

function fates(r) {  // each draft: accepted, rejected, or unchecked (after the rejection)
  return r.drafted.map((d, i) => i < r.accepted ? "accepted"
    : i === r.accepted && i < r.decisions.length ? "rejected" : "unchecked");
}

function summary(r) {
  const n = r.drafted.length, e = r.emitted.length;
  if (n === 0) {
    return "No draft this step: one target forward gives one token, as in plain decoding.";
  }
  const added = r.next_token.kind === "bonus" ? "a bonus token" : "the target's correction";
  return `${r.accepted} of ${n} drafted tokens accepted, plus ${added}: ` +
    `${plural(e, "token")} for one target forward.`;
}

function contextPart(i, r) {
  const before = VIEW.tokens.slice(0, VIEW.contexts[i]).map((t) => tokenSpan(t, "")).join("");
  return heading(1, VIEW.sections.context) +
    `<p class="words">What the model has read: ${r.context_length} tokens.</p>` +
    `<div class="ctx">${prompt(0)}${before}</div>`;
}

function draftPart(r) {
  const n = r.drafted.length;
  const chips = r.drafted.map((d) => chip(label(d), "draft", "q = " + num(d.q, 2))).join("");
  return heading(2, `${VIEW.sections.draft} ${plural(n, "token")} (k = ${TRACE.k})`) +
    `<p class="words">${VIEW.drafter_html}${n ? "" : " This time it had nothing to propose."}</p>` +
    `<div class="chips">${chips}</div>`;
}

function verifyPart(r, newest) {  // inputs [newest, d1..dn] and the n+1 rows of p
  const n = r.drafted.length;
  const inputs = [chip(newest, "target", "newest")]
    .concat(r.drafted.map((d, i) => chip(label(d), "draft", "d" + (i + 1))));
  const outputs = r.target.map((row, i) => {
    const top = row.top_p.length ? row.top_p[0] : null;
    const unread = i > r.accepted;  // the rule stopped before this row: the trace leaves it empty
    const what = unread ? "not needed" : i === n ? "bonus row" : "for d" + (i + 1);
    return chip(top ? label(top) : "—", "target", top ? `${what} · p ${num(top.prob, 2)}` : what,
      unread);
  });
  const cols = `grid-template-columns: 8rem repeat(${n + 1}, minmax(4.2rem, max-content))`;
  const words = n === 0
    ? "With no guesses the target reads the newest token alone: one distribution p, as in " +
      "plain decoding."
    : `The target reads the newest token and the ${n} guess${n === 1 ? "" : "es"} in one ` +
      `forward pass; it returns ${n + 1} next-token distributions p: one to check each guess, ` +
      "one more after the last.";
  return heading(3, `${VIEW.sections.verify} over ${plural(n + 1, "position")}`) +
    `<p class="words">${words}</p>` +
    `<div class="pass" style="${cols}"><span class="h">reads</span>${inputs.join("")}` +
    `<span class="h">top choice (p)</span>${outputs.join("")}</div>`;
}

function decisionCard(r, d, i, fate) {  // one tested guess: p(x), q(x), the draw, the verdict
  const verdict = d.accepted ? VIEW.verdicts.kept : VIEW.verdicts.rejected;
  const kind = d.accepted ? "accepted" : "rejected";
  let rule;
  if (GREEDY) {
    rule = `the top of p is ${d.accepted ? "it" : "another token"}`;
  } else {
    const a = d.accept_probability, u = d.u;
    rule = `<div class="track"><div class="zone" style="left:0;width:${100 * a}%;` +
      `background:${TINT.accepted}"></div><div class="zone" style="left:${100 * a}%;right:0;` +
      `background:${TINT.rejected}"></div><div class="line" style="left:${100 * a}%"></div>` +
      `<div class="u" style="left:${100 * u}%;background:${C[kind]}"></div></div>` +
      `u = ${num(u, 3)} ${d.accepted ? "<" : "≥"} min(1, p/q) = ${num(a, 3)}`;
  }
  return `<div class="card" style="border-left-color:${C[fate]}">` +
    `<b>d${i + 1} = ${visible(label(d))}</b>` +
    `<table><tr><td>p(x)</td><td>${num(d.p, 3)}</td>` +
    `<td width="60%">${bar(d.p, "target")}</td></tr>` +
    `<tr><td>q(x)</td><td>${num(d.q, 3)}</td><td>${bar(d.q, "draft")}</td></tr>` +
    `<tr><td>p/q</td><td colspan="2">${num(d.ratio, 2)}</td></tr></table>` +
    `${rule} → <span class="verdict" style="color:${C[kind]}">${verdict}</span></div>`;
}

function decisionPart(r) {
  if (!r.drafted.length) return "";
  const f = fates(r);
  const cards = r.decisions.map((d, i) => decisionCard(r, d, i, f[i]));
  for (let i = r.decisions.length; i < r.drafted.length; i++) {
    cards.push(`<div class="card" style="border-left-color:${C.unchecked}">` +
      `${chip(label(r.drafted[i]), "unchecked", "d" + (i + 1))}<p class="words">never checked: ` +
      `dropped with the rejection.</p></div>`);
  }
  const rule = GREEDY
    ? "Greedy: a guess is kept exactly when it is the target's own top choice (p and q shown at " +
      "temperature 1)."
    : "Keep guess x with probability min(1, p(x)/q(x)): draw u between 0 and 1 and keep x if it " +
      "lands left of the black line. The first rejection ends the step.";
  return heading(4, VIEW.sections.decide) + `<p class="words">${rule}</p>` +
    `<div class="cards">${cards.join("")}</div>`;
}

function nextPart(r) {  // the correction or bonus, and the distribution it was drawn from
  const n = r.drafted.length, j = r.accepted, nxt = r.next_token, kind = nxt.kind;
  let entries, from;
  if (r.residual_top) {
    entries = r.residual_top; from = "the residual norm(max(0, p − q))";
  } else if (kind === "bonus") {
    entries = r.target[n].top_p; from = n ? `p after d${n}` : "p";
  } else {
    entries = r.target[j].top_p; from = `p at d${j + 1}`;
  }
  const rows = entries.slice(0, 7).map((e) => {
    const mine = e.token === nxt.token;
    return `<tr${mine ? ' style="font-weight:700"' : ""}><td class="t">${visible(label(e))}</td>` +
      `<td>${num(e.prob, 3)}</td>` +
      `<td width="60%">${bar(e.prob, mine ? kind : "unchecked")}</td></tr>`;
  }).join("");
  return heading(5, VIEW.sections[kind]) +
    `<div class="chips">${chip(label(nxt), kind, kind + " · prob " + num(nxt.prob, 2))}</div>` +
    `<p class="words">${GREEDY ? "Greedy: the top token of" : "Drawn from"} ${esc(from)}:</p>` +
    `<table class="dist card">${rows}</table>`;
}

function cachePart(r, newest) {  // what the verify pass wrote, and what the rollback kept
  const before = r.kv_length_before, n = r.drafted.length, f = fates(r);
  let cells = before ? `<span class="cell old">positions 0..${before - 1} (${before} earlier ` +
    `tokens)</span>` : "";
  cells += `<span class="cell" style="${paint("target")}" title="position ${before}">` +
    `${visible(newest)}</span>`;
  r.drafted.forEach((d, i) => {
    cells += `<span class="cell${f[i] === "accepted" ? "" : " gone"}" style="${paint(f[i])}" ` +
      `title="position ${before + 1 + i}">${visible(label(d))}</span>`;
  });
  return heading(6, VIEW.sections.rollback) +
    `<p class="words">The pass wrote ${plural(n + 1, "position")} into the cache; those after ` +
    "the first rejection hold keys and values of discarded guesses and are cut off. The new " +
    `${r.next_token.kind} token is not in it yet: the next step reads it.</p>` +
    `<div class="cache">${cells}</div>` +
    `<p>KV cache length: <b>${before}</b> before → <b>${before + n + 1}</b> after verifying → ` +
    `<b>${r.kv_length_after}</b> after the rollback</p>`;
}

function show(i) {
  current = Math.max(0, Math.min(i, N - 1));
  strip(current);
  if (!N) {
    $("step").innerHTML = "<p>This run has no speculative steps: its only token came from the " +
      "prompt's pass.</p>";
    $("counter").textContent = "";
    for (const id of ["prev", "next", "play", "slider"]) $(id).disabled = true;
    return;
  }
  const r = STEPS[current], ctx = VIEW.contexts[current];
  const newest = ctx ? VIEW.tokens[ctx - 1].text : "…";
  $("counter").textContent = `Step ${current + 1} of ${N}`;
  $("slider").value = current + 1;
  $("prev").disabled = current === 0;
  $("next").disabled = current === N - 1;
  $("step").innerHTML = `<h2>Step ${current + 1} of ${N}</h2><p>${summary(r)}</p>` +
    `<div class="grid2"><div>${contextPart(current, r)}</div><div>${draftPart(r)}</div></div>` +
    verifyPart(r, newest) + decisionPart(r) +
    `<div class="grid2"><div>${nextPart(r)}</div><div>${cachePart(r, newest)}</div></div>`;
}

// ---- controls: buttons, slider, Play (one step a second), arrow keys
function stop() {
  clearInterval(timer);
  timer = null;
  $("play").textContent = "Play";
}
function go(i) { stop(); show(i); }
function play() {
  if (timer) return stop();
  if (current >= N - 1) show(0);
  $("play").textContent = "Pause";
  timer = setInterval(() => (current >= N - 1 ? stop() : show(current + 1)), 1000);
}
$("prev").addEventListener("click", () => go(current - 1));
$("next").addEventListener("click", () => go(current + 1));
$("play").addEventListener("click", play);
$("slider").max = Math.max(N, 1);
$("slider").addEventListener("input", () => go(Number($("slider").value) - 1));
document.addEventListener("keydown", (e) => {
  if (e.target === $("slider")) return;  // the slider moves itself with the arrows
  if (e.key === "ArrowLeft") go(current - 1);
  if (e.key === "ArrowRight") go(current + 1);
});
header();
show(0);
"""
