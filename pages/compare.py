"""Compare page: saved configurations, Pareto plots (click a point to load it), ratio sweep of
allocation strategies at matched params or MACs (:func:`lrviz.budget.sweep`: budget solver, uniform,
weakened VBMF, energy threshold), measured and projected, and the history of the model in the
experiment store (every session's and the CLI's records; load a record's plan, delete a record).

Saved configurations (kind ``config``, one per name) and sweeps (``sweep``, the result rows as the
payload) are recorded in the experiment store and a new session starts with them, so a reload keeps them.
"""

import json
import math
import time
from functools import partial
from types import SimpleNamespace

import pandas as pd
import streamlit as st

from lrviz import RankPlan, figures, fmt, make_plan, plan_cost
from lrviz.budget import NEEDS_SENSITIVITIES, STRATEGIES, STRATEGY_LABELS
from lrviz.budget import sweep as run_sweep
from lrviz.errors import LrvizError
from lrviz.keys import plan_key
from lrviz.store import KINDS
from pages import _measure as measure
from pages import _state as state

#: Ratios the sweep offers (params or MACs reduction, ×).
SWEEP_RATIOS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
LOADED_KEY = "_compare_loaded"
PARETO_KEYS = {"params": "pareto_params", "flops": "pareto_flops"}
HISTORY_LOADED = "_history_loaded"
#: The History table lists this model's newest this many records.
HISTORY_LIMIT = 500
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
    """This session's saved configurations of the current model (name → row); a new session starts with
    those the experiment store keeps for the model and data."""
    configs = st.session_state.setdefault("_configs", {})
    if ctx.model_id not in configs:
        configs[ctx.model_id] = stored_configs(ctx)
    return configs[ctx.model_id]


def stored_configs(ctx) -> dict:
    """The saved configurations in the experiment store (name → row, as :func:`config_row` made it; one whose
    plan does not fit the model's layers is left out)."""
    out = {}
    for run in state.stored_runs(ctx, "config"):
        row = run.payload
        if not (isinstance(row, dict) and row.get("name") and row.get("plan_json")):
            continue
        try:
            RankPlan.from_json(row["plan_json"], ctx.analysis.layers)
        except LrvizError:
            continue
        out[row["name"]] = {**row, **{k: math.nan if row.get(k) is None else row[k] for k in ("top1", "lo", "hi")}}
    return out


def store_config(ctx, row: dict, plan) -> None:
    """Record a saved configuration (again: the record of the same name is replaced)."""
    metrics = {k: row[k] for k in ("top1", "lo", "hi", "n", "params", "params_ratio")}
    metrics.update(flops=row["flops"], macs_ratio=row["flops_ratio"])
    state.record(ctx, "config", plan=plan, name=row["name"], metrics=metrics, payload=row, replace=True)


def delete_config(ctx, name: str) -> None:
    saved(ctx).pop(name, None)
    for run in state.stored_runs(ctx, "config", name=name):
        state.delete_run(run.id)


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
            store_config(ctx, configs[name], plan)
            st.toast(f"Saved {name!r}")
        run_missing = c[2].button(f"Evaluate unmeasured ({fmt.count(n)} images)", key="eval_configs", width="stretch",
                                  disabled=ctx.eval_problem is not None or not configs)
    for name, cfg in list(configs.items()):
        if not math.isnan(cfg["top1"]):
            continue
        if run_missing:
            measure.run_eval(ctx, RankPlan.from_json(cfg["plan_json"], ctx.analysis.layers), n, name)
        if measure.cached_eval(ctx, cfg["plan_key"], n) is not None:  # measured now, or elsewhere (e.g. Ranks page)
            plan = RankPlan.from_json(cfg["plan_json"], ctx.analysis.layers)
            configs[name] = config_row(ctx, name, plan)
            store_config(ctx, configs[name], plan)


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
        delete_config(ctx, choice)
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
        "weakened VBMF (vbmf:K, K bisected) and an energy threshold; the exact knapsack of the additive model, Bayesian "
        "optimisation and a data-free continuous rank search can be added. A strategy that cannot reach T is left out. "
        + (f"Projected accuracies (dotted) come from the sensitivities measured on {fmt.count(sens.n)} images, calibrated to "
           f"{projector.n_fit} measured plan(s)." if projector is not None else
           "Measure layer sensitivities on the Ranks page to add the solver and the projected accuracies.")
    )
    offered = [s for s in STRATEGIES if s not in NEEDS_SENSITIVITIES or projector is not None]
    c = st.columns([2, 1.2, 2.2, 1, 1])
    ratios = c[0].multiselect("Ratios (×)", list(SWEEP_RATIOS), default=list(SWEEP_RATIOS), key="sweep_ratios")
    metric = c[1].radio("Matched", ["params", "macs"], key="sweep_metric", horizontal=True, format_func={"params": "params", "macs": "MACs"}.get)
    default = [s for s in offered if s not in ("knapsack", "bayes", "continuous", "solver-cp")]  # offered, off by default (README: the solver does better)
    strategies = c[2].multiselect("Strategies", offered, default=default, key="sweep_strategies", format_func=STRATEGY_LABELS.get)
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


#: The numeric columns of a sweep's rows (JSON gives None for a missing value: read back as NaN).
SWEEP_NUMBERS = ("target", "params", "macs", "params_ratio", "macs_ratio", "projected", "proj_lo", "proj_hi", "top1", "lo", "hi", "n",
                 "finetuned")


def sweep_frame(records) -> pd.DataFrame | None:
    """A sweep's result table from its stored rows (``df.to_json(orient="records")``), or None."""
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        return None
    df = pd.DataFrame(records)
    for c in SWEEP_NUMBERS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def sweeps_of(ctx) -> dict:
    """This session's sweeps, keyed ``(model, data, (images, metric))``; a new session starts with those the
    experiment store keeps for the model and data (the newest per images and metric)."""
    sweeps = st.session_state.setdefault(state.SWEEPS_KEY, {})
    seeded = st.session_state.setdefault("_sweeps_seeded", set())
    if (ctx.model_id, ctx.data_key) not in seeded:
        seeded.add((ctx.model_id, ctx.data_key))
        for run in state.stored_runs(ctx, "sweep"):
            df, m = sweep_frame(run.payload), run.metrics
            if df is not None and m.get("images") and m.get("metric"):
                sweeps[(ctx.model_id, ctx.data_key, (int(m["images"]), str(m["metric"])))] = df
    return sweeps


def store_sweep(ctx, result: pd.DataFrame, ratios, metric: str, strategies, images: int) -> None:
    targets = ", ".join(f"{r:g}×" for r in ratios)
    state.record(ctx, "sweep", name=f"sweep {metric} {targets}", payload=json.loads(result.to_json(orient="records")),
                 metrics={"metric": metric, "images": int(images), "strategies": list(strategies), "targets": list(ratios)})


def sweep_panel(ctx, base) -> None:
    st.subheader("Ratio sweep")
    sens, projector = measure.calibrated(ctx)
    ratios, metric, strategies, images, go = sweep_controls(ctx, sens, projector)
    sweeps = sweeps_of(ctx)
    skey = (ctx.model_id, ctx.data_key, (images, metric))
    if go:
        result = run_and_record(ctx, sens, projector, ratios, metric, strategies, images)
        if result is not None:
            sweeps[skey] = result
            store_sweep(ctx, result, ratios, metric, strategies, images)
    if ctx.eval_problem:
        st.info(f"Accuracy cannot be measured: {ctx.eval_problem}.")
    sweep = sweeps.get(skey)
    if sweep is not None and len(sweep):
        sweep_results(sweep, base, metric, projector is not None and int(sweep["n"].max()) == sens.n)


# ---- history: the experiment store's records of this model -----------------------------------------------


def history_frame(runs) -> pd.DataFrame:
    """One row per record, newest first: when, kind, name, data, plan key, top-1 (a fraction) and the images
    it was measured on (a fine-tuning run: its best validation top-1), params / MACs ratios, origin, artifact."""
    rows = []
    for r in reversed(runs):
        m = r.metrics
        top1, n, what = m.get("top1"), m.get("n"), "images"
        if r.kind == "finetune":
            top1, n, what = m.get("val_top1"), m.get("val_n"), "validation images"
        rows.append({"id": r.id, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created)), "kind": r.kind, "name": r.name,
                     "data": r.data, "plan": r.plan_key or "", "top1": top1,
                     "on": f"{fmt.count(int(n))} {what}" if top1 is not None and n else "",
                     "params_ratio": m.get("params_ratio"), "macs_ratio": m.get("macs_ratio"), "origin": r.origin,
                     "artifact": r.artifact or ""})
    cols = ["id", "when", "kind", "name", "data", "plan", "top1", "on", "params_ratio", "macs_ratio", "origin", "artifact"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("top1", "params_ratio", "macs_ratio"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def load_run(ctx, run_id: int) -> None:
    """Load a record's plan into the Ranks page (a callback: the page's header shows it in the same run)."""
    run = state.stored_run(run_id)
    try:
        if run is None or not run.plan_json:
            raise LrvizError(f"record {run_id} has no plan")
        plan = RankPlan.from_json(run.plan_json, ctx.analysis.layers)
    except LrvizError as exc:
        st.session_state[HISTORY_LOADED] = ("error", f"Cannot load record {run_id}: {exc}")
        return
    state.set_plan(ctx, plan, run.name or plan.spec)
    st.session_state[HISTORY_LOADED] = ("ok", f"Loaded the plan of record {run_id} ({run.kind} {run.name!r}) — the Ranks page now shows its ranks.")


def history_panel(ctx) -> None:
    st.subheader("History")
    if state.experiment_store() is None:
        st.caption("No experiment store (see the error above): nothing is recorded.")
        return
    kind = st.selectbox("Kind", ["all", *KINDS], key="history_kind", help="which records to list")
    runs = state.stored_runs(ctx, None if kind == "all" else kind, all_data=True, limit=HISTORY_LIMIT)
    if not runs:
        st.info("Nothing recorded for this model yet" + ("" if kind == "all" else f" of kind {kind}") + ": evaluations, saved "
                "configurations, sweeps, fine-tuning runs, benchmarks and exports of the dashboard and the CLI appear here.")
        return
    df = history_frame(runs)
    st.dataframe(as_percent(df, ["top1"]), hide_index=True, width="stretch", height=state.table_height(len(df)),
                 column_config={"top1": Num("top-1", format=PCT), "on": "top-1 on", "params_ratio": Num("params ×", format="%.2f"),
                                "macs_ratio": Num("MACs ×", format="%.2f"), "plan": "plan key"})
    st.caption(f"The records of this model in the experiment store ({state.store_key()}), newest first, from every session and "
               "the command line: each top-1 on the images named beside it, of the data in its row (a fine-tuning run: its "
               "best validation top-1).")
    by_id = {r.id: r for r in reversed(runs)}  # newest first, as the table
    c = st.columns([3, 1, 1])
    chosen = c[0].selectbox("Record", list(by_id), key="history_choice", label_visibility="collapsed",
                            format_func=lambda i: f"#{i} · {by_id[i].kind} · {by_id[i].name or '-'} · {by_id[i].data}")
    c[1].button("Load plan into Ranks", key="history_load", on_click=load_run, args=(ctx, chosen), width="stretch",
                disabled=chosen is None or not by_id[chosen].plan_json)
    if c[2].button("Delete record", key="history_delete", width="stretch", disabled=chosen is None):
        run = by_id[chosen]
        if run.kind == "config" and run.data == ctx.store_data:
            saved(ctx).pop(run.name, None)
        state.delete_run(chosen)
        st.session_state.pop(HISTORY_LOADED, None)
        st.rerun()
    msg = st.session_state.get(HISTORY_LOADED)
    if msg is not None:
        (st.success if msg[0] == "ok" else st.error)(msg[1])


def render() -> None:
    ctx = state.require_ctx(decomposable=True)
    st.title("Compare")
    save_panel(ctx)
    base = measure.baseline(ctx, auto=False)
    configs_panel(ctx, base)
    sweep_panel(ctx, base)
    history_panel(ctx)


render()
