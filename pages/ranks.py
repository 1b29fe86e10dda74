"""Ranks page: one slider per layer (pairs for Tucker-2), presets (including the budget solver),
layer sensitivities, live cost + projection, measured speed, quick evals.

The sliders, the numbers above them, the charts and the quick evaluations are one ``st.fragment``:
a slider move reruns only that part, and only closed-form code (``plan_cost``, the energy kept and
the sensitivity projection, < 1 ms): spectra, EVBMF and factor bases come from ``st.cache_resource``,
sensitivities and the calibrated projector from the shared result store; nothing is decomposed until
a quick evaluation. Sensitivities are measured in a background thread (progress per layer, Stop).

Speed: the MACs ratio is shown as what it is, a prediction, next to the speedup measured end to end
(``lrviz.latency.bench`` at batch 1 and 64, a background job, looked up by the plan's ranks only). With
"Optimise for: speed" a latency table (per-layer times over ranks at batch 64, a background job) gives
each slider its measured break-even rank, a table-predicted speedup, and drops slower-than-dense
factors from presets, solved plans and, on request, the current plan (``lrviz.plan.speed_structure``).

The projected top-1 is only ever the data-driven one (layer sensitivities). Until they are measured
the metric says so and offers the measurement; the data-free energy kept Π q is shown as what it is,
an ordering of plans, never as an accuracy.
"""

import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from lrviz import figures, fmt, make_plan, plan_cost, tables
from lrviz.budget import solve
from lrviz.errors import LrvizError
from lrviz.keys import plan_key
from lrviz.report import NOT_MEASURED, latency_note, speedup_text
from pages import _measure as measure
from pages import _state as state

PRESET_ERROR = "_preset_error"
PRESET_NOTE = "_preset_note"
RENDER_MS = "_ranks_render_ms"
#: The value of the "Projected top-1" metric before there is a data-driven projection.
NOT_PROJECTED = "not projected yet"
COLUMNS = [1.2, 1.2, 1.2, 1.2, 0.8]


@dataclass
class Sens:
    """This run's layer sensitivities (or None), whether a measurement runs, and the calibrated projector."""

    result: Any
    running: bool
    projector: Any

    @property
    def ready(self) -> bool:
        return self.result is not None and self.result.complete


def current_sens(ctx) -> Sens:
    sens, projector = measure.calibrated(ctx)
    return Sens(sens, measure.sens_running(), projector)


# ---- presets (callbacks run before the script, so they may set slider state) ----------------------------


def _set_plan(ctx, plan, label: str) -> None:
    """Make ``plan`` current; optimising for speed (with a latency table), without the factors the table
    times slower than dense."""
    fast = measure.speed_structured(ctx, plan)
    st.session_state.pop(PRESET_NOTE, None)
    if fast is not plan:
        new = fast.ranks()
        dropped = sum(a != b for lp in plan.layers for a, b in zip(lp.ranks, new[lp.name]))
        st.session_state[PRESET_NOTE] = (f"Optimised for speed: {dropped} factor{'s' if dropped != 1 else ''} of {label} dropped "
                                          "(slower than the dense layer in the latency table)." if dropped else
                                          f"Optimised for speed: every factor of {label} is faster than its dense layer.")
        plan, label = fast, f"{label}:speed" if dropped else label
    state.set_plan(ctx, plan, label)


def _apply(ctx, spec: str) -> None:
    try:
        plan = make_plan(ctx.analysis, spec)
    except LrvizError as exc:
        st.session_state[PRESET_ERROR] = f"{spec}: {exc}"
        return
    st.session_state.pop(PRESET_ERROR, None)
    _set_plan(ctx, plan, spec)


def _solve(ctx) -> None:
    _, projector = measure.calibrated(ctx, auto=False)  # calibrated to every quick evaluation so far
    if projector is None:
        st.session_state[PRESET_ERROR] = "Solve: layer sensitivities are not complete"
        return
    metric = st.session_state.get("solve_metric") or "params"
    target = float(st.session_state.get("solve_ratio") or 3.0)
    snap = 8 if st.session_state.get("solve_snap") else None
    try:
        method = st.session_state.get("solve_method")
        if method in ("knapsack", "bayes", "continuous"):
            from lrviz.allocate import bayes_solve, continuous_solve, knapsack_solve

            fn = {"knapsack": knapsack_solve, "bayes": bayes_solve, "continuous": continuous_solve}[method]
            res = fn(ctx.analysis, projector, (metric, target), snap=snap)
        else:
            res = solve(ctx.analysis, projector, (metric, target), snap=snap)
    except LrvizError as exc:
        st.session_state[PRESET_ERROR] = f"Solve {metric} {target:g}×: {exc}"
        return
    st.session_state.pop(PRESET_ERROR, None)
    _set_plan(ctx, res.plan, res.plan.spec)


def _preset_button(ctx, label: str, key: str, spec: str) -> None:
    st.button(label, key=key, on_click=_apply, args=(ctx, spec), width="stretch")


def presets(ctx, ready: bool) -> None:
    with st.container(border=True):
        st.markdown("**Presets** — set every slider at once")
        p = st.columns(COLUMNS)
        with p[0]:
            k = st.slider("VBMF weakening K", 0.0, 1.0, 1.0, 0.05, key="preset_vbmf_k",
                          help="r = R − K·(R − r_VBMF): K = 1 is the EVBMF rank, K = 0 keeps full rank")
            _preset_button(ctx, "Apply VBMF", "preset_vbmf", f"vbmf:{k:g}")
        with p[1]:
            f = st.slider("Energy kept", 0.5, 1.0, 0.95, 0.005, key="preset_energy_f", help="smallest rank per mode keeping this fraction of Σσ²")
            _preset_button(ctx, "Apply energy", "preset_energy", f"energy:{f:g}")
        with p[2]:
            u = st.slider("Uniform rank fraction", 0.05, 1.0, 0.5, 0.05, key="preset_uniform_f", help="ceil(F·R) on every mode")
            _preset_button(ctx, "Apply uniform", "preset_uniform", f"uniform:{u:g}")
        with p[3]:
            t = st.number_input("Target params reduction (×)", 1.0, 50.0, 3.0, 0.5, key="preset_ratio_t",
                                help="ratio:T — energy threshold (or uniform fraction) bisected to reach T× fewer params")
            _preset_button(ctx, "Apply target ratio", "preset_ratio", f"ratio:{t:g}")
        with p[4]:
            st.write("")
            _preset_button(ctx, "Reset (full)", "preset_full", "full")
        solver_preset(ctx, ready)
        if st.session_state.get(PRESET_ERROR):
            st.error(st.session_state[PRESET_ERROR])
        elif st.session_state.get(PRESET_NOTE):
            st.caption(st.session_state[PRESET_NOTE])


def solver_preset(ctx, ready: bool) -> None:
    q = st.columns(COLUMNS)
    q[0].markdown("**Solve for a budget** — ranks with the least projected loss (sensitivities)")
    q[1].selectbox("Budget on", ["params", "macs"], key="solve_metric", format_func={"params": "params", "macs": "MACs"}.get,
                   disabled=not ready)
    q[2].number_input("Reduction (×)", 1.0, 50.0, 3.0, 0.5, key="solve_ratio", disabled=not ready,
                      help="the solved plan has at least this many times fewer params (or MACs)")
    with q[3]:
        st.radio("Method", ["greedy", "knapsack", "bayes", "continuous"], key="solve_method", horizontal=True, disabled=not ready,
                 help="greedy: cuts ranks step by step through the joint projection; knapsack: the exact optimum of the "
                      "additive model (each layer's own projected loss increase, summed); bayes: Bayesian optimisation (optuna) of "
                      "the allocation on the projection; continuous: a data-free continuous rank search on the spectra")
        st.checkbox("Snap to multiples of 8", key="solve_snap", disabled=not ready,
                    help="hardware-friendly widths: every factored rank is a multiple of 8")
        st.button("Solve", key="preset_solve", on_click=_solve, args=(ctx,), disabled=not ready, width="stretch")
    if not ready:
        q[4].caption("Needs complete layer sensitivities (measure them below).")


# ---- optimise for size or speed: the latency table ------------------------------------------------------


def _set_optimise() -> None:
    st.session_state[measure.OPTIMISE_KEY] = st.session_state.get("optimise_for") or "size"


def _drop_slower(ctx) -> None:
    _set_plan(ctx, state.current_plan(ctx), state.current_label(ctx))


@st.fragment(run_every=1.0)
def table_progress() -> None:
    """Progress of this session's latency-table job, redrawn every second; a full rerun when it ends."""
    if measure.table_progress_bar():
        st.rerun()


def optimise_panel(ctx) -> None:
    options = ["size", "speed"]
    with st.container(border=True):
        c = st.columns([1.2, 3.2, 1.3])
        choice = c[0].radio("Optimise for", options, index=options.index(measure.optimise_for()), key="optimise_for", horizontal=True,
                            on_change=_set_optimise, format_func={"size": "size", "speed": "speed"}.get,
                            help="size: presets and the solver keep any rank that saves parameters or MACs. speed: a measured latency "
                                 "table shows each rank's break-even and drops every factor that is slower than its dense layer")
        if choice != "speed":
            c[1].caption("Presets and the solver keep every factor that saves parameters or MACs, even one that runs slower than "
                         "its dense layer. Choose *speed* to measure each layer's break-even rank.")
            return
        lat, running, busy = measure.latency_table(ctx), measure.table_running(), measure.timing_busy()
        where = f"batch {measure.TABLE_BATCH}, {measure.SPEED_DEVICE.upper()}, {measure.speed_threads()} threads"
        if lat is not None:
            t = lat.table
            c[1].markdown(f":green[✓] **Latency table measured** ({lat.where}, {len(t.layers)} layers, every mode timed on a grid of "
                          f"ranks{f'; {t.cached} read from the disk cache' if t.cached else ''}): each slider shows where its layer is "
                          "faster than dense; presets and the solver drop every factor that is slower than its dense layer.")
            c[2].button("Drop slower factors", key="speed_structure", on_click=_drop_slower, args=(ctx,), width="stretch",
                        help="set every mode whose factor the latency table times slower than the dense layer back to full rank")
        else:
            c[1].markdown(f"Latency table **{NOT_MEASURED}** ({where}): every decomposable layer timed over a grid of ranks "
                          "(identical layers once; cached on disk per layer shape). Until then presets keep every factor.")
            if c[2].button(f"Measure latency table (batch {measure.TABLE_BATCH})", key="table_measure", disabled=busy is not None,
                           width="stretch", help=None if busy is None else f"waits for {busy} (running in the background)") \
                    and busy is None:
                measure.start_table_job(ctx)
                running = True
        if running:
            table_progress()
        err = measure.table_error(ctx)
        if err:
            st.error(f"Latency table: {err}")


# ---- layer sensitivities --------------------------------------------------------------------------------


def sensitivity_status(col, ctx, sens: Sens) -> None:
    """What is known about the sensitivities of (model, data, quick_n), in one text."""
    a, n, data_label = ctx.analysis, ctx.quick_n, ctx.data_label
    if ctx.eval_problem:
        col.caption(f"Cannot be measured: {ctx.eval_problem}.")
    elif sens.ready and sens.result.coarse:
        info = tables.sensitivity_summary(sens.result)
        col.markdown(
            f":orange[◐] **First estimate** on {fmt.count(info['n'])} images of {data_label}: {info['layers']} layers on a coarse "
            f"rank grid ({sens.result.grid_points} ranks per mode, no two-mode terms), γ fitted to {info['anchors']} anchor plans. "
            "The full grid is being measured and replaces it when done."
        )
    elif sens.ready:
        info = tables.sensitivity_summary(sens.result)
        col.markdown(
            f":green[✓] Measured on **{fmt.count(info['n'])} images** of {data_label}: {info['layers']} layers, {info['modes']} modes, "
            f"{info['anchors']} anchor plans; original top-1 on these images {fmt.percent(info['base_top1'])}. The projection's "
            "gain γ is fitted to the anchors and to every quick evaluation on these images."
        )
    elif sens.result is not None and sens.result.curves:
        info = tables.sensitivity_summary(sens.result, len(a.layers))
        col.markdown(f"Partly measured on {fmt.count(n)} images: **{info['layers']} of {info['total']} layers** cached (a run was "
                     "stopped). Measuring resumes with the rest.")
    elif sens.result is None and not sens.running:
        col.caption(f"Not looked up yet for {fmt.count(n)} images (that alone costs one forward pass): press Measure — layers "
                    "already cached on disk are loaded, not measured again.")
    else:
        col.markdown(f"Not measured yet for this model, {data_label} and **{fmt.count(n)} images**: about "
                     f"{fmt.count(tables.sensitivity_passes(a))} forward passes of {fmt.count(n)} images (cached on disk; a stopped "
                     "run resumes).")


@st.fragment(run_every=1.0)
def sensitivity_progress() -> None:
    """Progress of this session's sensitivity job, redrawn every second; a full rerun when it ends."""
    info = measure.sens_job()
    if info is None:
        return
    job = info["job"]
    events = job.snapshot()
    last = events[-1] if events else None
    total = last["total"] if last else info["total"]
    done = last["done"] if last else 0
    stage = f"{last.get('stage', 'layers')}: " if last else ""
    if last is None:
        text = "starting: one forward pass of the original model, then the layers (cached ones are loaded)…"
    elif done >= total:
        text = f"{stage}all {total} layers done; measuring the joint anchor plans…"
    else:
        text = f"{stage}{done}/{total} layers done (last: {last['layer']})"
    st.progress(min(done / max(total, 1), 1.0),
                text=("stopping… " if job.stop_requested else "") + f"Sensitivities on {fmt.count(info['n'])} images"
                     + (f" ({info['backend']})" if info.get("backend") else "") + f": {text}")
    st.button("Stop", key="sens_stop", on_click=job.stop, disabled=job.stop_requested,
              help="stop after the current forward pass; finished layers stay cached and the next run resumes")
    if job.done:
        st.rerun()
    if info.get("holder", {}).get("first") is not None and not info.get("first_shown"):
        info["first_shown"] = True  # the coarse first estimate is ready: project with it now
        st.rerun()


def sensitivity_panel(ctx, sens: Sens) -> None:
    n = ctx.quick_n
    with st.container(border=True):
        st.markdown("**Layer sensitivities** — each layer's modes truncated alone on the quick-evaluation images: they "
                    "calibrate the projection and drive the budget solver")
        sc = st.columns([3.2, 1.3, 0.9])
        sensitivity_status(sc[0], ctx, sens)
        start = sc[1].button(measure_label(n), key="sens_measure", width="stretch",
                             disabled=bool(ctx.eval_problem) or sens.ready or sens.running)
        curves = sens.result is not None and bool(sens.result.curves)
        show_curves = sc[2].toggle("Show curves", key="sens_show", disabled=not curves)
        if start and not sens.running:
            sens.running = measure.start_sensitivity_job(ctx)
        if sens.running:
            sensitivity_progress()
        if st.session_state.get(measure.SENS_ERROR):
            st.error(f"Sensitivities: {st.session_state[measure.SENS_ERROR]}")
        if show_curves and curves:
            st.plotly_chart(figures.sensitivity_figure(sens.result.table()), key="sens_curves")
            st.caption("One colour per stage (click a stage in the legend to hide or show it, double-click to show it alone); "
                       "solid: output-channel mode, dashed: input-channel mode, dotted: matrix (SVD). Hover for the layer.")


def measure_label(n: int) -> str:
    return f"Measure sensitivities ({fmt.count(n)} images)"


# ---- the plan: sliders, live numbers, quick evaluations, charts (one fragment) ---------------------------


class Live:
    """The current plan's numbers: its cost, the original's measured accuracy and the projections
    (:func:`pages._measure.project_plan`), recomputed by :meth:`reproject` when an input changes."""

    def __init__(self, ctx, sens: Sens):
        self.ctx, self.sens = ctx, sens
        self.plan = state.current_plan(ctx)
        self.cost = plan_cost(ctx.analysis, self.plan)
        self.base = measure.baseline(ctx)
        self.reproject()

    def reproject(self) -> None:
        self.proj = measure.project_plan(self.ctx, self.plan, self.base, self.sens.projector)


def break_even_text(lat, l, labels, current) -> tuple[list[str], str]:
    """Per mode, the slider help's measured break-even, and the layer's one-line summary (speed mode)."""
    helps, parts = [], []
    for i, lab in enumerate(labels):
        other = None if len(labels) == 1 else int(current[1 - i])
        be = lat.break_even(l.name, i, other) if l.full_ranks[i] > 1 else None
        at_other = f" with {labels[1 - i]} = {other}" if other is not None and other < l.full_ranks[1 - i] else ""
        if be is None:
            helps.append("")
            continue
        if be <= 0:
            helps.append(f"; measured ({lat.where}): no {lab} is faster than the dense layer{at_other}")
            parts.append(f"{lab}: none")
        else:
            helps.append(f"; measured ({lat.where}): faster than dense at {lab} ≤ {be}{at_other}")
            parts.append(f"{lab} ≤ {be}")
    return helps, ("faster than dense: " + ", ".join(parts)) if parts else ""


def rank_sliders(ctx, lat=None) -> dict[str, tuple[int, ...]]:
    """The sliders; with a latency table (speed mode) each says where its layer is faster than dense."""
    a, mid = ctx.analysis, ctx.model_id
    st.subheader("Ranks per layer")
    st.caption("Grouped by stage. Tucker-2 layers (k×k convs) have a pair: r_out (output channels) and r_in (input channels); "
               "1×1 convs and linear layers one rank r. Help icons show the EVBMF rank.")
    ranks: dict[str, tuple[int, ...]] = {}
    for si, (stage, layers) in enumerate(tables.group_by_stage(a.layers).items()):
        with st.expander(f"{stage} · {len(layers)} layer{'s' if len(layers) > 1 else ''}", expanded=si < 2):
            for l in layers:
                vb = a.vbmf_ranks(l.name)
                cols = st.columns([1.3, 2, 2])
                labels = tables.mode_labels(l.kind)
                helps, summary = [""] * len(labels), ""
                if lat is not None:
                    current = [st.session_state.get(state.slider_key(mid, l.name, i), l.full_ranks[i]) for i in range(len(labels))]
                    helps, summary = break_even_text(lat, l, labels, current)
                extra = f"  \n<small>{summary}</small>" if summary else ""
                cols[0].markdown(f"`{l.name}`  \n<small>{l.kind} {'×'.join(map(str, l.weight_shape))}</small>{extra}", unsafe_allow_html=True)
                vals = []
                for i, lab in enumerate(labels):
                    if l.full_ranks[i] <= 1:  # nothing to choose (e.g. a 1-channel input)
                        cols[1 + i].caption(f"{lab} = 1 (full rank 1)")
                        vals.append(1)
                        continue
                    vals.append(cols[1 + i].slider(f"{l.name} · {lab}", 1, int(l.full_ranks[i]), step=1, key=state.slider_key(mid, l.name, i),
                                                   help=f"full rank {l.full_ranks[i]}, EVBMF rank {vb[i]}{helps[i]}", label_visibility="visible"))
                ranks[l.name] = tuple(int(v) for v in vals)
    return ranks


METHOD_LABELS = {"tucker2": "Tucker-2 (the sliders)", "cp": "CP", "spatial": "spatial SVD (k×1 then 1×k)"}


def _apply_method(ctx, name: str, method: str) -> None:
    """Callback (runs before the script): the layer's decomposition from the panel's widgets."""
    rank = st.session_state.get(f"method_rank|{name}|{method}") if method != "tucker2" else None
    if rank is None and method != "tucker2":  # no rank chosen yet: the size of the layer's Tucker-2 sliders
        from lrviz.cost import layer_params
        from lrviz.methods import rank_for_params

        l = ctx.analysis.layer(name)
        rank = rank_for_params(l, method, layer_params(l, tuple(state.current_ranks(ctx)[name])))
    state.set_method(ctx, name, method, rank)


def _reset_methods(ctx) -> None:
    for n in list(state.current_methods(ctx)):
        state.set_method(ctx, n, "tucker2", None)


def other_decompositions(ctx) -> None:
    """Per k×k conv: CP or spatial SVD instead of Tucker-2, at a rank (default: the size of its sliders' Tucker-2),
    with the three forms' kernel errors at that size."""
    from lrviz.layers import get_module
    from lrviz.methods import check_method, method_max_rank, rank_for_params

    a = ctx.analysis
    eligible = []
    for l in a.layers:
        try:
            check_method(l, "cp")
            eligible.append(l)
        except LrvizError:
            pass
    if not eligible:
        return
    methods = state.current_methods(ctx)
    title = "Other decompositions: CP, spatial SVD" + (f" · {len(methods)} layer{'s' if len(methods) > 1 else ''}" if methods else "")
    with st.expander(title, expanded=bool(methods)):
        st.caption("A k×k conv can be decomposed by **CP** (1×1 → kh×1 and 1×kw depthwise → 1×1; fitted by ALS) or by "
                   "**spatial SVD** (kh×1 then 1×kw) instead of Tucker-2. Their costs are exact; the projection covers "
                   "Tucker-2 / SVD only, so a plan with such layers is measured (*Quick evaluate*), not projected.")
        names = [l.name for l in eligible]
        name = st.selectbox("Layer", names, key="method_layer")
        l = a.layer(name)
        current = methods.get(name, ("tucker2", None))
        choice = st.radio("Decomposition", list(METHOD_LABELS), index=list(METHOD_LABELS).index(current[0]),
                          format_func=METHOD_LABELS.get, horizontal=True, key=f"method_kind|{name}")
        tucker = tuple(state.current_ranks(ctx)[name])
        from lrviz.cost import layer_params

        size = layer_params(l, tucker)
        if choice != "tucker2":
            top = method_max_rank(l, choice) - 1
            default = current[1] if current[0] == choice else rank_for_params(l, choice, size)
            rank = st.number_input(f"{METHOD_LABELS[choice]} rank", 1, max(top, 1), int(min(default, max(top, 1))),
                                   key=f"method_rank|{name}|{choice}", help=f"1..{top}; from {top + 1} the layer stays dense")
        left, right = st.columns(2)
        left.button("Apply to this layer", key="method_apply", on_click=_apply_method, args=(ctx, name, choice))
        if methods:
            right.button("All back to Tucker-2", key="method_reset", on_click=_reset_methods, args=(ctx,))
        if methods:
            st.caption("Now: " + ", ".join(f"`{n}` {METHOD_LABELS[m].split(' (')[0]} rank {r}" for n, (m, r) in methods.items()))
        if tucker != tuple(l.full_ranks):
            w = get_module(ctx.module, name).weight
            fit = st.toggle("Also fit CP at this size (ALS, a few seconds)", key="method_cp_fit")
            rows = state.cached_equal_size(ctx.source.key, name, tucker, fit, l, w)
            st.dataframe([{"form": METHOD_LABELS[r["method"]].split(" (")[0], "rank": r["rank"], "params": r["params"],
                           "kernel error": "–" if r["rel_error"] is None else f"{r['rel_error']:.1%}"} for r in rows],
                         hide_index=True)
            st.caption(f"At the size of this layer's Tucker-2 ranks {tucker} ({fmt.count(size)} params): each form's relative "
                       "kernel error ‖W − Ŵ‖/‖W‖ (weight-only; an indication, not an accuracy).")


def projection_settings(live: Live) -> None:
    """The user's own original accuracy for the projection (e.g. a published one when there is no data)."""
    with st.expander("Projection settings"):
        override = st.number_input(
            "Original top-1 for the projection (%)", 0.0, 100.0, value=None, step=0.1, key="proj_base_pct",
            help="leave empty to use the measured accuracy of the original model (with sensitivities: on the calibration "
                 "images); enter e.g. a published accuracy when the data is not available",
            placeholder="measured" if live.base is not None or live.sens.ready else "not measured",
        )
    overrides = st.session_state.setdefault(state.BASE_OVERRIDE_KEY, {})
    if override is None:
        overrides.pop(live.ctx.model_id, None)
    else:
        overrides[live.ctx.model_id] = override / 100.0
    live.reproject()


def quick_evaluations(live: Live) -> None:
    """Quick evaluation of the plan (button or automatic); a new point refits the projection."""
    ctx, n = live.ctx, live.ctx.quick_n
    e = st.columns([1.2, 1.4, 3])
    clicked = e[0].button(f"Quick evaluate ({fmt.count(n)} images)", type="primary", key="quick_eval", disabled=ctx.eval_problem is not None)
    auto = e[1].toggle("Auto-evaluate", key="auto_eval", disabled=ctx.eval_problem is not None,
                       help="after every change (slider release or preset), evaluate the plan on the quick subset")
    res = measure.cached_eval(ctx, plan_key(live.plan), n)
    if res is None and (clicked or auto) and ctx.eval_problem is None:
        if live.base is None:
            live.base = measure.run_eval(ctx, None, n, "original model")
            live.reproject()
        res = measure.run_eval(ctx, live.plan, n, "planned model")
    if res is None:
        e[2].caption("Not measured yet for these ranks.")
        return
    label = f"{state.current_label(ctx)} ({live.cost.params_ratio:.2f}×)"
    # stored with what was projected *before* the measurement (the projector is refitted only after)
    if measure.record_measurement(ctx, live.plan, res, label, live.proj.sens, live.sens.projector) and live.sens.projector is not None:
        live.sens.projector = measure.projector(ctx, live.sens.result)  # refit γ with the new point
        live.reproject()
    row = measure.measured_row(ctx, live.plan)
    then = ""
    if row is not None and row.get("projected") is not None:
        then = f" · projected before it was measured: {fmt.percent(row['projected'])}"
        if row.get("proj_lo") is not None:
            then += f" ({fmt.percent_range(row['proj_lo'], row['proj_hi'])})"
    e[2].success(f"Measured top-1 of this plan: **{measure.fmt_ci(res)}**{then}")


def _metric(col, label: str, value: str, delta: str, **kw) -> None:
    col.metric(label, value, delta, delta_color="off", delta_arrow="off", **kw)


def plan_metrics(live: Live) -> None:
    c = live.cost
    st.caption(f"Current plan: **{state.current_label(live.ctx)}** · MACs at batch 1 (FLOPs = 2 × MACs) · params = all parameters")
    m = st.columns([1, 1, 1, 1, 1.9])  # room for the projection and its band (or "not projected yet")
    _metric(m[0], "Params", fmt.human(c.params_planned), f"{c.params_ratio:.2f}× fewer", help=f"{c.params_planned:,} of {c.params:,} parameters")
    _metric(m[1], "MACs / image", fmt.human(c.macs_planned), f"{c.macs_ratio:.2f}× fewer", help=f"{c.macs_planned:,} of {c.macs:,} MACs")
    _metric(m[2], "FLOPs / image", fmt.human(c.flops_planned), f"was {fmt.human(c.flops)}", help="FLOPs = 2 × MACs")
    _metric(m[3], "Size (float32)", f"{fmt.size_mb(c.params_planned):.2f} MB", f"was {fmt.size_mb(c.params):.2f} MB")
    projection_metric(m[4], live)


def measured_label(batch: int) -> str:
    """The label of a measured-speedup metric: batch, device, threads."""
    return f"Measured speedup, batch {batch} ({measure.SPEED_DEVICE.upper()}, {measure.speed_threads()} threads)"


def table_label(lat) -> str:
    return f"Predicted speedup, batch {lat.table.batch} (latency table, {lat.table.device.upper()}, {lat.table.threads} threads)"


@st.fragment(run_every=1.0)
def speed_progress() -> None:
    """Progress of this session's speed job, redrawn every second; a full rerun when it ends."""
    if measure.speed_progress_bar():
        st.rerun()


def speed_panel(live: Live, lat) -> None:
    """The plan's speedup: predicted from MACs, measured end to end at batch 1 and 64 (or "not measured
    yet"), and with a latency table its prediction; the measurement runs in the background."""
    ctx, plan, c = live.ctx, live.plan, live.cost
    speed = measure.speed_result(ctx, plan)  # looked up by this plan's ranks only
    running, mine, busy = measure.speed_running(), measure.speed_running(ctx, plan), measure.timing_busy()
    with st.container(border=True):
        st.markdown("**Speed** — the MACs ratio predicts; the end-to-end timing of the original and this plan measures")
        m = st.columns([1, 1, 1, 1, 1.1])
        _metric(m[0], "Speedup predicted from MACs", f"{c.macs_ratio:.2f}×", "counted, not timed",
                help="MACs of the original ÷ MACs of this plan: an upper bound on the speedup that ignores memory traffic "
                     "and the extra layers of a factorisation")
        by_batch = {r.batch: r for r in speed or ()}
        for col, b in zip(m[1:3], measure.SPEED_BATCHES):
            r, label = by_batch.get(b), measured_label(b)
            if r is None:
                _metric(col, label, NOT_MEASURED, "measuring…" if mine else "press Measure speed")
            else:
                _metric(col, label, f"{r.speedup:.2f}×",
                        f"{r.original_ms:.2f} → {r.planned_ms:.2f} ms (IQR {r.original_iqr_ms:.2f} → {r.planned_iqr_ms:.2f})",
                        help=f"measured on {r.device.upper()} with {r.threads} threads, both models under {r.execution}: "
                             f"{speedup_text(r.speedup)}; median and interquartile range (IQR) of interleaved rounds")
        if lat is not None:
            _metric(m[3], table_label(lat), f"{lat.predicted_speedup(plan):.2f}×",
                    "per-layer times, not end to end",
                    help=f"the latency table ({lat.where}, {lat.table.execution}): the planned layers' measured times plus "
                         "the rest of the model — a prediction; the measured speedup is the truth")
        start = m[4].button(f"Measure speed (batch {' and '.join(map(str, measure.SPEED_BATCHES))})", key="speed_measure",
                            disabled=speed is not None or busy is not None, width="stretch",
                            help="time the original and this plan end to end in the background (about a minute without a cached "
                                 "result: every execution is tried, including torch.compile)")
        if start and busy is None:
            measure.start_speed_job(ctx, plan, state.current_label(ctx))
            running = mine = True
        if speed is not None:
            st.caption(latency_note(speed, c.macs_ratio))
        elif running and not mine:
            st.caption(f"Measuring the speed of another plan ({measure.speed_job()['label']}); this one can be measured after it.")
        elif busy is not None and not mine:
            st.caption(f"Measure speed waits for {busy} (running in the background): a timing beside it would be slowed down.")
        if lat is not None:
            slow = lat.slower_layers(plan)
            if slow:
                st.caption(f"Latency table: {len(slow)} layer{'s' if len(slow) != 1 else ''} of this plan run slower than dense "
                           f"({', '.join(slow[:6])}{', …' if len(slow) > 6 else ''}) — *Drop slower factors* above sets them back.")
        if running:
            speed_progress()
        err = measure.speed_error(ctx, plan)
        if err:
            st.error(f"Speed measurement failed: {err}")


def accuracy_delta(drop: float) -> str:
    """The delta under a projected accuracy, in percentage points (``"-1.2 pts vs original"``)."""
    return "same as original" if abs(drop) < 5e-4 else f"{fmt.points(-drop, unit='pts')} vs original"


def energy_text(retained: float | None) -> str:
    if retained is None:
        return ""
    return (f"Energy kept Π q = {retained:.3g} (q = energy kept by a layer's worst mode; data-free) — an *ordering* of plans, "
            "not an accuracy.")


def projection_metric(col, live: Live) -> None:
    sp, ctx = live.proj.sens, live.ctx
    if sp is None:
        not_projected(col, live)
        return
    same = abs(sp.drop) < 5e-4
    style = dict(delta_color="off" if same else "normal", delta_arrow="off" if same else "auto")
    base = f"{fmt.percent(live.proj.base_top1)} ({live.proj.base_text})"
    lo, hi = sp.interval
    col.metric("Projected top-1", f"{fmt.percent(sp.top1)} ({fmt.percent_range(lo, hi)})", accuracy_delta(sp.drop), **style,
               help=f"{sp.detail}. The range is a ~95 % band (sampling error of the calibration images plus the model error). "
                    "The delta is in percentage points (pts).")
    st.caption(f"Projection basis: **sensitivities** — {sp.detail}. From the original's {base}; "
               f"~95 % band {fmt.percent_range(lo, hi)}. Without fine-tuning. {energy_text(live.proj.retained)}")


def not_projected(col, live: Live) -> None:
    """No data-driven projection yet: say so, point to the measurement, show the energy kept as an ordering."""
    ctx, sens = live.ctx, live.sens
    col.metric("Projected top-1", NOT_PROJECTED,
               help="The projection comes from layer sensitivities measured on the quick-evaluation images; the data-free "
                    "energy kept is an ordering of plans, not an accuracy.")
    if ctx.eval_problem:
        st.caption(f"No projection: {ctx.eval_problem}. {energy_text(live.proj.retained)}")
        return
    button = f"*{measure_label(ctx.quick_n)}*"
    if live.plan.methods:
        st.caption(f"**Projected top-1: not projected.** Layer(s) {', '.join(f'`{n}`' for n in list(live.plan.methods)[:4])} use "
                   "CP / spatial SVD, which the sensitivities do not cover: check the plan with *Quick evaluate* below.")
        return
    if sens.running:
        why = "Layer sensitivities are being measured (progress in the panel above); the projection appears when they are complete."
    elif sens.result is not None and sens.result.curves:
        why = (f"Layer sensitivities are only partly measured for these images: press {button} in the panel above to finish "
               "them for a projection.")
    else:
        why = (f"No layer sensitivities for this model, {ctx.data_label} and {fmt.count(ctx.quick_n)} images yet: press {button} "
               "in the panel above for a data-driven projection with a ~95 % band (or check a plan with *Quick evaluate* below).")
    st.caption(f"**Projected top-1: not projected yet.** {why} {energy_text(live.proj.retained)}")


def charts(live: Live) -> None:
    ctx, a, c = live.ctx, live.ctx.analysis, live.cost
    left, right = st.columns(2)
    metric = left.segmented_control("Bars", ["params", "macs"], default="params", key="bars_metric",
                                    format_func={"params": "Params", "macs": "MACs"}.get) or "params"
    left.plotly_chart(figures.layer_cost_figure(c, metric), key="layer_bars")
    sp, base_top1 = live.proj.sens, live.proj.base_top1
    plans = state.cached_retention_curve(ctx.source.key, a)
    if sp is not None:
        curve = tables.projection_curve(plans, live.sens.projector, measure.base_override(ctx))
        curve_name = "projection along energy plans (sensitivities)"
        current = {"params_ratio": c.params_ratio, "top1": sp.top1, "lo": sp.interval[0], "hi": sp.interval[1]}
        energy, title = None, "Accuracy: projected vs measured"
    else:  # no data-driven projection: measured points only, the energy kept on its own (labelled) axis
        curve, curve_name, current = None, "", None
        energy = {"curve": plans[["params_ratio", "retained"]], "current": {"params_ratio": c.params_ratio, "retained": live.proj.retained}}
        title = "Accuracy measured (not projected yet)"
    fig = figures.projection_figure(curve, current, measure.measured(ctx), base_top1, 1.0 / ctx.loaded.num_classes,
                                    curve_name=curve_name, energy=energy, title=title)
    right.plotly_chart(fig, key="projection_chart")
    if live.sens.projector is not None:
        calibration(live)


def calibration(live: Live) -> None:
    ctx, projector = live.ctx, live.sens.projector
    points = tables.calibration_points(measure.measured(ctx), measure.measured_plans(ctx), projector)
    left, right = st.columns(2)
    left.plotly_chart(figures.calibration_figure(points), key="calibration_chart")
    score = tables.out_of_sample(points)
    text = (f"**Projected vs measured** on the {fmt.count(live.sens.result.n)} calibration images (the quick-evaluation subset). "
            "Filled markers: what was projected before each point was measured, with the ~95 % band shown then — the error "
            f"and the coverage below are computed from these only. Hollow: today's projection (γ = {projector.gain:.2f}, refitted to "
            f"{projector.n_fit} plan(s) including these points, so in-sample). Points on the dashed diagonal are projected exactly.")
    if score["points"]:
        text += (f"  \n{score['points']} quick evaluation(s), each projected before it was measured: mean |projected − measured| "
                 f"{fmt.points(score['mae'], signed=False)} (RMS {fmt.points(score['rmse'], signed=False)}); "
                 f"{score['inside']} of {score['banded']} inside the band shown beforehand.")
    elif score["unscored"]:
        text += (f"  \n{score['unscored']} quick evaluation(s) on these images were measured before there was a projection: "
                 "nothing to score yet. Press *Quick evaluate* on a new plan to test the projection.")
    else:
        text += "  \nNo quick evaluation on these images yet: press *Quick evaluate* to test the projection (each point then refits γ)."
    right.markdown(text)


@st.fragment
def plan_section(ctx) -> None:
    """Everything a slider move changes; reruns alone on a slider move (the numbers sit above the sliders)."""
    t0 = time.perf_counter()
    state.sync_sliders(ctx)
    header, charts_box, evals_box = st.container(), st.container(), st.container()
    lat = measure.latency_table(ctx) if measure.optimise_for() == "speed" else None
    state.set_ranks_from_sliders(ctx, rank_sliders(ctx, lat))
    other_decompositions(ctx)
    live = Live(ctx, current_sens(ctx))  # read again: a quick evaluation may have refitted the projector
    metrics_box = header.container()
    speed_box = header.container()
    with header:
        projection_settings(live)
    with evals_box:
        quick_evaluations(live)
    with metrics_box:
        plan_metrics(live)
    with speed_box:
        speed_panel(live, lat)
    with charts_box:
        charts(live)
    st.session_state[RENDER_MS] = (time.perf_counter() - t0) * 1000


def render() -> None:
    t0 = time.perf_counter()
    ctx = state.require_ctx(decomposable=True)
    if not ctx.analysis.layers:
        st.title("Ranks")
        st.info("No decomposable layers.")
        return
    sens = current_sens(ctx)
    st.title("Ranks")
    optimise_panel(ctx)
    presets(ctx, sens.ready)
    sensitivity_panel(ctx, sens)
    plan_section(ctx)
    st.session_state[RENDER_MS] = (time.perf_counter() - t0) * 1000


render()
