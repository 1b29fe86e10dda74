"""The knapsack allocator: the exact optimum of the additive model (brute force on tiny instances), its
plans meet their budgets, and it never does worse than the greedy solver on the additive objective."""

import itertools
import math

import numpy as np
import pytest

from lrviz.allocate import LayerChoices, knapsack, knapsack_plan, layer_choices


def _brute(costs, losses, budget):
    best = None
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(costs[g][i] for g, i in enumerate(pick))
        if c <= budget:
            l = sum(losses[g][i] for g, i in enumerate(pick))
            if best is None or l < best[1] - 1e-12:
                best = (list(pick), l)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_knapsack_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    groups = int(rng.integers(2, 5))
    costs = [rng.integers(0, 12, size=int(rng.integers(1, 6))).tolist() for _ in range(groups)]
    losses = [rng.random(len(c)).round(3).tolist() for c in costs]
    for budget in range(0, sum(max(c) for c in costs) + 2):
        got, want = knapsack(costs, losses, budget), _brute(costs, losses, budget)
        if want is None:
            assert got is None
            continue
        pick, total = got
        assert math.isclose(total, want[1], abs_tol=1e-12)
        assert sum(costs[g][i] for g, i in enumerate(pick)) <= budget
        assert math.isclose(sum(losses[g][i] for g, i in enumerate(pick)), total, abs_tol=1e-12)


def test_knapsack_rejects_and_reports_unreachable():
    assert knapsack([[3, 4]], [[0.0, 0.0]], 2) is None
    assert knapsack([[1]], [[0.5]], -1) is None
    with pytest.raises(ValueError):
        knapsack([[-1]], [[0.0]], 3)


def test_pareto_drops_dominated_choices():
    c = LayerChoices("x", [(1,), (2,), (3,), (4,)], np.array([5.0, 3.0, 3.0, 8.0]), np.array([0.1, 0.4, 0.2, 0.3]))
    p = c.pareto()
    assert p.ranks == [(3,), (1,)] and p.cost.tolist() == [3.0, 5.0] and p.loss.tolist() == [0.2, 0.1]


@pytest.fixture(scope="module")
def tiny_projector():
    import torch

    from helpers import tiny_net
    from lrviz.analysis import analyze
    from lrviz.data import get_dataset
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity

    torch.manual_seed(0)
    net = tiny_net().eval()
    ds = get_dataset("synthetic:3,16,16,10,64", "test")
    sens = measure_sensitivity(net, ds, limit=64, grid_points=4, cache=False, device="cpu")
    a = analyze(net, (3, 16, 16), "tiny")
    return a, SensitivityProjector.from_sensitivities(sens)


def _additive(a, proj, plan):
    """Σ over layers of the loss increase with that layer alone truncated (the allocator's objective)."""
    from lrviz.plan import RankPlan

    base = proj.sens.loss_of(proj.sens.base_logits)
    return sum(proj.sens.loss_of(proj.logits(RankPlan((lp,), spec="one"))) - base for lp in plan.layers if lp.ranks != lp.full_ranks)


@pytest.mark.parametrize("metric", ["params", "macs"])
def test_knapsack_plan_meets_budget_and_beats_greedy_on_the_additive_model(tiny_projector, metric):
    from lrviz.budget import solve_many
    from lrviz.plan import plan_cost

    a, proj = tiny_projector
    choices = layer_choices(a, proj, metric)
    for target, greedy in zip((1.5, 2.0, 3.0), solve_many(a, proj, (1.5, 2.0, 3.0), metric)):
        plan = knapsack_plan(a, proj, metric, target, choices=choices)
        if plan is None:
            assert greedy is None
            continue
        assert plan_cost(a, plan).ratio(metric) >= target
        assert plan.spec == f"knapsack:{metric}:{target:g}"
        if greedy is not None:
            assert _additive(a, proj, plan) <= _additive(a, proj, greedy.plan) + 1e-9


def test_knapsack_plan_equals_brute_force_over_the_real_choices(tiny_projector):
    """On the tiny net's real choices (costs in MACs, one unit = one MAC), brute force over every
    combination finds no plan within the budget with a smaller additive loss; at the default
    resolution the optimum is within a hair of it."""
    from lrviz.plan import plan_cost

    a, proj = tiny_projector
    groups, _ = layer_choices(a, proj, "macs")
    assert 3 <= len(groups) and np.prod([len(g.ranks) for g in groups]) < 200_000
    total = float(a.total("macs"))
    by = {l.name: l for l in a.layers}
    from lrviz.cost import layer_cost

    fixed = total - sum(layer_cost(by[g.name], a.io[g.name], by[g.name].full_ranks, "macs") for g in groups)
    budget = total / 2.0 - fixed
    want = _brute([g.cost.tolist() for g in groups], [g.loss.tolist() for g in groups], budget)
    plan = knapsack_plan(a, proj, "macs", 2.0, choices=(groups, {}), max_units=10**7)  # one unit = one MAC: exact
    assert budget < 10**7 and want is not None and plan is not None
    assert math.isclose(_additive(a, proj, plan), want[1], rel_tol=1e-9, abs_tol=1e-12)
    assert plan_cost(a, plan).ratio("macs") >= 2.0
    coarse = knapsack_plan(a, proj, "macs", 2.0, choices=(groups, {}))
    spread = max(g.loss.max() - g.loss.min() for g in groups)
    assert want[1] <= _additive(a, proj, coarse) <= want[1] + 0.05 * spread


def test_out_of_reach_and_bad_metric(tiny_projector):
    from lrviz.errors import LrvizError

    a, proj = tiny_projector
    assert knapsack_plan(a, proj, "params", 1000.0) is None
    with pytest.raises(LrvizError, match="params or macs"):
        knapsack_plan(a, proj, "latency", 2.0)
    with pytest.raises(LrvizError, match="must be ≥ 1"):
        knapsack_plan(a, proj, "params", 0.5)


def test_cli_solve_and_sweep_with_the_knapsack(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))  # its sensitivities stay its own (test_cli measures these)

    from lrviz.cli import main

    model = ["helpers:tiny_net", "--input-size", "3,16,16"]
    data = ["--data", "synthetic:3,16,16,10,64", "--limit", "64", "--grid-points", "4"]
    out_plan = tmp_path / "plan.json"
    assert main(["solve", *model, *data, "--target", "macs:2", "--method", "knapsack", "--out", str(out_plan)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("solved macs:2: ") and "allocation by sensitivities, exact knapsack of the additive model" in out
    plan = json.loads(out_plan.read_text())
    assert plan["spec"] == "knapsack:macs:2"
    assert main(["solve", *model, "--target", "macs:2", "--method", "knapsack"]) == 2
    assert "--method knapsack allocates params or macs targets from sensitivities" in capsys.readouterr().err
    sw = tmp_path / "sw.json"
    assert main(["solve", *model, "--target", "params:2", "--method", "continuous"]) == 0  # data-free: no --data needed
    out = capsys.readouterr().out
    assert out.startswith("solved params:2: ") and "allocation by spectra, continuous rank search (data-free)" in out
    assert main(["solve", *model, "--target", "latency:2", "--method", "continuous"]) == 2
    assert "--method continuous allocates params or macs targets" in capsys.readouterr().err
    assert main(["solve", *model, *data, "--target", "params:2", "--method", "bayes"]) == 0
    assert "allocation by sensitivities, Bayesian optimisation (optuna TPE, 120 trials, seed 0)" in capsys.readouterr().out
    rc = main(["sweep", *model, *data, "--targets", "1.5,2", "--metric", "macs", "--strategies", "solver,knapsack,bayes,continuous",
               "--json", str(sw)])
    assert rc == 0
    rows = json.loads(sw.read_text())["rows"]
    assert [r["strategy"] for r in rows] == ["solver", "knapsack", "bayes", "continuous"] * 2
    for r in rows:
        assert r["macs_ratio"] >= r["target"] and 0 <= r["top1"] <= 1 and r["label"]


def _proxy(a, plan) -> float:
    """The data-free energy proxy −Σ log q of a plan's truncated modes."""
    from lrviz.spectra import retained_energy

    out = 0.0
    for lp in plan.layers:
        sp = a.spectra[lp.name]
        for m, r, f in zip(sp.modes, lp.ranks, lp.full_ranks):
            if r < f:
                out -= math.log(retained_energy(sp.values[m], r))
    return out


@pytest.mark.parametrize("metric, target", [("params", 2.0), ("macs", 3.0), ("params", 4.0)])
def test_continuous_rank_search_meets_the_budget_and_beats_uniform_on_its_proxy(metric, target):
    import torch

    from helpers import tiny_net
    from lrviz.allocate import continuous_plan
    from lrviz.analysis import analyze
    from lrviz.budget import strategy_plan
    from lrviz.plan import plan_cost

    torch.manual_seed(0)
    net = tiny_net()
    with torch.no_grad():  # unequal spectra: one layer nearly low-rank, the others not
        w = net[3].weight
        w.copy_(w * torch.logspace(0, -3, w.shape[0]).view(-1, 1, 1, 1))
    a = analyze(net, (3, 16, 16), "tiny")
    plan = continuous_plan(a, metric, target)
    assert plan is not None and plan.spec == f"continuous:{metric}:{target:g}"
    assert plan_cost(a, plan).ratio(metric) >= target
    uniform = strategy_plan(a, "uniform", metric, target)
    if uniform is not None and plan_cost(a, uniform).ratio(metric) >= target:
        assert _proxy(a, plan) <= _proxy(a, uniform) + 1e-9
    by = {lp.name: lp for lp in plan.layers}
    assert by["3"].ranks[0] < by["3"].full_ranks[0]  # the nearly low-rank mode is cut


def test_continuous_rank_search_errors():
    from helpers import tiny_net
    from lrviz.allocate import continuous_plan
    from lrviz.analysis import analyze
    from lrviz.errors import LrvizError

    a = analyze(tiny_net(), (3, 16, 16), "tiny")
    assert continuous_plan(a, "params", 500.0) is None
    with pytest.raises(LrvizError, match="params or macs"):
        continuous_plan(a, "latency", 2.0)
    with pytest.raises(LrvizError, match="needs the spectra"):
        continuous_plan(analyze(tiny_net(), (3, 16, 16), "tiny", spectra=False), "params", 2.0)


def test_bayesian_allocation_is_seeded_meets_the_budget_and_projects_no_worse_than_uniform(tiny_projector):
    pytest.importorskip("optuna")
    from lrviz.allocate import bayes_plan
    from lrviz.plan import plan_cost

    a, proj = tiny_projector
    p1 = bayes_plan(a, proj, "macs", 2.0, trials=25, seed=3)
    p2 = bayes_plan(a, proj, "macs", 2.0, trials=25, seed=3)
    assert p1 is not None and p1.spec == "bayes:macs:2" and p1.layers == p2.layers  # seeded: the same plan
    assert plan_cost(a, p1).macs_ratio >= 2.0
    only_uniform = bayes_plan(a, proj, "macs", 2.0, trials=1, seed=3)  # the enqueued uniform trial alone
    loss = lambda p: proj.sens.loss_of(proj.logits(p))  # noqa: E731
    assert loss(p1) <= loss(only_uniform) + 1e-12
    calls = []

    def measure(plan):
        calls.append(plan)
        return -len(calls)  # the first measured (best projected) wins

    best = bayes_plan(a, proj, "macs", 2.0, trials=25, seed=3, measure=measure, top_k=3)
    assert len(calls) == 3 and best.layers == calls[0].layers == p1.layers


def test_bayesian_allocation_errors(tiny_projector, monkeypatch):
    import builtins

    from lrviz.allocate import bayes_plan
    from lrviz.errors import LrvizError

    a, proj = tiny_projector
    with pytest.raises(LrvizError, match="needs sensitivities"):
        bayes_plan(a, None, "macs", 2.0)
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *x, **k: (_ for _ in ()).throw(ImportError(n)) if n == "optuna"
                        else real(n, *x, **k))
    with pytest.raises(LrvizError, match=r"pip install lrviz\[bayes\]"):
        bayes_plan(a, proj, "macs", 2.0)
