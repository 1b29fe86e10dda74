"""Layer sensitivities, the sensitivity projection, the budget solver and the sweep (demo model, bundled sample)."""

import json
import math

import numpy as np
import pytest
import torch

from lrviz import FactorCache, LrvizError, RankPlan, analyze, compress, make_plan, plan_cost
from lrviz.budget import SWEEP_COLUMNS, candidate_ranks, parse_target, solve, solve_many, strategy_plan, sweep
from lrviz.data import DatasetSubset, get_dataset
from lrviz.evaluate import evaluate
from lrviz.models import load_model
from lrviz.plan import plan_for_ratio
from lrviz.project import SensitivityProjector
from lrviz.sensitivity import measure_sensitivity, rank_grid, pair_grid

N = 200
LAYERS = ["layer1.0.conv1", "layer2.0.conv2", "layer2.0.shortcut.0", "layer3.1.conv1", "layer3.2.conv2"]


@pytest.fixture(scope="module")
def demo():
    lm = load_model("demo")
    a = analyze(lm.module, lm.input_size, "demo")
    ds = get_dataset("fashion-mnist-sample")
    return lm, a, ds, FactorCache(lm.module)


@pytest.fixture(scope="module")
def sens(demo, tmp_path_factory):
    lm, a, ds, fc = demo
    return measure_sensitivity(lm.module, ds, limit=N, layers=LAYERS, factors=fc, cache_root=tmp_path_factory.mktemp("sens"))


def test_rank_grid():
    assert rank_grid(1) == []
    assert rank_grid(2) == [1]
    assert rank_grid(16) == list(range(1, 16))  # small modes: every rank
    g = rank_grid(64)
    assert g[:4] == [1, 2, 3, 4] and g[-1] == 60 and g == sorted(set(g)) and set(range(8, 64, 8)) <= set(g)
    assert rank_grid(512, points=8) == [1, 2, 3, 64, 128, 192, 256, 320, 384, 448]
    with pytest.raises(LrvizError):
        rank_grid(8, points=1)


def test_curves_start_at_base_and_match_an_independent_evaluation(demo, sens):
    lm, a, ds, fc = demo
    base = evaluate(lm.module, ds, limit=N)
    assert sens.n == N and sens.base_top1 == pytest.approx(base.top1) and sens.base_loss == pytest.approx(base.loss, rel=1e-4)
    assert set(n for n, _ in sens.curves) == set(LAYERS)
    for c in sens.curves.values():
        assert c.ranks[-1] == c.full and c.top1[-1] == pytest.approx(base.top1) and not np.any(c.delta[-1])
        assert list(c.ranks[:-1]) == rank_grid(c.full)
    # one grid point against decompose + evaluate of the single-layer plan
    c = sens.curve("layer3.1.conv1", 1)
    r = int(c.ranks[2])
    plan = make_plan(a, "full").with_ranks({"layer3.1.conv1": (64, r)})
    ref = evaluate(compress(lm.module, plan, fc), ds, limit=N)
    assert c.top1[2] == pytest.approx(ref.top1) and c.loss[2] == pytest.approx(ref.loss, rel=1e-4)


def test_curves_are_monotone_ish(sens):
    from scipy.stats import spearmanr

    tol = 2.5 * math.sqrt(0.25 / N)  # 2.5 binomial standard errors at the worst (p = 0.5)
    for c in sens.curves.values():
        worst = max((c.top1[i] - c.top1[j] for i in range(len(c.top1)) for j in range(i + 1, len(c.top1))), default=0)
        assert worst <= tol, (c.layer, c.mode, c.top1)  # a lower rank never beats a higher one beyond sampling noise
        assert c.loss[0] > c.loss[-1] and c.top1[0] < c.top1[-1]  # rank 1 hurts
        if c.top1[0] < c.top1[-1] - 0.1:  # a curve with a real drop rises with the rank
            assert spearmanr(c.ranks, c.top1).statistic > 0.5, (c.layer, c.mode, c.top1)


def test_cache_hit_and_invalidation(demo, tmp_path):
    lm, a, ds, fc = demo
    kw = dict(layers=["layer1.0.conv1"], factors=fc, cache_root=tmp_path, anchors=())
    s1 = measure_sensitivity(lm.module, ds, limit=60, **kw)
    s2 = measure_sensitivity(lm.module, ds, limit=60, **kw)
    assert s2.key == s1.key and s2.cached_layers == 1 and s2.seconds == 0
    np.testing.assert_array_equal(s2.curve("layer1.0.conv1", 0).top1, s1.curve("layer1.0.conv1", 0).top1)
    assert measure_sensitivity(lm.module, ds, limit=61, **kw).key != s1.key  # subset size
    other_ds = get_dataset("fashion-mnist-sample", mean=[0.3], std=[0.3])
    assert measure_sensitivity(lm.module, other_ds, limit=60, **kw).key != s1.key  # data / transform
    assert measure_sensitivity(lm.module, ds, limit=60, seed=1, **kw).key != s1.key  # which images
    changed = load_model("demo").module
    with torch.no_grad():
        changed.conv1.weight[0, 0, 0, 0] += 1e-3
    s3 = measure_sensitivity(changed, ds, limit=60, layers=["layer1.0.conv1"], cache_root=tmp_path, anchors=())
    assert s3.key != s1.key and s3.cached_layers == 0  # model weights


def test_cancel_then_resume(demo, tmp_path):
    lm, a, ds, fc = demo
    seen = []
    kw = dict(limit=40, layers=["layer1.0.conv1", "layer1.0.conv2"], factors=fc, cache_root=tmp_path, anchors=())
    s = measure_sensitivity(lm.module, ds, progress=lambda d, t, n: seen.append(n), should_stop=lambda: bool(seen), **kw)
    assert not s.complete and seen == ["layer1.0.conv1"] and set(n for n, _ in s.curves) == {"layer1.0.conv1"}
    s2 = measure_sensitivity(lm.module, ds, **kw)
    assert s2.complete and s2.cached_layers == 1 and set(n for n, _ in s2.curves) == {"layer1.0.conv1", "layer1.0.conv2"}


def test_bad_input(demo):
    lm, a, ds, fc = demo
    with pytest.raises(LrvizError, match="not decomposable"):
        measure_sensitivity(lm.module, ds, limit=10, layers=["nope"])
    with pytest.raises(LrvizError, match="labels"):
        measure_sensitivity(lm.module, get_dataset("synthetic:1,28,28,20,30"), limit=30, layers=["fc"])


def test_projection_is_exact_at_full_rank_and_on_single_layer_grid_points(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector(sens)
    full = make_plan(a, "full")
    pr = p.project(full)
    assert pr.top1 == pytest.approx(sens.base_top1) and pr.basis == "sensitivities"
    assert pr.interval[0] <= pr.top1 <= pr.interval[1]
    c = sens.curve("layer2.0.conv2", 0)
    for j in range(len(c.ranks) - 1):
        plan = full.with_ranks({"layer2.0.conv2": (int(c.ranks[j]), 32)})
        assert p.project(plan).top1 == pytest.approx(c.top1[j])  # one truncation = exactly what was measured
    # anchored to another base: the change is carried over in log-odds, the full plan gives that base
    assert p.project(full, base_top1=0.9).top1 == pytest.approx(0.9)


def test_projection_degrades_with_rank(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector.from_sensitivities(sens)
    assert sens.anchors and len(sens.anchors) == 3 and p.n_fit == 3
    full = make_plan(a, "full")
    vals = []
    for f in (1.0, 0.8, 0.6, 0.4, 0.2):
        ranks = {n: tuple(max(1, math.ceil(f * r)) for r in a.layer(n).full_ranks) for n in LAYERS}
        vals.append(p.project(full.with_ranks(ranks)).top1)
    assert vals[0] == pytest.approx(sens.base_top1)
    assert all(b <= a_ + 0.02 for a_, b in zip(vals, vals[1:])) and vals[-1] < vals[0] - 0.05
    with pytest.raises(LrvizError, match="no sensitivity"):
        p.project(full.with_ranks({"layer1.1.conv1": (4, 4)}))


def test_calibration_fits_the_gain(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector(sens)
    full = make_plan(a, "full")
    plans = [full.with_ranks({n: tuple(max(1, math.ceil(f * r)) for r in a.layer(n).full_ranks) for n in LAYERS}) for f in (0.5, 0.3, 0.15)]
    truth = [sens.top1_of(p.logits(pl, gain=0.6)) for pl in plans]
    fitted = p.calibrate(list(zip(plans, truth)))
    assert fitted.n_fit == 3 and fitted.rel_error is not None
    assert [fitted.project(pl).top1 for pl in plans] == pytest.approx(truth, abs=0.011)
    assert p.calibrate([(full, 0.5)]) is p  # full-rank points carry no information


def test_solver_meets_budgets_with_valid_ranks(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector.from_sensitivities(sens)
    for metric in ("params", "macs"):
        targets = [1.05, 1.15, 1.25]  # the five measured layers allow at most 1.46x params, 1.31x MACs
        results = solve_many(a, p, targets, metric)
        for t, res in zip(targets, results):
            assert res is not None
            cost = plan_cost(a, res.plan)
            ratio = cost.macs_ratio if metric == "macs" else cost.params_ratio
            assert ratio >= t and res.ratio == pytest.approx(ratio)
            assert ratio < t * 1.05  # the fill phase spends the budget
            for lp in res.plan.layers:
                assert all(1 <= r <= f for r, f in zip(lp.ranks, lp.full_ranks))
                if lp.name not in LAYERS:
                    assert lp.is_dense
            again = RankPlan.from_json(res.plan.to_json(), a.layers)
            assert again.ranks() == res.plan.ranks()
    snapped = solve(a, p, "params:1.2", snap=8)
    for lp in snapped.plan.layers:
        assert all(r == f or r % 8 == 0 for r, f in zip(lp.ranks, lp.full_ranks))
    with pytest.raises(LrvizError, match="cannot reach"):
        solve(a, p, "params:50")


def test_solver_beats_uniform_on_its_objective(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector.from_sensitivities(sens)
    res = solve(a, p, "params:1.3")
    full = make_plan(a, "full")
    # uniform fraction on the same measured layers, matched or cheaper cost
    for f in np.linspace(0.95, 0.05, 91):
        uni = full.with_ranks({n: tuple(max(1, math.ceil(f * r)) for r in a.layer(n).full_ranks) for n in LAYERS})
        if plan_cost(a, uni).params_ratio >= res.params_ratio:
            break
    assert sens.loss_of(p.logits(res.plan)) <= sens.loss_of(p.logits(uni)) + 1e-9


def test_parse_target_and_candidates():
    assert parse_target("params:4") == ("params", 4.0) and parse_target("macs:3") == ("macs", 3.0) and parse_target("2") == ("params", 2.0)
    for bad in ("foo:3", "macs:x", "params:0.5"):
        with pytest.raises(LrvizError):
            parse_target(bad)
    assert candidate_ranks(16) == list(range(1, 17))
    assert candidate_ranks(64, snap=8) == [8, 16, 24, 32, 40, 48, 56, 64]
    c = candidate_ranks(512)
    assert c[0] == 1 and c[-1] == 512 and len(c) <= 33


def test_sweep_rows_are_measured_plans(demo, sens):
    lm, a, ds, fc = demo
    p = SensitivityProjector.from_sensitivities(sens)
    df = sweep(a, lm.module, ds, [1.2, 50], metric="params", strategies=("solver", "uniform"), projector=p, factors=fc, limit=100)
    assert list(df.strategy) == ["solver", "uniform", "solver", "uniform"]
    ok = df[df.target == 1.2]
    assert ok.params_ratio.ge(1.2 * 0.9).all() and ok.top1.notna().all()
    assert ok.projected.notna().tolist() == [True, False]  # uniform truncates layers that were not measured
    assert list(df.columns) == SWEEP_COLUMNS
    row = ok[ok.strategy == "solver"].iloc[0]
    plan = make_plan(a, "full").with_ranks({k: tuple(v) for k, v in json.loads(row.ranks).items()})
    assert evaluate(compress(lm.module, plan, fc), ds, limit=100).top1 == pytest.approx(row.top1)
    far = df[df.target == 50]
    assert (far.spec == "unreachable").all() and far.top1.isna().all()
    with pytest.raises(LrvizError, match="strategy"):
        sweep(a, lm.module, ds, [2], strategies=("magic",), projector=p)


def test_plan_for_ratio_macs(demo):
    lm, a, ds, fc = demo
    for fam in ("uniform", "vbmf", "energy"):
        plan = plan_for_ratio(a, fam, 2.0, metric="macs")
        assert plan.spec.startswith(f"{fam}:") and plan_cost(a, plan).macs_ratio == pytest.approx(2.0, rel=0.1)
        assert strategy_plan(a, fam, "macs", 2.0).spec.startswith(f"{fam}:")
    # weakened VBMF stops at the EVBMF ranks: out of reach is an error naming the closest ratio; the sweep's None
    with pytest.raises(LrvizError, match=r"vbmf ranks: cannot reach a 50x params reduction within ±10% \(closest \d+\.\d\dx; weakened"):
        plan_for_ratio(a, "vbmf", 50.0)
    assert strategy_plan(a, "vbmf", "params", 50.0) is None
    with pytest.raises(LrvizError, match="unknown family 2.0"):
        plan_for_ratio(a, 2.0, "uniform")  # (analysis, family, target)


def test_sweep_with_short_finetune(demo, monkeypatch):
    import lrviz.train

    lm, a, ds, fc = demo
    evaluation = DatasetSubset(ds, list(range(0, len(ds), 2)))  # disjoint halves of the sample
    training = DatasetSubset(ds, list(range(1, len(ds), 2)))
    seen = []
    real = lrviz.train.finetune
    monkeypatch.setattr(lrviz.train, "finetune", lambda net, data, **kw: seen.append((data, kw)) or real(net, data, **kw))
    df = sweep(a, lm.module, evaluation, [6.0], strategies=("uniform",), factors=fc, limit=200, finetune_epochs=1,
               train_set=training, finetune_limit=256)
    assert list(df.columns) == SWEEP_COLUMNS and len(df) == 1
    row = df.iloc[0]
    assert row.spec.startswith("uniform:") and row.n == 200 and math.isnan(row.projected)
    plan = make_plan(a, row.spec)  # the row's plan, measured before fine-tuning
    assert evaluate(compress(lm.module, plan, fc), evaluation, limit=200).top1 == pytest.approx(row.top1)
    # fine-tuned on the training half only (never on the evaluated images), one epoch of 256 images, last weights
    (data, kw), = seen
    assert data is training and set(data.indices).isdisjoint(evaluation.indices)
    assert kw["epochs"] == 1 and kw["train_limit"] == 256 and kw["val_set"] is None and kw["keep"] == "last"
    assert row.top1 < 0.5 and row.finetuned >= row.top1 + 0.05  # a collapsed plan recovers (0.20 -> 0.32 measured)
    with pytest.raises(LrvizError, match="training set"):
        sweep(a, lm.module, ds, [1.5], strategies=("uniform",), finetune_epochs=1)


def test_downstream_only_passes_equal_whole_passes(demo):
    lm, a, ds, fc = demo
    kw = dict(limit=64, layers=["layer1.0.conv1", "layer2.0.shortcut.0", "layer3.2.conv2"], factors=fc, cache=False, anchors=(),
              batch_size=32)  # two batches: the kept upstream values are per batch
    fast = measure_sensitivity(lm.module, ds, partial=True, **kw)
    slow = measure_sensitivity(lm.module, ds, partial=False, **kw)
    assert fast.partial_layers == tuple(kw["layers"]) and slow.partial_layers == ()  # which path ran
    assert fast.curves.keys() == slow.curves.keys()
    for k in fast.curves:
        np.testing.assert_allclose(fast.curves[k].delta, slow.curves[k].delta, atol=1e-5)
        np.testing.assert_array_equal(fast.curves[k].top1, slow.curves[k].top1)


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so whole forward passes are used."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.sum() > 0:
            h = h * 2
        return self.head(h.mean((2, 3)))


def test_untraceable_model_falls_back_to_whole_passes():
    torch.manual_seed(0)
    net = _Branchy().eval()
    ds = get_dataset("synthetic:1,28,28,10,40")
    fast = measure_sensitivity(net, ds, limit=40, cache=False, anchors=(), partial=True)
    slow = measure_sensitivity(net, ds, limit=40, cache=False, anchors=(), partial=False)
    assert fast.partial_layers == () == slow.partial_layers  # asked for downstream-only passes, fell back to whole ones
    assert fast.curves.keys() == slow.curves.keys() == {("conv", 0), ("head", 0)}  # conv's input mode has 1 channel
    for k in fast.curves:
        np.testing.assert_allclose(fast.curves[k].delta, slow.curves[k].delta, atol=1e-6)


def test_frontier_memory_guard_falls_back(demo, monkeypatch):
    import lrviz.downstream as dm

    lm, a, ds, fc = demo
    kw = dict(limit=32, layers=["layer2.0.conv1"], factors=fc, cache=False, anchors=())
    ref = measure_sensitivity(lm.module, ds, partial=False, **kw)
    monkeypatch.setattr(dm, "FRONTIER_BYTES", 1)  # nothing may be kept: whole passes
    seen = []
    orig = dm.forward_logits
    monkeypatch.setattr(dm, "forward_logits", lambda *a_, **k_: seen.append(1) or orig(*a_, **k_))
    got = measure_sensitivity(lm.module, ds, partial=True, **kw)
    assert got.partial_layers == () and len(seen) == len(rank_grid(32)) + len(rank_grid(16)) + len(pair_grid(32)) * len(pair_grid(16))  # one whole pass per rank (and per pair-grid point)
    for k in ref.curves:
        np.testing.assert_allclose(got.curves[k].delta, ref.curves[k].delta, atol=1e-5)
