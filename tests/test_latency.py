"""Measured speed: latency tables, break-even ranks, the latency solver, snapping, executions, ``lrviz bench``.

Timing is replaced by a deterministic fake timer wherever a number is checked: ``fake_timer`` charges
``OVERHEAD`` seconds per conv / linear call plus ``PER_MAC`` seconds per multiply-accumulate, so every
latency has a closed form. Real timers run only where the test checks a schema, not a figure.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import lrviz.latency as latency
from lrviz.analysis import analyze
from lrviz.budget import solve
from lrviz.cli import main
from lrviz.cost import count_macs, record_io
from lrviz.decompose import compress
from lrviz.execution import fold_batchnorm, prepare
from lrviz.plan import RankPlan, make_plan, plan_cost, snap_plan, snap_rank, speed_structure
from lrviz.spectra import retained_energy

OVERHEAD = 1e-4
PER_MAC = 1e-9


def _calls_and_macs(fn, x) -> tuple[int, int]:
    """(number of conv/linear calls, MACs) of ``fn`` on ``x`` (batch included)."""
    module = fn.module if hasattr(fn, "module") else fn
    io = record_io(module, tuple(x.shape[1:]))
    return sum(r.n_calls for r in io.values()), sum(r.macs for r in io.values()) * int(x.shape[0])


def fake_timer(fn, x):
    calls, macs = _calls_and_macs(fn, x)
    return [OVERHEAD * calls + PER_MAC * macs] * 3


class TinyNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.proj = nn.Conv2d(c, 2 * c, 1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.proj(x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    net = TinyNet().eval()
    for bn in (net.bn1, net.bn2):  # non-trivial statistics, so folding has something to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net, analyze(net, (3, 12, 12), "tiny")


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_rank_grid_is_below_full_and_hardware_friendly():
    assert latency.rank_grid(16) == (4, 8, 12)
    assert latency.rank_grid(64) == (8, 16, 32, 40, 56) or all(r % 8 == 0 and r < 64 for r in latency.rank_grid(64))
    assert latency.rank_grid(5) == (1, 2, 3, 4)
    assert latency.rank_grid(1) == ()
    g = latency.rank_grid(2048, points=5)
    assert len(g) == 5 and all(r % 8 == 0 and r < 2048 for r in g) and g[0] == 8 and g[-1] == 2040


def test_table_matches_the_closed_form_and_break_even_is_exact(tiny, isolated_cache):
    net, a = tiny
    batch = 4
    tab = latency.measure_latency_table(net, a, batch=batch, timer=fake_timer, total=True, execution="eager")
    proj = a.layer("proj")  # 1×1 conv 16 → 32 on 12×12: SVD layer, dense = 1 call, rank r = 2 calls
    P = batch * 12 * 12
    t = tab.layers["proj"]
    assert t.dense_ms == pytest.approx(1000 * (OVERHEAD + PER_MAC * P * 16 * 32))
    for r in (4, 7, 10, 15):  # between and beyond grid points: the factored cost is linear in r, so exact
        assert t.at((r,)) == pytest.approx(1000 * (2 * OVERHEAD + PER_MAC * P * r * (16 + 32)))
    assert t.at((2,)) == t.at((4,))  # below the lowest grid point: held at its time (conservative)
    # break-even: the largest r with 2·o + c·P·r·48 < o + c·P·512
    brute = max([r for r in range(1, 16) if 2 * OVERHEAD + PER_MAC * P * r * 48 < OVERHEAD + PER_MAC * P * 512], default=0)
    assert t.break_even(0) == brute
    assert 0 < brute < 15
    # a Tucker-2 layer: out mode alone (in at full) is 2 convs — rank r costs o·2 + c·P·(16·r·9 + r·16)
    t2 = tab.layers["conv2"]
    brute2 = max([r for r in range(1, 16) if 2 * OVERHEAD + PER_MAC * P * (16 * r * 9 + r * 16)
                  < OVERHEAD + PER_MAC * P * 16 * 16 * 9], default=0)
    assert t2.break_even(0) == brute2
    assert proj.name in tab.layers
    # the end-to-end time is the sum over all calls (the fake charges nothing else): the rest is ~0
    assert tab.rest_ms() == pytest.approx(0.0, abs=1e-9)


def test_fastest_structure_drops_factors_that_slow_a_layer_down(tiny, isolated_cache):
    net, a = tiny
    tab = latency.measure_latency_table(net, a, batch=4, timer=fake_timer, execution="eager")
    conv2 = a.layer("conv2")
    # rank 15 of 16 on both modes: three convs and barely fewer MACs — slower than dense
    assert tab.fastest_structure(conv2, (15, 15)) == (16, 16)
    # rank 2 on both modes: much faster factored
    assert tab.fastest_structure(conv2, (2, 2)) == (2, 2)
    plan = RankPlan.from_dict(json.loads(make_plan(a, "full").to_json()), a.layers).with_ranks({"conv2": (15, 15), "proj": (2,)})
    fast = speed_structure(plan, tab, a)
    assert fast["conv2"].ranks == (16, 16) and fast["proj"].ranks == (2,)
    assert tab.predict_ms(fast) <= tab.predict_ms(plan)


def test_table_is_cached_per_geometry(tiny, isolated_cache, monkeypatch):
    net, a = tiny
    calls = []

    def counting(fn, x):
        calls.append(1)
        return fake_timer(fn, x)

    monkeypatch.setattr(latency, "benchmark_timer", lambda *a_, **k: counting)
    t1 = latency.measure_latency_table(net, a, batch=2, total=False)
    n = len(calls)
    t2 = latency.measure_latency_table(net, a, batch=2, total=False)
    assert n > 0 and len(calls) == n  # the second table came from the disk cache
    assert t2.cached == len(a.layers)
    for name in t1.layers:
        np.testing.assert_allclose(t1.layers[name].ms, t2.layers[name].ms)


def test_latency_solver_meets_the_predicted_target(tiny, isolated_cache):
    net, a = tiny
    tab = latency.measure_latency_table(net, a, batch=4, timer=fake_timer, execution="eager")
    res = solve(a, None, ("latency", 1.5), latency=tab, keep_classifier=True)
    assert res.ratio >= 1.5
    assert tab.predicted_speedup(res.plan) == pytest.approx(res.ratio)
    # the fake timer on the real compressed model agrees with the table's prediction
    small = compress(net, res.plan)
    x = torch.zeros(4, 3, 12, 12)
    measured = fake_timer(net, x)[0] / fake_timer(small, x)[0]
    assert measured == pytest.approx(res.ratio, rel=1e-6)


def test_spectra_allocation_minimises_energy_loss_within_budget(tiny):
    net, a = tiny
    res = solve(a, None, ("macs", 2.0))
    assert plan_cost(a, res.plan).macs_ratio >= 2.0
    loss = 0.0
    for lp in res.plan.layers:
        sp = a.spectra[lp.name]
        for m, (r, f) in enumerate(zip(lp.ranks, lp.full_ranks)):
            if r < f:
                loss -= math.log(retained_energy(sp.values[sp.modes[m]], r))
    assert res.projected_loss == pytest.approx(loss)
    assert math.isnan(res.projected_top1)


def test_snap_rank_rounds_to_the_nearest_multiple():
    assert [snap_rank(r, 64, 8) for r in (1, 4, 5, 11, 12, 13, 60, 63, 64)] == [8, 8, 8, 8, 16, 16, 64, 64, 64]
    assert snap_rank(3, 16, 4) == 4 and snap_rank(14, 16, 4) == 16


@pytest.mark.parametrize("k", [4, 8, 16])
def test_snapping_respects_the_budget(k):
    from lrviz.models import load_model

    m = load_model("demo")
    a = analyze(m.module, m.input_size, "demo")
    plan = make_plan(a, "ratio:3")
    snapped = snap_plan(a, plan, k, "params", 3.0)
    assert plan_cost(a, snapped).params_ratio >= 3.0
    for lp in snapped.layers:
        for r, f in zip(lp.ranks, lp.full_ranks):
            assert r == f or r % k == 0
    # the solver's own snap
    target = 2.5 if k < 16 else 1.5  # at 16, the 16-channel layers have no candidate below full
    res = solve(a, None, ("macs", target), snap=k)
    assert res.macs_ratio >= target
    assert all(r == f or r % k == 0 for lp in res.plan.layers for r, f in zip(lp.ranks, lp.full_ranks))


@pytest.mark.parametrize("execution", ["fold", "channels_last"])
def test_folding_and_channels_last_keep_outputs(execution):
    from lrviz.models import load_model

    m = load_model("demo")  # trained weights: real BatchNorm statistics
    a = analyze(m.module, m.input_size, "demo")
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    x = torch.randn(8, *m.input_size, generator=torch.Generator().manual_seed(0))
    for net in (m.module, compress(m.module, make_plan(a, "vbmf"))):
        with torch.no_grad():
            ref = net.eval()(x)
            p = prepare(net, execution, x)
            out = p.module(x)
        assert "fold" in p.applied
        assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    for k, v in m.module.state_dict().items():  # the shared model is untouched
        assert torch.equal(v, before[k])


def test_folding_removes_every_batchnorm(tiny):
    net, _ = tiny
    folded = fold_batchnorm(net)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in net.modules())


def test_bench_schema_and_interleaving(tiny, isolated_cache):
    net, a = tiny
    plan = make_plan(a, "uniform:0.25")
    small = compress(net, plan)
    res = latency.bench(net, small, plan, a, batches=(1, 4), timer=fake_timer, execution="eager", rounds=2)
    assert [r.batch for r in res] == [1, 4]
    r = res[1]
    x = torch.zeros(4, 3, 12, 12)
    assert r.original_ms == pytest.approx(1000 * fake_timer(net, x)[0])
    assert r.speedup == pytest.approx(fake_timer(net, x)[0] / fake_timer(small, x)[0])
    assert r.macs_ratio == pytest.approx(count_macs(net, (3, 12, 12)) / count_macs(small, (3, 12, 12)))
    d = r.to_dict()
    for key in ("original_ms", "planned_ms", "speedup", "macs_ratio", "batch", "device", "threads", "layers"):
        assert key in d
    assert [row["name"] for row in d["layers"]] == [l.name for l in a.layers]
    assert set(d["layers"][0]) == {"name", "original_ms", "planned_ms"}


def test_cli_bench_json(tmp_path, isolated_cache, monkeypatch, capsys):
    monkeypatch.setattr(latency, "benchmark_timer", lambda *a_, **k: fake_timer)
    out = tmp_path / "b.json"
    assert main(["bench", "demo", "--plan", "vbmf", "--batch", "1", "--execution", "fold", "--rounds", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert isinstance(doc, dict)
    assert {"original_ms", "planned_ms", "speedup", "macs_ratio", "batch", "device", "threads", "layers"} <= set(doc)
    assert doc["batch"] == 1 and doc["device"] == "cpu" and doc["execution"] == "fold"
    assert all({"name", "original_ms", "planned_ms"} <= set(row) for row in doc["layers"]) and doc["layers"]
    assert "faster" in capsys.readouterr().out
    out2 = tmp_path / "b2.json"
    assert main(["bench", "demo", "--plan", "vbmf", "--batch", "1,2", "--execution", "eager", "--rounds", "1", "--no-layers",
                 "--json", str(out2)]) == 0
    docs = json.loads(out2.read_text())
    assert [d["batch"] for d in docs] == [1, 2] and docs[0]["layers"] == []


def test_cli_solve_latency_target(tmp_path, isolated_cache, monkeypatch, capsys):
    monkeypatch.setattr(latency, "benchmark_timer", lambda *a_, **k: fake_timer)
    out = tmp_path / "plan.json"
    assert main(["solve", "demo", "--target", "latency:1.5", "--batch", "8", "--execution", "eager", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "meets the 1.5x target" in text and "allocation by spectra" in text and "solved latency:1.5: " in text
    m = __import__("lrviz.models", fromlist=["load_model"]).load_model("demo")
    a = analyze(m.module, m.input_size, "demo")
    plan = RankPlan.load(out, a.layers)
    x = torch.zeros(8, *m.input_size)
    assert fake_timer(m.module, x)[0] / fake_timer(compress(m.module, plan), x)[0] >= 1.5


@pytest.mark.parametrize("argv", [
    ["bench", "demo", "--plan", "vbmf", "--device", "cuda"],
    ["bench", "demo", "--plan", "vbmf", "--batch", "0"],
    ["bench", "demo", "--plan", "vbmf", "--device", "tpu"],
    ["solve", "demo", "--target", "latency:0.5"],
])
def test_cli_speed_bad_input_is_one_line(argv, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrviz: error:")


def test_help_does_not_import_torch():
    code = "import sys, lrviz.cli; lrviz.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_calibrated_table_recovers_scale_and_rest(tiny, isolated_cache):
    net, a = tiny
    tab = latency.measure_latency_table(net, a, batch=4, timer=fake_timer, execution="eager")
    plan = make_plan(a, "uniform:0.25")
    dense, planned = tab._layers_ms(None), tab._layers_ms(plan)
    rest, s = 0.7, 0.4  # e.g. a compiled execution: layers run at 0.4x their table time, 0.7 ms elsewhere
    fit = tab.calibrated(rest + s * dense, plan, rest + s * planned)
    assert fit.scale == pytest.approx(s)
    assert fit.rest_ms() == pytest.approx(rest)
    assert fit.predict_ms(plan) == pytest.approx(rest + s * planned)
    assert fit.predict_ms(make_plan(a, "full")) == pytest.approx(rest + s * dense)
    # two measurements that cannot fix a positive scale: only the total moves
    bad = tab.calibrated(5.0, plan, 6.0)
    assert bad.scale == tab.scale and bad.total_ms == 5.0
    # the solver costs layers at the scaled time
    res = solve(a, None, ("latency", 1.3), latency=fit)
    assert fit.predicted_speedup(res.plan) >= 1.3


def test_cli_compress_speed_structure_keeps_slow_layers_dense(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setattr(latency, "benchmark_timer", lambda *a_, **k: fake_timer)
    out = tmp_path / "c"
    assert main(["compress", "demo", "--plan", "uniform:0.9", "--structure", "speed", "--speed-batch", "4", "--out", str(out)]) == 0
    doc = json.loads((out / "plan.json").read_text())
    m = __import__("lrviz.models", fromlist=["load_model"]).load_model("demo")
    a = analyze(m.module, m.input_size, "demo")
    plan = RankPlan.load(out / "plan.json", a.layers)
    # at 90 % of every rank, a factor saves few MACs and costs a call: under the fake timer every layer is
    # faster dense, so the speed structure keeps the whole network dense
    assert all(lp.is_dense for lp in plan.layers), doc
    assert any(not lp.is_dense for lp in make_plan(a, "uniform:0.9").layers)  # the size plan has factors
