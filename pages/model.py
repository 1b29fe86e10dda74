"""Model page: architecture summary, baseline accuracy, decomposable vs skipped layers."""

import streamlit as st

from lrviz import dashboard as dsh
from pages import _common as common

ctx = common.require_ctx()
a, loaded = ctx.analysis, ctx.loaded
s = dsh.model_summary(a, loaded)

st.title(f"Model · {loaded.name}")
st.caption(f"{loaded.source}. Units: MACs = multiply-accumulates at batch 1 (conv + linear layers), FLOPs = 2 × MACs; params = all parameters (BatchNorm affine included).")

c = st.columns(5)
c[0].metric("Parameters", dsh.human(s["params"]), help=f"{s['params']:,} parameters")
c[1].metric("Size (float32)", f"{s['size_mb']:.2f} MB")
c[2].metric("MACs / image", dsh.human(s["macs"]), help=f"{s['macs']:,} MACs")
c[3].metric("FLOPs / image", dsh.human(s["flops"]), help="FLOPs = 2 × MACs")
c[4].metric("Decomposable layers", f"{s['decomposable']}", help=", ".join(f"{k}: {v}" for k, v in s["kinds"].items()) or "none")

st.subheader("Baseline accuracy")
problem = ctx.eval_problem
if problem:
    st.info(f"Accuracy cannot be measured on this data: {problem}.")
else:
    n_total = len(ctx.dataset)
    options = sorted({min(ctx.quick_n, n_total), n_total})
    left, right = st.columns([2, 3])
    with left:
        n = st.radio("Images", options, format_func=lambda v: f"all {v:,} images" if v == n_total else f"quick subset ({v:,})", horizontal=True, key="model_eval_n")
        clicked = st.button("Evaluate the original model", type="primary", key="model_eval_btn")
    res = common.cached_eval(ctx, "original", n)
    if res is None and clicked:
        res = common.run_eval(ctx, None, n, "original model")
    with right:
        if res is not None:
            st.metric(f"Top-1 on {ctx.data_src.label}", f"{res.top1:.2%}", help="95 % Wilson score interval below")
            st.caption(
                f"95 % CI {res.top1_ci[0]:.2%} – {res.top1_ci[1]:.2%} · n = {res.n:,} · top-5 "
                f"{'–' if res.top5 is None else f'{res.top5:.2%}'} · loss {res.loss:.3f} · {res.seconds:.1f} s"
            )
        else:
            st.caption("Not measured yet for this subset.")

left, right = st.columns([3, 2])
with left:
    st.subheader(f"Decomposable layers ({len(a.layers)})")
    if a.layers:
        st.dataframe(dsh.layer_table(a), hide_index=True, width="stretch",
                     column_config={"params": st.column_config.NumberColumn(format="localized"),
                                    "MACs": st.column_config.NumberColumn(format="localized")})
        st.caption("tucker2: k×k conv → 1×1 · k×k core · 1×1 (ranks r_out, r_in); svd_conv / svd_linear: truncated SVD (rank r).")
    elif not loaded.decomposable:
        st.info("An exported program cannot be decomposed (no modules to replace).")
    else:
        st.info("No layer of this model can be decomposed.")
with right:
    st.subheader(f"Skipped layers ({len(a.skipped)})")
    if a.skipped:
        st.dataframe(dsh.skipped_table(a), hide_index=True, width="stretch")
    else:
        st.success("Every conv / linear layer can be decomposed.")
