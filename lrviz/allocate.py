"""Allocators beside the greedy solver: the exact knapsack of the additive model over the sensitivity
curves (:func:`knapsack_plan`), a data-free continuous rank search (:func:`continuous_plan`), and
Bayesian-optimisation allocation with optuna (:func:`bayes_plan`).

The greedy solver (:mod:`lrviz.budget`) descends through the joint projection (every layer's logit
change added, then scored together). This allocator instead takes the *additive* model of the seed
paper's related work literally: each layer's choice of ranks costs its own closed-form params or MACs
and adds its own projected loss increase — the calibration loss with that layer alone truncated
(both modes and their measured two-mode interaction) minus the original's — and the plan is the set of
one choice per layer whose summed increase is least while the model's cost meets the budget. That is a
multiple-choice knapsack; it is solved exactly by dynamic programming over the budget in integer cost
units (:func:`knapsack`).

Costs in units: params and MACs are integers; they are divided by a unit ``u`` (1 when the budget is at
most :data:`MAX_UNITS`, else ``budget / MAX_UNITS``) and rounded *up*, so every plan the DP allows meets
the true budget and the DP's optimum is exact for the rounded costs (exact outright with ``u = 1``; with a
larger unit the optimum may give up at most one unit per layer of budget).

Dominated choices (another costs no more and loses no more) are dropped first; the DP's work is
layers × budget units × choices left.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .analysis import ModelAnalysis
from .cost import layer_cost
from .errors import LrvizError
from .plan import LayerPlan, RankPlan, classifier_layer, plan_cost

__all__ = ["LayerChoices", "knapsack", "layer_choices", "knapsack_plan", "knapsack_solve", "continuous_plan", "continuous_solve", "bayes_plan", "bayes_solve", "MAX_UNITS"]

#: Budget resolution of the dynamic programme (units of cost).
MAX_UNITS = 20000


def _check(what: str, metric: str, target: float) -> float:
    """``target`` as a float after checking ``metric`` (params or macs) and the ratio (≥ 1, finite)."""
    if metric not in ("params", "macs"):
        raise LrvizError(f"the {what} takes params or macs targets; got {metric!r}")
    target = float(target)
    if not (target >= 1 and math.isfinite(target)):
        raise LrvizError(f"target ratio must be ≥ 1; got {target}")
    return target


def _allocatable(analysis: ModelAnalysis, exclude: Sequence[str], keep_classifier: bool, ok) -> list:
    """The layers an allocator may cut: not the classifier (when kept), not ``exclude``d, ``ok(layer)``."""
    keep = classifier_layer(analysis) if keep_classifier else None
    return [l for l in analysis.layers if l.name != keep and not any(fnmatch.fnmatchcase(l.name, p) for p in exclude) and ok(l)]


def _plan(analysis: ModelAnalysis, chosen: dict, note: str, metric: str, target: float, snap: int | None,
          dense: dict | None = None) -> RankPlan:
    """A plan with ``chosen`` ranks (name → ranks, noted ``note``), every other layer dense; its spec
    ``note:metric:target[:snapK]``."""
    out = []
    for l in analysis.layers:
        if l.name in chosen:
            out.append(LayerPlan(l.name, l.kind, l.weight_shape, tuple(int(r) for r in chosen[l.name]), note))
        else:
            out.append(LayerPlan(l.name, l.kind, l.weight_shape, l.full_ranks, (dense or {}).get(l.name, "kept dense")))
    return RankPlan(tuple(out), spec=f"{note}:{metric}:{target:g}" + (f":snap{snap}" if snap else ""), model=analysis.model_name)


def _result(analysis: ModelAnalysis, projector, plan: RankPlan, metric: str, ratio: float, steps: int = 0):
    """``plan`` as a :class:`lrviz.budget.SolveResult`, its projection scored jointly like the solver's
    (NaN without a projector covering it)."""
    from .budget import SolveResult

    cost = plan_cost(analysis, plan)
    loss = top1 = math.nan
    if projector is not None and not projector.missing(plan):
        z = projector.logits(plan)
        loss, top1 = projector.sens.loss_of(z), projector.sens.top1_of(z)
    return SolveResult(plan, metric, float(ratio), cost.ratio(metric), cost.params_ratio, cost.macs_ratio, loss, top1, int(steps))


@dataclass
class LayerChoices:
    """One layer's choices: ``ranks[i]`` (effective: the cheapest structure they allow), their ``cost[i]``
    (params or MACs) and additive ``loss[i]`` (projected calibration-loss increase, layer alone)."""

    name: str
    ranks: list[tuple[int, ...]]
    cost: np.ndarray
    loss: np.ndarray

    def pareto(self) -> "LayerChoices":
        """The choices no other one beats on both cost and loss (cheapest first)."""
        order = np.lexsort((self.loss, self.cost))
        keep, best = [], math.inf
        for i in order:
            if self.loss[i] < best - 1e-15:
                keep.append(int(i))
                best = float(self.loss[i])
        return LayerChoices(self.name, [self.ranks[i] for i in keep], self.cost[keep], self.loss[keep])


def knapsack(costs: Sequence[Sequence[int]], losses: Sequence[Sequence[float]], budget: int) -> tuple[list[int], float] | None:
    """Exact multiple-choice knapsack: one index per group minimising ``Σ losses[g][i]`` with
    ``Σ costs[g][i] ≤ budget`` (non-negative integer costs). Returns ``(indices, total loss)``, or None
    when even the cheapest choices exceed the budget."""
    budget = int(budget)
    if budget < 0:
        return None
    dp = np.zeros(budget + 1)  # dp[j]: least loss of the groups so far within j units
    picks = []
    for c, l in zip(costs, losses):
        c = np.asarray(c, dtype=np.int64)
        l = np.asarray(l, dtype=np.float64)
        if np.any(c < 0):
            raise ValueError("costs must be non-negative")
        new = np.full(budget + 1, math.inf)
        arg = np.full(budget + 1, -1, dtype=np.int32)
        for i in range(len(c)):
            if c[i] > budget:
                continue
            cand = np.full(budget + 1, math.inf)
            cand[c[i]:] = dp[:budget + 1 - c[i]] + l[i]
            better = cand < new
            new[better] = cand[better]
            arg[better] = i
        dp = new
        picks.append(arg)
    if not math.isfinite(dp[budget]):
        return None
    j, out = budget, []
    for g in range(len(picks) - 1, -1, -1):
        i = int(picks[g][j])
        out.append(i)
        j -= int(np.asarray(costs[g])[i])
    return out[::-1], float(dp[budget])


def layer_choices(analysis: ModelAnalysis, projector, metric: str, snap: int | None = None, exclude: Sequence[str] = (),
                  keep_classifier: bool = True, max_points: int = 32) -> tuple[list[LayerChoices], dict[str, str]]:
    """Every allocatable layer's choices (all candidate rank pairs of its measured modes, as effective
    structures, with cost and additive loss increase); and the layers left dense, with why."""
    from .budget import _Costs, candidate_ranks

    costs = _Costs(analysis, metric)
    sens = projector.sens
    base_loss = sens.loss_of(sens.base_logits)
    keep = classifier_layer(analysis) if keep_classifier else None
    out, dense = [], {}
    for l in analysis.layers:
        if l.name == keep:
            dense[l.name] = "kept dense (classifier)"
            continue
        if any(fnmatch.fnmatchcase(l.name, p) for p in exclude):
            dense[l.name] = "kept dense (excluded)"
            continue
        grids = []
        for m, f in enumerate(l.full_ranks):
            ok = f > 1 and sens.curve(l.name, m) is not None
            grids.append(candidate_ranks(f, snap, max_points) if ok else [f])
        if all(len(g) == 1 for g in grids):
            dense[l.name] = "kept dense (unmeasured)"
            continue
        seen, ranks, cost, loss = set(), [], [], []
        for combo in _product(grids):
            eff, c = costs.effective(l, combo)
            if eff in seen:
                continue
            seen.add(eff)
            lp = LayerPlan(l.name, l.kind, l.weight_shape, eff, "knapsack")
            z = projector.logits(RankPlan((lp,), spec="layer"))
            ranks.append(eff)
            cost.append(c)
            loss.append(sens.loss_of(z) - base_loss)
        out.append(LayerChoices(l.name, ranks, np.asarray(cost, dtype=np.float64), np.asarray(loss)).pareto())
    if not out:
        raise LrvizError("no layer can be compressed with the measured sensitivities (all excluded or unmeasured)")
    return out, dense


def _product(grids):
    if len(grids) == 1:
        return [(r,) for r in grids[0]]
    return [(a, b) for a in grids[0] for b in grids[1]]


def knapsack_plan(analysis: ModelAnalysis, projector, metric: str, target: float, snap: int | None = None,
                  exclude: Sequence[str] = (), keep_classifier: bool = True, choices=None,
                  max_units: int = MAX_UNITS) -> RankPlan | None:
    """The exact optimum of the additive model for ``metric`` reduced ``target``-fold (params or MACs);
    None when out of reach. ``choices``: :func:`layer_choices` computed once for several targets;
    ``max_units``: the budget resolution (a budget of at most that many params / MACs is solved exactly)."""
    target = _check("knapsack allocator", metric, target)
    groups, dense = choices if choices is not None else layer_choices(analysis, projector, metric, snap, exclude, keep_classifier)
    total = float(analysis.total(metric))
    by = {l.name: l for l in analysis.layers}
    fixed = total - sum(float(_full_cost(analysis, by[g.name], metric)) for g in groups)
    budget = total / target - fixed
    if budget < 0:
        return None
    unit = max(1.0, budget / max_units)
    units = [np.ceil(g.cost / unit - 1e-9).astype(np.int64) for g in groups]
    got = knapsack(units, [g.loss for g in groups], int(math.floor(budget / unit + 1e-9)))
    if got is None:
        return None
    pick = {g.name: g.ranks[i] for g, i in zip(groups, got[0])}
    plan = _plan(analysis, pick, "knapsack", metric, target, snap, dense)
    if plan_cost(analysis, plan).ratio(metric) < target * (1 - 1e-12):
        raise AssertionError("knapsack plan misses its budget")  # cannot happen: costs were rounded up
    return plan


def _full_cost(analysis: ModelAnalysis, layer, metric: str) -> float:
    return float(layer_cost(layer, analysis.io[layer.name], layer.full_ranks, metric))


def knapsack_solve(analysis: ModelAnalysis, projector, target, snap: int | None = None, exclude: Sequence[str] = (),
                   keep_classifier: bool = True):
    """:func:`lrviz.budget.solve` with the knapsack allocator: a :class:`lrviz.budget.SolveResult` for
    ``target`` (``"macs:4"`` or ``(metric, ratio)``), its projection scored jointly like the solver's.
    Raises :class:`LrvizError` when the target is out of reach."""
    from .budget import parse_target

    metric, ratio = parse_target(target) if isinstance(target, str) else target
    if projector is None:
        raise LrvizError("the knapsack allocator needs sensitivities (--data)")
    plan = knapsack_plan(analysis, projector, metric, ratio, snap, exclude, keep_classifier)
    if plan is None:
        raise LrvizError(f"cannot reach a {ratio:g}x {metric} reduction with the knapsack allocator: even the smallest "
                         "candidate ranks of every measured layer are not enough")
    return _result(analysis, projector, plan, metric, ratio)


# --- data-free continuous rank search ---------------------------------------------------------------

def continuous_plan(analysis: ModelAnalysis, metric: str, target: float, snap: int | None = None, exclude: Sequence[str] = (),
                    keep_classifier: bool = True) -> RankPlan | None:
    """Ranks for ``metric`` reduced ``target``-fold from the weights alone, by a continuous relaxation.

    Every mode's rank is a real number in ``[1, R]``; the objective is the data-free energy proxy
    ``−Σ log q(r)`` (q: the mode's retained spectral energy, linear between integer ranks); the cost of
    a layer is its factored closed form (bilinear in the two Tucker-2 ranks, linear for a matrix),
    exact at integer ranks. The relaxed problem is solved with SciPy's SLSQP from the uniform fraction
    that meets the budget; its ranks are then rounded down (so the budget still holds), the cheapest
    structure applied, and the budget left by rounding refilled one rank at a time where the proxy
    gains most per unit of cost. None when out of reach; needs ``analysis`` with spectra."""
    from scipy.optimize import minimize

    from .plan import cheapest_structure
    from .spectra import energy_curve

    target = _check("continuous rank search", metric, target)
    if not analysis.has_spectra:
        raise LrvizError("the continuous rank search needs the spectra: analyze(..., spectra=True)")
    layers = _allocatable(analysis, exclude, keep_classifier, lambda l: all(f >= 3 for f in l.full_ranks))
    if not layers:
        raise LrvizError("no layer can be compressed (all excluded, the classifier, or too small)")
    total = float(analysis.total(metric))
    fixed = total - sum(_full_cost(analysis, l, metric) for l in layers)
    budget = total / target - fixed
    if budget <= 0:
        return None

    def cost_of(l, ranks) -> float:
        return float(layer_cost(l, analysis.io[l.name], tuple(int(r) for r in ranks), metric))

    # per layer: the factored cost as a polynomial in its ranks, fitted exactly at integer ranks 1 and 2
    coef, curves, slots = [], [], []
    for l in layers:
        if len(l.full_ranks) == 2:
            c11, c21, c12, c22 = (cost_of(l, r) for r in ((1, 1), (2, 1), (1, 2), (2, 2)))
            d = c22 - c21 - c12 + c11
            coef.append((c11 - (c21 - c11) - (c12 - c11) + d, c21 - c11 - d, c12 - c11 - d, d))  # a + b·r_out + c·r_in + d·r_out·r_in
        else:
            c1, c2 = cost_of(l, (1,)), cost_of(l, (2,))
            coef.append((2 * c1 - c2, c2 - c1, 0.0, 0.0))
        sp = analysis.spectra[l.name]
        curves.append([np.concatenate([[0.0], energy_curve(sp.values[m])]) for m in sp.modes])
        slots.append(len(l.full_ranks))
    full = np.array([f for l in layers for f in l.full_ranks], dtype=np.float64)
    starts = np.cumsum([0] + slots[:-1])

    def relaxed_cost(x) -> float:
        out = 0.0
        for (a, b, c, d), s, n in zip(coef, starts, slots):
            r0 = x[s]
            r1 = x[s + 1] if n == 2 else 0.0
            out += a + b * r0 + c * r1 + d * r0 * r1
        return out

    def proxy(x) -> float:
        out = 0.0
        for cv, s, n in zip(curves, starts, slots):
            for j in range(n):
                e = cv[j]
                out -= math.log(max(float(np.interp(x[s + j], np.arange(len(e)), e)), 1e-300))
        return out

    lo, hi = 0.0, 1.0  # the uniform fraction meeting the budget: the start
    for _ in range(50):
        mid = (lo + hi) / 2
        if relaxed_cost(np.maximum(1.0, mid * full)) <= budget:
            lo = mid
        else:
            hi = mid
    x0 = np.maximum(1.0, lo * full)
    if relaxed_cost(x0) > budget:
        return None
    res = minimize(proxy, x0, method="SLSQP", bounds=[(1.0, f) for f in full],
                   constraints=[{"type": "ineq", "fun": lambda x: budget - relaxed_cost(x)}], options={"maxiter": 300, "ftol": 1e-10})
    x = res.x if res.success and relaxed_cost(res.x) <= budget * (1 + 1e-9) else x0
    step = snap or 1
    ranks = {}
    for l, s, n in zip(layers, starts, slots):
        rr = []
        for j in range(n):
            f = l.full_ranks[j]
            r = int(math.floor(x[s + j] + 1e-9))
            r = f if r >= f else max(1, (r // step) * step or min(step, f))
            rr.append(r)
        ranks[l.name] = tuple(rr)

    def structure(l, rr):
        eff = cheapest_structure(l, rr, lambda r: cost_of(l, r))
        return eff, cost_of(l, eff)

    spent = sum(structure(l, ranks[l.name])[1] for l in layers)
    if spent > budget:  # rounding down cannot raise the cost; only a snap that rounded up to one step can
        return None

    def layer_proxy(l, rr) -> float:
        cv = curves[layers.index(l)]
        return -sum(math.log(max(float(cv[j][min(int(r), len(cv[j]) - 1)]), 1e-300)) for j, r in enumerate(rr))

    for _ in range(10_000):  # refill what rounding left, best proxy gain per unit of cost first
        best = None
        for l in layers:
            cur = ranks[l.name]
            _, c_now = structure(l, cur)
            for j in range(len(cur)):
                if cur[j] >= l.full_ranks[j]:
                    continue
                nxt = list(cur)
                nxt[j] = min(l.full_ranks[j], cur[j] + step)
                _, c_new = structure(l, tuple(nxt))
                if spent - c_now + c_new > budget:
                    continue
                gain = layer_proxy(l, cur) - layer_proxy(l, nxt)
                score = gain / max(c_new - c_now, 1e-9)
                if gain > 0 and (best is None or score > best[0]):
                    best = (score, l, tuple(nxt), c_new - c_now)
        if best is None:
            break
        _, l, nxt, dc = best
        ranks[l.name] = nxt
        spent += dc
    plan = _plan(analysis, {l.name: structure(l, ranks[l.name])[0] for l in layers}, "continuous", metric, target, snap)
    return plan if plan_cost(analysis, plan).ratio(metric) >= target * (1 - 1e-12) else None


def continuous_solve(analysis: ModelAnalysis, projector, target, snap: int | None = None, exclude: Sequence[str] = (),
                     keep_classifier: bool = True):
    """:func:`continuous_plan` as a :class:`lrviz.budget.SolveResult` (projected when ``projector`` is
    given, else NaN). Raises :class:`LrvizError` when the target is out of reach."""
    from .budget import parse_target

    metric, ratio = parse_target(target) if isinstance(target, str) else target
    plan = continuous_plan(analysis, metric, ratio, snap, exclude, keep_classifier)
    if plan is None:
        raise LrvizError(f"cannot reach a {ratio:g}x {metric} reduction with the continuous rank search")
    return _result(analysis, projector, plan, metric, ratio)


# --- Bayesian-optimisation allocation (optuna) -------------------------------------------------------

def bayes_plan(analysis: ModelAnalysis, projector, metric: str, target: float, *, trials: int = 120, seed: int = 0,
               measure=None, top_k: int = 3, snap: int | None = None, exclude: Sequence[str] = (),
               keep_classifier: bool = True) -> RankPlan | None:
    """Ranks for ``metric`` reduced ``target``-fold by Bayesian optimisation (optuna's TPE sampler, the
    optional extra ``lrviz[bayes]``), scoring plans by the sensitivity projection.

    A trial picks one fraction ``u_l ∈ [0.02, 1]`` per layer; its plan is every mode at
    ``ceil(s·u_l·R)`` with the largest global scale ``s`` that meets the budget (bisection), so every trial
    is feasible and the search is over the *shape* of the allocation. The first trial is the uniform one
    (all ``u_l = 1``), so the result never projects worse than uniform. The objective is the projected
    calibration loss. With ``measure`` (a callable ``plan → top-1``, e.g. a quick evaluation), the
    ``top_k`` distinct best-projected plans are measured and the best measured one is returned (the
    images it measures on then chose the plan: report accuracy on others). Seeded: the same inputs give
    the same plan. None when out of reach."""
    try:
        import optuna
    except ImportError:
        raise LrvizError("the Bayesian-optimisation allocator needs optuna: pip install lrviz[bayes]") from None
    if projector is None:
        raise LrvizError("the Bayesian-optimisation allocator needs sensitivities (a projector)")
    target = _check("Bayesian-optimisation allocator", metric, target)
    from .plan import cheapest_structure

    def measured(l, m) -> bool:
        return l.full_ranks[m] > 1 and projector.sens.curve(l.name, m) is not None

    layers = _allocatable(analysis, exclude, keep_classifier, lambda l: any(measured(l, m) for m in range(len(l.full_ranks))))
    if not layers:
        raise LrvizError("no layer can be compressed with the measured sensitivities (all excluded or unmeasured)")
    budget = float(analysis.total(metric)) / target
    step = snap or 1

    def cost_fn(l):
        return lambda r: float(layer_cost(l, analysis.io[l.name], None if r is None else tuple(int(v) for v in r), metric))

    # the model's cost with the allocatable layers' planned costs in place of their dense ones (as plan_cost)
    fixed = float(analysis.total(metric)) - sum(cost_fn(l)(None) for l in layers)

    def ranks_at(u: Sequence[float], s: float) -> dict:
        chosen = {}
        for l, ul in zip(layers, u):
            rr = []
            for m, f in enumerate(l.full_ranks):
                r = f if not measured(l, m) else min(f, max(1, math.ceil(min(1.0, s * ul) * f)))
                if measured(l, m) and r < f and step > 1:
                    r = min(f, max(step, (r // step) * step))
                rr.append(r)
            chosen[l.name] = cheapest_structure(l, tuple(rr), cost_fn(l))
        return chosen

    def cost_of(chosen: dict) -> float:
        return fixed + sum(cost_fn(l)(chosen[l.name]) for l in layers)

    def fit(u) -> RankPlan | None:
        lo, hi = 0.0, 1.0 / max(min(u), 1e-9)
        if cost_of(ranks_at(u, lo)) > budget:
            return None
        for _ in range(30):
            mid = (lo + hi) / 2
            if cost_of(ranks_at(u, mid)) <= budget:
                lo = mid
            else:
                hi = mid
        return _plan(analysis, ranks_at(u, lo), "bayes", metric, target, snap)

    base_loss = projector.sens.loss_of(projector.sens.base_logits)
    seen: dict[tuple, tuple[float, RankPlan]] = {}

    def objective(trial) -> float:
        u = [trial.suggest_float(f"u{i}", 0.02, 1.0) for i in range(len(layers))]
        plan = fit(u)
        if plan is None:
            return base_loss + 1e6
        key = tuple(lp.ranks for lp in plan.layers)
        if key not in seen:
            seen[key] = (projector.sens.loss_of(projector.logits(plan)), plan)
        return seen[key][0]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial({f"u{i}": 1.0 for i in range(len(layers))})  # the uniform allocation first
    study.optimize(objective, n_trials=int(trials))
    if not seen:
        return None
    ranked = sorted(seen.values(), key=lambda t: t[0])
    if measure is None:
        return ranked[0][1]
    measured = [(float(measure(p)), -i, p) for i, (_, p) in enumerate(ranked[:max(1, int(top_k))])]
    return max(measured)[2]  # best measured; ties go to the better projected


def bayes_solve(analysis: ModelAnalysis, projector, target, snap: int | None = None, exclude: Sequence[str] = (),
                keep_classifier: bool = True, trials: int = 120, seed: int = 0):
    """:func:`bayes_plan` (projection only) as a :class:`lrviz.budget.SolveResult`; raises
    :class:`LrvizError` when the target is out of reach."""
    from .budget import parse_target

    metric, ratio = parse_target(target) if isinstance(target, str) else target
    plan = bayes_plan(analysis, projector, metric, ratio, trials=trials, seed=seed, snap=snap, exclude=exclude,
                      keep_classifier=keep_classifier)
    if plan is None:
        raise LrvizError(f"cannot reach a {ratio:g}x {metric} reduction with the Bayesian-optimisation allocator")
    return _result(analysis, projector, plan, metric, ratio, trials)
