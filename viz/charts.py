"""The plotly figures, each built from trace records or measured numbers.

Their colours are `minispec.palette`'s, the same as the rest of the page.
"""

from __future__ import annotations

import plotly.graph_objects as go

from minispec.palette import COLOURS, TINTS
from minispec.stats import Stats, expected_tokens_per_forward
from minispec.story import token_label
from viz.look import readable

FONT = dict(family="Inter, system-ui, sans-serif", size=13, color="#1f2937")


def _layout(fig: go.Figure, height: int, **kwargs: object) -> go.Figure:
    layout = dict(
        template="plotly_white",
        margin=dict(l=8, r=8, t=36, b=8),
        font=FONT,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
    )
    fig.update_layout(height=height, **{**layout, **kwargs})
    return fig


def _label(entry: dict) -> str:
    return readable(token_label(entry))


def p_vs_q(target_row: dict, drafted: dict, decision: dict | None, verdict: str) -> go.Figure:
    """p (target) and q (draft) over the likeliest tokens at one position; the draft marked."""
    tokens: dict[int, dict] = {}
    for e in target_row["top_p"]:
        tokens.setdefault(e["token"], {"label": _label(e)})["p"] = e["prob"]
    for e in drafted.get("top_q") or []:
        tokens.setdefault(e["token"], {"label": _label(e)})["q"] = e["prob"]
    x = drafted["token"]
    mine = tokens.setdefault(x, {"label": _label(drafted)})
    mine["q"] = drafted["q"]
    if decision is not None:
        mine["p"] = decision["p"]
    if not drafted.get("top_q"):  # a drafter without probabilities: q is one-hot on its token
        for t, e in tokens.items():
            e.setdefault("q", 1.0 if t == x else 0.0)
    order = sorted(tokens, key=lambda t: -(tokens[t].get("p") or 0.0))[:7]
    order.reverse()  # plotly draws the first category at the bottom
    labels = [("▶ " if t == x else "") + tokens[t]["label"] for t in order]
    fig = go.Figure()
    for key, side in (("p", "target"), ("q", "draft")):
        fig.add_bar(
            y=labels,
            x=[tokens[t].get(key) for t in order],
            name=f"{key} ({side})",
            orientation="h",
            marker_color=COLOURS[side],
            hovertemplate=f"%{{y}}: {key} = %{{x:.3f}}<extra></extra>",
        )
    title_colour = COLOURS.get(verdict, COLOURS["unchecked"])
    fig.update_xaxes(range=[0, 1.02], tickformat=".0%", showgrid=True)
    fig.update_yaxes(tickfont=dict(family="ui-monospace, monospace", size=12))
    return _layout(
        fig,
        height=70 + 26 * 7,  # the same height at every position, so the columns line up
        barmode="group",
        bargap=0.25,
        title=dict(
            text=f"d{drafted['position'] + 1} = {_label(drafted)!r}: {verdict}",
            font=dict(size=14, color=title_colour),
        ),
        showlegend=False,
    )


def draw(d: dict) -> go.Figure:
    """One tested draft: the accept zone [0, min(1, p/q)), the reject zone, and where u landed."""
    a, u = d["accept_probability"], d["u"]
    fig = go.Figure()
    fig.add_bar(
        y=[""],
        x=[a],
        orientation="h",
        name="accept zone",
        marker_color=TINTS["accepted"],
        marker_line=dict(color=COLOURS["accepted"], width=1),
        hovertemplate=f"accept if u < min(1, p/q) = {a:.3f}<extra></extra>",
    )
    fig.add_bar(
        y=[""],
        x=[1 - a],
        orientation="h",
        name="reject zone",
        marker_color=TINTS["rejected"],
        marker_line=dict(color=COLOURS["rejected"], width=1),
        hoverinfo="skip",
    )
    fig.add_shape(type="line", x0=a, x1=a, y0=-0.45, y1=0.45, line=dict(color="#111827", width=2))
    fig.add_scatter(
        y=[""],
        x=[u],
        mode="markers",
        name="u",
        marker=dict(
            symbol="diamond",
            size=16,
            color=COLOURS["accepted"] if d["accepted"] else COLOURS["rejected"],
            line=dict(color="#111827", width=1.5),
        ),
        hovertemplate="u = %{x:.3f}<extra></extra>",
    )
    anchor = "left" if u < 0.15 else ("right" if u > 0.85 else "center")
    fig.add_annotation(
        x=u,
        y=0,
        text=f"u = {u:.2f}",
        showarrow=False,
        yshift=22,
        xanchor=anchor,
        yanchor="bottom",
        font=dict(size=12),
    )
    fig.update_xaxes(range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".2f")
    fig.update_yaxes(visible=False)
    return _layout(
        fig,
        height=115,
        barmode="stack",
        bargap=0.35,
        showlegend=False,
        margin=dict(l=14, r=14, t=34, b=4),
    )


def next_token_choice(entries: list[dict], chosen: int, kind: str, title: str) -> go.Figure:
    """A distribution's likeliest tokens (residual or p_{n+1}) with the drawn token highlighted."""
    entries = entries[:7][::-1]
    labels = [_label(e) for e in entries]
    colours = [COLOURS[kind] if e["token"] == chosen else "#cbd5e1" for e in entries]
    fig = go.Figure()
    fig.add_bar(
        y=labels,
        x=[e["prob"] for e in entries],
        orientation="h",
        marker_color=colours,
        text=[f"{e['prob']:.2f}" for e in entries],
        textposition="outside",
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    )
    fig.update_xaxes(range=[0, 1.1], tickformat=".0%")
    fig.update_yaxes(tickfont=dict(family="ui-monospace, monospace", size=12))
    return _layout(fig, height=80 + 26 * len(entries), title=dict(text=title, font=dict(size=14)))


def tau_curve(stats: Stats) -> go.Figure:
    """Tokens per target forward: the formula (1 - a^(k+1)) / (1 - a) against this run's point."""
    k = stats.k
    xs = [i / 100 for i in range(101)]
    fig = go.Figure()
    for kk in sorted({1, 2, 4, 8, k}):
        fig.add_scatter(
            x=xs,
            y=[expected_tokens_per_forward(a, kk) for a in xs],
            mode="lines",
            name=f"k = {kk}",
            line=dict(width=3 if kk == k else 1.2, color="#334155" if kk == k else "#cbd5e1"),
            hovertemplate=f"k = {kk}, α = %{{x:.2f}}: %{{y:.2f}} tokens<extra></extra>",
        )
    fig.add_scatter(
        x=[stats.alpha],
        y=[stats.tau],
        mode="markers+text",
        name="this run",
        text=[f"  this run: α = {stats.alpha:.2f}, {stats.tau:.2f} tokens/forward"],
        textposition="top right" if stats.alpha < 0.5 else "top left",
        marker=dict(size=14, color=COLOURS["accepted"], line=dict(color="#111827", width=1.5)),
    )
    fig.update_xaxes(title_text="α, the chance a drafted token is accepted", range=[0, 1.0])
    fig.update_yaxes(title_text="tokens per target forward", rangemode="tozero")
    return _layout(
        fig,
        height=330,
        title=dict(text="(1 − α^(k+1)) / (1 − α)", font=dict(size=14)),
        legend=dict(x=0.02, y=0.98, xanchor="left", yanchor="top", bgcolor="rgba(255,255,255,0.8)"),
    )


def acceptance_by_position(stats: Stats) -> go.Figure:
    """P(draft i accepted | it was checked), for i = 1..k."""
    rates = stats.acceptance_by_position
    xs = [f"d{i + 1}" for i in range(len(rates))]
    fig = go.Figure()
    fig.add_bar(
        x=xs,
        y=[r if r is not None else 0 for r in rates],
        marker_color=[COLOURS["accepted"] if r is not None else "#e5e7eb" for r in rates],
        text=[
            f"{r:.0%} of {v}" if r is not None else "never"
            for r, v in zip(rates, stats.verified_at, strict=True)
        ],
        textposition="outside",
        hovertemplate="%{x}: %{y:.2f}<extra></extra>",
    )
    fig.update_yaxes(range=[0, 1.15], tickformat=".0%", title_text="accepted when checked")
    return _layout(
        fig, height=330, title=dict(text="Acceptance by draft position", font=dict(size=14))
    )


def forward_time_vs_t(times: dict[int, dict[str, float]]) -> go.Figure:
    """Milliseconds for one forward over T positions, against T separate one-token forwards,
    and (when measured) the least time the arithmetic of T positions can take."""
    ts = sorted(times)
    one = times[ts[0]]["median"]
    fig = go.Figure()
    fig.add_scatter(
        x=ts,
        y=[one * t for t in ts],
        mode="lines",
        name="T forwards of one token",
        line=dict(color=COLOURS["rejected"], dash="dash"),
        hovertemplate="T = %{x}: %{y:.0f} ms<extra></extra>",
    )
    fig.add_scatter(
        x=ts,
        y=[times[t]["median"] for t in ts],
        mode="lines+markers+text",
        name="one forward over T positions",
        text=[f"{times[t]['median']:.0f} ms" if t in (ts[0], ts[-1]) else "" for t in ts],
        textposition="top center",
        line=dict(color=COLOURS["target"], width=3),
        marker=dict(size=9),
        error_y=dict(
            type="data",
            symmetric=False,
            array=[0 for _ in ts],
            arrayminus=[times[t]["median"] - times[t]["min"] for t in ts],
            color="#94a3b8",
        ),
        hovertemplate="T = %{x}: median %{y:.1f} ms<extra></extra>",
    )
    if all("arithmetic" in times[t] for t in ts):
        fig.add_scatter(
            x=ts,
            y=[times[t]["arithmetic"] for t in ts],
            mode="lines",
            name="the arithmetic alone (the least it can take)",
            line=dict(color="#94a3b8", dash="dot"),
            hovertemplate="T = %{x}: at least %{y:.1f} ms of multiply-adds<extra></extra>",
        )
    if ts[-1] > 16:  # prefill lengths too: log axes keep T = 1..16 readable beside T = 256
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
    else:
        fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(title_text="T, positions in one forward pass", tickvals=ts)
    fig.update_yaxes(title_text="milliseconds")
    return _layout(fig, height=340)


def compare(rows: list[dict], plain_tokens_per_s: float | None) -> go.Figure:
    """Decode speed per drafter, with plain decoding as the line to beat."""
    fig = go.Figure()
    fig.add_bar(
        x=[r["drafter"] for r in rows],
        y=[r["tokens_per_s"] for r in rows],
        marker_color=COLOURS["draft"],
        text=[f"{r['tokens_per_s']:.1f} tok/s · α {r['alpha']:.2f}" for r in rows],
        textposition="outside",
        hovertemplate="%{x}: %{y:.2f} tokens/s<extra></extra>",
    )
    if plain_tokens_per_s:
        fig.add_hline(
            y=plain_tokens_per_s,
            line=dict(color=COLOURS["target"], dash="dash"),
            annotation_text=f"plain decoding {plain_tokens_per_s:.1f} tok/s",
            annotation_position="top right",
        )
    top = max([r["tokens_per_s"] for r in rows] + [plain_tokens_per_s or 0])
    fig.update_yaxes(title_text="tokens per second", range=[0, top * 1.25 + 1e-9])
    return _layout(fig, height=330, showlegend=False)


def node_labels(nodes: list[dict]) -> list[str]:
    """ "3 cat": a tree node's index and token, unique (plotly merges equal category labels)."""
    return [f"{i} {_label(node)}" for i, node in enumerate(nodes)]


def tree_mask(tree: dict) -> go.Figure:
    """The tree attention mask, row = the node reading, column = a node it may attend to;
    the accepted path's rows in the accepted colour, every other visible cell in the target's."""
    nodes, mask, path = tree["nodes"], tree["mask"], set(tree["path"])
    labels = node_labels(nodes)
    # 0: hidden, 1: visible, 2: visible from a node on the accepted path
    z = [[(2 if i in path else 1) if seen else 0 for seen in row] for i, row in enumerate(mask)]
    words = {0: "does not see", 1: "sees", 2: "sees"}
    hover = [
        [f"{labels[i]} {words[v]} {labels[j]}" for j, v in enumerate(row)]
        for i, row in enumerate(z)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            zmin=0,
            zmax=2,
            colorscale=[
                [0.0, "#ffffff"],
                [0.33, "#ffffff"],
                [0.33, "#94a3b8"],
                [0.67, "#94a3b8"],
                [0.67, COLOURS["accepted"]],
                [1.0, COLOURS["accepted"]],
            ],
            showscale=False,
            xgap=1,
            ygap=1,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    mono = dict(family="ui-monospace, monospace", size=11)
    fig.update_xaxes(side="top", tickangle=-60, tickfont=mono, title_text="may attend to")
    fig.update_yaxes(autorange="reversed", tickfont=mono, title_text="node reading")
    size = 150 + 22 * len(nodes)
    return _layout(fig, height=size, margin=dict(l=8, r=8, t=8, b=8), plot_bgcolor="#e5e7eb")


def sibling_trials(trials: list[dict], labels: list[str]) -> go.Figure:
    """Siblings tried one after the other, node after node down the path: each one's accept zone
    [0, min(1, p/q)), its reject zone, and where its draw u landed."""
    labels, shown = labels[::-1], trials[::-1]  # plotly draws the first category at the bottom
    a = [trial["accept_probability"] for trial in shown]
    fig = go.Figure()
    fig.add_bar(
        y=labels,
        x=a,
        orientation="h",
        marker_color=TINTS["accepted"],
        marker_line=dict(color=COLOURS["accepted"], width=1),
        hovertemplate="accept if u < min(1, p/q) = %{x:.3f}<extra></extra>",
    )
    fig.add_bar(
        y=labels,
        x=[1 - x for x in a],
        orientation="h",
        marker_color=TINTS["rejected"],
        marker_line=dict(color=COLOURS["rejected"], width=1),
        hoverinfo="skip",
    )
    fig.add_scatter(
        y=labels,
        x=a,
        mode="markers",
        marker=dict(symbol="line-ns-open", size=22, color="#111827", line=dict(width=2)),
        hoverinfo="skip",
    )
    fig.add_scatter(
        y=labels,
        x=[trial["u"] for trial in shown],
        mode="markers",
        marker=dict(
            symbol="diamond",
            size=14,
            color=[COLOURS["accepted" if t["accepted"] else "rejected"] for t in shown],
            line=dict(color="#111827", width=1.5),
        ),
        hovertemplate="u = %{x:.3f}<extra></extra>",
    )
    fig.update_xaxes(range=[0, 1], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".2f")
    fig.update_yaxes(tickfont=dict(family="ui-monospace, monospace", size=12))
    return _layout(
        fig,
        height=60 + 34 * len(trials),
        barmode="stack",
        bargap=0.35,
        showlegend=False,
        margin=dict(l=8, r=14, t=10, b=4),
    )


def shapes(rows: list[dict], plain_tokens_per_s: float | None) -> go.Figure:
    """Tokens per second of a chain and a tree on the same prompt, tokens per forward on each."""
    fig = go.Figure()
    fig.add_bar(
        x=[r["shape"] for r in rows],
        y=[r["tokens_per_s"] for r in rows],
        marker_color=[COLOURS["accepted"] if r["tree"] else COLOURS["draft"] for r in rows],
        text=[f"{r['tokens_per_s']:.1f} tok/s · τ {r['tau']:.2f}" for r in rows],
        textposition="outside",
        hovertemplate="%{x}: %{y:.2f} tokens/s<extra></extra>",
    )
    if plain_tokens_per_s:
        fig.add_hline(
            y=plain_tokens_per_s,
            line=dict(color=COLOURS["target"], dash="dash"),
            annotation_text=f"plain decoding {plain_tokens_per_s:.1f} tok/s",
            annotation_position="top right",
        )
    top = max([r["tokens_per_s"] for r in rows] + [plain_tokens_per_s or 0])
    fig.update_yaxes(title_text="tokens per second", range=[0, top * 1.25 + 1e-9])
    return _layout(fig, height=300, showlegend=False)
