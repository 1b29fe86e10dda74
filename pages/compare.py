"""Compare page: saved configurations, Pareto plots (click a point to load it), ratio sweep of
allocation strategies at matched params or MACs (:func:`lrviz.budget.sweep`: budget solver, uniform,
weakened VBMF, energy threshold), measured and projected."""

import json
import math
from types import SimpleNamespace

import pandas as pd
import streamlit as st

from lrviz import RankPlan, plan_cost
from lrviz import dashboard as dsh
from lrviz.budget import STRATEGY_LABELS
from lrviz.budget import sweep as run_sweep
from lrviz.errors import LrvizError
from pages import _common as common

ctx = common.require_ctx(decomposable=True)
a, mid = ctx.analysis, ctx.model_id
st.title("Compare")
configs: dict = st.session_state.setdefault("_configs", {}).setdefault(mid, {})
n = ctx.quick_n


def _config_row(name: str, plan) -> dict:
    cost = plan_cost(a, plan)
    res = common.cached_eval(ctx, dsh.plan_key(plan), n)
    return {
        "name": name,
        "spec": plan.spec,
        "plan_json": plan.to_json(),
        "plan_key": dsh.plan_key(plan),
        "params": cost.params_planned,
        "flops": cost.flops_planned,
        "params_ratio": cost.params_ratio,
        "flops_ratio": cost.macs_ratio,
        "top1": res.top1 if res else math.nan,
        "lo": res.top1_ci[0] if res else math.nan,
        "hi": res.top1_ci[1] if res else math.nan,
        "n": res.n if res else 0,
    }


def _load(name: str) -> None:
    cfg = configs[name]
    plan = RankPlan.from_json(cfg["plan_json"], a.layers)
    common.set_plan(ctx, plan, name)
    st.session_state["_compare_loaded"] = name


# ---- save ----------------------------------------------------------------------------------------
plan = common.current_plan(ctx)
cost = plan_cost(a, plan)
with st.container(border=True):
    st.markdown(f"**Current plan** ({common.current_label(ctx)}): {dsh.human(cost.params_planned)} params ({cost.params_ratio:.2f}× fewer), "
                f"{dsh.human(cost.flops_planned)} FLOPs ({cost.macs_ratio:.2f}× fewer)")
    c = st.columns([3, 1, 1])
    default_name = common.current_label(ctx) if common.current_label(ctx) not in configs else f"config {len(configs) + 1}"
    name = c[0].text_input("Name", value=default_name, key="config_name", label_visibility="collapsed", placeholder="configuration name")
    if c[1].button("Save current plan", type="primary", key="save_config", width="stretch"):
        name = (name or "").strip() or f"config {len(configs) + 1}"
        configs[name] = _config_row(name, plan)
        st.toast(f"Saved {name!r}")
    run_missing = c[2].button(f"Evaluate unmeasured ({n} images)", key="eval_configs", width="stretch", disabled=ctx.eval_problem is not None or not configs)

if run_missing:
    for cfg_name, cfg in list(configs.items()):
        if math.isnan(cfg["top1"]):
            p = RankPlan.from_json(cfg["plan_json"], a.layers)
            res = common.run_eval(ctx, p, n, cfg_name)
            if res is not None:
                configs[cfg_name] = _config_row(cfg_name, p)
for cfg_name, cfg in configs.items():  # pick up evaluations made elsewhere (e.g. Ranks page)
    if math.isnan(cfg["top1"]) and common.cached_eval(ctx, cfg["plan_key"], n) is not None:
        configs[cfg_name] = _config_row(cfg_name, RankPlan.from_json(cfg["plan_json"], a.layers))

# ---- table and Pareto plots ----------------------------------------------------------------------
base = common.baseline(ctx, auto=False)
if configs:
    df = pd.DataFrame(list(configs.values()))
    points = df.copy()
    if base is not None:
        points = pd.concat([points, pd.DataFrame([{"name": "original", "params": a.params, "flops": 2 * a.macs, "top1": base.top1,
                                                   "lo": base.top1_ci[0], "hi": base.top1_ci[1], "params_ratio": 1.0, "flops_ratio": 1.0}])],
                           ignore_index=True)
    st.dataframe(
        df[["name", "spec", "params", "params_ratio", "flops", "flops_ratio", "top1", "lo", "hi", "n"]],
        hide_index=True, width="stretch",
        column_config={
            "params": st.column_config.NumberColumn("params", format="localized"),
            "params_ratio": st.column_config.NumberColumn("params ×", format="%.2f"),
            "flops": st.column_config.NumberColumn("FLOPs (2×MACs)", format="localized"),
            "flops_ratio": st.column_config.NumberColumn("FLOPs ×", format="%.2f"),
            "top1": st.column_config.NumberColumn("top-1", format="percent"),
            "lo": st.column_config.NumberColumn("CI low", format="percent"),
            "hi": st.column_config.NumberColumn("CI high", format="percent"),
        },
    )
    st.caption(f"Accuracies on a fixed subset of {n} images of {ctx.data_src.label if ctx.data_src else 'the data'}, with 95 % Wilson intervals. Click a point to load that configuration into the Ranks page.")
    left, right = st.columns(2)
    ev1 = left.plotly_chart(dsh.pareto_figure(points, "params"), key="pareto_params", on_select="rerun", selection_mode="points")
    ev2 = right.plotly_chart(dsh.pareto_figure(points, "flops"), key="pareto_flops", on_select="rerun", selection_mode="points")
    picked = None
    for ev in (ev1, ev2):
        pts = ((ev or {}).get("selection") or {}).get("points") or []
        if pts:
            picked = pts[0].get("customdata")
            picked = picked[0] if isinstance(picked, (list, tuple)) else picked
    if picked and picked in configs and st.session_state.get("_compare_last_pick") != picked:
        st.session_state["_compare_last_pick"] = picked
        _load(picked)
    c = st.columns([3, 1, 1])
    choice = c[0].selectbox("Configuration", list(configs), key="config_choice", label_visibility="collapsed")
    c[1].button("Load into Ranks", key="load_config", on_click=_load, args=(choice,), width="stretch")
    if c[2].button("Delete", key="delete_config", width="stretch"):
        configs.pop(choice, None)
        st.rerun()
    if st.session_state.get("_compare_loaded"):
        st.success(f"Loaded **{st.session_state['_compare_loaded']}** — the Ranks page now shows its ranks.")
        st.page_link("pages/ranks.py", label="Open Ranks", icon=":material/tune:")
else:
    st.info("No saved configurations yet: set ranks on the Ranks page and save them here.")

# ---- ratio sweep ---------------------------------------------------------------------------------
st.subheader("Ratio sweep")
sens = common.sensitivities(ctx)
sens_ready = sens is not None and sens.complete
projector = common.projector(ctx, sens) if sens_ready else None
st.caption(
    "For each target reduction T of the chosen metric, build the plan of each allocation strategy at matched cost and "
    "evaluate it: the budget solver (least projected loss; needs layer sensitivities), a uniform rank fraction, a "
    "weakened VBMF (vbmf:K, K bisected) and an energy threshold. A strategy that cannot reach T is left out. "
    + (f"Projected accuracies (dotted) come from the sensitivities measured on {sens.n} images, calibrated to "
       f"{projector.n_fit} measured plan(s)." if projector is not None else
       "Measure layer sensitivities on the Ranks page to add the solver and the projected accuracies.")
)
strategies_offered = [s_ for s_ in dsh.SWEEP_STRATEGIES if s_ != "solver" or sens_ready]
c = st.columns([2, 1.2, 2.2, 1, 1])
ratios = c[0].multiselect("Ratios (×)", list(dsh.SWEEP_RATIOS), default=list(dsh.SWEEP_RATIOS), key="sweep_ratios")
sweep_metric = c[1].radio("Matched", ["params", "macs"], key="sweep_metric", horizontal=True, format_func={"params": "params", "macs": "MACs"}.get)
strategies = c[2].multiselect("Strategies", strategies_offered, default=strategies_offered, key="sweep_strategies",
                              format_func=STRATEGY_LABELS.get)
sweep_n = c[3].number_input("Images", 50, 10000, n, 50, key="sweep_n",
                            help="the default (the quick-evaluation size) measures on the calibration images of the projection")
go = c[4].button("Run sweep", type="primary", key="run_sweep", disabled=ctx.eval_problem is not None or not ratios or not strategies)
sweeps = st.session_state.setdefault("_sweeps", {})
skey = (mid, ctx.data_key, (int(sweep_n), sweep_metric))
if go:
    strategies = [s_ for s_ in strategies if s_ in strategies_offered]
    sweep_base = None  # projections are anchored to the calibration images unless the sweep uses others
    if projector is not None and int(sweep_n) != sens.n:
        b = common.run_eval(ctx, None, int(sweep_n), "original model")
        sweep_base = None if b is None else b.top1
    bar = st.progress(0.0, text="Sweeping…")
    try:
        sweeps[skey] = run_sweep(
            a, ctx.module, ctx.dataset, sorted(ratios), metric=sweep_metric, strategies=strategies, projector=projector,
            base_top1=sweep_base, factors=ctx.factors, limit=int(sweep_n), measure=True,
            progress=lambda d, t, what: bar.progress(d / t, text=f"Sweep {d}/{t}: {what}"),
        )
    except LrvizError as exc:
        st.error(f"Sweep failed: {exc}")
    bar.empty()
    if projector is not None and int(sweep_n) == sens.n and skey in sweeps:
        # measured on the calibration images: every point also calibrates the projection (Ranks page)
        full = dsh.full_plan(a)
        for r in sweeps[skey].dropna(subset=["top1"]).itertuples():
            try:
                p_ = full.with_ranks({k_: tuple(v_) for k_, v_ in json.loads(r.ranks or "{}").items()}, spec=r.spec)
            except (LrvizError, ValueError):
                continue
            res_ = SimpleNamespace(top1=float(r.top1), top1_ci=(float(r.lo), float(r.hi)), n=int(r.n))
            common.record_measurement(ctx, p_, res_, f"sweep {r.strategy} {r.target:g}×",
                                      common.sensitivity_projection(ctx, projector, p_))
if ctx.eval_problem:
    st.info(f"Accuracy cannot be measured: {ctx.eval_problem}.")
sweep = sweeps.get(skey)
if sweep is not None and len(sweep):
    if sweep["top1"].notna().any() or sweep["projected"].notna().any():
        st.plotly_chart(dsh.sweep_figure(sweep, None if base is None else base.top1, sweep_metric), key="sweep_chart")
    unreachable = sweep[sweep["spec"] == "unreachable"]
    if len(unreachable):
        st.caption("Out of reach: " + ", ".join(f"{STRATEGY_LABELS.get(r.strategy, r.strategy)} {r.target:g}×" for r in unreachable.itertuples()))
    cols = [c_ for c_ in ["strategy", "target", "params_ratio", "macs_ratio", "projected", "proj_lo", "proj_hi", "top1", "lo", "hi", "n",
                          "spec", "ranks"] if c_ in sweep]
    st.dataframe(sweep[cols], hide_index=True, width="stretch",
                 column_config={"params_ratio": st.column_config.NumberColumn("params ×", format="%.2f"),
                                "macs_ratio": st.column_config.NumberColumn("MACs ×", format="%.2f"),
                                "projected": st.column_config.NumberColumn("projected", format="percent"),
                                "proj_lo": st.column_config.NumberColumn("proj. low", format="percent"),
                                "proj_hi": st.column_config.NumberColumn("proj. high", format="percent"),
                                "top1": st.column_config.NumberColumn("top-1", format="percent"),
                                "lo": st.column_config.NumberColumn("CI low", format="percent"),
                                "hi": st.column_config.NumberColumn("CI high", format="percent")})
    st.caption(f"Measured on {int(sweep['n'].max())} images (95 % Wilson intervals); `ranks` lists the factored layers' ranks."
               + (" Measured on the calibration images, so every point also recalibrates the projection (Ranks page)."
                  if projector is not None and int(sweep["n"].max()) == sens.n else ""))
