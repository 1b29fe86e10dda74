"""Compare page: saved configurations, Pareto plots (click a point to load it), ratio sweep."""

import math

import pandas as pd
import streamlit as st

from lrviz import RankPlan, plan_cost
from lrviz import dashboard as dsh
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
st.caption(
    "For each target params reduction T, build a plan of each family at matched cost and evaluate it: "
    "energy threshold (ratio:T), a uniform rank fraction, and a weakened VBMF (vbmf:K with K bisected). "
    "A family that cannot reach T is left out."
)
c = st.columns([2, 2, 1, 1])
ratios = c[0].multiselect("Ratios (×)", list(dsh.SWEEP_RATIOS), default=list(dsh.SWEEP_RATIOS), key="sweep_ratios")
families = c[1].multiselect("Families", list(dsh.SWEEP_FAMILIES), default=list(dsh.SWEEP_FAMILIES), key="sweep_families",
                            format_func=dsh.FAMILY_LABELS.get)
sweep_n = c[2].number_input("Images", 50, 10000, min(n, 300), 50, key="sweep_n")
go = c[3].button("Run sweep", type="primary", key="run_sweep", disabled=ctx.eval_problem is not None or not ratios or not families)
sweeps = st.session_state.setdefault("_sweeps", {})
skey = (mid, ctx.data_key, int(sweep_n))
if go:
    bar = st.progress(0.0, text="Sweeping…")
    try:
        sweeps[skey] = dsh.ratio_sweep(
            a, ctx.module, ctx.factors, ctx.dataset, sorted(ratios), families, limit=int(sweep_n),
            progress=lambda d, t, what: bar.progress(d / t, text=f"Sweep {d}/{t}: {what}"),
        )
    except LrvizError as exc:
        st.error(f"Sweep failed: {exc}")
    bar.empty()
if ctx.eval_problem:
    st.info(f"Accuracy cannot be measured: {ctx.eval_problem}.")
sweep = sweeps.get(skey)
if sweep is not None:
    if sweep["top1"].notna().any():
        st.plotly_chart(dsh.sweep_figure(sweep, None if base is None else base.top1), key="sweep_chart")
    unreachable = sweep[sweep["top1"].isna()]
    if len(unreachable):
        st.caption("Out of reach: " + ", ".join(f"{r.family} {r.target:g}×" for r in unreachable.itertuples()))
    st.dataframe(sweep.drop(columns=["label"]), hide_index=True, width="stretch",
                 column_config={"top1": st.column_config.NumberColumn("top-1", format="percent"),
                                "lo": st.column_config.NumberColumn(format="percent"), "hi": st.column_config.NumberColumn(format="percent")})
