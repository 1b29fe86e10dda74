"""Ranks page: one slider per layer (pairs for Tucker-2), presets (including the budget solver),
layer sensitivities, live cost + projection, quick evals.

Every slider move reruns only closed-form code (``plan_cost``, the energy proxy or the sensitivity
projection, < 1 ms): spectra, EVBMF and factor bases come from ``st.cache_resource``, sensitivities and
the calibrated projector from the shared result store; nothing is decomposed until a quick
evaluation. Sensitivities are measured in a background thread (progress per layer, Stop button).
"""

import time

import streamlit as st

from lrviz import dashboard as dsh
from lrviz import make_plan, plan_cost, project
from lrviz.budget import solve
from lrviz.errors import LrvizError
from pages import _common as common

_t0 = time.perf_counter()
ctx = common.require_ctx(decomposable=True)
a, mid = ctx.analysis, ctx.model_id
if not a.layers:
    st.title("Ranks")
    st.info("No decomposable layers.")
    st.stop()


# ---- layer sensitivities: stored / cached result, calibrated projector -----------------------------
sens = common.sensitivities(ctx)
sens_running = common.sens_running()
sens_ready = sens is not None and sens.complete
projector = common.projector(ctx, sens) if sens_ready else None


# ---- presets (callbacks run before the script, so they may set slider state) ----------------------
def _apply(spec: str, label: str) -> None:
    try:
        plan = make_plan(a, spec)
    except LrvizError as exc:
        st.session_state["_preset_error"] = f"{label}: {exc}"
        return
    st.session_state.pop("_preset_error", None)
    common.set_plan(ctx, plan, label)


def _solve() -> None:
    s_ = common.sensitivities(ctx, auto=False)
    if s_ is None or not s_.complete:
        st.session_state["_preset_error"] = "Solve: layer sensitivities are not complete"
        return
    proj_obj = common.projector(ctx, s_)  # calibrated to every quick evaluation so far
    metric = st.session_state.get("solve_metric") or "params"
    target = float(st.session_state.get("solve_ratio") or 3.0)
    snap = 8 if st.session_state.get("solve_snap") else None
    try:
        res = solve(a, proj_obj, (metric, target), snap=snap)
    except LrvizError as exc:
        st.session_state["_preset_error"] = f"Solve {metric} {target:g}×: {exc}"
        return
    st.session_state.pop("_preset_error", None)
    common.set_plan(ctx, res.plan, res.plan.spec)


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
    q = st.columns([1.2, 1.2, 1.2, 1.2, 0.8])
    q[0].markdown("**Solve for a budget** — ranks with the least projected loss (sensitivities)")
    q[1].selectbox("Budget on", ["params", "macs"], key="solve_metric", format_func={"params": "params", "macs": "MACs"}.get,
                   disabled=not sens_ready)
    q[2].number_input("Reduction (×)", 1.0, 50.0, 3.0, 0.5, key="solve_ratio", disabled=not sens_ready,
                      help="the solved plan has at least this many times fewer params (or MACs)")
    with q[3]:
        st.checkbox("Snap to multiples of 8", key="solve_snap", disabled=not sens_ready,
                    help="hardware-friendly widths: every factored rank is a multiple of 8")
        st.button("Solve", key="preset_solve", on_click=_solve, disabled=not sens_ready, width="stretch")
    if not sens_ready:
        q[4].caption("Needs complete layer sensitivities (measure them below).")
    if st.session_state.get("_preset_error"):
        st.error(st.session_state["_preset_error"])

# ---- layer sensitivities ------------------------------------------------------------------------
n = ctx.quick_n
with st.container(border=True):
    st.markdown("**Layer sensitivities** — each layer's modes truncated alone on the quick-evaluation images: they "
                "calibrate the projection and drive the budget solver")
    sc = st.columns([3.2, 1.3, 0.9])
    data_label = ctx.data_src.label if ctx.data_src is not None else "the data"
    if ctx.eval_problem:
        sc[0].caption(f"Cannot be measured: {ctx.eval_problem}.")
    elif sens_ready:
        info = dsh.sensitivity_summary(sens)
        sc[0].markdown(
            f":green[✓] Measured on **{info['n']} images** of {data_label}: {info['layers']} layers, {info['modes']} modes, "
            f"{info['anchors']} anchor plans; original top-1 on these images {info['base_top1']:.1%}. The projection's gain γ "
            "is fitted to the anchors and to every quick evaluation on these images."
        )
    elif sens is not None and sens.curves:
        info = dsh.sensitivity_summary(sens, len(a.layers))
        sc[0].markdown(f"Partly measured on {n} images: **{info['layers']} of {info['total']} layers** cached (a run was "
                       "stopped). Measuring resumes with the rest.")
    elif sens is None and not sens_running:
        sc[0].caption(f"Not looked up yet for {n} images (that alone costs one forward pass): press Measure — layers "
                      "already cached on disk are loaded, not measured again.")
    else:
        sc[0].markdown(f"Not measured yet for this model, {data_label} and **{n} images**: about "
                       f"{dsh.sensitivity_passes(a)} forward passes of {n} images (cached on disk; a stopped run resumes).")
    start_sens = sc[1].button(f"Measure sensitivities ({n} images)", key="sens_measure", width="stretch",
                              disabled=bool(ctx.eval_problem) or sens_ready or sens_running)
    show_curves = sc[2].toggle("Show curves", key="sens_show", disabled=sens is None or not sens.curves)
    if start_sens and not sens_running:
        common.start_sensitivity_job(ctx)
        sens_running = True

    if sens_running:
        @st.fragment(run_every=1.0)
        def _sens_live():
            info = common.sens_job()
            if info is None:
                return
            job = info["job"]
            events = job.snapshot()
            last = events[-1] if events else None
            total = last["total"] if last else info["total"]
            done = last["done"] if last else 0
            if last is None:
                text = "starting: one forward pass of the original model, then the layers (cached ones are loaded)…"
            elif done >= total:
                text = f"all {total} layers done; measuring the joint anchor plans…"
            else:
                text = f"{done}/{total} layers done (last: {last['layer']})"
            st.progress(min(done / max(total, 1), 1.0), text=("stopping… " if job.stop_requested else "") + f"Sensitivities on {info['n']} images: {text}")
            st.button("Stop", key="sens_stop", on_click=job.stop, disabled=job.stop_requested,
                      help="stop after the current forward pass; finished layers stay cached and the next run resumes")
            if job.done:
                st.rerun()

        _sens_live()
    if st.session_state.get(common.SENS_ERROR):
        st.error(f"Sensitivities: {st.session_state[common.SENS_ERROR]}")
    if show_curves and sens is not None and sens.curves:
        st.plotly_chart(dsh.sensitivity_figure(sens.table()), key="sens_curves")

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
        help="leave empty to use the measured accuracy of the original model (with sensitivities: on the calibration "
             "images); enter e.g. a published accuracy when the data is not available",
        placeholder="measured" if base is not None or sens_ready else "not measured",
    )
    overrides = st.session_state.setdefault("_base_override", {})
    if override is None:
        overrides.pop(mid, None)
    else:
        overrides[mid] = override / 100.0


def _projections():
    """(shown projection, sensitivity projection or None, energy projection or None, base, base text)."""
    b_acc, b_text = common.projection_base(ctx, base)
    energy = common.projection(ctx, plan, b_acc)
    sp = common.sensitivity_projection(ctx, projector, plan)
    if sp is not None:  # anchored to the calibration images (or the user's override)
        b_acc = sp.base_top1
        if override is None:
            b_text = f"measured on the {sens.n} calibration images"
    return sp or energy, sp, energy, b_acc, b_text


proj, sens_proj, energy_proj, base_acc, base_text = _projections()

# ---- quick evaluations (before the numbers are drawn: a new point refits the projection) ----------
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
            proj, sens_proj, energy_proj, base_acc, base_text = _projections()
        res = common.run_eval(ctx, plan, n, "planned model")
    if res is not None:
        shown = proj  # what was projected before this plan was measured
        if common.record_measurement(ctx, plan, res, f"{common.current_label(ctx)} ({h['params_ratio']:.2f}×)", proj) and projector is not None:
            projector = common.projector(ctx, sens)  # refit γ with the new point
            proj, sens_proj, energy_proj, base_acc, base_text = _projections()
        e[2].success(f"Measured top-1 of this plan: **{common.fmt_ci(res)}**" + (f" · projected {shown.top1:.1%}" if shown else ""))
    else:
        e[2].caption("Not measured yet for these ranks.")

    rows = common.measured(ctx)
    fit_on = st.toggle("Calibrate the projection exponent α to the measured points", key="calibrate_alpha",
                       disabled=not rows or base_acc is None or sens_proj is not None,
                       help="energy proxy only: least-squares fit of α in log space through the measured points (the sensitivity "
                            "projection is calibrated to them automatically)")
    exps = st.session_state.setdefault("_proj_exponent", {})
    alpha_before = exps.get(mid)
    if fit_on and base_acc is not None and sens_proj is None:
        alpha = project.fit_exponent(project.measured_pairs([r for r in rows if r.get("retained") is not None]), base_acc, ctx.loaded.num_classes)
        if alpha is None:
            st.caption("No measured point is usable for a fit (needs accuracy between chance and the original's, and a compressed plan).")
        else:
            exps[mid] = alpha
    elif not fit_on:
        exps.pop(mid, None)
    if exps.get(mid) != alpha_before:
        proj, sens_proj, energy_proj, base_acc, base_text = _projections()

with header_metrics:
    st.caption(f"Current plan: **{common.current_label(ctx)}** · MACs at batch 1 (FLOPs = 2 × MACs) · params = all parameters")
    m = st.columns([1, 1, 1, 1, 1.9 if sens_proj is not None else 1])  # room for the projection's band
    m[0].metric("Params", dsh.human(h["params_planned"]), f"{h['params_ratio']:.2f}× fewer", delta_color="off", delta_arrow="off",
                help=f"{h['params_planned']:,} of {h['params']:,} parameters")
    m[1].metric("MACs / image", dsh.human(h["macs_planned"]), f"{h['macs_ratio']:.2f}× fewer", delta_color="off", delta_arrow="off",
                help=f"{h['macs_planned']:,} of {h['macs']:,} MACs")
    m[2].metric("FLOPs / image", dsh.human(h["flops_planned"]), f"was {dsh.human(h['flops'])}", delta_color="off", delta_arrow="off", help="FLOPs = 2 × MACs")
    m[3].metric("Size (float32)", f"{h['size_mb_planned']:.2f} MB", f"was {h['size_mb']:.2f} MB", delta_color="off", delta_arrow="off")
    if sens_proj is not None:
        lo, hi = sens_proj.interval
        same = abs(sens_proj.drop) < 5e-4
        m[4].metric("Projected top-1", f"{100 * sens_proj.top1:.1f}% ({100 * lo:.1f}–{100 * hi:.1f}%)",
                    "same as original" if same else f"{-sens_proj.drop:+.1%} vs original",
                    delta_color="off" if same else "normal", delta_arrow="off" if same else "auto",
                    help=f"{sens_proj.detail}. The range is a ~95 % band (sampling error of the calibration images plus the model error).")
        st.caption(
            f"Projection basis: **sensitivities** — {sens_proj.detail}. From the original's {base_acc:.1%} ({base_text}); "
            f"~95 % band {lo:.1%}–{hi:.1%}. Without fine-tuning."
        )
    elif proj is not None:
        same = abs(proj.drop) < 5e-4
        m[4].metric("Projected top-1", f"{proj.top1:.1%}", "same as original" if same else f"{-proj.drop:+.1%} vs original",
                    delta_color="off" if same else "normal", delta_arrow="off" if same else "auto", help=proj.description)
        st.caption(
            f"Projection basis: **energy proxy (data-free)** — measure sensitivities for a calibrated projection. "
            f"chance + (original − chance) × Π layers q^α, q = energy kept by a layer's worst mode (Π q = {proj.retained:.3g}, "
            f"α = {proj.exponent:.3g}), from the original's {base_acc:.1%} ({base_text}). Without fine-tuning: check it with "
            "quick evaluations."
        )
    else:
        m[4].metric("Projected top-1", "–", help="needs the original model's accuracy (Model page, or enter one under Projection settings)")
        st.caption(f"No projection: {ctx.eval_problem}." if ctx.eval_problem else
                   "No projection yet: measure the original model's accuracy (Model page or Quick evaluate below).")

# ---- charts --------------------------------------------------------------------------------------
with charts:
    left, right = st.columns(2)
    metric = left.segmented_control("Bars", ["params", "macs"], default="params", key="bars_metric",
                                    format_func={"params": "Params", "macs": "MACs"}.get) or "params"
    left.plotly_chart(dsh.layer_cost_figure(cost, metric), key="layer_bars")
    curve, curve_name = None, "projection (energy plans)"
    if sens_proj is not None:
        overrides_now = st.session_state.get("_base_override", {}).get(mid)
        curve = dsh.projection_curve(common.cached_energy_plans(ctx.source.key, a), projector, overrides_now)
        curve_name = "projection along energy plans (sensitivities)"
        current = {"params_ratio": h["params_ratio"], "top1": sens_proj.top1, "lo": sens_proj.interval[0], "hi": sens_proj.interval[1]}
    else:
        if base_acc is not None:
            curve = project.curve_top1(common.cached_retention_curve(ctx.source.key, a), base_acc, ctx.loaded.num_classes,
                                       proj.exponent if proj else project.DEFAULT_EXPONENT)
        current = {"params_ratio": h["params_ratio"], "top1": proj.top1} if proj is not None else None
    right.plotly_chart(
        dsh.projection_figure(curve, current, common.measured(ctx), base_acc, 1.0 / ctx.loaded.num_classes, curve_name=curve_name),
        key="projection_chart",
    )
    if projector is not None:
        points = dsh.calibration_points(common.measured(ctx), common.measured_plans(ctx), projector)
        cl, cr = st.columns(2)
        cl.plotly_chart(dsh.calibration_figure(points), key="calibration_chart")
        quick = points[points["kind"] == "quick evaluation"]
        text = (f"**Projected vs measured** on the {sens.n} calibration images (the quick-evaluation subset): filled markers "
                f"are today's projection (γ = {projector.gain:.2f}, fitted to {projector.n_fit} plan(s)), hollow ones what was "
                "projected when the plan was measured. Points on the dashed diagonal are projected exactly.")
        if len(quick):
            rmse = float(((quick["projected"] - quick["top1"]) ** 2).mean() ** 0.5)
            inside = int(((quick["top1"] >= quick["proj_lo"]) & (quick["top1"] <= quick["proj_hi"])).sum())
            text += f"  \n{len(quick)} quick evaluation(s): RMS error {100 * rmse:.1f} points; {inside} inside the projection band."
        else:
            text += "  \nNo quick evaluation on these images yet: press *Quick evaluate* to add points (each one refits γ)."
        cr.markdown(text)

st.session_state["_ranks_render_ms"] = (time.perf_counter() - _t0) * 1000
