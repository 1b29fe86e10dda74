"""A self-contained HTML report of a compression result (works offline: plotly.js is embedded once).

The Present page shows the same headline cards (:func:`headline_cards`, :func:`projection_card`,
:func:`latency_cards`),
figures (:func:`report_figures`, drawn by :mod:`lrviz.figures`) and notes (:func:`method_notes`) as the
report it builds — made once, from the same objects, so the two cannot disagree: the projected
accuracy is the page's :class:`lrviz.project.Projection` (layer sensitivities) or "not projected yet",
never the data-free energy proxy shown as an accuracy; the "after" accuracy says which images it
comes from and whether the model was fine-tuned (:func:`accuracy_basis`); latency is the measured
:func:`lrviz.latency.bench` of the plan (median, IQR, device, threads, execution; :func:`latency_note`)
or "not measured yet", never the MACs ratio shown as a speedup. Usable on its own::

    cards, bars = headline_cards(cost)
    html = build_report("ResNet-20 on Fashion-MNIST", cards, figures=list(report_figures(cost, bars).values()))
    Path("report.html").write_text(html, encoding="utf-8")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import figures as fg
from .cost import CostReport
from .fmt import human, percent, percent_range, points, size_mb

__all__ = ["METHOD_NOTES", "NOT_MEASURED", "NOT_PROJECTED", "PROJECTED_LABEL", "accuracy_basis", "build_report", "compression_report",
           "device_name", "environment",
           "headline_cards", "latency_bars", "latency_cards", "latency_note", "method_notes", "png_data_uri", "projection_card",
           "projection_note", "report_figures", "speedup_text"]

#: How the report's numbers are made, whatever the basis (:func:`method_notes` adds the basis lines).
METHOD_NOTES = (
    "MACs: multiply-accumulates at batch 1 of conv and linear layers; FLOPs = 2 × MACs; size = parameters × 4 bytes.",
    "Accuracies: fraction of correctly classified images of a fixed subset, with 95 % Wilson score intervals.",
)

#: The projected-accuracy card's label and its value when there is no projection to show.
PROJECTED_LABEL = "Top-1 accuracy (projected)"
NOT_PROJECTED = "not projected yet"
#: The latency card's value when this plan's speed has not been measured.
NOT_MEASURED = "not measured yet"

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-bottom:20px}
.cards{display:flex;flex-wrap:wrap;gap:14px;margin:18px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:10px;padding:12px 16px;min-width:180px;flex:1}
.card .k{color:#666;font-size:13px}.card .v{font-size:22px;font-weight:600;margin-top:4px}
.card .d{font-size:13px;color:#2a7a2a;margin-top:2px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:8px 0}
th,td{border:1px solid #e3e3e3;padding:4px 8px;text-align:right} th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
.fig{background:#fff;border:1px solid #e3e3e3;border-radius:10px;padding:6px;margin:12px 0}
.imgs{display:flex;flex-wrap:wrap;gap:12px}.imgs figure{margin:0;background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:6px;text-align:center;font-size:12px;width:130px}
.imgs img{width:112px;height:112px;image-rendering:pixelated}
.note{color:#555;font-size:13px}
footer{margin-top:40px;color:#888;font-size:12px}
"""


def png_data_uri(image: np.ndarray) -> str:
    """``uint8`` image (``H×W`` or ``H×W×3``) as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def headline_cards(cost: CostReport, r0=None, r1=None, after: str | None = None) -> tuple[list[dict], list[dict]]:
    """Before/after headline numbers: ``(cards, bars)``.

    ``cards`` (``label``, ``value``, ``delta``) are the size and FLOPs, plus the accuracy of the
    original (``r0``) and compressed (``r1``) models when measured; ``after`` (e.g. ``"fine-tuned"``)
    says what the compressed model is. ``bars`` (``metric``, ``before``, ``after``) feed
    :func:`lrviz.figures.before_after_figure`. Measured latency has its own cards (:func:`latency_cards`).
    """
    cards = [
        {"label": "Model size (float32)", "value": f"{size_mb(cost.params):.2f} → {size_mb(cost.params_planned):.2f} MB",
         "delta": f"{cost.params_ratio:.2f}× smaller"},
        {"label": "FLOPs per image (2 × MACs)", "value": f"{human(cost.flops)} → {human(cost.flops_planned)}", "delta": f"{cost.macs_ratio:.2f}× fewer"},
    ]
    bars = [{"metric": "size", "before": cost.params, "after": cost.params_planned},
            {"metric": "FLOPs", "before": cost.flops, "after": cost.flops_planned}]
    if r0 is not None and r1 is not None:
        cards.append({"label": f"Top-1 accuracy ({r1.n} images)", "value": f"{percent(r0.top1)} → {percent(r1.top1)}",
                      "delta": f"{points(r1.top1 - r0.top1)} (95 % CI after: {percent_range(*r1.top1_ci)})"
                               + (f" · after: {after}" if after else "")})
        bars.append({"metric": "accuracy", "before": r0.top1, "after": r1.top1})
    return cards, bars


def device_name(device: str) -> str:
    """``"cpu"`` → ``"CPU"``, ``"cuda:0"`` → ``"CUDA:0"`` (how the cards name where latency was measured)."""
    return str(device).upper()


def speedup_text(speedup: float) -> str:
    """``"1.52× faster"`` or ``"1.15× slower"`` (original ÷ compressed time)."""
    return f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / max(speedup, 1e-12):.2f}× slower"


def _execution_text(r) -> str:
    steps = " + ".join(r.applied) if r.applied else "nothing applied"
    return r.execution if r.execution == "eager" else f"{r.execution} ({steps})"


def latency_cards(speed) -> list[dict]:
    """The measured-latency cards of a plan, on the Present page and in the report: one per batch size of
    ``speed`` (the :class:`lrviz.latency.BenchResult` list of :func:`lrviz.latency.bench`), the original's
    and the compressed model's median time with their spread (IQR), the speedup, the execution, the
    device and the threads; one :data:`NOT_MEASURED` card when ``speed`` is None or empty."""
    if not speed:
        return [{"label": "Latency (measured)", "value": NOT_MEASURED,
                 "delta": "no end-to-end timing of this plan yet: press Measure speed"}]
    return [{"label": f"{device_name(r.device)} latency (batch {r.batch}, median)",
             "value": f"{r.original_ms:.2f} → {r.planned_ms:.2f} ms",
             "delta": f"measured {speedup_text(r.speedup)} · IQR {r.original_iqr_ms:.2f} → {r.planned_iqr_ms:.2f} ms · "
                      f"{r.execution}, {r.threads} thread{'s' if r.threads != 1 else ''}"} for r in speed]


def latency_bars(speed) -> list[dict]:
    """Before/after bars of the measured latency (one per batch size; none when not measured)."""
    return [{"metric": f"latency, batch {r.batch}", "before": r.original_ms, "after": r.planned_ms} for r in (speed or ())]


def latency_note(speed, macs_ratio: float | None = None) -> str:
    """The method note of the measured latency (the same results as :func:`latency_cards`)."""
    if not speed:
        return (f"Latency: {NOT_MEASURED} for this plan — the original and the compressed model have not been timed; "
                + (f"the MACs predict {macs_ratio:.2f}× fewer operations, which is not a measured speedup." if macs_ratio else
                   "no speedup is reported."))
    r0 = speed[0]
    threads = f"{r0.threads} thread{'s' if r0.threads != 1 else ''}"
    per = "; ".join(f"batch {r.batch}: {r.original_ms:.2f} ms (IQR {r.original_iqr_ms:.2f}) → {r.planned_ms:.2f} ms "
                    f"(IQR {r.planned_iqr_ms:.2f}), {speedup_text(r.speedup)} under {_execution_text(r)}, "
                    f"{r.speedup_vs_eager:.2f}× vs the original as loaded (eager, {r.original_eager_ms:.2f} ms)" for r in speed)
    text = (f"Latency: measured on {device_name(r0.device)} with {threads}, original and compressed timed end to end in "
            "interleaved rounds (torch.utils.benchmark); median of the timed calls, spread = interquartile range (IQR). "
            "Both models run under the same execution, "
            + ("the fastest of those measured for the compressed one. " if any(r.executions for r in speed) else "fixed in advance. ")
            + per + ".")
    if macs_ratio:
        text += f" For comparison, the MACs predict {macs_ratio:.2f}× (not measured)."
    notes = list(dict.fromkeys(n for r in speed for n in r.notes))
    if notes:
        text += " Notes: " + "; ".join(notes) + "."
    if all(r.cached for r in speed):
        text += " (Read from the measurement cache of an earlier run with the same weights, plan, device and threads.)"
    return text


def projection_card(sens, base_top1: float | None) -> dict:
    """The projected-accuracy card of an unmeasured plan, on the page and in the report.

    ``sens`` is the plan's sensitivity projection (:class:`lrviz.project.Projection`, basis
    ``"sensitivities"``) or None; ``base_top1`` the original's accuracy it starts from. Without one
    the card says :data:`NOT_PROJECTED`: the data-free energy proxy is never shown as an accuracy.
    """
    if sens is None:
        return {"label": PROJECTED_LABEL, "value": NOT_PROJECTED,
                "delta": "no layer sensitivities for this model and data yet: measure them on the Ranks page, or press Measure"}
    base = sens.base_top1 if base_top1 is None else base_top1
    return {"label": PROJECTED_LABEL, "value": f"{percent(base)} → {percent(sens.top1)}",
            "delta": f"layer sensitivities, 95 % band {percent_range(*sens.interval)}; decomposed, before fine-tuning; not measured"}


def projection_note(sens, base_text: str | None = None) -> str:
    """The method note of the projection shown (the same object as :func:`projection_card`)."""
    if sens is None:
        return (f"Projected accuracy: {NOT_PROJECTED} — no layer sensitivities were measured for this model, data and "
                "quick-evaluation size. The data-free energy proxy ranks plans but is not an accuracy, so none is reported.")
    start = f" (original's accuracy {base_text})" if base_text else ""
    return (f"Projected accuracy: basis layer sensitivities — {sens.detail}. {percent(sens.base_top1)} → {percent(sens.top1)}, "
            f"~95 % band {percent_range(*sens.interval)}{start}; the decomposed model before fine-tuning, not measured.")


def accuracy_basis(n: int, what: str, finetune: Mapping[str, Any] | None = None) -> str:
    """Which images the before/after accuracies come from and what the "after" model is.

    ``n`` images of the evaluation data (called ``what``) were measured; ``finetune`` is the
    fine-tuning record (``split`` — a :meth:`lrviz.data.DataSplits.record` —, ``epochs_run``,
    ``best_epoch``) or None for the decomposed model.
    """
    if finetune is None:
        return f"after: decomposed, not fine-tuned; both models evaluated on the same {n:,} {what}"
    split = finetune["split"]
    t, v, e = split["train"], split["val"], split["eval"]
    epochs, best = int(finetune.get("epochs_run") or 0), int(finetune.get("best_epoch") or 0)
    if best == 0:
        kept = f"no epoch beat the decomposed weights on {v['n']:,} other {v['what']}, so those are kept"
    else:
        kept = f"epoch {best} kept, chosen on {v['n']:,} other {v['what']}"
    held = "held-out " if split.get("held_out") else ""
    return (f"after: fine-tuned {epochs} epoch{'s' if epochs != 1 else ''} on {t['n']:,} {t['what']} ({kept}); both models "
            f"evaluated on {n:,} {held}{e['what']} never used for training or selection")


def method_notes(projection: str, accuracy: str | None = None, latency: str | None = None) -> list[str]:
    """:data:`METHOD_NOTES` plus the lines on the bases actually used: ``accuracy``
    (:func:`accuracy_basis`, when measured), ``projection`` (:func:`projection_note`) and ``latency``
    (:func:`latency_note`)."""
    return [*METHOD_NOTES, *([f"Accuracy basis: {accuracy}."] if accuracy else []), projection, *([latency] if latency else [])]


def report_figures(cost: CostReport, bars: Sequence[Mapping], *, analysis=None, sweep: pd.DataFrame | None = None,
                   sweep_metric: str | None = None, base_top1: float | None = None,
                   projection: Mapping[str, Any] | None = None) -> dict[str, tuple[str, Any]]:
    """The report's figures in order, ``key → (title, figure)``: ``bars`` (before/after), ``layers``
    (per-layer params), and when given ``sweep`` (measured sweep rows), ``projection`` (keyword
    arguments of :func:`lrviz.figures.projection_figure`) and ``spectra`` (the analysis's heat-map).
    The Present page draws its charts from the same dictionary."""
    out = {"bars": ("Compressed relative to original", fg.before_after_figure(bars)),
           "layers": ("Per-layer parameters", fg.layer_cost_figure(cost, "params"))}
    if sweep is not None and sweep["top1"].notna().any():
        out["sweep"] = ("Accuracy vs compression ratio", fg.sweep_figure(sweep, base_top1, sweep_metric))
    if projection is not None:
        out["projection"] = ("Quick evaluations and projection", fg.projection_figure(**projection))
    if analysis is not None and analysis.has_spectra:
        out["spectra"] = ("Normalised spectra", fg.spectra_heatmap(analysis))
    return out


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _cards(rows: Sequence[Mapping[str, Any]]) -> str:
    out = ['<div class="cards">']
    for r in rows:
        delta = f'<div class="d">{_esc(r["delta"])}</div>' if r.get("delta") else ""
        out.append(
            f'<div class="card"><div class="k">{_esc(r["label"])}</div>'
            f'<div class="v">{_esc(r["value"])}</div>{delta}</div>'
        )
    out.append("</div>")
    return "".join(out)


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, na_rep="–", float_format=lambda v: f"{v:.4g}")


def build_report(
    title: str,
    cards: Sequence[Mapping[str, Any]],
    *,
    subtitle: str = "",
    figures: Sequence[tuple[str, Any]] = (),
    tables: Sequence[tuple[str, pd.DataFrame]] = (),
    images: Sequence[tuple[np.ndarray, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """Build the report as one HTML string.

    Parameters
    ----------
    title, subtitle : str
    cards : sequence of mappings
        Headline numbers: ``{"label", "value", "delta" (optional)}``.
    figures : sequence of (title, plotly Figure)
        Embedded interactively; plotly.js is included inline once (no network needed).
    tables : sequence of (title, DataFrame)
    images : sequence of (uint8 image, caption)
        Sample predictions.
    notes : sequence of str
        Methodology notes (units, what the numbers are based on).
    """
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_esc(title)}</title><meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f"<div class='sub'>{_esc(subtitle)}</div>" if subtitle else "",
        _cards(cards),
    ]
    first = True
    if figures:
        parts.append("<h2>Plots</h2>")
    for fig_title, fig in figures:
        fig = type(fig)(fig).update_layout(template="plotly_white")  # a copy: the caller's figure is unchanged
        div = fig.to_html(full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})
        first = False
        parts.append(f"<div class='fig'><h3>{_esc(fig_title)}</h3>{div}</div>")
    if images:
        parts.append("<h2>Sample predictions</h2><div class='imgs'>")
        for img, caption in images:
            parts.append(f"<figure><img alt='{_esc(caption)}' src='{png_data_uri(img)}'><figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    for t_title, df in tables:
        parts.append(f"<h2>{_esc(t_title)}</h2>{_table(df)}")
    if notes:
        parts.append("<h2>Notes</h2><ul class='note'>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>Generated by lrviz on {stamp}.</footer></main></body></html>")
    return "".join(parts)


def environment(device: str = "cpu") -> dict[str, str]:
    """Where a report was made: lrviz, Python, torch, the platform, CPU cores and threads, the device."""
    import os
    import platform

    import torch

    from . import __version__

    env = {"lrviz": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(terse=True), "cpu cores": str(os.cpu_count() or "?"), "threads": str(torch.get_num_threads()),
           "device": device_name(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


#: Per-layer spectrum figures in a report, at most (the heat-map shows every layer).
MAX_LAYER_SPECTRA = 60


def compression_report(loaded, analysis, plan, cost: CostReport, *, r0=None, r1=None, accuracy_what: str | None = None,
                       projection=None, speed=None, data_label: str = "", command: str | None = None, device: str = "cpu") -> str:
    """The whole report of ``plan`` on ``loaded`` (a :class:`lrviz.models.LoadedModel`) as one HTML string — what
    ``lrviz report`` writes, with the Present page's cards and notes: size and FLOPs before/after, the
    accuracy of the original ``r0`` and compressed ``r1`` model (on ``accuracy_what``, e.g. "fashion-mnist
    test images"; both or neither), the sensitivity ``projection`` of the plan or "not projected yet", the
    measured ``speed`` (:func:`lrviz.latency.bench` results) or "not measured yet"; the spectra with their
    VBMF cuts and planned ranks per layer; per-layer ranks and costs; the environment; the ``command`` that
    reproduces the report."""
    from .tables import cost_table, spectra_table

    cards, bars = headline_cards(cost, r0, r1)
    cards = [*cards, projection_card(projection, None), *latency_cards(speed)]
    bars = [*bars, *latency_bars(speed)]
    figs = list(report_figures(cost, bars, analysis=analysis).values())
    if analysis.has_spectra:
        planned = {lp.name: lp.ranks for lp in plan.layers if not lp.method}  # a CP / spatial layer has no Tucker-2 cut
        for l in analysis.layers[:MAX_LAYER_SPECTRA]:
            if l.name in analysis.spectra:
                figs.append((f"Spectrum of {l.name}", fg.spectrum_figure(analysis, l.name, planned.get(l.name))))
    accuracy = accuracy_basis(r1.n, accuracy_what or "images") if r1 is not None else None
    env = environment(device)
    notes = [f"Model: {loaded.source}; input {'×'.join(map(str, loaded.input_size))}; {loaded.num_classes} classes.",
             f"Plan: {plan.spec}; Tucker-2 for k×k convs, truncated SVD for 1×1 convs and linear layers.",
             *method_notes(projection_note(projection), accuracy, latency_note(speed, cost.macs_ratio)),
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "."]
    if command:
        notes.append(f"Reproduce: {command}")
    tabs = [("Per-layer ranks and cost", cost_table(cost))]
    if analysis.has_spectra:
        tabs.append(("Spectra and VBMF ranks", spectra_table(analysis)))
    return build_report(f"{loaded.name}: low-rank compression report", cards,
                        subtitle=f"Plan {plan.spec}" + (f" · {data_label}" if data_label else ""), figures=figs, tables=tabs, notes=notes)
