"""Model page: architecture summary, baseline accuracy, decomposable vs skipped layers."""

import streamlit as st

from lrviz import fmt, tables
from pages import _measure as measure
from pages import _state as state


def summary(ctx) -> None:
    s = tables.model_summary(ctx.analysis, ctx.loaded)
    st.title(f"Model · {ctx.loaded.name}")
    st.caption(f"{ctx.loaded.source}. Units: MACs = multiply-accumulates at batch 1 (conv + linear layers), FLOPs = 2 × MACs; "
               "params = all parameters (BatchNorm affine included).")
    c = st.columns(5)
    c[0].metric("Parameters", fmt.human(s["params"]), help=f"{fmt.count(s['params'])} parameters")
    c[1].metric("Size (float32)", f"{s['size_mb']:.2f} MB", help=f"{fmt.count(s['params'])} parameters × 4 bytes")
    c[2].metric("MACs / image", fmt.human(s["macs"]), help=f"{fmt.count(s['macs'])} MACs")
    c[3].metric("FLOPs / image", fmt.human(s["flops"]), help="FLOPs = 2 × MACs")
    c[4].metric("Decomposable layers", f"{s['decomposable']}", help=", ".join(f"{k}: {v}" for k, v in s["kinds"].items()) or "none")


def accuracy_label(n: int, n_total: int) -> str:
    """The metric's label names the images the accuracy was measured on (not the data set's size)."""
    return f"Top-1 on all {fmt.count(n)} images" if n >= n_total else f"Top-1 on {fmt.count(n)} of {fmt.count(n_total)} images"


def baseline_accuracy(ctx) -> None:
    st.subheader("Baseline accuracy")
    if ctx.eval_problem:
        st.info(f"Accuracy cannot be measured on this data: {ctx.eval_problem}.")
        return
    n_total = len(ctx.dataset)
    options = sorted({min(ctx.quick_n, n_total), n_total})
    left, right = st.columns([2, 3])
    with left:
        n = st.radio("Images", options, format_func=lambda v: f"all {fmt.count(v)} images" if v == n_total else f"quick subset ({fmt.count(v)})",
                     horizontal=True, key="model_eval_n")
        clicked = st.button("Evaluate the original model", type="primary", key="model_eval_btn")
    res = measure.cached_eval(ctx, "original", n)
    if res is None and clicked:
        res = measure.run_eval(ctx, None, n, "original model")
    with right:
        if res is None:
            st.caption("Not measured yet for this subset.")
            return
        st.metric(accuracy_label(res.n, n_total), fmt.percent(res.top1), help=f"measured on {fmt.count(res.n)} images of "
                  f"{ctx.data_label}; 95 % Wilson score interval below")
        st.caption(f"{ctx.data_label} · 95 % CI {fmt.percent_range(*res.top1_ci)} · n = {fmt.count(res.n)} · top-5 {fmt.percent(res.top5)} · "
                   f"loss {res.loss:.3f} · {fmt.seconds(res.seconds)}")


def layers(ctx) -> None:
    a = ctx.analysis
    left, right = st.columns([3, 2])
    with left:
        st.subheader(f"Decomposable layers ({len(a.layers)})")
        if a.layers:
            st.dataframe(tables.layer_table(a), hide_index=True, width="stretch", height=state.table_height(len(a.layers)),
                         column_config={"params": st.column_config.NumberColumn(format="localized"),
                                        "MACs": st.column_config.NumberColumn(format="localized")})
            st.caption("tucker2: k×k conv → 1×1 · k×k core · 1×1 (ranks r_out, r_in); svd_conv / svd_linear: truncated SVD (rank r).")
        elif not ctx.loaded.decomposable:
            st.info("An exported program cannot be decomposed (no modules to replace).")
        else:
            st.info("No layer of this model can be decomposed.")
    with right:
        st.subheader(f"Skipped layers ({len(a.skipped)})")
        if a.skipped:
            st.dataframe(tables.skipped_table(a), hide_index=True, width="stretch", height=state.table_height(len(a.skipped)))
        else:
            st.success("Every conv / linear layer can be decomposed.")


def render() -> None:
    ctx = state.require_ctx()
    summary(ctx)
    baseline_accuracy(ctx)
    layers(ctx)


render()
