"""Compare page: saved configurations, Pareto plots (click a point to load it), ratio sweep of
allocation strategies at matched params or MACs (:func:`lrviz.budget.sweep`: budget solver, uniform,
weakened VBMF, energy threshold), measured and projected."""

import json
import math
from functools import partial
from types import SimpleNamespace

import pandas as pd
import streamlit as st

from lrviz import RankPlan, figures, fmt, make_plan, plan_cost
from lrviz.budget import STRATEGIES, STRATEGY_LABELS
from lrviz.budget import sweep as run_sweep
from lrviz.errors import LrvizError
from lrviz.keys import plan_key
from pages import _measure as measure
from pages import _state as state

#: Ratios the sweep offers (params or MACs reduction, ×).
SWEEP_RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
LOADED_KEY = "_compare_loaded"
PARETO_KEYS = {"params": "pareto_params", "flops": "pareto_flops"}
Num = st.column_config.NumberColumn
#: Accuracies are shown as percentages with one decimal (the frames hold fractions: see :func:`as_percent`).
PCT = "%.1f%%"
ACCURACY_COLUMNS = {"top1": Num("top-1", format=PCT), "lo": Num("CI low", format=PCT), "hi": Num("CI high", format=PCT)}


def as_percent(df: pd.DataFrame, columns) -> pd.DataFrame:
    """A copy of ``df`` with the accuracy ``columns`` (fractions) as percentages, for the ``PCT`` format."""
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = out[c].astype(float) * 100.0
    return out


def saved(ctx) -> dict:
    """This session's saved configurations of the current model (name → row)."""
    return st.session_state.setdefault("_configs", {}).setdefault(ctx.model_id, {})


def config_row(ctx, name: str, plan) -> dict:
    cost = plan_cost(ctx.analysis, plan)
    res = measure.cached_eval(ctx, plan_key(plan), ctx.quick_n)
    return {
        "name": name, "spec": plan.spec, "plan_json": plan.to_json(), "plan_key": plan_key(plan),
        "params": cost.params_planned, "flops": cost.flops_planned, "params_ratio": cost.params_ratio, "flops_ratio": cost.macs_ratio,
        "top1": res.top1 if res else math.nan, "lo": res.top1_ci[0] if res else math.nan, "hi": res.top1_ci[1] if res else math.nan,
        "n": res.n if res else 0,
    }


def load(ctx, name: str) -> None:
    state.set_plan(ctx, RankPlan.from_json(saved(ctx)[name]["plan_json"], ctx.analysis.layers), name)
    st.session_state[LOADED_KEY] = name


def save_panel(ctx) -> None:
    configs, plan, n = saved(ctx), state.current_plan(ctx), ctx.quick_n
    cost = plan_cost(ctx.analysis, plan)
    label = state.current_label(ctx)
    with st.container(border=True):
        st.markdown(f"**Current plan** ({label}): {fmt.human(cost.params_planned)} params ({cost.params_ratio:.2f}× fewer), "
                    f"{fmt.human(cost.flops_planned)} FLOPs ({cost.macs_ratio:.2f}× fewer)")
        c = st.columns([3, 1, 1])
        default_name = label if label not in configs else f"config {len(configs) + 1}"
        name = c[0].text_input("Name", value=default_name, key="config_name", label_visibility="collapsed", placeholder="configuration name")
        if c[1].button("Save current plan", type="primary", key="save_config", width="stretch"):
            name = (name or "").strip() or f"config {len(configs) + 1}"
            configs[name] = config_row(ctx, name, plan)
            st.toast(f"Saved {name!r}")
        run_missing = c[2].button(f"Evaluate unmeasured ({fmt.count(n)} images)", key="eval_configs", width="stretch",
                                  disabled=ctx.eval_problem is not None or not configs)
    for name, cfg in list(configs.items()):
        if not math.isnan(cfg["top1"]):
            continue
        if run_missing:
            measure.run_eval(ctx, RankPlan.from_json(cfg["plan_json"], ctx.analysis.layers), n, name)
        if measure.cached_eval(ctx, cfg["plan_key"], n) is not None:  # measured now, or elsewhere (e.g. Ranks page)
            configs[name] = config_row(ctx, name, RankPlan.from_json(cfg["plan_json"], ctx.analysis.layers))


def pareto_points(ctx, df: pd.DataFrame, base) -> pd.DataFrame:
    """The saved configurations plus the original model (when its accuracy is known)."""
    if base is None:
        return df.copy()
    a = ctx.analysis
    original = {"name": "original", "params": a.params, "flops": 2 * a.macs, "top1": base.top1, "lo": base.top1_ci[0],
                "hi": base.top1_ci[1], "params_ratio": 1.0, "flops_ratio": 1.0}
    return pd.concat([df, pd.DataFrame([original])], ignore_index=True)


def picked_config(events) -> str | None:
    """The configuration name of a clicked Pareto point (its ``customdata``), if any."""
    picked = None
    for ev in events:
        pts = ((ev or {}).get("selection") or {}).get("points") or []
        if pts:
            picked = pts[0].get("customdata")
            picked = picked[0] if isinstance(picked, (list, tuple)) else picked
    return picked


def on_pick(ctx, key: str) -> None:
    """A Pareto point was clicked: load its configuration. A callback, so it runs before the script and
    the page's header (drawn first) already shows the loaded plan in the same run."""
    picked = picked_config([st.session_state.get(key)])
    if picked and picked in saved(ctx):
        load(ctx, picked)


def configs_panel(ctx, base) -> None:
    configs = saved(ctx)
    if not configs:
        st.info("No saved configurations yet: set ranks on the Ranks page and save them here.")
        return
    df = pd.DataFrame(list(configs.values()))
    st.dataframe(
        as_percent(df[["name", "spec", "params", "params_ratio", "flops", "flops_ratio", "top1", "lo", "hi", "n"]], ACCURACY_COLUMNS),
        hide_index=True, width="stretch", height=state.table_height(len(df)),
        column_config={"params": Num("params", format="localized"), "params_ratio": Num("params ×", format="%.2f"),
                       "flops": Num("FLOPs (2×MACs)", format="localized"), "flops_ratio": Num("FLOPs ×", format="%.2f"),
                       "n": Num("images", format="localized"), **ACCURACY_COLUMNS},
    )
    st.caption(f"Accuracies on a fixed subset of {fmt.count(ctx.quick_n)} images of {ctx.data_label}, with 95 % Wilson intervals. "
               "Click a point to load that configuration into the Ranks page.")
    points = pareto_points(ctx, df, base)
    left, right = st.columns(2)
    for col, x in ((left, "params"), (right, "flops")):
        key = PARETO_KEYS[x]
        col.plotly_chart(figures.pareto_figure(points, x), key=key, on_select=partial(on_pick, ctx, key), selection_mode="points")
    c = st.columns([3, 1, 1])
    choice = c[0].selectbox("Configuration", list(configs), key="config_choice", label_visibility="collapsed")
    c[1].button("Load into Ranks", key="load_config", on_click=load, args=(ctx, choice), width="stretch")
    if c[2].button("Delete", key="delete_config", width="stretch"):
        configs.pop(choice, None)
        st.rerun()
    if st.session_state.get(LOADED_KEY):
        st.success(f"Loaded **{st.session_state[LOADED_KEY]}** — the Ranks page now shows its ranks.")
        st.page_link("pages/ranks.py", label="Open Ranks", icon=":material/tune:")


# ---- ratio sweep ----------------------------------------------------------------------------------------


def sweep_controls(ctx, sens, projector) -> tuple:
    """The sweep's settings; returns ``(ratios, metric, strategies, images, run clicked)``."""
    st.caption(
        "For each target reduction T of the chosen metric, build the plan of each allocation strategy at matched cost and "
        "evaluate it: the budget solver (least projected loss; needs layer sensitivities), a uniform rank fraction, a "
        "weakened VBMF (vbmf:K, K bisected) and an energy threshold. A strategy that cannot reach T is left out. "
        + (f"Projected accuracies (dotted) come from the sensitivities measured on {fmt.count(sens.n)} images, calibrated to "
           f"{projector.n_fit} measured plan(s)." if projector is not None else
           "Measure layer sensitivities on the Ranks page to add the solver and the projected accuracies.")
    )
    offered = [s for s in STRATEGIES if s != "solver" or projector is not None]
    c = st.columns([2, 1.2, 2.2, 1, 1])
    ratios = c[0].multiselect("Ratios (×)", list(SWEEP_RATIOS), default=list(SWEEP_RATIOS), key="sweep_ratios")
    metric = c[1].radio("Matched", ["params", "macs"], key="sweep_metric", horizontal=True, format_func={"params": "params", "macs": "MACs"}.get)
    strategies = c[2].multiselect("Strategies", offered, default=offered, key="sweep_strategies", format_func=STRATEGY_LABELS.get)
    images = c[3].number_input("Images", 50, 10000, ctx.quick_n, 50, key="sweep_n",
                               help="the default (the quick-evaluation size) measures on the calibration images of the projection")
    go = c[4].button("Run sweep", type="primary", key="run_sweep", disabled=ctx.eval_problem is not None or not ratios or not strategies)
    return sorted(ratios), metric, [s for s in strategies if s in offered], int(images), go


def run_and_record(ctx, sens, projector, ratios, metric, strategies, images):
    """Run the sweep; points measured on the calibration images also calibrate the projection."""
    sweep_base = None  # projections are anchored to the calibration images unless the sweep uses others
    if projector is not None and images != sens.n:
        b = measure.run_eval(ctx, None, images, "original model")
        sweep_base = None if b is None else b.top1
    bar = st.progress(0.0, text="Sweeping…")
    try:
        result = run_sweep(ctx.analysis, ctx.module, ctx.dataset, ratios, metric=metric, strategies=strategies, projector=projector,
                           base_top1=sweep_base, factors=ctx.factors, limit=images, measure=True,
                           progress=lambda d, t, what: bar.progress(d / t, text=f"Sweep {d}/{t}: {what}"))
    except LrvizError as exc:
        st.error(f"Sweep failed: {exc}")
        result = None
    bar.empty()
    if result is not None and projector is not None and images == sens.n:
        full = make_plan(ctx.analysis, "full")
        for r in result.dropna(subset=["top1"]).itertuples():
            try:
                plan = full.with_ranks({k: tuple(v) for k, v in json.loads(r.ranks or "{}").items()}, spec=r.spec)
            except (LrvizError, ValueError):
                continue
            res = SimpleNamespace(top1=float(r.top1), top1_ci=(float(r.lo), float(r.hi)), n=int(r.n))
            # the projector the sweep projected with: fitted before these points were measured (out of sample)
            measure.record_measurement(ctx, plan, res, f"sweep {r.strategy} {r.target:g}×", measure.sensitivity_projection(ctx, projector, plan),
                                       projector)
    return result


def sweep_results(sweep: pd.DataFrame, base, metric: str, calibrated: bool) -> None:
    if sweep["top1"].notna().any() or sweep["projected"].notna().any():
        st.plotly_chart(figures.sweep_figure(sweep, None if base is None else base.top1, metric), key="sweep_chart")
    unreachable = sweep[sweep["spec"] == "unreachable"]
    if len(unreachable):
        st.caption("Out of reach: " + ", ".join(f"{STRATEGY_LABELS.get(r.strategy, r.strategy)} {r.target:g}×" for r in unreachable.itertuples()))
    cols = [c for c in ["strategy", "target", "params_ratio", "macs_ratio", "projected", "proj_lo", "proj_hi", "top1", "lo", "hi", "n",
                        "spec", "ranks"] if c in sweep]
    pct = {"projected": Num("projected", format=PCT), "proj_lo": Num("proj. low", format=PCT), "proj_hi": Num("proj. high", format=PCT),
           **ACCURACY_COLUMNS}
    st.dataframe(as_percent(sweep[cols], pct), hide_index=True, width="stretch", height=state.table_height(len(sweep)),
                 column_config={"target": Num("target ×", format="%.1f"), "params_ratio": Num("params ×", format="%.2f"),
                                "macs_ratio": Num("MACs ×", format="%.2f"), "n": Num("images", format="localized"), **pct})
    st.caption(f"Measured on {fmt.count(sweep['n'].max())} images (95 % Wilson intervals); `ranks` lists the factored layers' ranks."
               + (" Measured on the calibration images, so every point also recalibrates the projection (Ranks page)." if calibrated else ""))


def sweep_panel(ctx, base) -> None:
    st.subheader("Ratio sweep")
    sens, projector = measure.calibrated(ctx)
    ratios, metric, strategies, images, go = sweep_controls(ctx, sens, projector)
    sweeps = st.session_state.setdefault(state.SWEEPS_KEY, {})
    skey = (ctx.model_id, ctx.data_key, (images, metric))
    if go:
        result = run_and_record(ctx, sens, projector, ratios, metric, strategies, images)
        if result is not None:
            sweeps[skey] = result
    if ctx.eval_problem:
        st.info(f"Accuracy cannot be measured: {ctx.eval_problem}.")
    sweep = sweeps.get(skey)
    if sweep is not None and len(sweep):
        sweep_results(sweep, base, metric, projector is not None and int(sweep["n"].max()) == sens.n)


def render() -> None:
    ctx = state.require_ctx(decomposable=True)
    st.title("Compare")
    save_panel(ctx)
    base = measure.baseline(ctx, auto=False)
    configs_panel(ctx, base)
    sweep_panel(ctx, base)


render()
