"""Budget solver and ratio sweep.

:func:`solve` chooses per-layer ranks for a params or MACs target that minimise the *projected* loss
(:class:`lrviz.project.SensitivityProjector`): a greedy marginal-utility descent from full rank — at
every step the single mode step (to its next lower candidate rank) with the smallest projected-loss
increase per unit of cost saved — followed by a fill phase that spends what is left of the budget on
the rank increases that lower the loss most. The projection of every candidate is the real
whole-plan projection (all layers together), not a sum of per-layer numbers.

Costs are exact closed forms (:mod:`lrviz.cost`); a factor is used only where it makes the layer
cheaper in the chosen metric, so solved plans are always valid and always meet the budget (or the
solver says it cannot).

:func:`sweep` runs a list of targets × allocation strategies (solver, uniform rank fraction, weakened
VBMF, energy threshold — :func:`strategy_plan`: the solver or :func:`lrviz.plan.plan_for_ratio`) at
matched cost and returns ranks, params, MACs, projected and measured accuracy, optionally after a
short fine-tune.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .analysis import ModelAnalysis
from .cost import check_metric, layer_cost
from .errors import LrvizError
from .layers import LayerInfo
from .plan import LayerPlan, RankPlan, cheapest_structure, classifier_layer, plan_cost, plan_for_ratio
from .sensitivity import cross_entropy

__all__ = ["parse_target", "candidate_ranks", "SolveResult", "solve", "solve_many", "strategy_plan", "sweep", "STRATEGIES",
           "SWEEP_COLUMNS", "PlanJob", "PlanWorker"]

log = logging.getLogger(__name__)

STRATEGIES = ("solver", "solver-cp", "knapsack", "bayes", "continuous", "uniform", "vbmf", "energy")
#: The strategies that read layer sensitivities (a projector).
NEEDS_SENSITIVITIES = ("solver", "solver-cp", "knapsack", "bayes")
STRATEGY_LABELS = {"solver": "budget solver (sensitivities)", "solver-cp": "budget solver, k×k convs re-cast as CP", "knapsack": "knapsack (exact, additive model)",
                   "bayes": "Bayesian optimisation (optuna, projection)", "continuous": "continuous rank search (data-free)", "uniform": "uniform rank fraction", "vbmf": "weakened VBMF",
                   "energy": "energy threshold"}


def parse_target(text: str) -> tuple[str, float]:
    """``"params:4"`` / ``"macs:3"`` / ``"latency:1.5"`` → ``("params", 4.0)`` ...; a bare number means params."""
    t = str(text).strip().lower()
    usage = ("use params:T, macs:T or latency:T with T ≥ 1 the reduction factor (latency: the speedup), "
             "e.g. params:4, macs:3 or latency:1.5")
    if not t:
        raise LrvizError(f"empty target; {usage}")
    metric, sep, val = t.partition(":")
    metric, val = metric.strip(), val.strip()
    if not sep:
        metric, val = "params", metric
    if metric in ("flops", "mac"):
        metric = "macs"
    if metric in ("speed", "speedup"):
        metric = "latency"
    if metric not in ("params", "macs", "latency"):
        raise LrvizError(f"target {text!r}: unknown metric {metric!r}; {usage}")
    try:
        ratio = float(val)
    except ValueError as e:
        raise LrvizError(f"target {text!r}: {val!r} is not a number; {usage}") from e
    if not (ratio >= 1.0 and math.isfinite(ratio)):
        raise LrvizError(f"target {text!r}: the reduction factor must be a finite number ≥ 1, got {val}; {usage}")
    return metric, ratio


def candidate_ranks(full: int, snap: int | None = None, max_points: int = 32) -> list[int]:
    """Ranks the solver may give a mode, ascending, ending with ``full`` (= not factored).

    ``snap``: only multiples of ``snap`` (hardware-friendly widths) plus the full rank. Otherwise every
    rank when ``full ≤ max_points``, else ``max_points`` evenly spaced ranks from 1.
    """
    full = int(full)
    if snap is not None:
        snap = int(snap)
        if snap < 1:
            raise LrvizError(f"snap must be a positive integer; got {snap}")
        return [r for r in range(snap, full, snap)] + [full]
    if full <= max_points:
        return list(range(1, full + 1))
    return sorted(set(int(round(v)) for v in np.linspace(1, full, max_points + 1)))


@dataclass(frozen=True)
class SolveResult:
    """A solved plan and what the solver knows about it."""

    plan: RankPlan
    metric: str
    target: float
    ratio: float
    params_ratio: float
    macs_ratio: float
    projected_loss: float
    projected_top1: float
    steps: int

    def to_dict(self) -> dict:
        return {"metric": self.metric, "target": self.target, "ratio": self.ratio, "params_ratio": self.params_ratio,
                "macs_ratio": self.macs_ratio, "projected_loss": self.projected_loss,
                "projected_top1_calibration_set": self.projected_top1, "steps": self.steps}


class _Costs:
    """A layer-cost model for the solver: closed-form params / MACs, or measured latency (a
    :class:`lrviz.latency.LatencyTable`: milliseconds, the rest of the model included in the total)."""

    def __init__(self, analysis: ModelAnalysis, metric: str, latency=None):
        self.a, self.metric, self.latency = analysis, metric, latency
        if metric == "latency":
            if latency is None or latency.total_ms is None:
                raise LrvizError("a latency target needs a latency table with the end-to-end time (lrviz.latency)")
            self.total = float(latency.total_ms)
        else:
            check_metric(metric)
            self.total = float(analysis.total(metric))

    def layer(self, l: LayerInfo, ranks: tuple[int, ...]) -> float:
        if self.metric == "latency":
            return self.latency.layer_ms_scaled(l, ranks) if l.name in self.latency.layers else 0.0
        return float(layer_cost(l, self.a.io[l.name], ranks, self.metric))

    def effective(self, l: LayerInfo, ranks: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
        """The cheapest structure allowed by ``ranks``, and its cost."""
        best = cheapest_structure(l, ranks, lambda r: self.layer(l, r))
        return best, self.layer(l, best)

    def ratio(self, plan: RankPlan) -> float:
        if self.metric == "latency":
            return self.latency.predicted_speedup(plan)
        return plan_cost(self.a, plan).ratio(self.metric)


class _Greedy:
    """State of one greedy descent (shared by all targets of :func:`solve_many`)."""

    def __init__(self, analysis: ModelAnalysis, projector, metric: str, snap, exclude, keep_classifier: bool, latency=None):
        import fnmatch

        self.a, self.p, self.metric = analysis, projector, metric
        self.costs = _Costs(analysis, metric, latency)
        self._setup_loss()
        keep = classifier_layer(analysis) if keep_classifier else None
        self.layers: list[LayerInfo] = []
        self.cands: dict[tuple[str, int], list[int]] = {}
        for l in analysis.layers:
            if l.name == keep or any(fnmatch.fnmatchcase(l.name, pat) for pat in exclude):
                continue
            if metric == "latency" and l.name not in latency.layers:
                continue
            ok = False
            for m, f in enumerate(l.full_ranks):
                if f > 1 and self._mode_ok(l, m):
                    c = candidate_ranks(f, snap)
                    if len(c) > 1:
                        self.cands[(l.name, m)] = c
                        ok = True
            if ok:
                self.layers.append(l)
        if not self.layers:
            raise LrvizError(f"no layer can be compressed with the {self.what} (all excluded or unmeasured)")
        self.io = analysis.io
        self.pos = {k: len(v) - 1 for k, v in self.cands.items()}  # index into candidates (start: full)
        self.total_cost = self.costs.total
        self.layer_cost = {l.name: self.costs.layer(l, l.full_ranks) for l in self.layers}
        self.layer_delta = {l.name: np.zeros_like(self.base) for l in self.layers}
        self.sum_delta = np.zeros_like(self.base)
        self.cost = self.total_cost
        self.steps = 0

    # --- the loss: the sensitivity projection (subclasses: other losses) ---
    what = "measured sensitivities"

    def _setup_loss(self) -> None:
        self.base = self.p.sens.base_logits
        self.gain = self.p.gain

    def _mode_ok(self, l: LayerInfo, m: int) -> bool:
        return self.p.sens.curve(l.name, m) is not None

    def _mode_delta(self, l: LayerInfo, m: int, r: int):
        return self.p._delta(l.name, m, r)

    def _ranks_of(self, l: LayerInfo, pos: dict) -> tuple[int, ...]:
        return tuple(self.cands[(l.name, m)][pos[(l.name, m)]] if (l.name, m) in self.cands else f
                     for m, f in enumerate(l.full_ranks))

    def _layer_state(self, l: LayerInfo, ranks) -> tuple[tuple[int, ...], int, np.ndarray]:
        eff, cost = self.costs.effective(l, ranks)
        d = np.zeros_like(self.base)
        for m, (r, f) in enumerate(zip(eff, l.full_ranks)):
            if r < f:
                dd = self._mode_delta(l, m, r)
                if dd is not None:
                    d = d + dd
        return eff, cost, d

    def _loss(self, deltas: np.ndarray) -> np.ndarray:
        z = self.base + self.gain * deltas
        return cross_entropy(z, self.p.sens.label_pos, self.p.sens.rest_lse).mean(axis=-1)

    def _moves(self, direction: int):
        """Candidate moves: (key, new index, new layer cost, new layer delta). direction −1 = cut, +1 = grow."""
        by_layer = {l.name: l for l in self.layers}
        out = []
        for (name, m), cands in self.cands.items():
            l = by_layer[name]
            i = self.pos[(name, m)] + direction
            while 0 <= i < len(cands):
                pos = dict(self.pos)
                pos[(name, m)] = i
                _, cost, d = self._layer_state(l, self._ranks_of(l, pos))
                dc = cost - self.layer_cost[name]
                if (direction < 0 and dc < 0) or (direction > 0 and dc >= 0):
                    out.append(((name, m), i, cost, d))
                    break
                i += direction  # no cost change yet (factor not paying off): look further
        return out

    def _apply(self, move) -> None:
        (name, m), i, cost, d = move
        self.pos[(name, m)] = i
        self.cost += cost - self.layer_cost[name]
        self.layer_cost[name] = cost
        self.sum_delta = self.sum_delta - self.layer_delta[name] + d
        self.layer_delta[name] = d
        self.steps += 1

    def cut_until(self, budget: float) -> bool:
        cur = float(self._loss(self.sum_delta[None])[0])
        while self.cost > budget:
            moves = self._moves(-1)
            if not moves:
                return False
            stack = np.stack([self.sum_delta - self.layer_delta[mv[0][0]] + mv[3] for mv in moves])
            losses = self._loss(stack)
            savings = np.array([self.layer_cost[mv[0][0]] - mv[2] for mv in moves], dtype=np.float64)
            score = (losses - cur) / savings
            j = int(np.argmin(score))
            self._apply(moves[j])
            cur = float(losses[j])
        return True

    def fill(self, budget: float) -> None:
        while True:
            moves = [mv for mv in self._moves(+1) if self.cost + (mv[2] - self.layer_cost[mv[0][0]]) <= budget]
            if not moves:
                return
            cur = float(self._loss(self.sum_delta[None])[0])
            stack = np.stack([self.sum_delta - self.layer_delta[mv[0][0]] + mv[3] for mv in moves])
            losses = self._loss(stack)
            extra = np.array([max(mv[2] - self.layer_cost[mv[0][0]], 1) for mv in moves], dtype=np.float64)
            gain = (cur - losses) / extra
            j = int(np.argmax(gain))
            if gain[j] <= 0:
                return
            self._apply(moves[j])

    def snapshot(self) -> dict:
        return dict(self.pos)

    def restore(self, snap: dict) -> None:
        self.pos = dict(snap)
        self.sum_delta = np.zeros_like(self.base)
        self.cost = self.total_cost
        for l in self.layers:
            _, cost, d = self._layer_state(l, self._ranks_of(l, self.pos))
            self.cost += cost - self.costs.layer(l, l.full_ranks)
            self.layer_cost[l.name] = cost
            self.layer_delta[l.name] = d
            self.sum_delta = self.sum_delta + d

    def plan(self, spec: str) -> RankPlan:
        chosen = {l.name: l for l in self.layers}
        out = []
        for l in self.a.layers:
            if l.name in chosen:
                eff, _ = self.costs.effective(l, self._ranks_of(l, self.pos))
                out.append(LayerPlan(l.name, l.kind, l.weight_shape, tuple(int(r) for r in eff), "solver"))
            else:
                out.append(LayerPlan(l.name, l.kind, l.weight_shape, l.full_ranks, "kept dense (excluded, classifier or unmeasured)"))
        return RankPlan(tuple(out), spec=spec, model=self.a.model_name)


class _SpectraGreedy(_Greedy):
    """The greedy descent without data: the loss is ``−Σ log q``, q the fraction of each truncated mode's
    spectral energy kept (``−log Π q``: the data-free energy proxy), so the allocation follows the spectra."""

    what = "spectra"

    def _setup_loss(self) -> None:
        if not self.a.has_spectra:
            raise LrvizError("allocating without data needs the spectra: analyze(..., spectra=True)")
        self.base = np.zeros(1)
        self.gain = 1.0

    def _mode_ok(self, l: LayerInfo, m: int) -> bool:
        return True

    def _mode_delta(self, l: LayerInfo, m: int, r: int):
        from .spectra import retained_energy

        sp = self.a.spectra[l.name]
        q = retained_energy(sp.values[sp.modes[m]], r)
        return np.array([-math.log(max(q, 1e-300))])

    def _loss(self, deltas: np.ndarray) -> np.ndarray:
        return deltas[..., 0]


def solve_many(
    analysis: ModelAnalysis,
    projector,
    targets: Sequence[float],
    metric: str = "params",
    snap: int | None = None,
    exclude: Sequence[str] = (),
    keep_classifier: bool = True,
    latency=None,
) -> list[SolveResult | None]:
    """:func:`solve` for several ratios of one metric along one greedy descent (``None`` = out of reach).

    ``metric="latency"`` needs ``latency`` (a :class:`lrviz.latency.LatencyTable` with its end-to-end
    time): the ratio is then the predicted speedup. ``projector=None`` allocates by the spectra alone."""
    if metric != "latency":
        check_metric(metric)
    for t in targets:
        if not (float(t) >= 1.0 and math.isfinite(float(t))):
            raise LrvizError(f"target ratio must be ≥ 1; got {t}")
    cls = _Greedy if projector is not None else _SpectraGreedy
    g = cls(analysis, projector, metric, snap, tuple(exclude), keep_classifier, latency)
    results: dict[float, SolveResult | None] = {}
    for t in sorted(set(float(x) for x in targets)):
        budget = g.total_cost / t
        if not g.cut_until(budget):
            results[t] = None
            continue
        saved = g.snapshot()
        g.fill(budget)
        spec = f"solve:{metric}:{t:g}" + (f":snap{snap}" if snap else "")
        plan = g.plan(spec)
        cost = plan_cost(analysis, plan)
        if projector is not None:
            z = projector.logits(plan)
            loss, top1 = projector.sens.loss_of(z), projector.sens.top1_of(z)
        else:
            loss, top1 = float(g._loss(g.sum_delta[None])[0]), math.nan
        results[t] = SolveResult(plan, metric, t, g.costs.ratio(plan), cost.params_ratio, cost.macs_ratio, loss, top1, g.steps)
        g.restore(saved)  # continue the descent from the state before filling
    return [results[float(t)] for t in targets]


def solve(analysis: ModelAnalysis, projector, target: str | tuple[str, float], snap: int | None = None,
          exclude: Sequence[str] = (), keep_classifier: bool = True, latency=None) -> SolveResult:
    """Ranks for ``target`` (``"params:4"``, ``"macs:3"``, ``"latency:1.5"``) with the least projected loss
    (``projector=None``: the least spectral energy lost).

    The plan's cost ratio is ≥ the target (the budget is met exactly or under it; for latency, in the
    table's prediction — measure the plan to know). Raises :class:`LrvizError` when the target cannot be
    reached with the measured layers.
    """
    metric, ratio = parse_target(target) if isinstance(target, str) else target
    res = solve_many(analysis, projector, [ratio], metric, snap, exclude, keep_classifier, latency)[0]
    if res is None:
        raise LrvizError(f"cannot reach a {ratio:g}x {metric} reduction: even the smallest candidate ranks of every "
                         f"measured layer are not enough (layers that cannot be decomposed limit it)")
    return res


def strategy_plan(analysis: ModelAnalysis, strategy: str, metric: str, target: float, projector=None,
                  snap: int | None = None, solved: SolveResult | None = None, choices=None) -> RankPlan | None:
    """The plan of one allocation strategy at a ``metric`` reduction of ``target``; ``None`` when out of
    its reach.

    ``"solver"``: ``solved`` when given, else :func:`solve` with ``projector``; ``"knapsack"``:
    :func:`lrviz.allocate.knapsack_plan` (the exact optimum of the additive model; ``choices`` from
    :func:`lrviz.allocate.layer_choices`, computed once for several targets); ``"continuous"``:
    :func:`lrviz.allocate.continuous_plan` (data-free, from the spectra); ``"bayes"``:
    :func:`lrviz.allocate.bayes_plan` (optuna TPE on the projection); ``"uniform"``,
    ``"vbmf"`` (weakened), ``"energy"``: :func:`lrviz.plan.plan_for_ratio` of that family (±10%).
    """
    if strategy not in STRATEGIES:
        raise LrvizError(f"unknown strategy {strategy!r}; use {', '.join(STRATEGIES)}")
    check_metric(metric)
    if strategy == "solver" and solved is not None:
        return solved.plan
    if strategy in NEEDS_SENSITIVITIES and projector is None:
        raise LrvizError(f"the {strategy} strategy needs sensitivities")
    if strategy == "solver-cp":  # the solver's plan, every truncated k x k conv as CP at the same size
        from .plan import apply_methods

        base = strategy_plan(analysis, "solver", metric, target, projector, snap, solved)
        return None if base is None else apply_methods(base, [("*", "cp", None)]) if any(
            lp.kind == "tucker2" and not lp.is_dense for lp in base.layers) else base
    if strategy == "knapsack":
        from .allocate import knapsack_plan

        return knapsack_plan(analysis, projector, metric, target, snap=snap, choices=choices)
    if strategy == "continuous":
        from .allocate import continuous_plan

        return continuous_plan(analysis, metric, target, snap=snap)
    if strategy == "bayes":
        from .allocate import bayes_plan

        return bayes_plan(analysis, projector, metric, target, snap=snap)
    try:
        if strategy == "solver":
            return solve(analysis, projector, (metric, target), snap=snap).plan
        return plan_for_ratio(analysis, strategy, float(target), metric=metric, iters=30)
    except LrvizError as e:
        log.info("%s at %g× fewer %s: out of reach (%s)", strategy, float(target), metric, e)
        return None


#: Columns of :func:`sweep`'s table, in order.
SWEEP_COLUMNS = ["strategy", "label", "target", "metric", "params", "macs", "params_ratio", "macs_ratio", "spec", "ranks",
                 "projected", "proj_lo", "proj_hi", "top1", "lo", "hi", "n", "finetuned"]

#: What a row holds before anything is known (and stays so for an unreachable combination).
_UNREACHABLE = dict(params=math.nan, macs=math.nan, params_ratio=math.nan, macs_ratio=math.nan, spec="unreachable", ranks="",
                    projected=math.nan, proj_lo=math.nan, proj_hi=math.nan, top1=math.nan, lo=math.nan, hi=math.nan, n=0,
                    finetuned=math.nan)


def sweep(
    analysis: ModelAnalysis,
    model,
    dataset=None,
    targets: Sequence[float] = (1.5, 2, 3, 4, 6, 8),
    *,
    metric: str = "params",
    strategies: Sequence[str] = ("solver", "uniform", "vbmf"),
    projector=None,
    base_top1: float | None = None,
    factors=None,
    limit: int | None = None,
    measure: bool = True,
    snap: int | None = None,
    finetune_epochs: float = 0,
    train_set=None,
    finetune_limit: int | None = 5000,
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    executor=None,
    device: str | None = None,
) -> pd.DataFrame:
    """Targets × strategies at matched cost: one row each, columns :data:`SWEEP_COLUMNS` (``strategy,
    label, target, metric, params, macs, params_ratio, macs_ratio, spec, ranks, projected, proj_lo,
    proj_hi, top1, lo, hi, n, finetuned``).

    Every row is :func:`strategy_plan` at that target, then its closed-form cost, its projection
    (``projected``; needs a projector, NaN for plans that truncate layers the sensitivities do not
    cover), its top-1 measured on ``limit`` images of ``dataset`` (``measure=True``) and its top-1
    after ``finetune_epochs`` of :func:`lrviz.train.finetune` on ``train_set`` (``finetuned``; keep
    ``train_set`` apart from ``dataset``). Unreachable combinations get NaN and ``spec="unreachable"``.

    ``executor`` (e.g. :class:`lrviz.distributed.RayExecutor`): the plans are chosen, costed and
    projected here, and each one's measurement (compress, evaluate, fine-tune: :class:`PlanJob`) runs
    as a task of its own; the rows come back in the local order with the local values (same code,
    same thread count; see :mod:`lrviz.distributed`), on the worker's own device. Stopped halfway,
    the table holds the rows finished so far.

    ``device``: where the plans are evaluated and fine-tuned here (None: CUDA when present).
    """
    from .decompose import FactorCache, compress

    _check_sweep(metric, strategies, projector, measure, dataset, finetune_epochs, train_set)
    targets = [float(t) for t in targets]
    solved = dict(zip(targets, solve_many(analysis, projector, targets, metric, snap))) if {"solver", "solver-cp"} & set(strategies) else {}
    choices = None
    if "knapsack" in strategies:  # one table of the layers' choices for every target
        from .allocate import layer_choices

        choices = layer_choices(analysis, projector, metric, snap)
    jobs = [(s, t) for t in targets for s in strategies]
    if executor is not None and (measure or finetune_epochs):
        job = PlanJob(model, dataset, limit, measure, finetune_epochs, train_set, finetune_limit, uuid.uuid4().hex,
                      factors.stats if factors is not None else None)
        return _sweep_fanout(executor, job, analysis, jobs, metric, projector, snap, solved, base_top1, progress, should_stop,
                             choices)
    factors = factors or FactorCache(model)
    rows = []
    for i, (strategy, target) in enumerate(jobs):
        if should_stop is not None and should_stop():
            break
        row, plan = _plan_row(analysis, strategy, target, metric, projector, snap, solved, base_top1, choices)
        if plan is not None:
            if measure or finetune_epochs:
                net = compress(model, plan, factors)
                row.update(_measured_columns(net, dataset, limit, measure, finetune_epochs, train_set, finetune_limit, should_stop,
                                             device))
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(jobs), f"{strategy} {target:g}×")
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


def _plan_row(analysis: ModelAnalysis, strategy: str, target: float, metric: str, projector, snap, solved, base_top1,
              choices=None):
    """``(row, plan)``: a sweep row with what the driver knows (cost, projection), and its plan (None: unreachable)."""
    row = {"strategy": strategy, "label": STRATEGY_LABELS[strategy], "target": target, "metric": metric, **_UNREACHABLE}
    plan = strategy_plan(analysis, strategy, metric, target, projector, snap, solved.get(target), choices)
    if plan is not None:
        row.update(_cost_columns(analysis, plan))
        row.update(_projected_columns(projector, plan, base_top1))
    return row, plan


def _sweep_fanout(executor, job: "PlanJob", analysis, jobs, metric, projector, snap, solved, base_top1, progress,
                  should_stop, choices=None) -> pd.DataFrame:
    """:func:`sweep` with every plan's measurement run by ``executor`` (rows in the local order)."""
    rows, plans = [], []
    for strategy, target in jobs:
        if should_stop is not None and should_stop():
            break
        row, plan = _plan_row(analysis, strategy, target, metric, projector, snap, solved, base_top1, choices)
        rows.append(row)
        plans.append(plan)
    todo = [i for i, p in enumerate(plans) if p is not None]
    finished = [p is None for p in plans]  # unreachable rows are finished as they are
    done = sum(finished)
    for j, cols in executor.map(job, [plans[i] for i in todo], should_stop):
        i = todo[j]
        rows[i].update(cols)
        finished[i] = True
        done += 1
        if progress is not None:
            progress(done, len(jobs), f"{rows[i]['strategy']} {rows[i]['target']:g}×")
    return pd.DataFrame([r for r, ok in zip(rows, finished) if ok], columns=SWEEP_COLUMNS)


class PlanJob:
    """One sweep's measurement of any plan, picklable: what a plan executor ships to its workers.

    :meth:`prepare` (on a worker) makes the factors of the model, :meth:`PlanWorker.run` measures
    one plan exactly as the local :func:`sweep` does (:func:`lrviz.compress`, then
    ``_measured_columns``: evaluate, and fine-tune when asked). ``token`` names the run."""

    def __init__(self, model, dataset, limit, measure: bool, finetune_epochs: float, train_set, finetune_limit, token: str,
                 stats=None):
        self.model, self.dataset, self.limit, self.measure = model, dataset, limit, measure
        self.finetune_epochs, self.train_set, self.finetune_limit, self.token = finetune_epochs, train_set, finetune_limit, token
        self.stats = stats  # data-aware factors' statistics, or None (weight-only)

    def prepare(self, device) -> "PlanWorker":
        from .decompose import FactorCache

        return PlanWorker(self, FactorCache(self.model, self.stats), device)


class PlanWorker:
    """A worker's side of a :class:`PlanJob`."""

    def __init__(self, job: PlanJob, factors, device=None):
        self.job, self.factors, self.device = job, factors, (str(device) if device is not None else None)

    def run(self, plan: RankPlan) -> dict:
        """The measured columns of ``plan`` (``top1, lo, hi, n``, and ``finetuned``)."""
        from .decompose import compress

        j = self.job
        net = compress(j.model, plan, self.factors)
        return _measured_columns(net, j.dataset, j.limit, j.measure, j.finetune_epochs, j.train_set, j.finetune_limit, None,
                                 self.device)


def _check_sweep(metric, strategies, projector, measure, dataset, finetune_epochs, train_set) -> None:
    check_metric(metric)
    for s in strategies:
        if s not in STRATEGIES:
            raise LrvizError(f"unknown strategy {s!r}; use {', '.join(STRATEGIES)}")
    for s in NEEDS_SENSITIVITIES:
        if s in strategies and projector is None:
            raise LrvizError(f"the {s} strategy needs sensitivities (a projector)")
    if measure and dataset is None:
        raise LrvizError("measuring needs a dataset")
    if finetune_epochs and train_set is None:
        raise LrvizError("fine-tuning needs a training set")


def _cost_columns(analysis: ModelAnalysis, plan: RankPlan) -> dict:
    cost = plan_cost(analysis, plan)
    return dict(params=cost.params_planned, macs=cost.macs_planned, params_ratio=cost.params_ratio, macs_ratio=cost.macs_ratio,
                spec=plan.spec, ranks=json.dumps({lp.name: list(lp.ranks) for lp in plan.layers if not lp.is_dense}))


def _projected_columns(projector, plan: RankPlan, base_top1: float | None) -> dict:
    if projector is None or projector.missing(plan):
        return {}
    pr = projector.project(plan, base_top1)
    return dict(projected=pr.top1, proj_lo=pr.interval[0], proj_hi=pr.interval[1])


def _measured_columns(net, dataset, limit, measure: bool, finetune_epochs: float, train_set, finetune_limit,
                      should_stop, device=None) -> dict:
    """Top-1 of the planned model ``net`` on ``limit`` images of ``dataset`` (with its interval and
    count), and after a short fine-tune on ``train_set`` (last weights kept, nothing selected on
    ``dataset``)."""
    from .evaluate import evaluate

    out: dict = {}
    if measure:
        res = evaluate(net, dataset, limit=limit, device=device)
        out.update(top1=res.top1, lo=res.top1_ci[0], hi=res.top1_ci[1], n=res.n)
    if finetune_epochs:
        from .train import finetune

        ft = finetune(net, train_set, epochs=max(1, math.ceil(finetune_epochs)), train_limit=finetune_limit, val_set=None,
                      keep="last", should_stop=should_stop, device=device)
        out["finetuned"] = evaluate(ft.model, dataset, limit=limit, device=device).top1
    return out
