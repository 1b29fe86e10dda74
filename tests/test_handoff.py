"""Export directories: pt2 / ONNX / state_dict with parity, and an export directory used as a MODEL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lrviz.analysis import analyze
from lrviz.cli import main
from lrviz.decompose import compress
from lrviz.handoff import PARITY_RTOL, load_export_dir
from lrviz.models import load_model
from lrviz.plan import RankPlan

ort = pytest.importorskip("onnxruntime")

R18 = ["resnet18", "--input-size", "3,32,32", "--num-classes", "10"]


def _planned(model_args, plan_path):
    m = load_model(model_args[0], input_size=(3, 32, 32) if len(model_args) > 1 else None,
                   num_classes=10 if len(model_args) > 1 else None)
    a = analyze(m.module, m.input_size, m.name, spectra=False)
    return compress(m.module, RankPlan.load(plan_path, a.layers)).eval(), m.input_size


@pytest.mark.parametrize("model_args,plan", [(["demo"], "vbmf"), (R18, "uniform:0.5")], ids=["demo", "resnet18"])
def test_onnx_export_matches_pytorch_at_another_batch(tmp_path, model_args, plan, capsys):
    out = tmp_path / "x"
    assert main(["export", *model_args, "--plan", plan, "--format", "onnx", "--out", str(out)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    doc = json.loads((out / "plan.json").read_text())
    assert doc["parity"]["max_abs_diff"] <= PARITY_RTOL * doc["parity"]["output_scale"]
    assert doc["parity"]["opset"] == 18 and doc["format"] == "onnx"
    # independently: a batch size the export never saw (dynamic batch), against the planned PyTorch model
    net, size = _planned(model_args, out / "plan.json")
    x = torch.randn(5, *size, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(got - ref).max() <= PARITY_RTOL * np.abs(ref).max()


@pytest.mark.parametrize("model_args,plan", [(["demo"], "ratio:3"), (R18, "uniform:0.5")], ids=["demo", "resnet18"])
def test_pt2_export_records_parity_and_runs_at_another_batch(tmp_path, model_args, plan):
    from lrviz.models import load_model as load

    out = tmp_path / "p"
    assert main(["export", *model_args, "--plan", plan, "--format", "pt2", "--out", str(out)]) == 0
    doc = json.loads((out / "plan.json").read_text())
    assert (out / "model.pt2").is_file() and doc["parity"]["max_abs_diff"] <= PARITY_RTOL * doc["parity"]["output_scale"]
    # independently: the file opened through lrviz's checked .pt2 loader, at a batch size the export never saw
    prog = load(str(out / "model.pt2"))
    net, size = _planned(model_args, out / "plan.json")
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, ref = prog.runnable(x), net(x)
    assert float((got - ref).abs().max()) <= PARITY_RTOL * float(ref.abs().max())


def test_state_dict_round_trip_evaluates_exactly_like_the_plan(tmp_path):
    out = tmp_path / "s"
    assert main(["export", "demo", "--plan", "vbmf", "--format", "state_dict", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "state_dict.pt"]
    a_json, b_json = tmp_path / "a.json", tmp_path / "b.json"
    data = ["--data", "fashion-mnist-sample", "--limit", "200"]
    assert main(["evaluate", str(out), *data, "--json", str(a_json)]) == 0
    assert main(["evaluate", "demo", "--plan", str(out / "plan.json"), *data, "--json", str(b_json)]) == 0
    assert json.loads(a_json.read_text()) == json.loads(b_json.read_text())
    # the rebuilt module has exactly the exported tensors
    net, arch, plan = load_export_dir(out)
    state = torch.load(out / "state_dict.pt", weights_only=True)
    assert arch["spec"] == "demo" and set(net.state_dict()) == set(state)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_export_dir_is_a_model_for_analyze_and_bench(tmp_path, monkeypatch):
    import lrviz.latency as latency

    out = tmp_path / "s"
    assert main(["export", "demo", "--plan", "uniform:0.5", "--format", "state_dict", "--out", str(out)]) == 0
    assert main(["analyze", str(out), "--json", str(tmp_path / "an.json")]) == 0
    assert json.loads((tmp_path / "an.json").read_text())["layers"]
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(latency, "benchmark_timer", lambda *a, **k: (lambda fn, x: [1e-3]))
    assert main(["bench", str(out), "--plan", "full", "--batch", "1", "--execution", "eager", "--no-layers", "--rounds", "1"]) == 0


@pytest.mark.parametrize("damage", ["corrupt", "plain-plan", "no-state"])
def test_broken_export_dir_is_one_line(tmp_path, capsys, damage):
    out = tmp_path / "s"
    assert main(["export", "demo", "--plan", "vbmf", "--format", "state_dict", "--out", str(out)]) == 0
    capsys.readouterr()
    if damage == "corrupt":
        (out / "state_dict.pt").write_bytes(b"not a zip at all")
    elif damage == "plain-plan":
        doc = json.loads((out / "plan.json").read_text())
        del doc["architecture"]
        (out / "plan.json").write_text(json.dumps(doc))
    else:
        (out / "state_dict.pt").unlink()
    assert main(["evaluate", str(out), "--data", "fashion-mnist-sample", "--limit", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrviz: error:"), err


def test_export_refuses_a_non_empty_folder_and_bad_format(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", "demo", "--plan", "vbmf", "--format", "onnx", "--out", str(out)]) == 2
    assert main(["export", "demo", "--plan", "vbmf", "--format", "tflite", "--out", str(tmp_path / "n")]) == 2
    assert (out / "mine.txt").read_text() == "keep" and not (tmp_path / "n").exists()
