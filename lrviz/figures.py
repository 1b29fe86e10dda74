"""Every plotly figure of the dashboard and the HTML report: data in, figure out.

Each function takes results (an analysis, a cost report, DataFrames of measurements) and returns a
new ``plotly.graph_objects.Figure``; nothing is measured or cached here. The pages and
:mod:`lrviz.report` call the same functions, so a chart in the report is the chart on the page.
Plotly is imported lazily (an optional dependency: ``pip install lrviz[app]``). No template is set:
Streamlit applies its theme, the report its own.

Layout: the title sits in the top margin and the legend (horizontal) at the bottom of the figure, in
a margin of its own below the axis titles, so a long legend never covers the title or the plot. An
accuracy axis always shows measured or data-driven projected accuracies; the data-free energy kept
(Π q) only ever appears on its own axis, labelled as an ordering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .analysis import ModelAnalysis
from .budget import STRATEGY_LABELS
from .cost import CostReport
from .spectra import energy_curve

__all__ = [
    "COLORS",
    "MODE_NAMES",
    "before_after_figure",
    "calibration_figure",
    "finetune_figure",
    "layer_cost_figure",
    "pareto_figure",
    "pareto_front",
    "projection_figure",
    "sensitivity_figure",
    "spectra_heatmap",
    "spectrum_figure",
    "sweep_figure",
]

COLORS = {
    "original": "#8c8c8c",
    "planned": "#1f77b4",
    "out": "#1f77b4",
    "in": "#ff7f0e",
    "matrix": "#2ca02c",
    "projection": "#9467bd",
    "measured": "#d62728",
}
MODE_NAMES = {"out": "output channels (mode-0)", "in": "input channels (mode-1)", "matrix": "matrix"}
STRATEGY_COLORS = {"solver": "#d62728", "solver-cp": "#17becf", "knapsack": "#9467bd", "continuous": "#8c564b", "bayes": "#e377c2", "uniform": "#ff7f0e", "vbmf": "#2ca02c", "energy": "#1f77b4"}
#: One colour per stage of the network (sensitivity curves), cycled.
STAGE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
#: Line style per mode (sensitivity curves).
MODE_DASH = {"out": "solid", "in": "dash", "matrix": "dot"}
#: What the energy-kept axis says: it orders plans, it is not an accuracy.
ENERGY_AXIS = "energy kept Π q (ordering, not accuracy)"
#: Legend entries per row assumed when sizing a figure (a half-width column of the dashboard).
_LEGEND_PER_ROW = 3


def _legend_entries(fig) -> int:
    seen, n = set(), 0
    for t in fig.data:
        if t.showlegend is False or not t.name:
            continue
        group = t.legendgroup
        if group and group in seen and t.showlegend is None:
            continue
        seen.add(group)
        n += 1
    return n


def _layout(fig, title: str | None = None, height: int = 380):
    """Title in the top margin, legend horizontal at the bottom of the figure (in a margin that plotly
    reserves for it below the axes: ``yref="container"``), the height grown by one line per extra
    legend row, so that neither overlaps the title nor the plot."""
    entries = _legend_entries(fig)
    rows = max(1, math.ceil(entries / _LEGEND_PER_ROW)) if entries > 1 else 0
    fig.update_layout(
        title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=12), x=0.01, xanchor="left",
                   font=dict(size=15)) if title else None,
        height=height + 20 * max(rows - 1, 0),
        margin=dict(l=10, r=10, t=50 if title else 20, b=10),
        legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", xref="container", x=0.01, xanchor="left",
                    font=dict(size=11)),
    )  # no template here: Streamlit applies its theme, the report sets its own (templates are slow)
    return fig


def _known(d: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of ``d`` where ``column`` is known (none when ``d`` has no such column)."""
    return d.dropna(subset=[column]) if column in d and len(d) else d.iloc[0:0]


def _bars(d, y: str = "top1", lo: str = "lo", hi: str = "hi", **style) -> dict:
    """Asymmetric error bars from ``lo``/``hi`` columns (or scalars) around ``y``."""
    return dict(type="data", symmetric=False, array=d[hi] - d[y], arrayminus=d[y] - d[lo], **style)


def _hlines(fig, lines: Sequence[tuple[float, str, str, str, str]]):
    """Horizontal reference lines ``(y, text, color, dash, "top"|"bottom")`` as plain layout shapes
    (much cheaper than ``add_hline``, which matters on every slider move)."""
    shapes = [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y, line=dict(color=c, dash=d, width=1)) for y, _, c, d, _ in lines]
    notes = [dict(xref="paper", x=0.005, yref="y", y=y, text=t, showarrow=False, xanchor="left", yanchor=pos, font=dict(size=11, color="gray"))
             for y, t, _, _, pos in lines]
    fig.update_layout(shapes=shapes, annotations=notes)
    return fig


def mode_full_rank(analysis: ModelAnalysis, name: str, mode: str) -> int:
    """The full rank of one mode of a layer: its number of singular values (the smaller side of the
    unfolding), which can be less than its channels (the stem's 16 output channels have 9 = 1·3·3)."""
    return len(analysis.spectra[name].values[mode])


def planned_rank(analysis: ModelAnalysis, name: str, mode: str, rank: int) -> int:
    """A planned rank as the spectrum sees it: clipped to the mode's full rank (a rank at or above it
    keeps the mode whole)."""
    return min(int(rank), mode_full_rank(analysis, name, mode))


def spectrum_figure(analysis: ModelAnalysis, name: str, ranks: Sequence[int] | None = None):
    """Singular values (log y) of a layer's modes, the VBMF threshold, the planned rank and the
    retained energy (secondary axis), in one figure.

    Legend words (the Spectra page uses the same): ``VBMF threshold {mode} (VBMF rank r / R)`` and
    ``planned rank {mode} = r / R``, with ``R`` the mode's full rank (its number of singular values,
    :func:`mode_full_rank`) and the planned rank clipped to it (:func:`planned_rank`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sp = analysis.spectra[name]
    layer = analysis.layer(name)
    ranks = tuple(ranks) if ranks is not None else layer.full_ranks
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for mode, r in zip(sp.modes, ranks):
        s = np.asarray(sp.values[mode])
        idx = np.arange(1, len(s) + 1)
        color = COLORS[mode]
        label = MODE_NAMES[mode]
        floor = max(float(s.max()) * 1e-12, 1e-30) if len(s) else 1e-30
        fig.add_trace(
            go.Scatter(x=idx, y=np.maximum(s, floor), mode="lines+markers", name=f"σ {label}", line=dict(color=color), marker=dict(size=4)),
            secondary_y=False,
        )
        fig.add_trace(
            go.Scatter(x=idx, y=energy_curve(s), mode="lines", name=f"energy {label}", line=dict(color=color, dash="dot")),
            secondary_y=True,
        )
        vb = analysis.vbmf.get(name, {}).get(mode)
        if vb is not None and vb.threshold > 0:
            fig.add_trace(
                go.Scatter(
                    x=[1, len(s)], y=[vb.threshold, vb.threshold], mode="lines",
                    name=f"VBMF threshold {mode} (VBMF rank {vb.rank} / {len(s)})",
                    line=dict(color=color, dash="dash", width=1),
                ),
                secondary_y=False,
            )
        r = min(int(r), len(s))  # a mode can have fewer singular values than channels: at or above, it is kept whole
        if r >= 1:
            fig.add_trace(
                go.Scatter(
                    x=[r], y=[max(s[r - 1], floor)], mode="markers", name=f"planned rank {mode} = {r} / {len(s)}",
                    marker=dict(symbol="diamond", size=13, color=color, line=dict(color="black", width=1)),
                ),
                secondary_y=False,
            )
    fig.layout.yaxis.update(type="log", title_text="singular value (log)")
    fig.layout.yaxis2.update(type="linear", range=[0, 1.02], tickmode="linear", tick0=0, dtick=0.2, title_text="retained energy", tickformat=".0%", showgrid=False)
    fig.update_xaxes(title_text="index (rank)")
    return _layout(fig, f"{name} — {layer.kind} {'×'.join(map(str, layer.weight_shape))}", height=420)


def spatial_spectrum_figure(values, name: str, rank: int | None = None):
    """Singular values (relative to the largest) of a k×k conv's spatial-SVD matrix ``(C_in·kh, C_out·kw)``
    (:func:`lrviz.methods.spatial_spectrum`), with the energy kept on a right-hand axis and ``rank`` marked."""
    import plotly.graph_objects as go

    v = np.asarray(values, dtype=float)
    x = np.arange(1, len(v) + 1)
    energy = np.cumsum(v ** 2) / max(float((v ** 2).sum()), 1e-300)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=v / max(v[0], 1e-300), mode="lines+markers", name="σ / σ₁", marker=dict(size=4)))
    fig.add_trace(go.Scatter(x=x, y=energy, mode="lines", name="energy kept", yaxis="y2", line=dict(dash="dot")))
    if rank is not None and 1 <= rank <= len(v):
        fig.add_vline(x=rank, line_dash="dash", annotation_text=f"rank {rank}")
    fig.update_layout(yaxis=dict(type="log", title_text="σ / σ₁"),
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1.02], tickformat=".0%", title_text="energy kept",
                                  showgrid=False),
                      xaxis_title_text="component")
    return _layout(fig, f"{name}: spatial SVD (k×1 · 1×k) spectrum")


def spectra_heatmap(analysis: ModelAnalysis, max_len: int = 64):
    """Normalised spectra (σ_i / σ_1) of every layer mode, one row each, as a heat-map."""
    import plotly.graph_objects as go

    rows, labels = [], []
    width = 0
    for l in analysis.layers:
        sp = analysis.spectra.get(l.name)
        if sp is None:
            continue
        for mode in sp.modes:
            s = np.asarray(sp.values[mode])
            width = max(width, len(s))
            rows.append(s / s[0] if len(s) and s[0] > 0 else s)
            labels.append(f"{l.name} · {mode}")
    width = min(width, max_len)
    z = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        z[i, : min(len(r), width)] = r[:width]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=np.arange(1, width + 1), y=labels, colorscale="Viridis", zmin=0, zmax=1,
            colorbar=dict(title="σᵢ/σ₁"), hovertemplate="%{y}<br>i=%{x}<br>σᵢ/σ₁=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="singular value index")
    return _layout(fig, "Normalised spectra of all layers", height=max(320, 16 * len(labels) + 120))


def layer_cost_figure(cost: CostReport, metric: str = "params"):
    """Per-layer bars: original vs planned params (or MACs)."""
    import plotly.graph_objects as go

    t = cost.table
    unit = "params" if metric == "params" else "MACs"
    fig = go.Figure()
    fig.add_bar(x=t["name"], y=t[metric], name=f"original {unit}", marker_color=COLORS["original"])
    fig.add_bar(x=t["name"], y=t[f"{metric}_planned"], name=f"planned {unit}", marker_color=COLORS["planned"])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text=unit)
    fig.update_xaxes(tickangle=-45)
    return _layout(fig, f"Per-layer {unit}: original vs planned", height=380)


def projection_figure(curve: pd.DataFrame | None, current: Mapping | None, measured: Sequence[Mapping], base_top1: float | None,
                      chance: float | None, curve_name: str = "projection (energy plans)", energy: Mapping | None = None,
                      title: str = "Accuracy: projected vs measured"):
    """Projected accuracy vs params ratio (a curve along the energy family, with its band when ``curve``
    has ``lo``/``hi`` columns; the current plan, with error bars when ``current`` has ``lo``/``hi``) and
    measured quick evaluations with their 95 % intervals (and, when stored, what was projected before
    each was measured, with its band: ``projected``, ``proj_lo``, ``proj_hi``).

    ``energy`` (optional): ``{"curve": frame of params_ratio, retained; "current": {params_ratio,
    retained}}`` — the data-free energy kept Π q, drawn on a separate right-hand axis labelled
    :data:`ENERGY_AXIS`: an ordering of plans, never on the accuracy axis."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if energy is not None:
        e_curve, e_now = energy.get("curve"), energy.get("current")
        if e_curve is not None and len(e_curve):
            fig.add_trace(go.Scatter(x=e_curve["params_ratio"], y=e_curve["retained"], mode="lines", name=ENERGY_AXIS, yaxis="y2",
                                     line=dict(color=COLORS["original"], dash="dot", width=1),
                                     hovertemplate="%{x:.2f}× params<br>energy kept Π q %{y:.3f} (not an accuracy)<extra></extra>"))
        if e_now is not None and e_now.get("retained") is not None:
            fig.add_trace(go.Scatter(x=[e_now["params_ratio"]], y=[e_now["retained"]], mode="markers", name="current plan: energy kept",
                                     yaxis="y2", marker=dict(color=COLORS["original"], symbol="star-open", size=12),
                                     hovertemplate="current plan<br>%{x:.2f}× params<br>energy kept Π q %{y:.3f} (not an accuracy)<extra></extra>"))
    if curve is not None and len(curve):
        if "lo" in curve and "hi" in curve and curve["lo"].notna().any():
            fig.add_trace(go.Scatter(x=list(curve["params_ratio"]) + list(curve["params_ratio"])[::-1],
                                     y=list(curve["hi"]) + list(curve["lo"])[::-1], fill="toself", mode="lines", line=dict(width=0),
                                     fillcolor="rgba(148,103,189,0.15)", name="projection band (~95 %)", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=curve["params_ratio"], y=curve["top1"], mode="lines", name=curve_name, line=dict(color=COLORS["projection"], dash="dot")))
    if measured:
        m = pd.DataFrame(list(measured))
        fig.add_trace(
            go.Scatter(
                x=m["params_ratio"], y=m["top1"], mode="markers", name="measured (95 % CI)",
                marker=dict(color=COLORS["measured"], size=9),
                error_y=_bars(m),
                text=m.get("label"), hovertemplate="%{text}<br>%{x:.2f}× params<br>top-1 %{y:.1%}<extra></extra>",
            )
        )
        if "projected" in m and m["projected"].notna().any():
            p = m.dropna(subset=["projected"])
            banded = "proj_lo" in p and "proj_hi" in p and p["proj_lo"].notna().all() and p["proj_hi"].notna().all()
            fig.add_trace(
                go.Scatter(x=p["params_ratio"], y=p["projected"], mode="markers", name="projected before it was measured",
                           marker=dict(color=COLORS["projection"], symbol="x", size=8),
                           error_y=_bars(p, "projected", "proj_lo", "proj_hi", thickness=1, color="rgba(148,103,189,0.6)") if banded else None)
            )
    if current is not None:
        err = None
        if current.get("lo") is not None and current.get("hi") is not None:
            err = dict(type="data", symmetric=False, array=[current["hi"] - current["top1"]], arrayminus=[current["top1"] - current["lo"]])
        fig.add_trace(
            go.Scatter(x=[current["params_ratio"]], y=[current["top1"]], mode="markers", name="current plan (projected)", error_y=err,
                       marker=dict(color=COLORS["projection"], symbol="star", size=16, line=dict(color="black", width=1)))
        )
    lines = []
    if base_top1 is not None:
        lines.append((base_top1, "original", "gray", "dash", "bottom"))
    if chance is not None:
        lines.append((chance, "chance", "lightgray", "dot", "top"))
    _hlines(fig, lines)
    fig.update_xaxes(title_text="params reduction (×)", type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%", rangemode="tozero")
    if energy is not None:
        fig.update_layout(yaxis2=dict(title=dict(text=ENERGY_AXIS, font=dict(size=11)), overlaying="y", side="right", range=[0, 1.02],
                                      showgrid=False, tickformat=".1f"))
    return _layout(fig, title, height=380)


def calibration_figure(points: pd.DataFrame, title: str = "Projected vs measured top-1"):
    """Measured top-1 (y, 95 % CI) against the projected top-1 (x) of each point of
    :func:`lrviz.tables.calibration_points`, with the diagonal ``y = x`` (a perfect projection).

    Quick evaluations are drawn at the projection shown *before* they were measured
    (``projected_then``, its band ``then_lo`` / ``then_hi`` as x error bars): the out-of-sample test.
    Hollow markers: today's projection of the same plans (``projected``), refitted to them, so in-sample.
    Anchors (measured with the sensitivities, fitted): at today's projection."""
    import plotly.graph_objects as go

    fig = go.Figure()
    d = points.dropna(subset=["top1"]) if len(points) else points
    cols = ("projected", "top1", "lo", "hi", "projected_then", "proj_lo", "proj_hi", "then_lo", "then_hi")
    vals = [v for c in cols if c in d for v in d[c].dropna().tolist()]
    lo, hi = (max(min(vals) - 0.02, 0.0), min(max(vals) + 0.02, 1.0)) if vals else (0.0, 1.0)
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (perfect projection)", line=dict(color="gray", dash="dash", width=1),
                             hoverinfo="skip"))
    quick = d[d["kind"] == "quick evaluation"] if len(d) else d
    then = _known(quick, "projected_then")
    if len(then):
        banded = then["then_lo"].notna().all() and then["then_hi"].notna().all() if "then_lo" in then else False
        fig.add_trace(
            go.Scatter(
                x=then["projected_then"], y=then["top1"], mode="markers", name="quick evaluations (projected before measuring)",
                text=then["label"], marker=dict(color=COLORS["measured"], size=10, symbol="circle"), error_y=_bars(then),
                error_x=_bars(then, "projected_then", "then_lo", "then_hi", thickness=1, color="rgba(148,103,189,0.6)") if banded else None,
                hovertemplate="%{text}<br>projected before measuring %{x:.1%}<br>measured %{y:.1%}<extra></extra>",
            )
        )
    now = _known(quick, "projected")
    if len(now):
        fig.add_trace(
            go.Scatter(x=now["projected"], y=now["top1"], mode="markers", name="the same, projected now (refitted: in-sample)",
                       text=now["label"], marker=dict(color=COLORS["measured"], size=9, symbol="circle-open", line=dict(width=1.5)),
                       hovertemplate="%{text}<br>projected now %{x:.1%}<br>measured %{y:.1%}<extra></extra>")
        )
    anchors = _known(d[d["kind"] == "anchor"] if len(d) else d, "projected")
    if len(anchors):
        fig.add_trace(
            go.Scatter(
                x=anchors["projected"], y=anchors["top1"], mode="markers", name="anchors (measured with the sensitivities, fitted)",
                text=anchors["label"], marker=dict(color=COLORS["original"], size=10, symbol="diamond"), error_y=_bars(anchors),
                error_x=_bars(anchors, "projected", "proj_lo", "proj_hi", thickness=1, color="rgba(148,103,189,0.6)"),
                hovertemplate="%{text}<br>projected %{x:.1%}<br>measured %{y:.1%}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="projected top-1", tickformat=".0%", range=[lo, hi])
    fig.update_yaxes(title_text="measured top-1", tickformat=".0%", range=[lo, hi])
    return _layout(fig, title, height=380)


def sensitivity_figure(table: pd.DataFrame, max_traces: int = 200):
    """Top-1 with one mode of one layer truncated vs the kept rank fraction (``Sensitivities.table()``).

    One trace per (layer, mode), its hover naming the layer and mode; one colour per stage
    (:func:`lrviz.tables.stage_of`) and one line style per mode (:data:`MODE_DASH`). The legend has one
    entry per stage (``legendgroup``; the stage's first trace, named ``"stage (k curves)"``, stands for
    it, the others are named ``"layer · mode"``): a click hides or shows the whole stage, a double-click
    isolates it, so forty curves stay readable."""
    import plotly.graph_objects as go

    from .tables import stage_of

    fig = go.Figure()
    if len(table):
        t = table.assign(frac=table["rank"] / table["full"])
        groups = list(t.groupby(["layer", "mode"], sort=False))[:max_traces]
        stages = list(dict.fromkeys(stage_of(layer) for (layer, _), _ in groups))
        counts = {st: sum(1 for (layer, _), _ in groups if stage_of(layer) == st) for st in stages}
        shown = set()
        for (layer, mode), g in groups:
            g = g.sort_values("frac")
            stage = stage_of(layer)
            color = STAGE_PALETTE[stages.index(stage) % len(STAGE_PALETTE)]
            first = stage not in shown  # the first curve of a stage stands for it in the legend
            shown.add(stage)
            k = counts[stage]
            fig.add_trace(go.Scatter(
                x=g["frac"], y=g["top1"], mode="lines+markers", name=f"{stage} ({k} curve{'s' if k > 1 else ''})" if first else f"{layer} · {mode}",
                marker=dict(size=4, color=color), line=dict(color=color, dash=MODE_DASH.get(mode, "solid"), width=1.5),
                legendgroup=stage, showlegend=first, customdata=g["rank"],
                hovertemplate=f"{layer} · {mode}<br>rank %{{customdata}} (%{{x:.0%}})<br>top-1 %{{y:.1%}}<extra></extra>"))
    fig.update_xaxes(title_text="kept rank / full rank", tickformat=".0%")
    fig.update_yaxes(title_text="top-1 (only this mode truncated)", tickformat=".0%")
    fig.update_layout(showlegend=True, legend=dict(groupclick="togglegroup"))
    return _layout(fig, "Layer sensitivities", height=420)


def pareto_front(df: pd.DataFrame, x: str, y: str = "top1") -> pd.DataFrame:
    """Rows not dominated (lower ``x`` is better, higher ``y`` is better), sorted by ``x``."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    best, keep = -math.inf, []
    for idx, row in d.iterrows():
        if row[y] > best:
            keep.append(idx)
            best = row[y]
    return d.loc[keep]


def pareto_figure(configs: pd.DataFrame, x: str = "params", title: str | None = None):
    """Accuracy vs params (or FLOPs) of saved configurations, Pareto front highlighted.

    ``configs`` needs columns ``name``, ``top1``, ``lo``, ``hi`` and ``x``. Point ``customdata`` is the
    configuration name (read back from a plotly selection).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    unit = "params" if x == "params" else "FLOPs"
    d = _known(configs, "top1")
    if len(d):
        fig.add_trace(
            go.Scatter(
                x=d[x], y=d["top1"], mode="markers+text", text=d["name"], textposition="top center", name="configurations",
                customdata=d["name"], marker=dict(size=12, color=COLORS["planned"]),
                error_y=_bars(d),
                hovertemplate="%{customdata}<br>%{x:.4s} " + unit + "<br>top-1 %{y:.1%}<extra></extra>",
            )
        )
        front = pareto_front(d, x)
        fig.add_trace(go.Scatter(x=front[x], y=front["top1"], mode="lines", name="Pareto front", line=dict(color=COLORS["measured"], dash="dash"), hoverinfo="skip"))
    fig.update_xaxes(title_text=unit, type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%")
    return _layout(fig, title or f"Accuracy vs {unit}", height=380)


def sweep_figure(sweep: pd.DataFrame, base_top1: float | None = None, metric: str | None = None):
    """Accuracy vs compression ratio per allocation strategy (:func:`lrviz.budget.sweep`'s rows).

    Measured top-1 (solid, 95 % CI) and projected top-1 (dotted, hollow markers) where available;
    x is ``{metric}_ratio`` (``metric`` defaults to the frame's ``metric`` column, else params).
    """
    import plotly.graph_objects as go

    if metric is None:
        metric = str(sweep["metric"].iloc[0]) if "metric" in sweep and len(sweep) else "params"
    x = f"{metric}_ratio"
    unit = "params" if metric == "params" else "MACs"
    col = "strategy" if "strategy" in sweep else "family"
    fig = go.Figure()
    for strat, d in sweep.dropna(subset=[x]).groupby(col, sort=False) if len(sweep) else ():
        d = d.sort_values(x)
        label = str(d["label"].iloc[0]) if "label" in d else STRATEGY_LABELS.get(strat, strat)
        color = STRATEGY_COLORS.get(strat)
        m = _known(d, "top1")
        if len(m):
            fig.add_trace(
                go.Scatter(
                    x=m[x], y=m["top1"], mode="lines+markers", name=label, legendgroup=str(strat), line=dict(color=color),
                    error_y=_bars(m),
                    hovertemplate=label + "<br>%{x:.2f}× " + unit + "<br>measured %{y:.1%}<extra></extra>",
                )
            )
        p = _known(d, "projected")
        if len(p):
            fig.add_trace(
                go.Scatter(
                    x=p[x], y=p["projected"], mode="lines+markers", name=f"{label} (projected)", legendgroup=str(strat),
                    line=dict(color=color, dash="dot", width=1.5), marker=dict(symbol="circle-open", size=9, color=color),
                    hovertemplate=label + "<br>%{x:.2f}× " + unit + "<br>projected %{y:.1%}<extra></extra>",
                )
            )
    if base_top1 is not None:
        _hlines(fig, [(base_top1, "original", "gray", "dash", "bottom")])
    fig.update_xaxes(title_text=f"{unit} reduction (×)", type="log")
    fig.update_yaxes(title_text="top-1 accuracy", tickformat=".0%")
    return _layout(fig, f"Accuracy vs compression ratio (matched {unit})", height=400)


def finetune_figure(steps: pd.DataFrame, epochs: pd.DataFrame):
    """Training loss per step and validation accuracy per epoch (secondary axis)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if len(steps):
        fig.add_trace(go.Scatter(x=steps["x"], y=steps["loss"], mode="lines", name="train loss (step)", line=dict(color=COLORS["planned"])), secondary_y=False)
    if len(epochs):
        fig.add_trace(go.Scatter(x=epochs["epoch"], y=epochs["train_loss"], mode="markers", name="train loss (epoch)", marker=dict(color=COLORS["planned"], size=9)), secondary_y=False)
        val = _known(epochs, "val_top1")
        if len(val):
            fig.add_trace(go.Scatter(x=val["epoch"], y=val["val_top1"], mode="lines+markers", name="val top-1", line=dict(color=COLORS["measured"])), secondary_y=True)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="val top-1", tickformat=".0%", secondary_y=True, showgrid=False, tickmode="auto", range=[0, 1.02])
    return _layout(fig, "Fine-tuning", height=360)


def before_after_figure(rows: Sequence[Mapping]):
    """Grouped bars of relative before/after values (``metric``, ``before``, ``after``); after shown as % of before."""
    import plotly.graph_objects as go

    metrics = [r["metric"] for r in rows]
    rel = [100.0 * r["after"] / r["before"] if r["before"] else math.nan for r in rows]
    fig = go.Figure()
    fig.add_bar(x=metrics, y=[100.0] * len(rows), name="original", marker_color=COLORS["original"])
    fig.add_bar(x=metrics, y=rel, name="compressed", marker_color=COLORS["planned"], text=[f"{v:.0f}%" for v in rel], textposition="outside")
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="% of original")
    return _layout(fig, "Compressed model relative to the original", height=360)
