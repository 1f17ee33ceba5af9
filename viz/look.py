"""Colours, CSS and the small HTML pieces: token chips, the token strip, the cache diagrams, the
drawing of a token tree.

One palette for the whole page, so a colour always means the same thing: `minispec.palette`
holds it (and the words for each colour), shared with the web page `minispec replay --html`
writes.
"""

from __future__ import annotations

import math
from html import escape

from minispec.palette import COLOURS, NAMES, NODE_COLOURS, TINTS
from minispec.story import Story, Token, draft_fate, token_label

CSS = """
<style>
.ms-strip { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.92rem; line-height: 2.0; white-space: pre-wrap; word-break: break-word;
  padding: 0.6rem 0.8rem; border: 1px solid #e5e7eb; border-radius: 0.5rem; background: #fff; }
.ms-prompt { color: #6b7280; }
.ms-special { color: #9ca3af; font-size: 0.75em; border: 1px solid #d1d5db; border-radius: 3px;
  padding: 0 2px; margin-right: 2px; }
.ms-tok { border-radius: 4px; padding: 1px 1px; margin: 0 0.5px; border-bottom: 3px solid; }
.ms-future { opacity: 0.28; }
.ms-now { outline: 2px solid #111827; outline-offset: 1px; }
.ms-chips { display: flex; flex-wrap: wrap; gap: 0.45rem; align-items: stretch; margin: 0.2rem 0; }
.ms-chip { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  border: 2px solid; border-radius: 0.45rem; padding: 0.25rem 0.55rem; min-width: 3.2rem;
  text-align: center; white-space: pre; background: #fff; }
.ms-chip .ms-sub { display: block; font-size: 0.72rem; color: #4b5563; font-family: sans-serif; }
.ms-chip.ms-struck { text-decoration: line-through; opacity: 0.65; }
.ms-legend { display: flex; flex-wrap: wrap; gap: 0.9rem; font-size: 0.85rem; color: #374151; }
.ms-legend span.ms-dot { display: inline-block; width: 0.8rem; height: 0.8rem;
  border-radius: 3px; margin-right: 0.3rem; vertical-align: -0.1rem; }
.ms-pass { display: grid; gap: 0.3rem 0.45rem; align-items: center; }
.ms-pass .ms-h { font-size: 0.75rem; color: #6b7280; text-align: center; }
.ms-pass .ms-arrow { text-align: center; color: #9ca3af; font-size: 0.9rem; }
.ms-cache { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; margin: 0.3rem 0; }
.ms-cell { font-family: ui-monospace, monospace; font-size: 0.78rem; border: 1px solid;
  border-radius: 3px; padding: 2px 5px; white-space: pre; }
.ms-cell.ms-gone { text-decoration: line-through; opacity: 0.5; border-style: dashed; }
.ms-cell.ms-old { background: #f1f5f9; color: #475569; border-color: #cbd5e1; }
.ms-ctx { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.85rem; white-space: pre-wrap; word-break: break-word; line-height: 1.75;
  background: #f9fafb; border: 1px solid #e5e7eb; border-radius: 0.5rem; padding: 0.5rem 0.8rem;
  max-height: 9.5rem; overflow-y: auto; display: flex; flex-direction: column-reverse; }
.ms-tree { overflow-x: auto; padding: 0.2rem 0; }
.ms-canvas { position: relative; }
.ms-edge { position: absolute; height: 0; transform-origin: 0 50%; }
.ms-node, .ms-next { position: absolute; box-sizing: border-box; border: 1.5px solid;
  border-radius: 0.4rem; text-align: center; white-space: pre; overflow: hidden;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.8rem;
  line-height: 1.15; padding-top: 0.2rem; }
.ms-node.ms-path { border-width: 3px; padding-top: 0.12rem; }
.ms-next { border-style: dashed; border-width: 2px; }
.ms-node .ms-sub, .ms-next .ms-sub { display: block; font-size: 0.64rem; color: #4b5563;
  font-family: sans-serif; }
.ms-rows { display: grid; grid-template-columns: 7.5rem 1fr; gap: 0.45rem 0.6rem;
  align-items: center; }
.ms-rows .ms-h { font-size: 0.78rem; color: #4b5563; }
.ms-cell .ms-row { font-size: 0.66rem; color: #6b7280; margin-left: 0.3rem; }
</style>
"""


def readable(text: str) -> str:
    """A token's text with its whitespace made visible (for tables and charts, not HTML)."""
    if text == "":
        return "∅"
    shown = text.replace("\n", "↵").replace("\t", "⇥")
    if shown.strip(" ") == "":
        shown = shown.replace(" ", "␣")
    return shown


def visible(text: str) -> str:
    """A token's text with its whitespace made visible, HTML-escaped."""
    return escape(readable(text))


def flowing(text: str) -> str:
    """A token's text inside running text: newlines shown as ↵ and kept as line breaks."""
    return escape(text).replace("\n", "↵\n").replace("\t", "⇥\t")


def swatch(kind: str) -> str:
    return f'<span class="ms-dot" style="background:{COLOURS[kind]}"></span>'


def legend() -> str:
    """Every colour of the page and what it means."""
    items = "".join(f"<span>{swatch(kind)}{name}</span>" for kind, name in NAMES.items())
    return f'<div class="ms-legend">{items}</div>'


def prompt_html(prompt_text: str, tail: int | None = None) -> str:
    """The prompt in grey, with <bos> shown as the small marker it is; `tail`: its last chars."""
    if tail is not None and len(prompt_text) > tail:
        cut = prompt_text[-tail:]
        cut = cut[cut.index("\n") + 1 :] if "\n" in cut[:-1] else cut
        prompt_text = "… " + cut
    body = flowing(prompt_text)
    body = body.replace("&lt;bos&gt;", '<span class="ms-special">&lt;bos&gt;</span>')
    return f'<span class="ms-prompt">{body}</span>'


def token_span(t: Token, extra_class: str = "") -> str:
    colour, tint = COLOURS[t.source], TINTS[t.source]
    where = "prefill (before any step)" if t.step is None else f"step {t.step + 1}"
    probs = []
    if t.p is not None:
        probs.append(f"p = {t.p:.3f}")
    if t.q is not None:
        probs.append(f"q = {t.q:.3f}")
    title = f"{NAMES[t.source]} · {where}" + (" · " + ", ".join(probs) if probs else "")
    title += f" · token {t.token} {t.text!r}"
    return (
        f'<span class="ms-tok {extra_class}" title="{escape(title)}" '
        f'style="background:{tint};border-color:{colour}">{flowing(t.text)}</span>'
    )


def token_strip(story: Story, step: int | None = None) -> str:
    """The whole output, each token coloured by where it came from; hover shows step and p/q.

    With `step`, the tokens that step emitted are outlined and later ones faded.
    """
    parts = [prompt_html(story.prompt_text, tail=160)]
    for t in story.new:
        cls = ""
        if step is not None and t.step is not None:
            cls = "ms-now" if t.step == step else ("ms-future" if t.step > step else "")
        parts.append(token_span(t, cls))
    return f'<div class="ms-strip">{"".join(parts)}</div>'


def context_html(story: Story, step: int) -> str:
    """The context before `step`: prompt in grey, new tokens coloured by source."""
    before = story.new[: story.contexts[step]]
    spans = "".join(token_span(t) for t in before)
    return f'<div class="ms-ctx"><div>{prompt_html(story.prompt_text)}{spans}</div></div>'


def chip(text: str, kind: str, sub: str = "", struck: bool = False) -> str:
    cls = "ms-chip ms-struck" if struck else "ms-chip"
    sub_html = f'<span class="ms-sub">{escape(sub)}</span>' if sub else ""
    return (
        f'<span class="{cls}" style="border-color:{COLOURS[kind]};'
        f'background:{TINTS[kind]}">{visible(text)}{sub_html}</span>'
    )


def draft_chips(drafted: list[dict]) -> str:
    """Drafted tokens (a step record's `drafted` entries) in the drafter's colour, with q(x)."""
    chips = [chip(token_label(d), "draft", f"q = {d['q']:.2f}") for d in drafted]
    return f'<div class="ms-chips">{"".join(chips)}</div>'


def verification_pass(r: dict, newest: str) -> str:
    """The one forward pass: inputs [newest, d_1..d_n] and the n+1 predictions it returns."""
    drafted = r["drafted"]
    n = len(drafted)
    cells = []
    inputs = [chip(newest, "target", "newest")]
    inputs += [chip(token_label(d), "draft", f"d{i + 1}") for i, d in enumerate(drafted)]
    outputs = []
    for i, row in enumerate(r["target"]):
        top = row["top_p"][0] if row["top_p"] else None
        unread = i > r["accepted"]  # the rule stopped before this row: the trace leaves it empty
        label = "not needed" if unread else "bonus row" if i == n else f"for d{i + 1}"
        text = token_label(top) if top else "—"
        sub = f"{label} · {top['prob']:.2f}" if top else label
        outputs.append(chip(text, "target", sub, struck=unread))
    cols = f"grid-template-columns: 6.5rem repeat({n + 1}, minmax(4.2rem, max-content));"
    cells.append('<span class="ms-h">Gemma reads</span>' + "".join(inputs))
    cells.append('<span class="ms-h"></span>' + '<span class="ms-arrow">↓</span>' * (n + 1))
    cells.append('<span class="ms-h">Gemma\'s top choice (p)</span>' + "".join(outputs))
    return f'<div class="ms-pass" style="{cols}">{"".join(cells)}</div>'


def cache_diagram(r: dict, newest: str) -> str:
    """The KV cache around this step: what the verify pass wrote and what the rollback kept."""
    before = r["kv_length_before"]
    fates = draft_fate(r)
    old = (
        f'<span class="ms-cell ms-old">positions 0..{before - 1} ({before} earlier tokens)</span>'
        if before
        else ""
    )
    cells = [old, cell(newest, "target", f"{before}")]
    for i, (d, fate) in enumerate(zip(r["drafted"], fates, strict=True)):
        cells.append(cell(token_label(d), fate, f"{before + 1 + i}", gone=fate != "accepted"))
    return f'<div class="ms-cache">{"".join(cells)}</div>'


def cell(text: str, kind: str, position: str, gone: bool = False) -> str:
    cls = "ms-cell ms-gone" if gone else "ms-cell"
    return (
        f'<span class="{cls}" title="position {position}" style="border-color:{COLOURS[kind]};'
        f'background:{TINTS[kind]}">{visible(text)}</span>'
    )


# ------------------------------------------------------------------------------ token trees

NODE_W, NODE_H = 84, 36  # a node's box in the tree drawing, in pixels
COL_W, ROW_H = 108, 44  # the distance between depths (left to right) and between leaves


def tree_layout(parents: list[int]) -> list[tuple[int, float]]:
    """Each node's (depth, row) in the drawing: leaves take rows 0, 1, ... in depth-first order
    (siblings in proposal order), and a parent sits halfway between its first and last child."""
    children: list[list[int]] = [[] for _ in parents]
    for node, parent in enumerate(parents[1:], start=1):
        children[parent].append(node)
    place: list[tuple[int, float]] = [(0, 0.0)] * len(parents)
    leaves = 0

    def visit(node: int, depth: int) -> None:
        nonlocal leaves
        for child in children[node]:
            visit(child, depth + 1)
        if children[node]:
            row = (place[children[node][0]][1] + place[children[node][-1]][1]) / 2
        else:
            row, leaves = float(leaves), leaves + 1
        place[node] = (depth, row)

    visit(0, 0)
    return place


def node_kind(node: dict, index: int) -> str:
    """The colour a tree node is drawn in: the root is the target's token, the others their
    verdict's (`palette.NODE_COLOURS`)."""
    return "target" if index == 0 else NODE_COLOURS[node["verdict"]]


def node_probabilities(node: dict) -> str:
    """ "p 0.42 · q 0.31", the numbers the trace has for a node (either may be missing)."""
    shown = [f"{name} {node[name]:.2f}" for name in ("p", "q") if node.get(name) is not None]
    return " · ".join(shown)


def short(text: str, n: int = 10) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def tree_width(r: dict) -> int:
    """The tree drawing's width in pixels: one column per depth, the target's token included."""
    t = r["tree"]
    depth = max(int(node["depth"]) for node in t["nodes"])
    deepest = max(depth, len(t["path"]))  # the target's token stands one past the path's end
    return deepest * COL_W + NODE_W + 4


def tree_html(r: dict) -> str:
    """A tree step's drafted tree, root on the left: each node a box labelled by its token,
    coloured by its verdict; the accepted path's edges thick, in the accepted colour; and after
    the path's last node, dashed, the token the target added (its correction or bonus).

    Plain HTML, boxes and edges placed absolutely: the page's HTML sanitiser drops inline SVG.
    """
    t, nxt = r["tree"], r["next_token"]
    nodes = t["nodes"]
    on_path = set(t["path"])
    parents = [-1] + [int(node["parent"]) for node in nodes[1:]]
    # The target's token hangs off the path's end as one more leaf, so the layout gives it a row.
    place = tree_layout(parents + [t["path"][-1]])
    rows = max(row for _, row in place) + 1
    width, height = tree_width(r), int(rows * ROW_H)

    def left_middle(i: int) -> tuple[float, float]:
        depth, row = place[i]
        return depth * COL_W, row * ROW_H + ROW_H / 2

    edges, boxes = [], []
    for i in range(1, len(place)):
        x0, y0 = left_middle(parents[i] if i < len(nodes) else t["path"][-1])
        x1, y1 = left_middle(i)
        if i == len(nodes):  # the target's own token
            edges.append(edge((x0 + NODE_W, y0), (x1, y1), COLOURS[nxt["kind"]], 2, "dashed"))
        elif i in on_path:
            edges.append(edge((x0 + NODE_W, y0), (x1, y1), COLOURS["accepted"], 4))
        else:
            edges.append(edge((x0 + NODE_W, y0), (x1, y1), "#cbd5e1", 2))
    for i, node in enumerate(nodes):
        sub = "newest" if i == 0 else node_probabilities(node)
        title = (
            f"node {i} · depth {node['depth']} · "
            + ("the root: the newest token" if i == 0 else node["verdict"])
            + (f" · {sub}" if i else "")
            + f" · token {node['token']} {token_label(node)!r}"
        )
        css = "ms-node ms-path" if i in on_path else "ms-node"
        kind = node_kind(node, i)
        boxes.append(node_box(left_middle(i), token_label(node), sub, kind, title, css))
    kind = nxt["kind"]
    boxes.append(
        node_box(
            left_middle(len(nodes)),
            token_label(nxt),
            "correction" if kind == "corrected" else "bonus",
            kind,
            f"{NAMES[kind]} · prob {nxt['prob']:.3f} · token {nxt['token']}",
            "ms-next",
        )
    )
    return (
        f'<div class="ms-tree"><div class="ms-canvas" style="width:{width}px;height:{height}px">'
        + "".join(edges)
        + "".join(boxes)
        + "</div></div>"
    )


def edge(
    start: tuple[float, float],
    end: tuple[float, float],
    colour: str,
    width: float,
    style: str = "solid",
) -> str:
    """A straight line from start to end: a thin box turned about its left end."""
    (x0, y0), (x1, y1) = start, end
    length, angle = math.hypot(x1 - x0, y1 - y0), math.degrees(math.atan2(y1 - y0, x1 - x0))
    return (
        f'<div class="ms-edge" style="left:{x0:.1f}px;top:{y0 - width / 2:.1f}px;'
        f"width:{length:.1f}px;border-top:{width}px {style} {colour};"
        f'transform:rotate({angle:.2f}deg)"></div>'
    )


def node_box(at: tuple[float, float], text: str, sub: str, kind: str, title: str, css: str) -> str:
    """One node of the tree drawing, its left middle at `at`: its token above, numbers below."""
    x, y = at
    return (
        f'<div class="{css}" title="{escape(title)}" style="left:{x:.0f}px;'
        f"top:{y - NODE_H / 2:.0f}px;width:{NODE_W}px;height:{NODE_H}px;"
        f'border-color:{COLOURS[kind]};background:{TINTS[kind]}">'
        f'{visible(short(text))}<span class="ms-sub">{escape(sub)}</span></div>'
    )


def compaction_html(r: dict) -> str:
    """A tree step's cache, three lines: the rows the pass wrote (one per node), the rows the
    accepted path moves, and the rows kept."""
    t = r["tree"]
    nodes, kv, on_path = t["nodes"], t["kv"], set(t["path"])
    before = kv["before"]
    old = (
        f'<span class="ms-cell ms-old">rows 0..{before - 1} ({before} earlier tokens)</span>'
        if before
        else ""
    )
    written = [old] + [
        row_cell(token_label(node), node_kind(node, i), before + i, gone=i not in on_path)
        for i, node in enumerate(nodes)
    ]
    text_at = {before + i: token_label(node) for i, node in enumerate(nodes)}
    moved = [
        f'<span class="ms-cell" style="border-color:{COLOURS["accepted"]};'
        f'background:{TINTS["accepted"]}">{visible(text_at.get(a, "?"))}'
        f'<span class="ms-row">row {a} → {b}</span></span>'
        for a, b in kv["moved"]
    ] or ['<span class="ms-h">none: the path already sits right after the earlier rows</span>']
    kept = [old] + [
        row_cell(token_label(nodes[node]), node_kind(nodes[node], node), before + j)
        for j, node in enumerate(t["path"])
    ]
    lines = [
        (f"written: {kv['written']} rows", written),
        (f"moved: {len(kv['moved'])}", moved),
        (f"kept: {kv['after']} rows", kept),
    ]
    body = "".join(
        f'<span class="ms-h">{escape(label)}</span><div class="ms-cache">{"".join(cells)}</div>'
        for label, cells in lines
    )
    return f'<div class="ms-rows">{body}</div>'


def row_cell(text: str, kind: str, row: int, gone: bool = False) -> str:
    """A cache row holding a token, with its row number."""
    cls = "ms-cell ms-gone" if gone else "ms-cell"
    return (
        f'<span class="{cls}" title="row {row}" style="border-color:{COLOURS[kind]};'
        f'background:{TINTS[kind]}">{visible(text)}<span class="ms-row">{row}</span></span>'
    )
