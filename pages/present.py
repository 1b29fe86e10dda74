"""Present page: a stakeholder view — before/after headline numbers, sample predictions, key plots,
and a self-contained HTML report."""

import streamlit as st

from lrviz import dashboard as dsh
from lrviz import plan_cost, project
from lrviz.errors import LrvizError
from lrviz.evaluate import compare_latency
from lrviz.report import build_report
from pages import _common as common

ctx = common.require_ctx(decomposable=True)
a, mid, loaded = ctx.analysis, ctx.model_id, ctx.loaded
plan = common.current_plan(ctx)
pid = dsh.plan_key(plan)
cost = plan_cost(a, plan)
ft = common.finetuned_for(ctx, plan)
variant = "fine-tuned" if ft is not None else "decomposed, not fine-tuned"

st.title(f"{loaded.name}: before and after compression")
st.caption(f"Plan **{common.current_label(ctx)}** ({variant}) · data: {ctx.data_src.label if ctx.data_src else '–'} · "
           "MACs at batch 1, FLOPs = 2 × MACs, size = params × 4 bytes (float32)")

results = st.session_state.setdefault("_present", {})
can_eval = ctx.eval_problem is None
n_default = min(1000, len(ctx.dataset)) if can_eval else 0
c = st.columns([1.2, 1, 3])
n = c[0].number_input("Images to evaluate", 50, max(len(ctx.dataset), 50) if can_eval else 50, max(n_default, 50), 50,
                      key="present_n", disabled=not can_eval)
rkey = (mid, ctx.data_key, pid, ft is not None and id(ft["model"]), int(n))
measure = c[1].button("Measure", type="primary", key="present_measure", disabled=not can_eval, help="accuracy of both models and CPU latency (batch 1)")
if not can_eval:
    c[2].info(f"Accuracy cannot be measured: {ctx.eval_problem}.")


def _compressed_model():
    return ft["model"] if ft is not None else dsh.planned_model(ctx.module, plan, ctx.factors)


if measure:
    with st.status("Measuring…", expanded=True) as status:
        try:
            st.write(f"Accuracy of the original model on {int(n)} images…")
            r0 = common.run_eval(ctx, None, int(n), "original model")
            st.write(f"Accuracy of the compressed model ({variant})…")
            if ft is None:
                r1 = common.run_eval(ctx, plan, int(n), "compressed model")
            else:
                from lrviz.evaluate import evaluate

                bar = st.progress(0.0)
                r1 = evaluate(ft["model"], ctx.dataset, limit=int(n), progress=lambda d, t: bar.progress(d / t))
                bar.empty()
            st.write("CPU latency, batch 1 (interleaved rounds)…")
            lat = compare_latency({"original": ctx.original, "compressed": _compressed_model()}, loaded.input_size, rounds=3, min_run_time=0.15)
            results[rkey] = {"r0": r0, "r1": r1, "lat": lat}
            status.update(label="Measured", state="complete", expanded=False)
        except LrvizError as exc:
            status.update(label="Measurement failed", state="error")
            st.error(f"Measurement failed: {exc}")
meas = results.get(rkey)

# ---- headline numbers ----------------------------------------------------------------------------
size0, size1 = dsh.size_mb(cost.params), dsh.size_mb(cost.params_planned)
cards = [
    {"label": "Model size (float32)", "value": f"{size0:.2f} → {size1:.2f} MB", "delta": f"{cost.params_ratio:.2f}× smaller"},
    {"label": "FLOPs per image (2 × MACs)", "value": f"{dsh.human(cost.flops)} → {dsh.human(cost.flops_planned)}", "delta": f"{cost.macs_ratio:.2f}× fewer"},
]
bars = [{"metric": "size", "before": cost.params, "after": cost.params_planned}, {"metric": "FLOPs", "before": cost.flops, "after": cost.flops_planned}]
if meas and meas["r0"] is not None and meas["r1"] is not None:
    r0, r1 = meas["r0"], meas["r1"]
    cards.append({"label": f"Top-1 accuracy ({r1.n} images)", "value": f"{r0.top1:.1%} → {r1.top1:.1%}",
                  "delta": f"{100 * (r1.top1 - r0.top1):+.1f} points (95 % CI after: {r1.top1_ci[0]:.1%}–{r1.top1_ci[1]:.1%})"})
    bars.append({"metric": "accuracy", "before": r0.top1, "after": r1.top1})
    l0, l1 = meas["lat"]["original"], meas["lat"]["compressed"]
    speed = l0.median_ms / max(l1.median_ms, 1e-9)
    cards.append({"label": "CPU latency (batch 1, median)", "value": f"{l0.median_ms:.2f} → {l1.median_ms:.2f} ms",
                  "delta": f"{speed:.2f}× faster" if speed >= 1 else f"{1 / speed:.2f}× slower (small layers: factor overhead)"})
    bars.append({"metric": "latency", "before": l0.median_ms, "after": l1.median_ms})
else:
    base_acc, _ = common.projection_base(ctx, common.baseline(ctx, auto=False))
    sens = common.sensitivities(ctx, auto=False)
    sp = common.sensitivity_projection(ctx, common.projector(ctx, sens), plan) if sens is not None and sens.complete else None
    proj = common.projection(ctx, plan, base_acc)
    if sp is not None:
        cards.append({"label": "Top-1 accuracy (projected)", "value": f"{sp.base_top1:.1%} → {sp.top1:.1%}",
                      "delta": f"layer sensitivities, 95 % band {sp.interval[0]:.1%}–{sp.interval[1]:.1%}; press Measure"})
    elif proj is not None:
        cards.append({"label": "Top-1 accuracy (projected)", "value": f"{base_acc:.1%} → {proj.top1:.1%}", "delta": f"{proj.basis}; press Measure"})
    cards.append({"label": "Accuracy & latency", "value": "not measured", "delta": "press Measure"})

cols = st.columns(len(cards))
for col, card in zip(cols, cards):
    col.metric(card["label"], card["value"], card.get("delta"), delta_color="off", delta_arrow="off")

fig_bars = dsh.before_after_figure(bars)
fig_layers = dsh.layer_cost_figure(cost, "params")
left, right = st.columns(2)
left.plotly_chart(fig_bars, key="present_bars")
right.plotly_chart(fig_layers, key="present_layers")

# ---- sample predictions --------------------------------------------------------------------------
images = []
if can_eval:
    st.subheader("Sample predictions")
    idx = dsh.sample_indices(ctx.dataset, 8, seed=st.session_state.get("present_seed", 0))
    classes = list(getattr(ctx.dataset, "classes", [])) or [str(i) for i in range(loaded.num_classes)]
    try:
        labels, p0, c0 = dsh.predict(ctx.original, ctx.dataset, idx)
        _, p1, c1 = dsh.predict(_compressed_model(), ctx.dataset, idx)
    except Exception as exc:  # a model that fails on the data: say why, keep the page
        st.error(f"Prediction failed: {type(exc).__name__}: {exc}")
        labels = []
    cols = st.columns(8)
    for col, i, y, a0, a1, q0, q1 in zip(cols, idx, labels, p0 if labels else [], p1 if labels else [], c0 if labels else [], c1 if labels else []):
        img = dsh.display_image(ctx.dataset[i][0])
        mark = lambda p: ":green[✓]" if p == y else ":red[✗]"  # noqa: E731
        plain = lambda p: "✓" if p == y else "✗"  # noqa: E731
        col.image(img, width="stretch")
        col.caption(f"true: **{classes[y]}**  \noriginal: {classes[a0]} {mark(a0)}  \ncompressed: {classes[a1]} {mark(a1)}")
        images.append((img, f"true: {classes[y]} · original: {classes[a0]} {plain(a0)} · compressed: {classes[a1]} {plain(a1)}"))
    st.button("Other images", key="present_shuffle", on_click=lambda: st.session_state.update(present_seed=st.session_state.get("present_seed", 0) + 1))

# ---- more plots ----------------------------------------------------------------------------------
figures = [("Compressed relative to original", fig_bars), ("Per-layer parameters", fig_layers)]
sweep_key, sweep = next(((k, v) for k, v in st.session_state.get("_sweeps", {}).items() if k[0] == mid and k[1] == ctx.data_key),
                        (None, None))
base = common.baseline(ctx, auto=False)
if sweep is not None and sweep["top1"].notna().any():
    sweep_metric = sweep_key[2][1] if isinstance(sweep_key[2], tuple) else None
    fig_sweep = dsh.sweep_figure(sweep, None if base is None else base.top1, sweep_metric)
    st.plotly_chart(fig_sweep, key="present_sweep")
    figures.append(("Accuracy vs compression ratio", fig_sweep))
rows = common.measured(ctx)
if rows:
    curve = None
    base_acc, _ = common.projection_base(ctx, base)
    proj = common.projection(ctx, plan, base_acc)
    if base_acc is not None:
        curve = project.curve_top1(common.cached_retention_curve(ctx.source.key, a), base_acc, loaded.num_classes,
                                   proj.exponent if proj else project.DEFAULT_EXPONENT)
    fig_proj = dsh.projection_figure(curve, None if proj is None else {"params_ratio": cost.params_ratio, "top1": proj.top1}, rows,
                                     base_acc, 1.0 / loaded.num_classes)
    figures.append(("Quick evaluations and projection", fig_proj))
if a.has_spectra:
    figures.append(("Normalised spectra", dsh.spectra_heatmap(a)))

# ---- report --------------------------------------------------------------------------------------
st.subheader("Report")
notes = [
    f"Model: {loaded.source}; input {'×'.join(map(str, loaded.input_size))}; {loaded.num_classes} classes.",
    f"Plan: {common.current_label(ctx)} ({variant}); Tucker-2 for k×k convs, truncated SVD for 1×1 convs and linear layers.",
    "MACs: multiply-accumulates at batch 1 of conv and linear layers; FLOPs = 2 × MACs; size = parameters × 4 bytes.",
    "Accuracies: fraction of correctly classified images of a fixed subset, with 95 % Wilson score intervals.",
    "Latency: median CPU time of one forward pass at batch 1, original and compressed timed in interleaved rounds.",
    f"Projection (when shown): {project.DESCRIPTION}.",
]
table = cost.table.assign(ranks=cost.table["ranks"].map(lambda r: ", ".join(map(str, r))),
                          full_ranks=cost.table["full_ranks"].map(lambda r: ", ".join(map(str, r))))
if st.button("Build HTML report", key="build_report"):
    with st.spinner("Building the report (plotly.js is embedded so it works offline)…"):
        html = build_report(
            f"{loaded.name}: low-rank compression report",
            cards,
            subtitle=f"Plan {common.current_label(ctx)} · {variant} · {ctx.data_src.label if ctx.data_src else ''}",
            figures=figures, tables=[("Per-layer ranks and cost", table)], images=images, notes=notes,
        )
    st.session_state["_report"] = (rkey, html.encode("utf-8"))
rep = st.session_state.get("_report")
if rep is not None and rep[0] == rkey:
    st.download_button("Download report (HTML)", rep[1], file_name=f"lrviz-{loaded.name}-report.html", mime="text/html",
                       key="dl_report", type="primary")
    st.caption(f"{len(rep[1]) / 1e6:.1f} MB, self-contained (opens offline).")
