"""Exact rank allocation of the additive model: a multiple-choice knapsack over the sensitivity curves.

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

__all__ = ["LayerChoices", "knapsack", "layer_choices", "knapsack_plan", "knapsack_solve", "MAX_UNITS"]

#: Budget resolution of the dynamic programme (units of cost).
MAX_UNITS = 20000


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
    if metric not in ("params", "macs"):
        raise LrvizError(f"the knapsack allocator takes params or macs targets; got {metric!r}")
    target = float(target)
    if not (target >= 1 and math.isfinite(target)):
        raise LrvizError(f"target ratio must be ≥ 1; got {target}")
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
    pick = dict(zip((g.name for g in groups), (g.ranks[i] for g, i in zip(groups, got[0]))))
    layers = []
    for l in analysis.layers:
        if l.name in pick:
            layers.append(LayerPlan(l.name, l.kind, l.weight_shape, tuple(int(r) for r in pick[l.name]), "knapsack"))
        else:
            layers.append(LayerPlan(l.name, l.kind, l.weight_shape, l.full_ranks, dense.get(l.name, "kept dense")))
    plan = RankPlan(tuple(layers), spec=f"knapsack:{metric}:{target:g}" + (f":snap{snap}" if snap else ""), model=analysis.model_name)
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
    from .budget import SolveResult, parse_target

    metric, ratio = parse_target(target) if isinstance(target, str) else target
    if projector is None:
        raise LrvizError("the knapsack allocator needs sensitivities (--data)")
    choices = layer_choices(analysis, projector, metric, snap, exclude, keep_classifier) if metric in ("params", "macs") else None
    plan = knapsack_plan(analysis, projector, metric, ratio, snap, exclude, keep_classifier, choices=choices)
    if plan is None:
        raise LrvizError(f"cannot reach a {ratio:g}x {metric} reduction with the knapsack allocator: even the smallest "
                         "candidate ranks of every measured layer are not enough")
    cost = plan_cost(analysis, plan)
    z = projector.logits(plan)
    return SolveResult(plan, metric, float(ratio), cost.ratio(metric), cost.params_ratio, cost.macs_ratio,
                       projector.sens.loss_of(z), projector.sens.top1_of(z), 0)
