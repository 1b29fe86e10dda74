"""The library behind the dashboard: model and data sources (lrviz.sources, lrviz.uploads), tables
(lrviz.tables), number formatting (lrviz.fmt), sample predictions (lrviz.samples), the accuracy
projection (lrviz.project), the figures (lrviz.figures) and the HTML report (lrviz.report)."""

import argparse
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch

import lrviz
from lrviz import figures, fmt, keys, project, samples, sources, tables, uploads
from lrviz.budget import strategy_plan
from lrviz.errors import LrvizError
from lrviz.sensitivity import model_fingerprint


def ranked(analysis, ranks):
    """The full-rank plan of ``analysis`` with some layers' ranks replaced (what the dashboard's sliders make)."""
    return lrviz.make_plan(analysis, "full").with_ranks(ranks)


@pytest.fixture(scope="module")
def demo():
    loaded, notes = sources.load_source(sources.builtin_source("demo"))
    analysis = lrviz.analyze(loaded.module, loaded.input_size, loaded.name)
    return loaded, analysis


# ---- uploads and sources ---------------------------------------------------------------------------


def test_store_upload_is_content_addressed_and_checks_type(tmp_path):
    p1, sha1 = uploads.store_upload(b"abc", "w.pt", sources.STATE_DICT_SUFFIXES, tmp_path)
    p2, sha2 = uploads.store_upload(b"abc", "other-name.pt", sources.STATE_DICT_SUFFIXES, tmp_path)
    assert p1 == p2 and sha1 == sha2 and p1.read_bytes() == b"abc" and p1.name == f"{sha1}.pt"
    with pytest.raises(LrvizError, match="wrong file type"):
        uploads.store_upload(b"abc", "w.txt", sources.STATE_DICT_SUFFIXES, tmp_path)
    with pytest.raises(LrvizError, match="empty"):
        uploads.store_upload(b"", "w.pt", sources.STATE_DICT_SUFFIXES, tmp_path)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, match",
    [
        (b"definitely not a checkpoint", "upload.pt"),
        (_saved({"obj": argparse.Namespace(x=1)}), "refused to unpickle"),
        (_saved({"foo.weight": torch.zeros(2)}), "missing"),
    ],
)
def test_bad_state_dicts_raise_lrviz_errors(tmp_path, data, match):
    src = sources.state_dict_source("demo", data, "upload.pt", tmp_path)
    with pytest.raises(LrvizError, match=match):
        sources.load_source(src)


def test_good_state_dict_upload_loads(tmp_path, demo):
    loaded, _ = demo
    src = sources.state_dict_source("demo", _saved(loaded.module.state_dict()), "demo.pt", tmp_path)
    other, notes = sources.load_source(src)
    assert other.module is not loaded.module
    assert model_fingerprint(other.module) == model_fingerprint(loaded.module)
    assert src.key.startswith("state_dict:demo:")


def test_bad_program_upload_raises(tmp_path):
    src = sources.program_source(b"PK\x03\x04garbage", "m.pt2", tmp_path)
    with pytest.raises(LrvizError):
        sources.load_source(src)


def test_program_upload_roundtrip(tmp_path, demo):
    from lrviz.export import save_program

    loaded, _ = demo
    path = save_program(loaded.module, loaded.input_size, tmp_path / "demo.pt2")
    src = sources.program_source(path.read_bytes(), "demo.pt2", tmp_path / "uploads")
    prog, _ = sources.load_source(src)
    assert not prog.decomposable and prog.num_classes == 10 and prog.input_size == (1, 28, 28)
    pa = sources.analyze_loaded(prog)
    full = lrviz.analyze(loaded.module, loaded.input_size)
    assert pa.layers == () and pa.skipped and pa.params == full.params and pa.macs == full.macs


def test_random_demo_weights_are_flagged(demo):
    loaded, _ = demo
    _, notes = sources.load_source(sources.builtin_source("demo"))
    if "random init" in loaded.source:
        assert any("random weights" in n for n in notes)
    else:
        assert not notes


# ---- data -------------------------------------------------------------------------------------------


def test_dataset_source_adapts_images_to_the_model():
    assert sources.dataset_source("fashion-mnist-sample", (1, 28, 28)).resize is None
    assert sources.dataset_source("fashion-mnist", (1, 32, 32)).resize == (32, 32)
    src = sources.dataset_source("imagefolder:/x", (1, 64, 64))
    assert src.resize == (64, 64) and src.grayscale


def test_eval_problem_explains_mismatches(demo):
    loaded, _ = demo
    ds = sources.load_dataset(sources.dataset_source("fashion-mnist-sample", loaded.input_size))
    assert sources.eval_problem(loaded, ds) is None
    other = sources.load_dataset(sources.DataSource("s", "synthetic:3,32,32,4,16", "syn"))
    assert "expects" in sources.eval_problem(loaded, other)


# ---- layout and formatting ---------------------------------------------------------------------------


def test_stages_and_labels(demo):
    _, a = demo
    groups = tables.group_by_stage(a.layers)
    assert list(groups) == ["conv1", "layer1", "layer2", "layer3", "fc"]
    assert sum(len(v) for v in groups.values()) == len(a.layers)
    assert tables.mode_labels("tucker2") == ("r_out", "r_in") and tables.mode_labels("svd_linear") == ("r",)
    assert fmt.human(272186) == "272 k" and fmt.human(31021952, "MACs") == "31 MMACs" and fmt.human(12) == "12"
    assert fmt.size_mb(1_000_000) == 4.0


def test_tables(demo):
    _, a = demo
    t = tables.spectra_table(a)
    assert len(t) == len(a.layers) and {"VBMF ranks", "σ²", "energy kept"} <= set(t.columns)
    assert len(tables.layer_table(a)) == len(a.layers)


# ---- plans ---------------------------------------------------------------------------------------------


def test_plan_from_ranks_and_key(demo):
    _, a = demo
    full = lrviz.make_plan(a, "full")
    plan = ranked(a, {"layer2.0.conv2": (4, 8)})
    assert plan["layer2.0.conv2"].ranks == (4, 8)
    assert keys.plan_key(plan) != keys.plan_key(full)
    assert keys.plan_key(plan) == keys.plan_key(ranked(a, {"layer2.0.conv2": (4, 8)}))
    assert lrviz.plan_cost(a, plan).params_planned < a.params


@pytest.mark.parametrize("family", ["energy", "uniform"])
@pytest.mark.parametrize("target", [2.0, 4.0])
def test_plan_at_ratio_matches_the_target(demo, family, target):
    _, a = demo
    plan = strategy_plan(a, family, "params", target)
    assert plan is not None
    assert abs(lrviz.plan_cost(a, plan).params_ratio / target - 1) <= 0.1


def test_plan_at_ratio_vbmf_reachable_or_none(demo):
    _, a = demo
    best = lrviz.plan_cost(a, lrviz.make_plan(a, "vbmf")).params_ratio
    plan = strategy_plan(a, "vbmf", "params", 1000.0)
    assert plan is None
    if best > 1.2:
        target = 1 + (best - 1) / 2
        plan = strategy_plan(a, "vbmf", "params", target)
        assert plan is not None and abs(lrviz.plan_cost(a, plan).params_ratio / target - 1) <= 0.1


def test_finetune_history_split():
    steps, epochs = tables.finetune_history(
        [{"event": "step", "epoch": 1, "step": 5, "steps": 10, "loss": 2.0},
         {"event": "epoch", "epoch": 1, "train_loss": 1.5, "val_top1": 0.5, "lr": 0.01, "seconds": 1.0}]
    )
    assert steps["x"].tolist() == [0.5] and epochs["val_top1"].tolist() == [0.5]


def test_predict_restores_flags_and_display_image(demo):
    loaded, _ = demo
    ds = sources.load_dataset(sources.dataset_source("fashion-mnist-sample", loaded.input_size))
    flags = [m.training for m in loaded.module.modules()]
    idx = samples.sample_indices(ds, 4)
    y, p, c = samples.predict(loaded.module, ds, idx)
    assert len(y) == len(p) == len(c) == 4 and all(0 <= v <= 1 for v in c)
    assert [m.training for m in loaded.module.modules()] == flags
    img = samples.display_image(ds[idx[0]][0])
    assert img.dtype == np.uint8 and img.shape == (28, 28)


# ---- projection -----------------------------------------------------------------------------------------


def test_projection_equals_base_at_full_rank(demo):
    _, a = demo
    r = project.project_accuracy(a, lrviz.make_plan(a, "full"), 0.91, 10)
    assert r.top1 == pytest.approx(0.91) and r.retained == 1.0 and r.basis == "energy proxy"


def test_projection_decreases_as_ranks_decrease(demo):
    _, a = demo
    values = []
    for frac in [1.0, 0.75, 0.5, 0.25, 0.1]:
        values.append(project.project_accuracy(a, lrviz.make_plan(a, f"uniform:{frac}"), 0.9, 10).top1)
    assert all(x >= y for x, y in zip(values, values[1:])) and values[0] > values[-1]
    assert values[-1] >= 0.1 - 1e-12  # never below chance
    # a single layer: lowering one rank never increases the projection
    name = "layer3.0.conv2"
    full = a.layer(name).full_ranks
    prev = math.inf
    for r in [full[0], 48, 32, 16, 8, 1]:
        v = project.project_accuracy(a, ranked(a, {name: (r, full[1])}), 0.9, 10).top1
        assert v <= prev + 1e-12
        prev = v


def test_projection_exponent_and_fit(demo):
    _, a = demo
    plan = lrviz.make_plan(a, "uniform:0.5")
    r1 = project.project_accuracy(a, plan, 0.9, 10, exponent=1.0)
    r2 = project.project_accuracy(a, plan, 0.9, 10, exponent=2.0)
    assert r2.top1 <= r1.top1
    # points generated with α = 0.7 are fitted back
    pts = [(q, 0.1 + 0.8 * q**0.7) for q in (0.9, 0.5, 0.2)]
    assert project.fit_exponent(pts, 0.9, 10) == pytest.approx(0.7, rel=1e-6)
    assert project.fit_exponent([(1.0, 0.9)], 0.9, 10) is None
    with pytest.raises(LrvizError):
        project.project_accuracy(a, plan, 1.5, 10)


def test_retention_curve(demo):
    _, a = demo
    c = project.retention_curve(a, [0.5, 0.9, 1.0])
    assert list(c.columns) == ["fraction", "params_ratio", "macs_ratio", "retained", "plan"] and len(c) == 3
    assert [p.spec for p in c["plan"]] == [f"energy:{f:g}" for f in c["fraction"]]
    c = project.curve_top1(c, 0.9, 10)
    assert c["top1"].between(0.1 - 1e-12, 0.9 + 1e-12).all()


# ---- figures and report -----------------------------------------------------------------------------------


def test_spectrum_figure_draws_the_layer_spectra(demo):
    _, a = demo
    name, ranks = "layer2.0.conv1", (5, 3)
    fig = figures.spectrum_figure(a, name, ranks)
    by_name = {t.name: t for t in fig.data}
    for mode, r in zip(("out", "in"), ranks):
        s = np.asarray(a.spectra[name].values[mode])
        sigma = by_name[f"σ {figures.MODE_NAMES[mode]}"]
        assert list(sigma.x) == list(range(1, len(s) + 1)) and np.allclose(sigma.y, s)  # the singular values themselves
        assert np.allclose(by_name[f"energy {figures.MODE_NAMES[mode]}"].y, lrviz.energy_curve(s))
        chosen = by_name[f"planned rank {mode} = {r} / {len(s)}"]
        assert list(chosen.x) == [r] and chosen.y[0] == pytest.approx(s[r - 1])
        vb = a.vbmf[name][mode]
        if vb.threshold > 0:
            assert list(by_name[f"VBMF threshold {mode} (VBMF rank {vb.rank} / {len(s)})"].y) == [vb.threshold, vb.threshold]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.title.text == "singular value (log)"
    assert fig.layout.yaxis2.title.text == "retained energy" and fig.layout.xaxis.title.text == "index (rank)"
    assert fig.layout.title.text.startswith(name)
    # a rank above the number of singular values (the stem: 16 output channels, 9 = 1·3·3 singular values)
    # is clipped to it, and the legend says it with the same words as the Spectra page: rank / full rank
    stem = figures.spectrum_figure(a, "conv1", (16, 1))
    n_out = figures.mode_full_rank(a, "conv1", "out")
    assert n_out == len(a.spectra["conv1"].values["out"]) == 9 and figures.planned_rank(a, "conv1", "out", 16) == 9
    (marker,) = [t for t in stem.data if t.name.startswith("planned rank out")]
    assert marker.name == "planned rank out = 9 / 9" and list(marker.x) == [9]


def test_heatmap_and_cost_bars_show_the_analysis(demo):
    _, a = demo
    heat = figures.spectra_heatmap(a).data[0]
    rows = [(l.name, mode) for l in a.layers for mode in a.spectra[l.name].modes]
    assert list(heat.y) == [f"{n} · {m}" for n, m in rows] and heat.z.shape[0] == len(rows)
    assert np.allclose(heat.z[:, 0], 1.0)  # normalised by the largest singular value
    first = np.asarray(a.spectra[rows[0][0]].values[rows[0][1]])
    k = min(len(first), heat.z.shape[1])
    assert np.allclose(heat.z[0, :k], first[:k] / first[0])
    cost = lrviz.plan_cost(a, lrviz.make_plan(a, "uniform:0.5"))
    for metric, unit in (("params", "params"), ("macs", "MACs")):
        fig = figures.layer_cost_figure(cost, metric)
        original, planned = fig.data
        assert list(original.x) == list(cost.table["name"]) == list(planned.x)
        assert list(original.y) == list(cost.table[metric]) and list(planned.y) == list(cost.table[f"{metric}_planned"])
        assert original.name == f"original {unit}" and fig.layout.yaxis.title.text == unit and fig.layout.barmode == "group"


def test_projection_figure_with_measured_points():
    measured = [{"params_ratio": 2.0, "top1": 0.5, "lo": 0.4, "hi": 0.6, "label": "x", "projected": 0.55}]
    fig = figures.projection_figure(None, {"params_ratio": 2.0, "top1": 0.5}, measured, 0.9, 0.1)
    assert [t.name for t in fig.data] == ["measured (95 % CI)", "projected before it was measured", "current plan (projected)"]
    m = fig.data[0]
    assert list(m.x) == [2.0] and list(m.y) == [0.5] and list(m.error_y.array) == pytest.approx([0.1])
    assert list(m.error_y.arrayminus) == pytest.approx([0.1]) and list(fig.data[1].y) == [0.55]
    assert [sh.y0 for sh in fig.layout.shapes] == [0.9, 0.1] and [n.text for n in fig.layout.annotations] == ["original", "chance"]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "params reduction (×)"
    assert fig.layout.yaxis.title.text == "top-1 accuracy"


def test_pareto_finetune_and_before_after_figures():
    configs = pd.DataFrame([{"name": "a", "params": 10, "flops": 5, "top1": 0.5, "lo": 0.4, "hi": 0.6},
                            {"name": "b", "params": 20, "flops": 9, "top1": 0.4, "lo": 0.3, "hi": 0.5}])
    assert list(figures.pareto_front(configs, "params")["name"]) == ["a"]  # b has more params and less accuracy
    pareto = figures.pareto_figure(configs, "flops")
    assert pareto.data[0].customdata.tolist() == ["a", "b"] and list(pareto.data[0].x) == [5, 9]
    assert pareto.data[1].name == "Pareto front" and list(pareto.data[1].x) == [5] and pareto.layout.xaxis.title.text == "FLOPs"
    steps, epochs = tables.finetune_history(
        [{"event": "step", "epoch": 1, "step": 5, "steps": 10, "loss": 2.0},
         {"event": "epoch", "epoch": 1, "train_loss": 1.5, "val_top1": 0.5, "lr": 0.01, "seconds": 1.0}])
    ft = figures.finetune_figure(steps, epochs)
    assert [t.name for t in ft.data] == ["train loss (step)", "train loss (epoch)", "val top-1"]
    assert list(ft.data[0].x) == [0.5] and list(ft.data[2].y) == [0.5] and ft.data[2].yaxis == "y2"
    assert len(figures.finetune_figure(*tables.finetune_history([])).data) == 0
    bars = figures.before_after_figure([{"metric": "size", "before": 2, "after": 1}, {"metric": "FLOPs", "before": 4, "after": 1}])
    assert list(bars.data[0].y) == [100.0, 100.0] and list(bars.data[1].y) == [50.0, 25.0] and list(bars.data[1].text) == ["50%", "25%"]


def test_percent_and_points_formatting():
    assert fmt.percent(0.9) == "90.0%" and fmt.percent(0.91234, 2) == "91.23%" and fmt.percent(None) == "–"
    assert fmt.percent(-0.023, signed=True) == "-2.3%" and fmt.percent(0.01, signed=True) == "+1.0%"
    assert fmt.percent_range(0.8, 0.9) == "80.0–90.0%" and fmt.points(-0.004) == "-0.4 points"
    assert fmt.points(0.012, signed=False) == "1.2 points" and fmt.points(0.012) == "+1.2 points"
    assert fmt.points(-0.0123, unit="pts") == "-1.2 pts"
    assert fmt.count(2000) == "2,000" and fmt.count(500) == "500" and fmt.count(1234567.0) == "1,234,567"
    assert fmt.seconds(25.9855) == "26 s" and fmt.seconds(3.456) == "3.5 s" and fmt.seconds(0.0123) == "12 ms"
    assert fmt.seconds(754) == "12 min 34 s" and fmt.seconds(9.96) == "10 s"


def test_report_is_self_contained(demo):
    from lrviz.report import build_report

    _, a = demo
    cost = lrviz.plan_cost(a, lrviz.make_plan(a, "uniform:0.5"))
    img = np.zeros((28, 28), dtype=np.uint8)
    html = build_report(
        "demo <report>", [{"label": "size", "value": "1 → 0.5 MB", "delta": "2×"}],
        figures=[("bars", figures.layer_cost_figure(cost)), ("heat", figures.spectra_heatmap(a))],
        tables=[("layers", cost.table)], images=[(img, "true: Bag")], notes=["FLOPs = 2 × MACs"],
    )
    assert html.startswith("<!DOCTYPE html>") and "demo &lt;report&gt;" in html
    assert html.count("<script src=") == 0  # nothing fetched from the network
    assert "data:image/png;base64," in html
    # plotly.js is embedded exactly once (the first figure), the second figure reuses it
    assert len(html) > 3_000_000 and html.count("Plotly.newPlot") >= 2


# ---- sensitivities: helpers and figures --------------------------------------------------------------------

SENS_LAYERS = ["layer2.0.conv2", "layer3.0.conv1"]


@pytest.fixture(scope="module")
def small_sens(demo, tmp_path_factory):
    """Real sensitivities of two demo layers on 60 images (a couple of seconds) and their projector."""
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity

    loaded, a = demo
    ds = sources.load_dataset(sources.dataset_source("fashion-mnist-sample", loaded.input_size))
    sens = measure_sensitivity(loaded.module, ds, limit=60, layers=SENS_LAYERS, anchors=(0.5,), cache_root=tmp_path_factory.mktemp("sens"))
    return sens, SensitivityProjector.from_sensitivities(sens)


def test_sensitivity_passes_and_summary(demo, small_sens):
    from lrviz.sensitivity import rank_grid

    _, a = demo
    sens, _ = small_sens
    expected = 1 + sum(len(rank_grid(f)) for l in a.layers for f in l.full_ranks) + 3
    assert tables.sensitivity_passes(a) == expected
    info = tables.sensitivity_summary(sens, len(a.layers))
    assert info["complete"] and info["layers"] == 2 and info["total"] == len(a.layers) and info["n"] == 60 and info["anchors"] == 1


def test_projection_curve_skips_uncovered_plans(demo, small_sens):
    _, a = demo
    sens, proj = small_sens
    plans = project.retention_curve(a, [0.8, 0.95, 1.0])
    assert list(plans["params_ratio"]) == sorted(plans["params_ratio"]) and len(plans) == 3
    curve = tables.projection_curve(plans, proj)
    assert list(curve.columns) == ["params_ratio", "top1", "lo", "hi"]
    assert len(curve) == 1 and curve["params_ratio"].iloc[0] == pytest.approx(1.0)  # energy plans truncate unmeasured layers
    covered = pd.DataFrame({"params_ratio": [2.0, 3.0],
                            "plan": [ranked(a, {"layer2.0.conv2": (8, 8)}), ranked(a, {"layer2.0.conv2": (2, 2)})]})
    curve = tables.projection_curve(covered, proj, base_top1=0.9)
    assert len(curve) == 2 and (curve["lo"] <= curve["top1"]).all() and (curve["top1"] <= curve["hi"]).all()


def test_calibration_points_reproject_measured_plans(demo, small_sens):
    _, a = demo
    sens, proj = small_sens
    p1 = ranked(a, {"layer2.0.conv2": (4, 4), "layer3.0.conv1": (8, 8)})
    p2 = ranked(a, {"layer1.0.conv1": (2, 2)})  # not covered: left out
    rows = [
        {"plan_key": keys.plan_key(p1), "label": "p1", "top1": 0.7, "lo": 0.6, "hi": 0.8, "n": 60, "projected_calib": 0.75},
        {"plan_key": keys.plan_key(p2), "label": "p2", "top1": 0.5, "lo": 0.4, "hi": 0.6, "n": 60},
        {"plan_key": keys.plan_key(p1), "label": "other n", "top1": 0.7, "lo": 0.6, "hi": 0.8, "n": 200},  # other images: left out
    ]
    pts = tables.calibration_points(rows, {keys.plan_key(p1): p1, keys.plan_key(p2): p2}, proj)
    assert list(pts.columns) == tables.CALIBRATION_COLUMNS
    quick = pts[pts["kind"] == "quick evaluation"]
    assert list(quick["label"]) == ["p1"] and quick["projected_then"].iloc[0] == 0.75
    assert quick["projected"].iloc[0] == pytest.approx(proj.project(p1).top1)
    anchors = pts[pts["kind"] == "anchor"]
    assert len(anchors) == 1 and anchors["lo"].iloc[0] <= anchors["top1"].iloc[0] <= anchors["hi"].iloc[0]
    assert len(tables.calibration_points(rows, {}, proj, anchors=False)) == 0


def test_calibration_figure_traces():
    pts = pd.DataFrame([
        {"kind": "quick evaluation", "label": "a", "plan_key": "k", "top1": 0.8, "lo": 0.7, "hi": 0.88, "n": 100, "projected": 0.82,
         "proj_lo": 0.75, "proj_hi": 0.9, "projected_then": 0.86},
        {"kind": "quick evaluation", "label": "b", "plan_key": "k2", "top1": 0.6, "lo": 0.5, "hi": 0.7, "n": 100, "projected": 0.55,
         "proj_lo": 0.45, "proj_hi": 0.65, "projected_then": math.nan},
        {"kind": "anchor", "label": "anchor", "plan_key": None, "top1": 0.9, "lo": 0.85, "hi": 0.95, "n": 100, "projected": 0.9,
         "proj_lo": 0.86, "proj_hi": 0.94, "projected_then": math.nan},
    ])
    pts["then_lo"] = [0.8, math.nan, math.nan]
    pts["then_hi"] = [0.92, math.nan, math.nan]
    fig = figures.calibration_figure(pts)
    names = [t.name for t in fig.data]
    assert names[0].startswith("y = x") and fig.data[0].x[0] == fig.data[0].y[0] and fig.data[0].x[1] == fig.data[0].y[1]
    # quick evaluations sit at what was projected *before* they were measured, with that band
    before = next(t for t in fig.data if t.name == "quick evaluations (projected before measuring)")
    assert list(before.x) == [0.86] and list(before.y) == [0.8] and before.marker.symbol == "circle"
    assert list(before.error_x.array) == pytest.approx([0.06]) and list(before.error_x.arrayminus) == pytest.approx([0.06])
    now = next(t for t in fig.data if "projected now" in t.name)  # today's (refitted, in-sample) projection: hollow
    assert list(now.x) == [0.82, 0.55] and now.marker.symbol == "circle-open" and "in-sample" in now.name
    assert any(t.name.startswith("anchors") for t in fig.data)
    assert fig.layout.xaxis.range[0] <= 0.45 and fig.layout.xaxis.range[1] >= 0.95
    empty = figures.calibration_figure(pd.DataFrame(columns=tables.CALIBRATION_COLUMNS))
    assert len(empty.data) == 1  # just the diagonal


def test_sweep_figure_measured_and_projected_per_strategy():
    rows = []
    for strat in ("solver", "uniform"):
        for t, top1 in ((2.0, 0.9), (4.0, 0.7)):
            rows.append({"strategy": strat, "label": f"L {strat}", "target": t, "metric": "macs", "params_ratio": t * 1.1, "macs_ratio": t,
                         "top1": top1, "lo": top1 - 0.05, "hi": top1 + 0.05, "projected": top1 + 0.01, "proj_lo": top1 - 0.1,
                         "proj_hi": top1 + 0.1})
    rows.append({"strategy": "vbmf", "label": "L vbmf", "target": 8.0, "metric": "macs", "params_ratio": math.nan, "macs_ratio": math.nan,
                 "top1": math.nan, "lo": math.nan, "hi": math.nan, "projected": math.nan, "proj_lo": math.nan, "proj_hi": math.nan})
    df = pd.DataFrame(rows)
    fig = figures.sweep_figure(df, 0.95)
    assert [t.name for t in fig.data] == ["L solver", "L solver (projected)", "L uniform", "L uniform (projected)"]
    assert list(fig.data[0].x) == [2.0, 4.0]  # x = the frame's metric (MACs ratio)
    assert fig.data[1].line.dash == "dot" and fig.data[1].marker.symbol == "circle-open" and list(fig.data[1].y) == [0.91, 0.71]
    assert fig.data[0].line.color == fig.data[1].line.color
    assert "MACs" in fig.layout.xaxis.title.text
    by_params = figures.sweep_figure(df, None, "params")
    assert list(by_params.data[0].x) == pytest.approx([2.2, 4.4]) and "params" in by_params.layout.xaxis.title.text
    # measured only (no projector): no projected traces
    only = figures.sweep_figure(df.assign(projected=math.nan))
    assert [t.name for t in only.data] == ["L solver", "L uniform"]


def test_projection_figure_band_and_interval():
    curve = pd.DataFrame({"params_ratio": [1.0, 2.0, 4.0], "top1": [0.9, 0.85, 0.6], "lo": [0.88, 0.8, 0.5], "hi": [0.92, 0.9, 0.7]})
    fig = figures.projection_figure(curve, {"params_ratio": 2.0, "top1": 0.85, "lo": 0.8, "hi": 0.9}, [], 0.9, 0.1, curve_name="sens")
    assert fig.data[0].fill == "toself" and len(fig.data[0].x) == 6
    assert fig.data[1].name == "sens"
    star = fig.data[-1]
    assert star.marker.symbol == "star" and list(star.error_y.array) == pytest.approx([0.05])
    plain = figures.projection_figure(curve[["params_ratio", "top1"]], {"params_ratio": 2.0, "top1": 0.85}, [], None, None)
    assert plain.data[0].fill is None and plain.data[-1].error_y.array is None


def test_sensitivity_figure_one_trace_per_mode(small_sens):
    sens, _ = small_sens
    t = sens.table()
    fig = figures.sensitivity_figure(t)
    assert len(fig.data) == len(sens.curves) and all(0 < x <= 1 for tr in fig.data for x in tr.x)
    assert len(figures.sensitivity_figure(t.iloc[0:0]).data) == 0
