"""Present page: a stakeholder view — before/after headline numbers, sample predictions, key plots,
and a self-contained HTML report (the same cards and figures as the page, see :mod:`lrviz.report`)."""

import streamlit as st

from lrviz import compress, fmt, plan_cost, project, samples, tables
from lrviz.errors import LrvizError
from lrviz.evaluate import compare_latency, evaluate
from lrviz.keys import plan_key
from lrviz.report import METHOD_NOTES, build_report, headline_cards, report_figures
from pages import _measure as measure
from pages import _state as state

RESULTS_KEY = "_present"
SEED_KEY = "present_seed"


class View:
    """What this page shows: the current plan, its model (fine-tuned when there is one), the measurements."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.plan = state.current_plan(ctx)
        self.cost = plan_cost(ctx.analysis, self.plan)
        self.ft = state.finetuned_for(ctx, self.plan)
        self.variant = "fine-tuned" if self.ft is not None else "decomposed, not fine-tuned"
        self.label = state.current_label(ctx)

    def compressed_model(self):
        return self.ft["model"] if self.ft is not None else compress(self.ctx.module, self.plan, self.ctx.factors)

    def key(self, n: int) -> tuple:
        return (self.ctx.model_id, self.ctx.data_key, plan_key(self.plan), self.ft is not None and id(self.ft["model"]), int(n))


def measure_both(v: View, n: int) -> dict:
    """Accuracy of the original and the compressed model on ``n`` images, and their CPU latency."""
    ctx = v.ctx
    st.write(f"Accuracy of the original model on {n} images…")
    r0 = measure.run_eval(ctx, None, n, "original model")
    st.write(f"Accuracy of the compressed model ({v.variant})…")
    if v.ft is None:
        r1 = measure.run_eval(ctx, v.plan, n, "compressed model")
    else:
        bar = st.progress(0.0)
        r1 = evaluate(v.ft["model"], ctx.dataset, limit=n, progress=lambda d, t: bar.progress(d / t))
        bar.empty()
    st.write("CPU latency, batch 1 (interleaved rounds)…")
    lat = compare_latency({"original": ctx.original, "compressed": v.compressed_model()}, ctx.loaded.input_size, rounds=3, min_run_time=0.15)
    return {"r0": r0, "r1": r1, "lat": lat}


def measure_controls(v: View):
    """The image count and Measure button; returns this plan's measurements (None before) and their key."""
    ctx, results = v.ctx, st.session_state.setdefault(RESULTS_KEY, {})
    can_eval = ctx.eval_problem is None
    n_default = min(1000, len(ctx.dataset)) if can_eval else 0
    c = st.columns([1.2, 1, 3])
    n = c[0].number_input("Images to evaluate", 50, max(len(ctx.dataset), 50) if can_eval else 50, max(n_default, 50), 50,
                          key="present_n", disabled=not can_eval)
    clicked = c[1].button("Measure", type="primary", key="present_measure", disabled=not can_eval,
                          help="accuracy of both models and CPU latency (batch 1)")
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
    return results.get(v.key(n)), v.key(n)


def projected_cards(v: View) -> list[dict]:
    """Cards for an unmeasured plan: its projected accuracy (sensitivities or energy proxy)."""
    _, projector = measure.calibrated(v.ctx, auto=False)
    p = measure.project_plan(v.ctx, v.plan, measure.baseline(v.ctx, auto=False), projector)
    cards = []
    if p.sens is not None:
        cards.append({"label": "Top-1 accuracy (projected)", "value": f"{fmt.percent(p.base_top1)} → {fmt.percent(p.sens.top1)}",
                      "delta": f"layer sensitivities, 95 % band {fmt.percent_range(*p.sens.interval)}; press Measure"})
    elif p.energy is not None:
        cards.append({"label": "Top-1 accuracy (projected)", "value": f"{fmt.percent(p.base_top1)} → {fmt.percent(p.energy.top1)}",
                      "delta": f"{p.energy.basis}; press Measure"})
    cards.append({"label": "Accuracy & latency", "value": "not measured", "delta": "press Measure"})
    return cards


def headline(v: View, meas) -> tuple[list[dict], list[dict]]:
    if meas and meas["r0"] is not None and meas["r1"] is not None:
        cards, bars = headline_cards(v.cost, meas["r0"], meas["r1"], meas["lat"]["original"], meas["lat"]["compressed"])
    else:
        cards, bars = headline_cards(v.cost)
        cards += projected_cards(v)
    for col, card in zip(st.columns(len(cards)), cards):
        col.metric(card["label"], card["value"], card.get("delta"), delta_color="off", delta_arrow="off")
    return cards, bars


def predictions(v: View) -> list:
    """Eight images with the original's and the compressed model's predictions; returns them for the report."""
    ctx, images = v.ctx, []
    st.subheader("Sample predictions")
    idx = samples.sample_indices(ctx.dataset, 8, seed=st.session_state.get(SEED_KEY, 0))
    classes = list(getattr(ctx.dataset, "classes", [])) or [str(i) for i in range(ctx.loaded.num_classes)]
    try:
        labels, p0, _ = samples.predict(ctx.original, ctx.dataset, idx)
        _, p1, _ = samples.predict(v.compressed_model(), ctx.dataset, idx)
    except Exception as exc:  # a model that fails on the data: say why, keep the page
        st.error(f"Prediction failed: {type(exc).__name__}: {exc}")
        labels, p0, p1 = [], [], []
    for col, i, y, a0, a1 in zip(st.columns(8), idx, labels, p0, p1):
        img = samples.display_image(ctx.dataset[i][0])
        mark = lambda p: ":green[✓]" if p == y else ":red[✗]"  # noqa: E731
        plain = lambda p: "✓" if p == y else "✗"  # noqa: E731
        col.image(img, width="stretch")
        col.caption(f"true: **{classes[y]}**  \noriginal: {classes[a0]} {mark(a0)}  \ncompressed: {classes[a1]} {mark(a1)}")
        images.append((img, f"true: {classes[y]} · original: {classes[a0]} {plain(a0)} · compressed: {classes[a1]} {plain(a1)}"))
    st.button("Other images", key="present_shuffle", on_click=lambda: st.session_state.update({SEED_KEY: st.session_state.get(SEED_KEY, 0) + 1}))
    return images


def figures_of(v: View, bars) -> dict:
    """The report's figures (the page shows the bars, the per-layer params and the sweep of them)."""
    ctx, a = v.ctx, v.ctx.analysis
    sweep_key, sweep = next(((k, s) for k, s in st.session_state.get(state.SWEEPS_KEY, {}).items()
                             if k[0] == ctx.model_id and k[1] == ctx.data_key), (None, None))
    base = measure.baseline(ctx, auto=False)
    base_top1 = None if base is None else base.top1
    projection = None
    rows = measure.measured(ctx)
    if rows:
        base_acc, _ = measure.projection_base(ctx, base)
        proj = measure.projection(ctx, v.plan, base_acc)
        curve = None
        if base_acc is not None:
            curve = project.curve_top1(state.cached_retention_curve(ctx.source.key, a), base_acc, ctx.loaded.num_classes,
                                       proj.exponent if proj else project.DEFAULT_EXPONENT)
        current = None if proj is None else {"params_ratio": v.cost.params_ratio, "top1": proj.top1}
        projection = dict(curve=curve, current=current, measured=rows, base_top1=base_acc, chance=1.0 / ctx.loaded.num_classes)
    sweep_metric = sweep_key[2][1] if sweep_key is not None and isinstance(sweep_key[2], tuple) else None
    return report_figures(v.cost, bars, analysis=a, sweep=sweep, sweep_metric=sweep_metric, base_top1=base_top1, projection=projection)


def report(v: View, cards, figs: dict, images, rkey) -> None:
    ctx, loaded = v.ctx, v.ctx.loaded
    st.subheader("Report")
    notes = [f"Model: {loaded.source}; input {'×'.join(map(str, loaded.input_size))}; {loaded.num_classes} classes.",
             f"Plan: {v.label} ({v.variant}); Tucker-2 for k×k convs, truncated SVD for 1×1 convs and linear layers.",
             *METHOD_NOTES, f"Projection (when shown): {project.DESCRIPTION}."]
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
    meas, rkey = measure_controls(v)
    cards, bars = headline(v, meas)
    figs = figures_of(v, bars)
    left, right = st.columns(2)
    left.plotly_chart(figs["bars"][1], key="present_bars")
    right.plotly_chart(figs["layers"][1], key="present_layers")
    images = predictions(v) if ctx.eval_problem is None else []
    if "sweep" in figs:
        st.plotly_chart(figs["sweep"][1], key="present_sweep")
    report(v, cards, figs, images, rkey)


render()
