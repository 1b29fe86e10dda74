"""What the pages measure and project: evaluations, this session's quick evaluations, the accuracy
projection (from layer sensitivities; the data-free energy kept Π q is only an ordering of plans,
never shown as an accuracy) and the background sensitivity measurement.

Not a page. Results computed with a progress bar live in the shared result store
(:func:`pages._state.result_store`), keyed by ``(model key, data key, plan key, images)``; layer
sensitivities per ``(model key, data key, images)`` in the same store (loading them costs one forward
pass, measuring them is a :class:`pages._jobs.BackgroundJob` whose partial results are cached on
disk). The sensitivity projector calibrated to them plus this session's quick evaluations is kept per
session and refitted only when those change (never on a slider move). Each quick evaluation keeps the
projection and band that were shown *before* it was measured, so that coverage and error are scored
out of sample (:func:`record_measurement`).

Every evaluation is recorded in the experiment store (:func:`pages._state.record`, kind
``evaluation``; a quick evaluation once, with its measured row as the payload) and the benchmark of a
plan too (``bench``). A new session reads them back: the shared result store is seeded with the
store's evaluations of the model and data (:func:`cached_eval` then finds them, nothing is measured
again) and this session's quick evaluations with the stored rows (:func:`measured`), which keep what
was projected before each was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from lrviz import RankPlan, compress, fmt, plan_cost, project
from lrviz.devices import resolve_device
from lrviz.errors import LrvizError
from lrviz.evaluate import EvalResult
from lrviz.keys import plan_key
from lrviz.project import SensitivityProjector
from lrviz.store import cost_metrics, eval_metrics
from pages import _state as state
from pages._jobs import BackgroundJob
from pages._state import BASE_OVERRIDE_KEY, MEASURED_KEY, Context, result_store

#: Above this many MACs × images an evaluation (or a sensitivity look-up) is not started automatically.
AUTO_BASELINE_BUDGET = 5e10
SENS_JOB = "_sens_job"
SENS_ERROR = "_sens_error"
#: The newest this many evaluation records of a model and data seed the shared result store.
SEED_LIMIT = 200


# ---- evaluations --------------------------------------------------------------------------------------


def eval_key(ctx: Context, plan_id: str, n: int | None) -> tuple:
    return (ctx.source.key, ctx.data_key, plan_id, n)


def cached_eval(ctx: Context, plan_id: str, n: int | None):
    """The evaluation of ``plan_id`` (or ``"original"``) on ``n`` images: measured in this process or read from the store."""
    seed_evaluations(ctx)
    return result_store().get(eval_key(ctx, plan_id, n))


def _stored_mark(ctx: Context, plan_id: str, n: int | None) -> tuple:
    """Result-store key of what the experiment store holds for an evaluation: ``("plain", id)`` (recorded by
    :func:`run_eval` in this process) or ``("row",)`` (recorded with its measured row)."""
    return ("stored-eval", state.store_key()) + eval_key(ctx, plan_id, n)


def eval_record_metrics(ctx: Context, res, plan, n: int | None) -> dict:
    """The metrics an evaluation is recorded with: :func:`lrviz.store.eval_metrics` (with the plan's cost),
    ``limit`` (the subset size asked for: :func:`lrviz.data.subset` of it), the seconds it took."""
    m = eval_metrics(res, None if plan is None else plan_cost(ctx.analysis, plan))
    m.update(limit=None if n is None else int(n), seconds=float(getattr(res, "seconds", 0.0) or 0.0),
             correct=getattr(res, "correct", None))
    return m


def stored_eval(metrics: dict, total: int) -> tuple[int | None, EvalResult] | None:
    """``(limit, EvalResult)`` of an evaluation record's metrics on data of ``total`` images, or None when the
    record does not say on which subset it was measured (no ``limit``) or was measured on data of another size."""
    m = metrics
    if "limit" not in m or any(m.get(k) is None for k in ("top1", "lo", "hi", "n")):
        return None
    limit, n = (None if m["limit"] is None else int(m["limit"])), int(m["n"])
    if n != (total if limit is None else min(limit, total)):
        return None
    top1 = float(m["top1"])
    res = EvalResult(top1=top1, top1_ci=(float(m["lo"]), float(m["hi"])), top5=None if m.get("top5") is None else float(m["top5"]),
                     loss=float("nan") if m.get("loss") is None else float(m["loss"]), n=n, seconds=float(m.get("seconds") or 0.0),
                     correct=int(m["correct"]) if m.get("correct") is not None else round(top1 * n))
    return limit, res


def seed_evaluations(ctx: Context) -> None:
    """Put the experiment store's evaluations of this model and data into the shared result store (once per
    process, store, model and data; the newest :data:`SEED_LIMIT`), so that a reload measures nothing again."""
    seeded = ("store-seeded", state.store_key(), ctx.source.key, ctx.data_key)
    if ctx.dataset is None or seeded in result_store():
        return
    result_store().put(seeded, True)
    for run in reversed(state.stored_runs(ctx, "evaluation", limit=SEED_LIMIT)):  # newest first: it wins
        hit = stored_eval(run.metrics, len(ctx.dataset))
        if hit is None:
            continue
        key = eval_key(ctx, run.plan_key or "original", hit[0])
        if key not in result_store():
            result_store().put(key, hit[1])
        if isinstance(run.payload, dict):
            result_store().put(_stored_mark(ctx, run.plan_key or "original", hit[0]), ("row",))


def run_eval(ctx: Context, plan, n: int | None, label: str):
    """Evaluate the original model (``plan=None``) or a planned model on ``n`` images, with progress.

    Returns the ``EvalResult`` (from the shared store when already measured) or None after showing
    an error.
    """
    from lrviz.evaluate import evaluate

    plan_id = "original" if plan is None else plan_key(plan)
    hit = cached_eval(ctx, plan_id, n)
    if hit is not None:
        return hit
    key = eval_key(ctx, plan_id, n)
    if ctx.eval_problem:
        st.error(f"Cannot evaluate: {ctx.eval_problem}")
        return None
    total = len(ctx.dataset) if n is None else min(n, len(ctx.dataset))
    bar = st.progress(0.0, text=f"Evaluating {label} on {fmt.count(total)} images…")
    try:
        if plan is None:
            model = ctx.original
        else:
            bar.progress(0.0, text=f"Building {label} from cached factors…")
            model = compress(ctx.module, plan, ctx.factors)
        res = evaluate(model, ctx.dataset, limit=n,
                       progress=lambda d, t: bar.progress(min(d / max(t, 1), 1.0), text=f"Evaluating {label}: {fmt.count(d)}/{fmt.count(t)} images"))
    except LrvizError as exc:
        bar.empty()
        st.error(f"Evaluation failed: {exc}")
        return None
    bar.empty()
    result_store().put(key, res)
    rid = state.record(ctx, "evaluation", plan=plan, name="original" if plan is None else (plan.spec or label),
                       metrics=eval_record_metrics(ctx, res, plan, n))
    if rid is not None:
        result_store().put(_stored_mark(ctx, plan_id, n), ("plain", rid))
    return res


def cheap(ctx: Context, n: int | None = None) -> bool:
    """Whether a pass of the original model over ``n`` (default: quick) images runs without asking."""
    n = ctx.quick_n if n is None else n
    return ctx.eval_problem is None and ctx.analysis.macs * n <= AUTO_BASELINE_BUDGET


def baseline(ctx: Context, n: int | None = None, auto: bool = True):
    """Accuracy of the original model on the quick subset: stored, or measured now when cheap."""
    n = ctx.quick_n if n is None else n
    res = cached_eval(ctx, "original", n)
    if res is None and auto and cheap(ctx, n):
        res = run_eval(ctx, None, n, "original model")
    return res


def fmt_ci(res) -> str:
    """``"91.2% (95 % CI 89.0–93.1%, n=500)"`` of an ``EvalResult`` (``n=2,000`` with separators)."""
    return f"{fmt.percent(res.top1)} (95 % CI {fmt.percent_range(*res.top1_ci)}, n={fmt.count(res.n)})"


# ---- this session's quick evaluations ----------------------------------------------------------------


def measured(ctx: Context) -> list[dict]:
    """Quick evaluations of this session for the current model and data (list of dicts); a new session
    starts with those the experiment store keeps (:func:`stored_rows`)."""
    allm = st.session_state.setdefault(MEASURED_KEY, {})
    key = (ctx.model_id, ctx.data_key, ctx.quick_n)
    if key not in allm:
        allm[key] = stored_rows(ctx)
    return allm[key]


def stored_rows(ctx: Context) -> list[dict]:
    """The measured rows the experiment store keeps for this model, data and quick-evaluation size (one per
    plan, the newest; oldest first), each with what was projected before it was measured."""
    rows: dict[str, dict] = {}
    for run in state.stored_runs(ctx, "evaluation"):
        p = run.payload
        if isinstance(p, dict) and run.metrics.get("limit") == ctx.quick_n and p.get("plan_key") and p.get("top1") is not None:
            rows.pop(p["plan_key"], None)
            rows[p["plan_key"]] = p
    return list(rows.values())


def record_measurement(ctx: Context, plan, res, label: str, proj=None, projector=None) -> bool:
    """Add a quick evaluation of this session (once per plan); True when it was new.

    Call it *before* the projector is refitted to the new point: what is stored is what was projected
    before the plan was measured, so scoring the projection against these rows is out of sample.

    ``proj`` is the sensitivity projection shown for the plan (or None): kept as ``projected`` with its
    band ``proj_lo`` / ``proj_hi``. ``projector`` (the calibrated :class:`SensitivityProjector` of that
    moment, or None) gives the same projection on the calibration images, comparable to a measurement
    on them: ``projected_calib`` with its band ``calib_lo`` / ``calib_hi`` (without a projector, the
    shown one when it is on that basis). The plan's JSON is kept so that the sensitivity projector can
    be calibrated to the point; ``retained`` is the data-free energy kept Π q (an ordering of plans).
    """
    rows = measured(ctx)
    pid = plan_key(plan)
    if any(r["plan_key"] == pid for r in rows):
        return False
    cost = plan_cost(ctx.analysis, plan)
    if proj is not None and getattr(proj, "basis", None) != project.SENS_BASIS:
        proj = None  # only a data-driven projection is a projection of the accuracy
    calib = None
    if projector is not None and not projector.missing(plan):
        calib = projector.project(plan)
    elif proj is not None and base_override(ctx) is None:
        calib = proj  # anchored to the calibration images already
    rows.append({
        "plan_key": pid, "plan_json": plan.to_json(), "label": label, "params_ratio": cost.params_ratio,
        "macs_ratio": cost.macs_ratio, "top1": res.top1, "lo": res.top1_ci[0], "hi": res.top1_ci[1], "n": res.n,
        "projected": None if proj is None else proj.top1, "basis": None if proj is None else proj.basis,
        "proj_lo": None if proj is None else proj.interval[0], "proj_hi": None if proj is None else proj.interval[1],
        "projected_calib": None if calib is None else (calib.calib_top1 if calib.calib_top1 is not None else calib.top1),
        "calib_lo": None if calib is None else calib.interval[0], "calib_hi": None if calib is None else calib.interval[1],
        "retained": energy_kept(ctx, plan),
    })
    _store_measurement(ctx, plan, res, label, rows[-1])
    return True


def _store_measurement(ctx: Context, plan, res, label: str, row: dict) -> None:
    """Record a quick evaluation with its measured row, once: it replaces the plain record :func:`run_eval`
    wrote for the same evaluation in this process; nothing is written when a session recorded the row already."""
    mark = _stored_mark(ctx, row["plan_key"], ctx.quick_n)
    held = result_store().get(mark)
    if held == ("row",):
        return
    rid = state.record(ctx, "evaluation", plan=plan, name=label, metrics=eval_record_metrics(ctx, res, plan, ctx.quick_n), payload=row)
    if rid is None:
        return
    result_store().put(mark, ("row",))
    if held is not None and held[0] == "plain":
        state.delete_run(held[1])


def measured_row(ctx: Context, plan) -> dict | None:
    """This session's quick-evaluation row of ``plan`` (with what was projected before it was measured), or None."""
    pid = plan_key(plan)
    return next((r for r in measured(ctx) if r["plan_key"] == pid), None)


def measured_plans(ctx: Context) -> dict:
    """``plan_key → RankPlan`` of this session's quick evaluations (parsed once, kept per session)."""
    cache = st.session_state.setdefault("_measured_plans", {})
    out = {}
    for r in measured(ctx):
        pk, text = r["plan_key"], r.get("plan_json")
        if text is None:
            continue
        if pk not in cache:
            try:
                cache[pk] = RankPlan.from_json(text, ctx.analysis.layers)
            except LrvizError:
                cache[pk] = None
        if cache[pk] is not None:
            out[pk] = cache[pk]
    return out


# ---- the projection -------------------------------------------------------------------------------------


def base_override(ctx: Context) -> float | None:
    """The original's accuracy the user entered for the projection (Ranks page), or None."""
    v = st.session_state.get(BASE_OVERRIDE_KEY, {}).get(ctx.model_id)
    return None if v is None else float(v)


def projection_base(ctx: Context, measured_base):
    """``(accuracy, text)`` the projection starts from: the user's override or the measured baseline."""
    override = base_override(ctx)
    if override is not None:
        return override, "entered by you"
    if measured_base is not None:
        return measured_base.top1, f"measured on {measured_base.n} images"
    return None, None


def energy_kept(ctx: Context, plan) -> float | None:
    """Π q over the planned layers (q = energy kept by a layer's worst mode): data-free, an *ordering* of
    plans (1 = nothing truncated), not an accuracy."""
    if getattr(plan, "methods", None):
        return None  # CP / spatial SVD layers have no Tucker-2 / SVD spectrum to keep energy of
    retained = 1.0
    for v in project.layer_retention(ctx.analysis, plan).values():
        retained *= v
    return float(retained)


def projector(ctx: Context, sens):
    """The sensitivity projector for complete ``sens``, with γ fitted to the anchors plus every quick
    evaluation of this session on the same images (same data and subset size).

    Kept per session and (model, data, images): refitted (a few ms) only when the sensitivities or the
    measured points change, so slider moves reuse it — and its memo of interpolated logit changes.
    Only the latest one is kept (each holds memoised arrays of calibration-set size).
    """
    plans = measured_plans(ctx)
    rows = [r for r in measured(ctx) if r["plan_key"] in plans and int(r.get("n") or 0) == sens.n]
    sig = (sens.key, id(sens), tuple((r["plan_key"], r["top1"]) for r in rows))
    held = st.session_state.setdefault("_projectors", {})
    slot = (ctx.source.key, ctx.data_key, ctx.quick_n)
    hit = held.get(slot)
    if hit is None or hit[0] != sig:
        p0 = SensitivityProjector(sens)
        hit = (sig, p0.calibrate(p0.anchor_points() + [(plans[r["plan_key"]], float(r["top1"]), None) for r in rows]))
        held[slot] = hit
    return hit[1]


def sensitivity_projection(ctx: Context, proj_obj, plan):
    """The sensitivity projection of ``plan`` (anchored to the user's override of the original's
    accuracy when there is one, else to the calibration images), or None when the plan truncates a
    layer the sensitivities do not cover."""
    if proj_obj is None or proj_obj.missing(plan):
        return None
    return proj_obj.project(plan, base_override(ctx))


@dataclass(frozen=True)
class Projected:
    """The projection of one plan: ``sens`` (from the layer sensitivities, when they cover the plan),
    the original accuracy it starts from, and ``retained``: the energy kept Π q (data-free; an
    ordering of plans, never shown as an accuracy)."""

    sens: Any
    base_top1: float | None
    base_text: str | None
    retained: float | None = None

    @property
    def shown(self):
        """The projection to show as an accuracy: only the sensitivities' (None until they are measured)."""
        return self.sens


def project_plan(ctx: Context, plan, base, proj_obj) -> Projected:
    """The projection of ``plan`` from the measured original ``base`` (an ``EvalResult`` or None) and
    the calibrated sensitivity projector ``proj_obj`` (or None); the user's override wins."""
    base_top1, base_text = projection_base(ctx, base)
    sp = sensitivity_projection(ctx, proj_obj, plan)
    if sp is not None:  # anchored to the calibration images (or the user's override)
        base_top1 = sp.base_top1
        if base_override(ctx) is None:
            base_text = f"measured on the {fmt.count(proj_obj.sens.n)} calibration images"
    return Projected(sp, base_top1, base_text, energy_kept(ctx, plan))


# ---- layer sensitivities ----------------------------------------------------------------------------------


def sens_key(ctx: Context, n: int | None = None) -> tuple:
    return ("sensitivity", ctx.source.key, ctx.data_key, ctx.quick_n if n is None else int(n))


def sens_job():
    """This session's sensitivity job info (``job``, ``key``, ``n``, ``label``, ``final``) or None."""
    return st.session_state.get(SENS_JOB)


def sens_running() -> bool:
    info = sens_job()
    return info is not None and not info["job"].done


def finish_sensitivity_job() -> None:
    """Store the result of a sensitivity job that ended since the last run (complete or partial)."""
    info = sens_job()
    if info is None or not info["job"].done or info.get("final"):
        return
    info["final"] = True
    job = info["job"]
    if job.error:
        st.session_state[SENS_ERROR] = job.error
    elif job.result is not None:
        st.session_state.pop(SENS_ERROR, None)
        result_store().put(info["key"], job.result)


def _disk_layers(sens) -> int:
    """Layer files in ``sens``'s disk cache folder (another session or the CLI may have added some)."""
    from lrviz.sensitivity import sensitivity_dir

    try:
        return sum(1 for _ in (sensitivity_dir() / sens.key).glob("layer-*.npz"))
    except OSError:
        return 0


def _data_name(ctx: Context) -> str:
    return f"{ctx.data_src.label if ctx.data_src is not None else 'data'}, {ctx.quick_n} images"


def sensitivities(ctx: Context, auto: bool = True):
    """Layer sensitivities for (model, data, quick_n): the stored result, or the disk cache's content
    loaded now (``auto`` and :func:`cheap`). None when not looked up.

    An incomplete stored result is re-loaded when the disk cache gained layers since (another
    session or the CLI measured them). While this session's job refines the grid, its complete
    coarse first estimate is returned (``.coarse`` is True).
    """
    finish_sensitivity_job()
    if ctx.eval_problem is not None or not ctx.loaded.decomposable:
        return None
    key = sens_key(ctx)
    hit = result_store().get(key)
    first = first_estimate(ctx) if hit is None or not hit.complete else None
    if first is not None:
        return first  # the coarse first estimate while the full grid is measured
    if hit is not None and not hit.complete and not sens_running() and _disk_layers(hit) > len({n for n, _ in hit.curves}):
        hit = None
    if hit is None and auto and cheap(ctx):
        from lrviz.sensitivity import load_sensitivity

        try:
            with st.spinner("Looking for cached layer sensitivities…"):
                hit = load_sensitivity(ctx.original, ctx.dataset, limit=ctx.quick_n, factors=ctx.factors, data_name=_data_name(ctx))
        except LrvizError as exc:
            st.session_state[SENS_ERROR] = str(exc)
            return None
        result_store().put(key, hit)
    return hit


def calibrated(ctx: Context, auto: bool = True):
    """``(sensitivities or None, projector or None)``: the projector only for complete sensitivities."""
    sens = sensitivities(ctx, auto)
    return sens, (projector(ctx, sens) if sens is not None and sens.complete else None)


def start_sensitivity_job(ctx: Context) -> bool:
    """Measure (resume) the sensitivities of (model, data, quick_n) in a background thread, in two stages:
    a first estimate on a coarse grid (:data:`lrviz.sensitivity.COARSE_POINTS` ranks per mode, no pair
    terms; about a third of the passes), published as soon as it is complete (:func:`first_estimate`),
    then the full grid with pair terms, which replaces it when done.

    With ``$LRVIZ_RAY_ADDRESS`` set (``local`` or a cluster's ``HOST:PORT``; :mod:`lrviz.distributed`) the
    layers are measured as Ray tasks, one per layer, and land in the same disk cache. Returns False (the
    reason in :data:`SENS_ERROR`) when that address cannot be used; nothing is started then."""
    from lrviz.distributed import executor_from_env
    from lrviz.sensitivity import COARSE_POINTS, measure_sensitivity

    model, dataset, factors, n, name = ctx.original, ctx.dataset, ctx.factors, ctx.quick_n, _data_name(ctx)
    holder: dict = {}
    try:
        executor = executor_from_env()
    except LrvizError as exc:
        st.session_state[SENS_ERROR] = f"cannot use Ray ({exc})"
        return False

    def _target(progress, should_stop):
        def report(stage):
            return lambda done, total, layer: progress({"event": "layer", "stage": stage, "done": done, "total": total, "layer": layer})

        first = measure_sensitivity(model, dataset, limit=n, factors=factors, data_name=f"{name}, first estimate", should_stop=should_stop,
                                    grid_points=COARSE_POINTS, pairs=False, progress=report("first estimate"), executor=executor)
        if not first.complete:
            return first  # stopped: the finished layers are cached (shown as partly measured) and the next run resumes
        holder["first"] = first
        return measure_sensitivity(model, dataset, limit=n, factors=factors, data_name=name, should_stop=should_stop,
                                   progress=report("full grid"), executor=executor)

    job = BackgroundJob(_target, name="sensitivity").start()
    st.session_state[SENS_JOB] = {"job": job, "key": sens_key(ctx), "n": n, "model_id": ctx.model_id, "label": name,
                                  "total": len(ctx.analysis.layers), "final": False, "holder": holder,
                                  "backend": None if executor is None else f"on Ray, {executor.workers} worker(s)"}
    st.session_state.pop(SENS_ERROR, None)
    return True


def first_estimate(ctx: Context):
    """The running job's complete coarse first estimate for (model, data, quick_n), or None."""
    info = sens_job()
    if info is None or info["key"] != sens_key(ctx) or info["job"].done:
        return None
    first = info.get("holder", {}).get("first")
    return first if first is not None and first.complete else None


# ---- measured speed: end-to-end benchmark and the latency table ---------------------------------------------
#
# Both run as a :class:`BackgroundJob` (one of each per session) and land in the shared result store:
# the benchmark of a plan under ``speed_key`` (model, the plan's ranks, device, threads, execution,
# timer), the latency table under ``table_key``. A plan's speed is only ever looked up by its own key,
# so a measurement of another plan is never shown as this one's. lrviz caches both on disk as well
# (per weights + plan, per layer geometry): measuring again after a restart reads them back.

#: Timer of every speed measurement: None is lrviz's (``torch.utils.benchmark``); tests set a
#: deterministic ``timer(fn, x) -> list of seconds`` (lrviz then neither reads nor writes its disk cache).
SPEED_TIMER = None
#: Execution of the end-to-end benchmark: ``"auto"`` runs both models under the fastest one measured
#: for the compressed model (see :mod:`lrviz.execution`); tests fix one to skip ``torch.compile``.
SPEED_EXECUTION = "auto"
#: Where speed is measured: CUDA when this machine has a GPU, else the CPU (lrviz.devices.resolve_device("auto")).
SPEED_DEVICE = resolve_device("auto").type
SPEED_BATCHES = (1, 64)
SPEED_ROUNDS = 3
#: Batch size of the latency table (per-layer times over ranks: break-even ranks, speed structure).
TABLE_BATCH = 64
SPEED_JOB = "_speed_job"
SPEED_ERROR = "_speed_error"
TABLE_JOB = "_latency_table_job"
TABLE_ERROR = "_latency_table_error"
#: Session-state key of the Ranks page's "Optimise for" choice ("size" or "speed"; survives page switches).
OPTIMISE_KEY = "_optimise_for"


def speed_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _timer_id():
    return None if SPEED_TIMER is None else id(SPEED_TIMER)


def speed_key(ctx: Context, plan) -> tuple:
    return ("speed", ctx.source.key, plan_key(plan), SPEED_DEVICE, speed_threads(), SPEED_EXECUTION, SPEED_BATCHES, _timer_id())


def table_key(ctx: Context) -> tuple:
    return ("latency-table", ctx.source.key, TABLE_BATCH, SPEED_DEVICE, speed_threads(), _timer_id())


def optimise_for() -> str:
    """The Ranks page's choice: ``"size"`` (default) or ``"speed"``."""
    return st.session_state.get(OPTIMISE_KEY, "size")


def _job_info(slot: str):
    return st.session_state.get(slot)


def _running(slot: str) -> bool:
    info = _job_info(slot)
    return info is not None and not info["job"].done


def _finish(slot: str, error_slot: str) -> None:
    """Store the result of a job that ended since the last run (or its error, once, for its key)."""
    info = _job_info(slot)
    if info is None or not info["job"].done or info.get("final"):
        return
    info["final"] = True
    job = info["job"]
    if job.error:
        st.session_state[error_slot] = (info["key"], job.error)
    elif job.result is not None:
        st.session_state.pop(error_slot, None)
        result_store().put(info["key"], job.result)
        if info.get("record") is not None:
            record_bench(*info["record"], job.result)


def _error_for(error_slot: str, key) -> str | None:
    err = st.session_state.get(error_slot)
    return err[1] if err is not None and err[0] == key else None


#: This session's background jobs that load the CPU (a timing taken beside one of them is not a timing).
_BUSY = ((SENS_JOB, "layer sensitivities"), ("_ft_job", "fine-tuning"), (TABLE_JOB, "the latency table"),
         (SPEED_JOB, "a speed measurement"))


def timing_busy() -> str | None:
    """What of this session is running in the background now (then no new timing starts), or None."""
    return next((what for slot, what in _BUSY if _running(slot)), None)


def _progress_of(job, total: int) -> tuple[float, str]:
    events = job.snapshot()
    last = events[-1] if events else None
    if last is None:
        return 0.0, "starting…"
    return min(last["done"] / max(last["total"] or total, 1), 1.0), last["text"]


# -- end-to-end benchmark of a plan --


def _bench_plan(ctx: Context, plan, threads: int):
    """``run(progress)``, running :func:`lrviz.latency.bench` of the original against ``plan``'s compressed model
    (built anew: the shared model is never touched) at :data:`SPEED_BATCHES` with ``threads`` (read in
    the script's thread: a worker thread may see another default); ``progress(done, total, text)``.
    Everything it needs is read here, in the script's thread (the job's thread has no Streamlit context)."""
    from lrviz.latency import bench

    original, module, factors, analysis = ctx.original, ctx.module, ctx.factors, ctx.analysis
    timer, execution = SPEED_TIMER, SPEED_EXECUTION

    def run(progress):
        if progress is not None:
            progress(0, len(SPEED_BATCHES), "building the compressed model from cached factors")
        planned = compress(module, plan, factors)
        return bench(original, planned, plan, analysis, batches=SPEED_BATCHES, device=SPEED_DEVICE, threads=threads,
                     execution=execution, per_layer=False, rounds=SPEED_ROUNDS, timer=timer, progress=progress)

    return run


def record_bench(ctx: Context, plan, results) -> None:
    """Record a plan's measured speed (kind ``bench``: per batch the speedup and the median times, the execution);
    not when every result was read back from lrviz's disk cache (it was recorded when it was measured)."""
    if not results or all(r.cached for r in results):
        return
    r0 = results[0]
    m = {"device": r0.device, "threads": r0.threads, "execution": r0.execution, "rounds": SPEED_ROUNDS,
         "timer": "lrviz" if SPEED_TIMER is None else "injected", **cost_metrics(plan_cost(ctx.analysis, plan))}
    for r in results:
        m.update({f"speedup_b{r.batch}": r.speedup, f"original_ms_b{r.batch}": r.original_ms, f"planned_ms_b{r.batch}": r.planned_ms,
                  f"original_iqr_ms_b{r.batch}": r.original_iqr_ms, f"planned_iqr_ms_b{r.batch}": r.planned_iqr_ms})
    state.record(ctx, "bench", plan=plan, name=plan.spec or "", metrics=m, payload=[r.to_dict() for r in results])


def speed_result(ctx: Context, plan):
    """This plan's measured speed (list of :class:`lrviz.latency.BenchResult`, one per batch), or None."""
    finish_speed_job()
    return result_store().get(speed_key(ctx, plan))


def speed_job():
    """This session's speed job info (``job``, ``key``, ``label``) or None."""
    return _job_info(SPEED_JOB)


def speed_running(ctx: Context | None = None, plan=None) -> bool:
    """Whether this session's speed job runs (for ``plan`` when given)."""
    if not _running(SPEED_JOB):
        return False
    return plan is None or speed_job()["key"] == speed_key(ctx, plan)


def finish_speed_job() -> None:
    _finish(SPEED_JOB, SPEED_ERROR)


def speed_error(ctx: Context, plan) -> str | None:
    """Why the last speed measurement of ``plan`` failed (or None)."""
    return _error_for(SPEED_ERROR, speed_key(ctx, plan))


def start_speed_job(ctx: Context, plan, label: str) -> None:
    """Measure ``plan``'s speed (original vs compressed, end to end, at :data:`SPEED_BATCHES`) in a
    background thread; a no-op while one runs or when it is measured already."""
    key = speed_key(ctx, plan)
    if _running(SPEED_JOB) or result_store().get(key) is not None:
        return

    run = _bench_plan(ctx, plan, key[4])

    def _target(progress, should_stop):
        return run(lambda d, t, text: progress({"done": d, "total": t, "text": text}))

    job = BackgroundJob(_target, name="speed").start()
    st.session_state[SPEED_JOB] = {"job": job, "key": key, "label": label, "final": False, "record": (ctx, plan)}
    st.session_state.pop(SPEED_ERROR, None)


def measure_speed_now(ctx: Context, plan, label: str):
    """Measure ``plan``'s speed in this run with a progress bar (the Present page's Measure): the stored
    result when there is one, this session's running job for it awaited, else measured here — unless
    another background job of this session loads the CPU (then nothing is timed and a note says so).
    Returns the results or None (the error, if any, is kept for :func:`speed_error`)."""
    key = speed_key(ctx, plan)
    hit = result_store().get(key)
    if hit is not None:
        return hit
    busy = timing_busy()
    if busy is not None and not speed_running(ctx, plan):
        st.info(f"Speed not measured: {busy} is running in the background and would slow both models down. Measure the "
                "speed when it is done.")
        return None
    bar = st.progress(0.0, text=f"Speed of {label}: starting…")
    if speed_running(ctx, plan):
        job = speed_job()["job"]
        while not job.wait(0.5):
            frac, text = _progress_of(job, len(SPEED_BATCHES))
            bar.progress(frac, text=f"Speed of {label}: {text}")
        finish_speed_job()
    else:
        try:
            res = _bench_plan(ctx, plan, key[4])(
                lambda d, t, text: bar.progress(min(d / max(t, 1), 1.0), text=f"Speed of {label}: {text}"))
        except LrvizError as exc:
            st.session_state[SPEED_ERROR] = (key, str(exc))
        except Exception as exc:  # a model that cannot be timed: say why, keep the page
            st.session_state[SPEED_ERROR] = (key, f"{type(exc).__name__}: {exc}")
        else:
            result_store().put(key, res)
            record_bench(ctx, plan, res)
    bar.empty()
    return result_store().get(key)


def speed_progress_bar() -> bool:
    """Draw this session's speed job's progress; True when it has ended (the caller reruns)."""
    info = speed_job()
    if info is None:
        return False
    frac, text = _progress_of(info["job"], len(SPEED_BATCHES))
    st.progress(frac, text=f"Measuring the speed of {info['label']} (batch {' and '.join(map(str, SPEED_BATCHES))}): {text}")
    return info["job"].done


# -- the latency table (per-layer times over ranks) --


@dataclass
class Latency:
    """A measured :class:`lrviz.latency.LatencyTable` with a memo of its break-even ranks (slider moves
    ask for the same ones again)."""

    table: Any
    memo: dict

    def break_even(self, layer: str, mode: int, other: int | None = None) -> int | None:
        """The largest rank of ``mode`` at which ``layer`` is faster than dense (the other mode at ``other``);
        None when the table has no such layer."""
        t = self.table.layers.get(layer)
        if t is None:
            return None
        k = (layer, int(mode), None if other is None else int(other))
        if k not in self.memo:
            self.memo[k] = t.break_even(mode, other)
        return self.memo[k]

    def slower_layers(self, plan) -> list[str]:
        """Layers of ``plan`` whose planned replacement the table times slower than the dense layer."""
        out = []
        for lp in plan.layers:
            t = self.table.layers.get(lp.name)
            if t is not None and not lp.is_dense and t.at(lp.ranks) > t.dense_ms:
                out.append(lp.name)
        return out

    def predicted_speedup(self, plan) -> float:
        return self.table.predicted_speedup(plan)

    @property
    def where(self) -> str:
        t = self.table
        return f"batch {t.batch}, {t.device.upper()}, {t.threads} thread{'s' if t.threads != 1 else ''}"


def latency_table(ctx: Context) -> Latency | None:
    """The model's latency table (measured this server run), or None."""
    _finish(TABLE_JOB, TABLE_ERROR)
    return result_store().get(table_key(ctx))


def table_job():
    return _job_info(TABLE_JOB)


def table_running() -> bool:
    return _running(TABLE_JOB)


def table_error(ctx: Context) -> str | None:
    return _error_for(TABLE_ERROR, table_key(ctx))


def start_table_job(ctx: Context) -> None:
    """Measure the latency table at :data:`TABLE_BATCH` in a background thread (layers whose geometry is
    in lrviz's disk cache are read back, identical layers measured once)."""
    from lrviz.latency import measure_latency_table

    key = table_key(ctx)
    if timing_busy() or result_store().get(key) is not None:
        return
    original, factors, analysis, threads = ctx.original, ctx.factors, ctx.analysis, speed_threads()

    def _target(progress, should_stop):
        table = measure_latency_table(original, analysis, batch=TABLE_BATCH, device=SPEED_DEVICE, threads=threads, timer=SPEED_TIMER,
                                      total=True, factors=factors,
                                      progress=lambda d, t, name: progress({"done": d, "total": t, "text": f"{d}/{t} layers (last: {name})"}))
        return Latency(table, {})

    job = BackgroundJob(_target, name="latency-table").start()
    st.session_state[TABLE_JOB] = {"job": job, "key": key, "label": ctx.loaded.name, "final": False}
    st.session_state.pop(TABLE_ERROR, None)


def table_progress_bar() -> bool:
    info = table_job()
    if info is None:
        return False
    frac, text = _progress_of(info["job"], 1)
    st.progress(frac, text=f"Latency table of {info['label']} (batch {TABLE_BATCH}, {SPEED_DEVICE.upper()}): {text}")
    return info["job"].done


def speed_structured(ctx: Context, plan):
    """``plan`` with the factors the latency table times slower than dense dropped (:func:`lrviz.plan.speed_structure`)
    when the Ranks page optimises for speed and the table is measured; else ``plan`` unchanged."""
    from lrviz.plan import speed_structure

    lat = result_store().get(table_key(ctx)) if optimise_for() == "speed" else None
    return plan if lat is None else speed_structure(plan, lat.table, ctx.analysis)
