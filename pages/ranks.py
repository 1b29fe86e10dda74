"""Ranks page: one slider per layer (pairs for Tucker-2), presets, live cost + projection, quick evals.

Every slider move reruns only closed-form code (``plan_cost``, the energy projection): spectra, EVBMF
and factor bases come from ``st.cache_resource``; nothing is decomposed until a quick evaluation.
"""

import math
import time

import streamlit as st

from lrviz import dashboard as dsh
from lrviz import make_plan, plan_cost, project
from lrviz.errors import LrvizError
from pages import _common as common

_t0 = time.perf_counter()
ctx = common.require_ctx(decomposable=True)
a, mid = ctx.analysis, ctx.model_id
if not a.layers:
    st.title("Ranks")
    st.info("No decomposable layers.")
    st.stop()


# ---- presets (callbacks run before the script, so they may set slider state) ----------------------
def _apply(spec: str, label: str) -> None:
    try:
        plan = make_plan(a, spec)
    except LrvizError as exc:
        st.session_state["_preset_error"] = f"{label}: {exc}"
        return
    st.session_state.pop("_preset_error", None)
    common.set_plan(ctx, plan, label)


st.title("Ranks")
with st.container(border=True):
    st.markdown("**Presets** — set every slider at once")
    p = st.columns([1.2, 1.2, 1.2, 1.2, 0.8])
    with p[0]:
        k = st.slider("VBMF weakening K", 0.0, 1.0, 1.0, 0.05, key="preset_vbmf_k",
                      help="r = R − K·(R − r_VBMF): K = 1 is the EVBMF rank, K = 0 keeps full rank")
        st.button("Apply VBMF", key="preset_vbmf", on_click=_apply, args=(dsh.preset_spec("vbmf", k), f"vbmf:{k:g}"), width="stretch")
    with p[1]:
        f = st.slider("Energy kept", 0.5, 1.0, 0.95, 0.005, key="preset_energy_f", help="smallest rank per mode keeping this fraction of Σσ²")
        st.button("Apply energy", key="preset_energy", on_click=_apply, args=(dsh.preset_spec("energy", f), f"energy:{f:g}"), width="stretch")
    with p[2]:
        u = st.slider("Uniform rank fraction", 0.05, 1.0, 0.5, 0.05, key="preset_uniform_f", help="ceil(F·R) on every mode")
        st.button("Apply uniform", key="preset_uniform", on_click=_apply, args=(dsh.preset_spec("uniform", u), f"uniform:{u:g}"), width="stretch")
    with p[3]:
        t = st.number_input("Target params reduction (×)", 1.0, 50.0, 3.0, 0.5, key="preset_ratio_t",
                            help="ratio:T — energy threshold (or uniform fraction) bisected to reach T× fewer params")
        st.button("Apply target ratio", key="preset_ratio", on_click=_apply, args=(dsh.preset_spec("ratio", t), f"ratio:{t:g}"), width="stretch")
    with p[4]:
        st.write("")
        st.button("Reset (full)", key="preset_full", on_click=_apply, args=("full", "full"), width="stretch")
    if st.session_state.get("_preset_error"):
        st.error(st.session_state["_preset_error"])

# ---- sliders (rendered below; their values are read first so the numbers sit on top) -------------
common.sync_sliders(ctx)
header = st.container()
charts = st.container()
evals = st.container()

st.subheader("Ranks per layer")
st.caption("Grouped by stage. Tucker-2 layers (k×k convs) have a pair: r_out (output channels) and r_in (input channels); 1×1 convs and linear layers one rank r. Help icons show the EVBMF rank.")
ranks: dict[str, tuple[int, ...]] = {}
for si, (stage, layers) in enumerate(dsh.group_by_stage(a.layers).items()):
    with st.expander(f"{stage} · {len(layers)} layer{'s' if len(layers) > 1 else ''}", expanded=si < 2):
        for l in layers:
            labels = dsh.mode_labels(l.kind)
            vb = a.vbmf_ranks(l.name)
            cols = st.columns([1.3, 2, 2])
            cols[0].markdown(f"`{l.name}`  \n<small>{l.kind} {'×'.join(map(str, l.weight_shape))}</small>", unsafe_allow_html=True)
            vals = []
            for i, lab in enumerate(labels):
                if l.full_ranks[i] <= 1:  # nothing to choose (e.g. a 1-channel input)
                    cols[1 + i].caption(f"{lab} = 1 (full rank 1)")
                    vals.append(1)
                    continue
                vals.append(
                    cols[1 + i].slider(
                        f"{l.name} · {lab}", 1, int(l.full_ranks[i]), step=1, key=dsh.slider_key(mid, l.name, i),
                        help=f"full rank {l.full_ranks[i]}, EVBMF rank {vb[i]}", label_visibility="visible",
                    )
                )
            ranks[l.name] = tuple(int(v) for v in vals)
common.set_ranks_from_sliders(ctx, ranks)

# ---- live numbers: closed form, no model is built ------------------------------------------------
plan = common.current_plan(ctx)
cost = plan_cost(a, plan)
h = dsh.headline(cost)
base = common.baseline(ctx)
header_metrics = header.container()
with header.expander("Projection settings"):
    override = st.number_input(
        "Original top-1 for the projection (%)", 0.0, 100.0, value=None, step=0.1, key="proj_base_pct",
        help="leave empty to use the measured accuracy of the original model; enter e.g. a published accuracy when the data is not available",
        placeholder="measured" if base is not None else "not measured",
    )
    overrides = st.session_state.setdefault("_base_override", {})
    if override is None:
        overrides.pop(mid, None)
    else:
        overrides[mid] = override / 100.0
base_acc, base_text = common.projection_base(ctx, base)
proj = common.projection(ctx, plan, base_acc)

with header_metrics:
    st.caption(f"Current plan: **{common.current_label(ctx)}** · MACs at batch 1 (FLOPs = 2 × MACs) · params = all parameters")
    m = st.columns(5)
    m[0].metric("Params", dsh.human(h["params_planned"]), f"{h['params_ratio']:.2f}× fewer", delta_color="off", delta_arrow="off",
                help=f"{h['params_planned']:,} of {h['params']:,} parameters")
    m[1].metric("MACs / image", dsh.human(h["macs_planned"]), f"{h['macs_ratio']:.2f}× fewer", delta_color="off", delta_arrow="off",
                help=f"{h['macs_planned']:,} of {h['macs']:,} MACs")
    m[2].metric("FLOPs / image", dsh.human(h["flops_planned"]), f"was {dsh.human(h['flops'])}", delta_color="off", delta_arrow="off", help="FLOPs = 2 × MACs")
    m[3].metric("Size (float32)", f"{h['size_mb_planned']:.2f} MB", f"was {h['size_mb']:.2f} MB", delta_color="off", delta_arrow="off")
    if proj is not None:
        same = abs(proj.drop) < 5e-4
        m[4].metric("Projected top-1", f"{proj.top1:.1%}", "same as original" if same else f"{-proj.drop:+.1%} vs original",
                    delta_color="off" if same else "normal", delta_arrow="off" if same else "auto", help=proj.description)
        st.caption(
            f"Projection basis: **{proj.basis}** — chance + (original − chance) × Π layers q^α, q = energy kept by a "
            f"layer's worst mode (Π q = {proj.retained:.3g}, α = {proj.exponent:.3g}), from the original's "
            f"{base_acc:.1%} ({base_text}). Data-free and without fine-tuning: check it with quick evaluations."
        )
    else:
        m[4].metric("Projected top-1", "–", help="needs the original model's accuracy (Model page, or enter one under Projection settings)")
        st.caption(f"No projection: {ctx.eval_problem}." if ctx.eval_problem else
                   "No projection yet: measure the original model's accuracy (Model page or Quick evaluate below).")

# ---- quick evaluations ---------------------------------------------------------------------------
with evals:
    n = ctx.quick_n
    e = st.columns([1.2, 1.4, 3])
    clicked = e[0].button(f"Quick evaluate ({n} images)", type="primary", key="quick_eval", disabled=ctx.eval_problem is not None)
    auto = e[1].toggle("Auto-evaluate", key="auto_eval", disabled=ctx.eval_problem is not None,
                       help="after every change (slider release or preset), evaluate the plan on the quick subset")
    pid = dsh.plan_key(plan)
    res = common.cached_eval(ctx, pid, n)
    if res is None and (clicked or auto) and ctx.eval_problem is None:
        if base is None:
            base = common.run_eval(ctx, None, n, "original model")
            base_acc, base_text = common.projection_base(ctx, base)
            proj = common.projection(ctx, plan, base_acc)
        res = common.run_eval(ctx, plan, n, "planned model")
    if res is not None:
        common.record_measurement(ctx, plan, res, f"{common.current_label(ctx)} ({h['params_ratio']:.2f}×)", proj)
        e[2].success(f"Measured top-1 of this plan: **{common.fmt_ci(res)}**" + (f" · projected {proj.top1:.1%}" if proj else ""))
    else:
        e[2].caption("Not measured yet for these ranks.")

    rows = common.measured(ctx)
    fit_on = st.toggle("Calibrate the projection exponent α to the measured points", key="calibrate_alpha",
                       disabled=not rows or base_acc is None, help="least-squares fit of α in log space through the measured points")
    exps = st.session_state.setdefault("_proj_exponent", {})
    if fit_on and base_acc is not None:
        alpha = project.fit_exponent(project.measured_pairs([r for r in rows if r.get("retained") is not None]), base_acc, ctx.loaded.num_classes)
        if alpha is None:
            st.caption("No measured point is usable for a fit (needs accuracy between chance and the original's, and a compressed plan).")
        elif not math.isclose(exps.get(mid, project.DEFAULT_EXPONENT), alpha):
            exps[mid] = alpha
            st.rerun()
    elif exps.pop(mid, None) is not None:
        st.rerun()

# ---- charts --------------------------------------------------------------------------------------
with charts:
    left, right = st.columns(2)
    metric = left.segmented_control("Bars", ["params", "macs"], default="params", key="bars_metric",
                                    format_func={"params": "Params", "macs": "MACs"}.get) or "params"
    left.plotly_chart(dsh.layer_cost_figure(cost, metric), key="layer_bars")
    curve = None
    if base_acc is not None:
        curve = project.curve_top1(common.cached_retention_curve(ctx.source.key, a), base_acc, ctx.loaded.num_classes,
                                   proj.exponent if proj else project.DEFAULT_EXPONENT)
    current = {"params_ratio": h["params_ratio"], "top1": proj.top1} if proj is not None else None
    right.plotly_chart(
        dsh.projection_figure(curve, current, common.measured(ctx), base_acc, 1.0 / ctx.loaded.num_classes),
        key="projection_chart",
    )

st.session_state["_ranks_render_ms"] = (time.perf_counter() - _t0) * 1000
