"""The command line end to end on a small model (in-process, plus one real subprocess)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lrviz.cli import main

MODEL = ["helpers:tiny_net", "--input-size", "3,16,16"]
DATA = "synthetic:3,16,16,10,96"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_json_schema(tmp_path, capsys):
    out_json = tmp_path / "a.json"
    rc, out, _ = run(capsys, "analyze", *MODEL, "--json", str(out_json))
    assert rc == 0 and "units: MACs" in out and "total:" in out
    doc = json.loads(out_json.read_text())
    assert set(doc) >= {"model", "input_size", "units", "layers", "skipped", "totals"}
    assert doc["units"] == "MACs" and doc["input_size"] == [3, 16, 16]
    by = {l["name"]: l for l in doc["layers"]}
    conv = by["3"]
    assert set(conv) >= {"name", "kind", "weight_shape", "in_hw", "out_hw", "singular_values", "vbmf_ranks", "vbmf_sigma2", "params", "macs"}
    assert conv["kind"] == "tucker2" and conv["in_hw"] == [16, 16] and conv["out_hw"] == [8, 8]
    assert set(conv["singular_values"]) == {"out", "in"} and len(conv["vbmf_ranks"]) == 2
    assert len(conv["singular_values"]["out"]) == 32 and len(conv["singular_values"]["in"]) == 16
    assert conv["macs"] == 8 * 8 * 32 * 16 * 9
    assert set(by["11"]["singular_values"]) == {"matrix"} and len(by["11"]["vbmf_ranks"]) == 1
    total = sum(p.numel() for p in __import__("helpers").tiny_net().parameters())
    assert doc["totals"]["params"] == total


def test_compress_writes_program_plan_metrics(tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, _ = run(capsys, "compress", *MODEL, "--plan", "uniform:0.5", "--out", str(out), "--data", DATA)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    p, m, acc = metrics["params"], metrics["macs"], metrics["accuracy"]
    assert (f"plan uniform:0.5: params {p['original']:,} -> {p['compressed']:,} ({p['original'] / p['compressed']:.2f}x), "
            f"MACs {m['original']:,} -> {m['compressed']:,} ({m['original'] / m['compressed']:.2f}x)") in stdout
    assert f"top-1 original {acc['original']['top1']:.2%}, compressed {acc['compressed']['top1']:.2%} (n=96)" in stdout
    assert f"wrote {out / 'model.pt2'}, {out / 'plan.json'}, {out / 'metrics.json'}" in stdout
    assert sorted(f.name for f in out.iterdir()) == ["metrics.json", "model.pt2", "plan.json", "state_dict.pt"]
    assert metrics["params"]["compressed"] < metrics["params"]["original"]
    assert metrics["macs"]["compressed"] < metrics["macs"]["original"]
    assert set(metrics["accuracy"]) == {"original", "compressed"}
    assert set(metrics["accuracy"]["compressed"]) == {"top1", "top1_ci", "top5", "loss", "n"}
    plan = json.loads((out / "plan.json").read_text())
    assert plan["schema"] == "lrviz.plan/1" and plan["spec"] == "uniform:0.5"
    prog = torch.export.load(str(out / "model.pt2"))
    m = prog.module()
    for b in (1, 5):  # dynamic batch dimension
        assert m(torch.randn(b, 3, 16, 16)).shape == (b, 10)
    from lrviz.export import program_params

    assert program_params(prog) == metrics["params"]["compressed"]
    # the exported file evaluates and costs through the CLI too
    rc, stdout, _ = run(capsys, "evaluate", str(out / "model.pt2"), "--data", DATA, "--json", str(tmp_path / "e.json"))
    assert rc == 0
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["top1"] == pytest.approx(metrics["accuracy"]["compressed"]["top1"])
    assert f"model on {DATA} (n=96): top-1 {e['top1']:.2%}" in stdout
    rc, stdout, _ = run(capsys, "analyze", str(out / "model.pt2"))
    assert rc == 0 and f"{metrics['params']['compressed']:,} params" in stdout


def test_evaluate_json_and_plan(tmp_path, capsys):
    rc, out, _ = run(capsys, "evaluate", *MODEL, "--data", DATA, "--limit", "50", "--json", str(tmp_path / "e.json"))
    assert rc == 0 and "95% CI" in out
    e = json.loads((tmp_path / "e.json").read_text())
    assert set(e) == {"top1", "top1_ci", "top5", "loss", "n"} and e["n"] == 50
    lo, hi = e["top1_ci"]
    assert lo <= e["top1"] <= hi
    assert (f"helpers:tiny_net on {DATA} (n=50): top-1 {e['top1']:.2%} [95% CI {lo:.2%}, {hi:.2%}], "
            f"top-5 {e['top5']:.2%}, loss {e['loss']:.4f}") in out
    rc, out, _ = run(capsys, "evaluate", *MODEL, "--plan", "full", "--data", DATA, "--limit", "50", "--json", str(tmp_path / "f.json"))
    assert rc == 0 and f"helpers:tiny_net + plan full on {DATA} (n=50): top-1 {e['top1']:.2%}" in out
    assert json.loads((tmp_path / "f.json").read_text())["top1"] == pytest.approx(e["top1"])


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["analyze", "resnt18"], "did you mean resnet18"),
        (["compress", *MODEL, "--plan", "tuker", "--out", "x"], "unknown plan spec 'tuker'"),
        (["compress", *MODEL, "--plan", "ratio:500", "--out", "x"], "cannot reach a 500x"),
        (["evaluate", *MODEL, "--data", "nope"], "nope"),
        (["analyze", "resnet18", "--weights", "missing.pt"], "missing.pt"),
        (["compress", *MODEL, "--plan", "vbmf", "--out", "x", "--finetune", "1"], "--finetune needs --data"),
        (["compress", *MODEL, "--plan", "vbmf", "--out", "x", "--data", DATA, "--train-data", DATA], "--train-data is the data to fine-tune on"),
        (["compress", *MODEL, "--plan", "vbmf", "--out", "x", "--data", DATA, "--finetune", "1", "--train-data", "fashion-mnist-sample"],
         "test-set sample only"),
        (["analyze", *MODEL[:1], "--input-size", "3,16"], "3,16"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert msg in err and "Traceback" not in err
    lines = err.strip().splitlines()  # progress lines may precede the error
    assert lines[-1].startswith("lrviz: error:") and msg in lines[-1]
    assert sum(l.startswith("lrviz: error") for l in lines) == 1


def test_compressing_a_program_is_refused(tmp_path, capsys):
    rc, _, _ = run(capsys, "compress", *MODEL, "--plan", "full", "--out", str(tmp_path / "o"))
    assert rc == 0 and (tmp_path / "o" / "model.pt2").is_file()
    rc, _, err = run(capsys, "compress", str(tmp_path / "o" / "model.pt2"), "--plan", "vbmf", "--out", str(tmp_path / "p"))
    assert rc == 2 and "no modules to decompose" in err


def test_real_subprocess_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), env_path()]))
    p = subprocess.run([sys.executable, "-m", "lrviz.cli", "analyze", "not_a_model"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "unknown model 'not_a_model'" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "lrviz.cli", "analyze", "helpers:tiny_net", "--input-size", "3,16,16"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and "total:" in p.stdout


def env_path():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_analyze_refuses_exported_program(tmp_path):
    import torch

    import lrviz
    from lrviz.errors import LrvizError
    from helpers import tiny_net

    ep = torch.export.export(tiny_net().eval(), (torch.zeros(2, 3, 16, 16),))
    with pytest.raises(LrvizError, match="exported program"):
        lrviz.analyze(ep, (3, 16, 16))
    with pytest.raises(LrvizError, match="exported program"):
        lrviz.analyze(ep.module(), (3, 16, 16))


def test_sensitivity_project_solve_sweep(tmp_path, capsys):
    data = ["--data", "synthetic:3,16,16,10,64", "--limit", "64"]
    sj = tmp_path / "s.json"
    rc, out, err = run(capsys, "sensitivity", *MODEL, *data, "--json", str(sj))
    assert rc == 0 and "original top-1" in out and "[sensitivity] 5/5" in err
    doc = json.loads(sj.read_text())
    assert doc["schema"] == "lrviz.sensitivity/1" and doc["n"] == 64 and set(doc["layers"]["3"]) == {"out", "in"}
    assert [a["fraction"] for a in doc["anchors"]] == [0.75, 0.55, 0.4]
    rc, out, err = run(capsys, "sensitivity", *MODEL, *data)
    assert rc == 0 and "from the cache" in err
    rc, out, err = run(capsys, "sensitivity", *MODEL, *data, "--grid-points", "4", "--json", str(sj))
    assert rc == 0 and "measured in" in err  # another grid: another cache entry
    assert json.loads(sj.read_text())["layers"]["3"]["out"]["ranks"] == [1, 2, 3, 8, 16, 24, 32]
    pj = tmp_path / "p.json"
    rc, out, _ = run(capsys, "project", *MODEL, *data, "--plan", "uniform:0.5", "--json", str(pj))
    assert rc == 0 and "projected top-1" in out
    proj = json.loads(pj.read_text())
    assert set(proj) >= {"projected_top1", "interval", "params", "macs", "basis"} and proj["basis"] == "sensitivities"
    assert proj["interval"][0] <= proj["projected_top1"] <= proj["interval"][1]
    lo, hi = proj["interval"]
    assert f"projected top-1 {proj['projected_top1']:.2%} [{lo:.2%}, {hi:.2%}]" in out
    assert f"{proj['params_ratio']:.2f}x fewer params ({proj['params']:,})" in out
    rc, out, _ = run(capsys, "project", *MODEL, *data, "--plan", "uniform:0.5", "--basis", "proxy", "--json", str(pj))
    assert rc == 0 and json.loads(pj.read_text())["basis"] == "proxy" and "basis: proxy" in out
    plan_json = tmp_path / "plan.json"
    rc, out, _ = run(capsys, "solve", *MODEL, *data, "--target", "params:2", "--out", str(plan_json))
    assert rc == 0 and "solved params:2" in out and json.loads(plan_json.read_text())["schema"] == "lrviz.plan/1"
    solved = float(out.split("solved params:2: ")[1].split("x fewer params")[0])
    assert solved >= 2  # the solver meets its target
    rc, out, _ = run(capsys, "evaluate", *MODEL, *data, "--plan", str(plan_json))
    assert rc == 0 and f"helpers:tiny_net + plan {plan_json} on synthetic:3,16,16,10,64 (n=64): top-1 " in out
    sw = tmp_path / "sw.json"
    rc, out, _ = run(capsys, "sweep", *MODEL, *data, "--targets", "1.5,2", "--metric", "macs", "--json", str(sw))
    assert rc == 0
    rows = json.loads(sw.read_text())["rows"]
    assert len(rows) == 6 and {r["strategy"] for r in rows} == {"solver", "uniform", "vbmf"}
    assert out.splitlines()[0].split() == ["strategy", "target", "params_ratio", "macs_ratio", "projected", "top1"]
    assert len(out.strip().splitlines()) == 1 + len(rows)
    for r in rows:
        if r["strategy"] == "solver":
            assert r["macs_ratio"] >= r["target"] and 0 <= r["top1"] <= 1
    rc, _, err = run(capsys, "solve", *MODEL, *data, "--target", "flops:lots")
    assert rc == 2 and "target" in err


def test_models_lists_builtin_and_torchvision(capsys):
    rc, out, _ = run(capsys, "models")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "builtin:" and any(l.split()[0] == "demo" for l in lines[1:3])
    assert "torchvision classification models:" in lines
    tv = lines[lines.index("torchvision classification models:") + 1]
    assert {"resnet18", "vgg11_bn", "mobilenet_v2"} <= set(tv.strip().split(", "))


def test_train_writes_weights_history_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, "train", *MODEL, "--regime", "ortho", "--epochs", "1", "--data", "synthetic:3,16,16,10,64",
                          "--out", str(out), "--batch-size", "32", "--val-limit", "32")
    assert rc == 0, err
    assert sorted(f.name for f in out.iterdir()) == ["checkpoint.pt", "history.json", "model.pt"]
    state = torch.load(out / "model.pt", weights_only=True)
    assert set(state) == set(__import__("helpers").tiny_net().state_dict())
    doc = json.loads((out / "history.json").read_text())
    assert doc["model"] == "helpers:tiny_net" and doc["config"]["regime"] == "ortho" and doc["config"]["epochs"] == 1
    (h,) = doc["history"]
    assert h["epoch"] == 1 and h["reg"] > 0 and 0 <= h["val_top1"] <= 1
    assert f"wrote {out / 'model.pt'} (state_dict, regime ortho); final val top-1 {h['val_top1']:.2%}" in stdout
    assert "[train] epoch 1/1" in err
