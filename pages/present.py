"""Present page: a stakeholder view — before/after headline numbers, sample predictions, key plots,
and a self-contained HTML report (the same cards, figures and notes as the page, see :mod:`lrviz.report`).

Latency is the plan's end-to-end speed measurement (``lrviz.latency.bench`` at batch 1 and 64, shared
with the Ranks page and looked up by the plan's ranks): original and compressed median times with
their spread (IQR), device, threads, execution and speedup, or "not measured yet" with a button.

A fine-tuned model is measured, together with the original, only on the evaluation part of its
fine-tuning split (:func:`lrviz.data.finetune_splits`: images never trained on nor used to pick the
epoch), and the caption says so. An unmeasured plan shows its sensitivity projection — the same
:class:`lrviz.project.Projection` the Ranks page shows — or "not projected yet"; never the energy proxy.
"""

import streamlit as st

from lrviz import compress, plan_cost, samples, tables
from lrviz.data import DatasetSubset, images_label, overlaps, subset_indices
from lrviz.errors import LrvizError
from lrviz.evaluate import evaluate
from lrviz.keys import plan_key
from lrviz.report import (accuracy_basis, build_report, headline_cards, latency_bars, latency_cards, latency_note, method_notes,
                          projection_card, projection_note, report_figures)
from pages import _measure as measure
from pages import _state as state

RESULTS_KEY = "_present"
SEED_KEY = "present_seed"


class View:
    """What this page shows: the current plan, its model (fine-tuned when there is one for this data),
    the images it may be evaluated on, its projection, the measurements."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.plan = state.current_plan(ctx)
        self.cost = plan_cost(ctx.analysis, self.plan)
        ft = state.finetuned_for(ctx, self.plan)
        # a fine-tuned model counts only on the data it was split from: its held-out indices refer to it
        self.ft_elsewhere = ft if ft is not None and (ft.get("data_key") != ctx.data_key or "split" not in ft) else None
        self.ft = None if self.ft_elsewhere is not None else ft
        self.split_problem = overlaps(self.ft["split"]) if self.ft is not None else []
        if self.split_problem:  # never made by lrviz.data.finetune_splits; refuse rather than report a leaked number
            self.ft_elsewhere, self.ft = self.ft, None
        self.variant = "fine-tuned" if self.ft is not None else "decomposed, not fine-tuned"
        self.label = state.current_label(ctx)
        self.sens, self.projector = measure.calibrated(ctx)  # the disk cache (or the bundled copy) when it is cheap to look up
        self.proj = measure.project_plan(ctx, self.plan, measure.baseline(ctx, auto=False), self.projector)

    def compressed_model(self):
        return self.ft["model"] if self.ft is not None else compress(self.ctx.module, self.plan, self.ctx.factors)

    def eval_positions(self) -> list[int] | None:
        """Indices into the data that may be reported for the fine-tuned model (None: all of it)."""
        if self.ft is None:
            return None
        idx = list(self.ft["split"]["eval"]["indices"])
        return None if idx == list(range(len(self.ctx.dataset))) else idx

    def eval_size(self) -> int:
        idx = self.eval_positions()
        return len(self.ctx.dataset) if idx is None else len(idx)

    def eval_what(self) -> str:
        return self.ft["split"]["eval"]["what"] if self.ft is not None else images_label(self.ctx.dataset)

    def eval_subset(self, n: int) -> tuple[object, list[int]]:
        """The ``n`` images both models are measured on (as :func:`lrviz.data.subset` picks them from the
        reportable images) and their indices in the data."""
        idx = self.eval_positions()
        if idx is None:
            chosen = subset_indices(self.ctx.dataset, n)  # the dataset: a stratified kind (imagenet) picks per class
        else:
            chosen = [idx[i] for i in subset_indices(len(idx), n)]
        return DatasetSubset(self.ctx.dataset, chosen), chosen

    def basis(self, n: int) -> str:
        return accuracy_basis(min(n, self.eval_size()), self.eval_what(), self.ft)

    def key(self, n: int) -> tuple:
        return (self.ctx.model_id, self.ctx.data_key, plan_key(self.plan), self.ft is not None and id(self.ft["model"]), int(n))


def _evaluate(model, dataset, text: str):
    bar = st.progress(0.0, text=text)
    res = evaluate(model, dataset, progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"{text} {d}/{t}"))
    bar.empty()
    return res


def measure_both(v: View, n: int) -> dict:
    """Accuracy of the original and the compressed model on the same ``n`` reportable images, and their
    speed (when this plan's is not measured yet)."""
    ctx = v.ctx
    held, indices = v.eval_subset(n)
    st.write(f"Accuracy of the original model on {len(indices)} images…")
    if v.ft is None:  # any images of the data: shared with the other pages' evaluations
        r0 = measure.run_eval(ctx, None, n, "original model")
        st.write(f"Accuracy of the compressed model ({v.variant})…")
        r1 = measure.run_eval(ctx, v.plan, n, "compressed model")
    else:  # only images never used for fine-tuning or for picking its epoch
        r0 = _evaluate(ctx.original, held, "Evaluating the original model:")
        st.write(f"Accuracy of the compressed model ({v.variant})…")
        r1 = _evaluate(v.ft["model"], held, "Evaluating the fine-tuned model:")
    if measure.speed_result(ctx, v.plan) is None:
        st.write(f"Speed of both models at batch {' and '.join(map(str, measure.SPEED_BATCHES))} (end to end, interleaved rounds)…")
        measure.measure_speed_now(ctx, v.plan, v.label)
    return {"r0": r0, "r1": r1, "indices": indices, "basis": v.basis(len(indices))}


def measure_controls(v: View):
    """The image count and Measure button; returns this plan's measurements (None before), their key and the count."""
    ctx, results = v.ctx, st.session_state.setdefault(RESULTS_KEY, {})
    can_eval = ctx.eval_problem is None
    size = v.eval_size() if can_eval else 0
    lo = min(50, size) if can_eval else 50
    if int(st.session_state.get("present_n") or 0) > max(size, lo, 1):  # fewer reportable images than before
        st.session_state["present_n"] = max(size, lo, 1)
    c = st.columns([1.2, 1, 3])
    n = c[0].number_input("Images to evaluate", max(lo, 1), max(size, lo, 1), max(min(1000, size), lo, 1), max(lo, 1),
                          key="present_n", disabled=not can_eval,
                          help="of the images that may be reported: the evaluation part of the fine-tuning split when the model is fine-tuned")
    clicked = c[1].button("Measure", type="primary", key="present_measure", disabled=not can_eval,
                          help="accuracy of both models; and their speed at batch 1 and 64 when this plan's is not measured yet "
                               "(up to a minute: every execution is tried, torch.compile included)")
    if not can_eval:
        c[2].info(f"Accuracy cannot be measured: {ctx.eval_problem}.")
    if clicked:
        with st.status("Measuring…", expanded=True) as status:
            try:
                results[v.key(n)] = measure_both(v, int(n))
                status.update(label="Measured", state="complete", expanded=False)
            except LrvizError as exc:
                status.update(label="Measurement failed", state="error")
                st.error(f"Measurement failed: {exc}")
    return results.get(v.key(n)), v.key(n), int(n)


def projected_cards(v: View) -> list[dict]:
    """Cards for an unmeasured plan: its sensitivity projection (the Ranks page's), else "not projected yet"."""
    return [projection_card(v.proj.sens, v.proj.base_top1),
            {"label": "Accuracy (measured)", "value": "not measured", "delta": "press Measure"}]


def _cards_row(cards) -> None:
    for col, card in zip(st.columns(len(cards)), cards):
        col.metric(card["label"], card["value"], card.get("delta"), delta_color="off", delta_arrow="off")


@st.fragment(run_every=1.0)
def speed_progress() -> None:
    """Progress of this session's speed job (started here or on the Ranks page); a full rerun when it ends."""
    if measure.speed_progress_bar():
        st.rerun()


def headline(v: View, meas, speed) -> tuple[list[dict], list[dict]]:
    """The headline cards (size, FLOPs, accuracy or its projection; then the measured latency) and bars."""
    if meas and meas["r0"] is not None and meas["r1"] is not None:
        cards, bars = headline_cards(v.cost, meas["r0"], meas["r1"], after=v.variant)
    else:
        cards, bars = headline_cards(v.cost)
        cards += projected_cards(v)
    _cards_row(cards)
    lat_cards = latency_cards(speed)
    bars += latency_bars(speed)
    if speed is not None:
        _cards_row(lat_cards)
    else:
        c = st.columns([1.3, 1.2, 2.5])
        card = lat_cards[0]
        c[0].metric(card["label"], card["value"], card["delta"], delta_color="off", delta_arrow="off")
        busy = measure.timing_busy()
        if c[1].button(f"Measure speed (batch {' and '.join(map(str, measure.SPEED_BATCHES))})", key="present_speed",
                       disabled=busy is not None, help="time the original and the compressed model end to end in the background"
                       + ("" if busy is None else f"; waits for {busy} (running in the background)")) and busy is None:
            measure.start_speed_job(v.ctx, v.plan, v.label)
        with c[2]:
            if measure.speed_running():
                speed_progress()
            elif busy is not None:
                st.caption(f"Waits for {busy} (running in the background): a timing beside it would be slowed down.")
    err = measure.speed_error(v.ctx, v.plan)
    if err:
        st.error(f"Speed measurement failed: {err}")
    return cards + lat_cards, bars


def basis_caption(v: View, meas, n: int) -> str | None:
    """Which images the before/after accuracies come from (measured, or to be measured with Measure)."""
    if v.ctx.eval_problem is not None:
        return None
    text = meas["basis"] if meas else v.basis(n) + " (press Measure)"
    st.caption(f"Accuracy basis — {text}.")
    if v.split_problem:
        st.error(f"The fine-tuned model's data split overlaps ({'; '.join(v.split_problem)}); showing the decomposed model.")
    elif v.ft_elsewhere is not None:
        st.caption("A fine-tuned model of this plan exists for other data; its held-out images belong to that data, so the "
                   "decomposed model is shown here. Select that data in the sidebar to present it.")
    return meas["basis"] if meas else None


def predictions(v: View) -> list:
    """Eight images with the original's and the compressed model's predictions; returns them for the report."""
    ctx, images = v.ctx, []
    st.subheader("Sample predictions")
    data, _ = v.eval_subset(v.eval_size())  # reportable images only
    idx = samples.sample_indices(data, 8, seed=st.session_state.get(SEED_KEY, 0))
    classes = list(getattr(ctx.dataset, "classes", [])) or [str(i) for i in range(ctx.loaded.num_classes)]
    try:
        labels, p0, _ = samples.predict(ctx.original, data, idx)
        _, p1, _ = samples.predict(v.compressed_model(), data, idx)
    except Exception as exc:  # a model that fails on the data: say why, keep the page
        st.error(f"Prediction failed: {type(exc).__name__}: {exc}")
        labels, p0, p1 = [], [], []
    for col, i, y, a0, a1 in zip(st.columns(8), idx, labels, p0, p1):
        img = samples.display_image(data[i][0])
        mark = lambda p: ":green[✓]" if p == y else ":red[✗]"  # noqa: E731
        plain = lambda p: "✓" if p == y else "✗"  # noqa: E731
        col.image(img, width="stretch")
        col.caption(f"true: **{classes[y]}**  \noriginal: {classes[a0]} {mark(a0)}  \ncompressed: {classes[a1]} {mark(a1)}")
        images.append((img, f"true: {classes[y]} · original: {classes[a0]} {plain(a0)} · compressed: {classes[a1]} {plain(a1)}"))
    st.button("Other images", key="present_shuffle", on_click=lambda: st.session_state.update({SEED_KEY: st.session_state.get(SEED_KEY, 0) + 1}))
    return images


def figures_of(v: View, bars) -> dict:
    """The report's figures (the page shows the bars, the per-layer params and the sweep of them).

    The projection chart is the Ranks page's, from the same projection as the cards: the sensitivity
    projection along the energy plans with its band, and the current plan; without sensitivities only
    the measured quick evaluations (no energy-proxy curve).
    """
    ctx, a, p = v.ctx, v.ctx.analysis, v.proj
    sweep_key, sweep = next(((k, s) for k, s in st.session_state.get(state.SWEEPS_KEY, {}).items()
                             if k[0] == ctx.model_id and k[1] == ctx.data_key), (None, None))
    base = measure.baseline(ctx, auto=False)
    base_top1 = None if base is None else base.top1
    projection = None
    rows = measure.measured(ctx)
    chance = 1.0 / ctx.loaded.num_classes
    if p.sens is not None:
        curve = tables.projection_curve(state.cached_retention_curve(ctx.source.key, a), v.projector, measure.base_override(ctx))
        current = {"params_ratio": v.cost.params_ratio, "top1": p.sens.top1, "lo": p.sens.interval[0], "hi": p.sens.interval[1]}
        projection = dict(curve=curve, current=current, measured=rows, base_top1=p.base_top1, chance=chance,
                          curve_name="projection along energy plans (sensitivities)")
    elif rows:
        projection = dict(curve=None, current=None, measured=rows, base_top1=p.base_top1, chance=chance)
    sweep_metric = sweep_key[2][1] if sweep_key is not None and isinstance(sweep_key[2], tuple) else None
    return report_figures(v.cost, bars, analysis=a, sweep=sweep, sweep_metric=sweep_metric, base_top1=base_top1, projection=projection)


def speed_text(v: View, speed) -> str:
    """The latency method note, on the page and in the report."""
    same = (" The fine-tuned model has the same layers as the decomposed one, so it runs as fast."
            if v.ft is not None and speed is not None else "")
    return latency_note(speed, v.cost.macs_ratio) + same


def report(v: View, cards, figs: dict, images, rkey, basis: str | None, latency: str) -> None:
    ctx, loaded = v.ctx, v.ctx.loaded
    st.subheader("Report")
    notes = [f"Model: {loaded.source}; input {'×'.join(map(str, loaded.input_size))}; {loaded.num_classes} classes.",
             f"Plan: {v.label} ({v.variant}); Tucker-2 for k×k convs, truncated SVD for 1×1 convs and linear layers.",
             *method_notes(projection_note(v.proj.sens, v.proj.base_text), basis, latency)]
    if v.ft is not None:
        notes.append(f"Fine-tuning data: {v.ft['split']['description']}.")
    if st.button("Build HTML report", key="build_report"):
        with st.spinner("Building the report (plotly.js is embedded so it works offline)…"):
            html = build_report(f"{loaded.name}: low-rank compression report", cards,
                                subtitle=f"Plan {v.label} · {v.variant} · {ctx.data_src.label if ctx.data_src else ''}",
                                figures=list(figs.values()), tables=[("Per-layer ranks and cost", tables.cost_table(v.cost))],
                                images=images, notes=notes)
        st.session_state["_report"] = (rkey, html.encode("utf-8"))
    rep = st.session_state.get("_report")
    if rep is not None and rep[0] == rkey:
        st.download_button("Download report (HTML)", rep[1], file_name=f"lrviz-{loaded.name}-report.html", mime="text/html",
                           key="dl_report", type="primary")
        st.caption(f"{len(rep[1]) / 1e6:.1f} MB, self-contained (opens offline).")


def render() -> None:
    ctx = state.require_ctx(decomposable=True)
    v = View(ctx)
    st.title(f"{ctx.loaded.name}: before and after compression")
    st.caption(f"Plan **{v.label}** ({v.variant}) · data: {ctx.data_src.label if ctx.data_src else '–'} · "
               "MACs at batch 1, FLOPs = 2 × MACs, size = params × 4 bytes (float32)")
    meas, mkey, n = measure_controls(v)
    speed = measure.speed_result(ctx, v.plan)  # this plan's (by its ranks), or None
    cards, bars = headline(v, meas, speed)
    basis = basis_caption(v, meas, n)
    latency = speed_text(v, speed)
    st.caption(latency)
    rkey = (mkey, speed is not None)
    figs = figures_of(v, bars)
    left, right = st.columns(2)
    left.plotly_chart(figs["bars"][1], key="present_bars")
    right.plotly_chart(figs["layers"][1], key="present_layers")
    images = predictions(v) if ctx.eval_problem is None else []
    if "sweep" in figs:
        st.plotly_chart(figs["sweep"][1], key="present_sweep")
    report(v, cards, figs, images, rkey, basis, latency)


render()
