"""Pure helpers of the dashboard (lrviz.dashboard), the accuracy projection (lrviz.project) and the
HTML report (lrviz.report)."""

import argparse
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch

import lrviz
from lrviz import dashboard as dsh
from lrviz import project
from lrviz.errors import LrvizError


@pytest.fixture(scope="module")
def demo():
    loaded, notes = dsh.load_source(dsh.builtin_source("demo"))
    analysis = lrviz.analyze(loaded.module, loaded.input_size, loaded.name)
    return loaded, analysis


# ---- uploads and sources ---------------------------------------------------------------------------


def test_store_upload_is_content_addressed_and_checks_type(tmp_path):
    p1, sha1 = dsh.store_upload(b"abc", "w.pt", dsh.STATE_DICT_SUFFIXES, tmp_path)
    p2, sha2 = dsh.store_upload(b"abc", "other-name.pt", dsh.STATE_DICT_SUFFIXES, tmp_path)
    assert p1 == p2 and sha1 == sha2 and p1.read_bytes() == b"abc" and p1.name == f"{sha1}.pt"
    with pytest.raises(LrvizError, match="wrong file type"):
        dsh.store_upload(b"abc", "w.txt", dsh.STATE_DICT_SUFFIXES, tmp_path)
    with pytest.raises(LrvizError, match="empty"):
        dsh.store_upload(b"", "w.pt", dsh.STATE_DICT_SUFFIXES, tmp_path)


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
    src = dsh.state_dict_source("demo", data, "upload.pt", tmp_path)
    with pytest.raises(LrvizError, match=match):
        dsh.load_source(src)


def test_good_state_dict_upload_loads(tmp_path, demo):
    loaded, _ = demo
    src = dsh.state_dict_source("demo", _saved(loaded.module.state_dict()), "demo.pt", tmp_path)
    other, notes = dsh.load_source(src)
    assert other.module is not loaded.module
    assert dsh.state_fingerprint(other.module) == dsh.state_fingerprint(loaded.module)
    assert src.key.startswith("state_dict:demo:")


def test_bad_program_upload_raises(tmp_path):
    src = dsh.program_source(b"PK\x03\x04garbage", "m.pt2", tmp_path)
    with pytest.raises(LrvizError):
        dsh.load_source(src)


def test_program_upload_roundtrip(tmp_path, demo):
    from lrviz.export import save_program

    loaded, _ = demo
    path = save_program(loaded.module, loaded.input_size, tmp_path / "demo.pt2")
    src = dsh.program_source(path.read_bytes(), "demo.pt2", tmp_path / "uploads")
    prog, _ = dsh.load_source(src)
    assert not prog.decomposable and prog.num_classes == 10 and prog.input_size == (1, 28, 28)
    pa = dsh.analyze_loaded(prog)
    full = lrviz.analyze(loaded.module, loaded.input_size)
    assert pa.layers == () and pa.skipped and pa.params == full.params and pa.macs == full.macs


def test_random_demo_weights_are_flagged(demo):
    loaded, _ = demo
    _, notes = dsh.load_source(dsh.builtin_source("demo"))
    if "random init" in loaded.source:
        assert any("random weights" in n for n in notes)
    else:
        assert not notes


# ---- data -------------------------------------------------------------------------------------------


def test_dataset_source_adapts_images_to_the_model():
    assert dsh.dataset_source("fashion-mnist-sample", (1, 28, 28)).resize is None
    assert dsh.dataset_source("fashion-mnist", (1, 32, 32)).resize == (32, 32)
    src = dsh.dataset_source("imagefolder:/x", (1, 64, 64))
    assert src.resize == (64, 64) and src.grayscale
    assert dsh.train_dataset_name("fashion-mnist-sample") == "fashion-mnist"


def test_eval_problem_explains_mismatches(demo):
    loaded, _ = demo
    ds = dsh.load_dataset(dsh.dataset_source("fashion-mnist-sample", loaded.input_size))
    assert dsh.eval_problem(loaded, ds) is None
    other = dsh.load_dataset(dsh.DataSource("s", "synthetic:3,32,32,4,16", "syn"))
    assert "expects" in dsh.eval_problem(loaded, other)


def test_split_sample_is_disjoint(demo):
    loaded, _ = demo
    ds = dsh.load_dataset(dsh.dataset_source("fashion-mnist-sample", loaded.input_size))
    tr, va = dsh.split_sample(ds)
    assert len(tr) + len(va) == len(ds) and not set(tr.indices) & set(va.indices)
    assert tr.num_classes == 10


# ---- layout and formatting ---------------------------------------------------------------------------


def test_stages_and_labels(demo):
    _, a = demo
    groups = dsh.group_by_stage(a.layers)
    assert list(groups) == ["conv1", "layer1", "layer2", "layer3", "fc"]
    assert sum(len(v) for v in groups.values()) == len(a.layers)
    assert dsh.mode_labels("tucker2") == ("r_out", "r_in") and dsh.mode_labels("svd_linear") == ("r",)
    assert dsh.human(272186) == "272 k" and dsh.human(31021952, "MACs") == "31 MMACs" and dsh.human(12) == "12"
    assert dsh.size_mb(1_000_000) == 4.0


def test_tables(demo):
    _, a = demo
    t = dsh.spectra_table(a)
    assert len(t) == len(a.layers) and {"VBMF ranks", "σ²", "energy kept"} <= set(t.columns)
    assert len(dsh.layer_table(a)) == len(a.layers)


# ---- plans ---------------------------------------------------------------------------------------------


def test_plan_from_ranks_and_key(demo):
    _, a = demo
    full = dsh.full_plan(a)
    plan = dsh.plan_from_ranks(a, {"layer2.0.conv2": (4, 8)})
    assert plan["layer2.0.conv2"].ranks == (4, 8)
    assert dsh.plan_key(plan) != dsh.plan_key(full)
    assert dsh.plan_key(plan) == dsh.plan_key(dsh.plan_from_ranks(a, {"layer2.0.conv2": (4, 8)}))
    assert lrviz.plan_cost(a, plan).params_planned < a.params


@pytest.mark.parametrize("family", ["energy", "uniform"])
@pytest.mark.parametrize("target", [2.0, 4.0])
def test_plan_at_ratio_matches_the_target(demo, family, target):
    _, a = demo
    plan = dsh.plan_at_ratio(a, family, target)
    assert plan is not None
    assert abs(lrviz.plan_cost(a, plan).params_ratio / target - 1) <= 0.1


def test_plan_at_ratio_vbmf_reachable_or_none(demo):
    _, a = demo
    best = lrviz.plan_cost(a, lrviz.make_plan(a, "vbmf")).params_ratio
    plan = dsh.plan_at_ratio(a, "vbmf", 1000.0)
    assert plan is None
    if best > 1.2:
        target = 1 + (best - 1) / 2
        plan = dsh.plan_at_ratio(a, "vbmf", target)
        assert plan is not None and abs(lrviz.plan_cost(a, plan).params_ratio / target - 1) <= 0.1


def test_ratio_sweep_small(demo):
    loaded, a = demo
    ds = dsh.load_dataset(dsh.dataset_source("fashion-mnist-sample", loaded.input_size))
    cache = lrviz.FactorCache(loaded.module)
    before = dsh.state_fingerprint(loaded.module)
    seen = []
    df = dsh.ratio_sweep(a, loaded.module, cache, ds, ratios=[2.0], families=["energy", "uniform"], limit=64,
                         progress=lambda d, t, w: seen.append((d, t)))
    assert list(df["family"]) == ["energy", "uniform"] and df["top1"].between(0, 1).all() and (df["n"] == 64).all()
    assert seen[-1] == (2, 2)
    assert dsh.state_fingerprint(loaded.module) == before


def test_result_store_is_bounded():
    s = dsh.ResultStore(max_items=2)
    for i in range(3):
        s.put(i, i)
    assert 0 not in s and s.get(2) == 2 and len(s) == 2


def test_background_job_reports_errors():
    def boom(progress, should_stop):
        raise LrvizError("bad plan")

    job = dsh.BackgroundJob(boom).start()
    assert job.wait(5) and job.error == "bad plan" and job.result is None


def test_finetune_history_split():
    steps, epochs = dsh.finetune_history(
        [{"event": "step", "epoch": 1, "step": 5, "steps": 10, "loss": 2.0},
         {"event": "epoch", "epoch": 1, "train_loss": 1.5, "val_top1": 0.5, "lr": 0.01, "seconds": 1.0}]
    )
    assert steps["x"].tolist() == [0.5] and epochs["val_top1"].tolist() == [0.5]


def test_predict_restores_flags_and_display_image(demo):
    loaded, _ = demo
    ds = dsh.load_dataset(dsh.dataset_source("fashion-mnist-sample", loaded.input_size))
    flags = [m.training for m in loaded.module.modules()]
    idx = dsh.sample_indices(ds, 4)
    y, p, c = dsh.predict(loaded.module, ds, idx)
    assert len(y) == len(p) == len(c) == 4 and all(0 <= v <= 1 for v in c)
    assert [m.training for m in loaded.module.modules()] == flags
    img = dsh.display_image(ds[idx[0]][0])
    assert img.dtype == np.uint8 and img.shape == (28, 28)


# ---- projection -----------------------------------------------------------------------------------------


def test_projection_equals_base_at_full_rank(demo):
    _, a = demo
    r = project.project_accuracy(a, dsh.full_plan(a), 0.91, 10)
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
        v = project.project_accuracy(a, dsh.plan_from_ranks(a, {name: (r, full[1])}), 0.9, 10).top1
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
    assert list(c.columns) == ["fraction", "params_ratio", "retained"] and len(c) == 3
    c = project.curve_top1(c, 0.9, 10)
    assert c["top1"].between(0.1 - 1e-12, 0.9 + 1e-12).all()


# ---- figures and report -----------------------------------------------------------------------------------


def test_figures_build(demo):
    _, a = demo
    plan = lrviz.make_plan(a, "uniform:0.5")
    cost = lrviz.plan_cost(a, plan)
    fig = dsh.spectrum_figure(a, "layer2.0.conv1", plan["layer2.0.conv1"].ranks)
    assert fig.layout.yaxis.type == "log" and len(fig.data) >= 6
    dsh.spectrum_figure(a, "conv1", (16, 1))  # rank above the number of singular values
    assert dsh.spectra_heatmap(a).data[0].z.shape[0] == sum(len(s.modes) for s in a.spectra.values())
    assert len(dsh.layer_cost_figure(cost).data) == 2
    measured = [{"params_ratio": 2.0, "top1": 0.5, "lo": 0.4, "hi": 0.6, "label": "x", "projected": 0.55}]
    assert dsh.projection_figure(None, {"params_ratio": 2.0, "top1": 0.5}, measured, 0.9, 0.1).data
    configs = pd.DataFrame([{"name": "a", "params": 10, "flops": 5, "top1": 0.5, "lo": 0.4, "hi": 0.6},
                            {"name": "b", "params": 20, "flops": 9, "top1": 0.4, "lo": 0.3, "hi": 0.5}])
    assert list(dsh.pareto_front(configs, "params")["name"]) == ["a"]
    assert dsh.pareto_figure(configs, "flops").data[0].customdata.tolist() == ["a", "b"]
    sweep = pd.DataFrame([{"family": "energy", "params_ratio": 2.0, "top1": 0.5, "lo": 0.4, "hi": 0.6}])
    assert dsh.sweep_figure(sweep, 0.9).data
    assert dsh.finetune_figure(*dsh.finetune_history([])) is not None
    assert dsh.before_after_figure([{"metric": "size", "before": 2, "after": 1}]).data[1].y[0] == 50.0


def test_report_is_self_contained(demo):
    from lrviz.report import build_report

    _, a = demo
    cost = lrviz.plan_cost(a, lrviz.make_plan(a, "uniform:0.5"))
    img = np.zeros((28, 28), dtype=np.uint8)
    html = build_report(
        "demo <report>", [{"label": "size", "value": "1 → 0.5 MB", "delta": "2×"}],
        figures=[("bars", dsh.layer_cost_figure(cost)), ("heat", dsh.spectra_heatmap(a))],
        tables=[("layers", cost.table)], images=[(img, "true: Bag")], notes=["FLOPs = 2 × MACs"],
    )
    assert html.startswith("<!DOCTYPE html>") and "demo &lt;report&gt;" in html
    assert html.count("<script src=") == 0  # nothing fetched from the network
    assert "data:image/png;base64," in html
    # plotly.js is embedded exactly once (the first figure), the second figure reuses it
    assert len(html) > 3_000_000 and html.count("Plotly.newPlot") >= 2
