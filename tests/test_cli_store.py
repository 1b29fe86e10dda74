"""The command line and the experiment store: what each command records, ``lrviz runs``, ``lrviz report``,
a compress folder as a MODEL (fine-tuned, exported again), and a store that cannot be used."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from lrviz.cli import main
from lrviz.store import Store

MODEL = ["helpers:tiny_net", "--input-size", "3,16,16"]
DATA = "synthetic:3,16,16,10,96"


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("LRVIZ_DB", str(path))
    return path


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_evaluate_is_recorded_and_listed(db, capsys, tmp_path):
    rc, out1, err = run(capsys, "evaluate", *MODEL, "--data", DATA, "--plan", "uniform:0.5")
    assert rc == 0, err
    assert f"recorded as run 1 in {db}" in err
    rc, out0, err = run(capsys, "evaluate", *MODEL, "--data", DATA)
    assert rc == 0, err
    (r1, r0) = Store(db).runs()
    assert f"top-1 {r1.metrics['top1']:.2%}" in out1 and f"top-1 {r0.metrics['top1']:.2%}" in out0  # what was printed is recorded
    assert (r1.kind, r1.name, r0.name) == ("evaluation", "uniform:0.5", "original")
    assert r1.model == r0.model and len(r1.model) == 16 and r1.model_name == "helpers:tiny_net" and r1.data == f"{DATA}:test"
    assert r1.plan_key is not None and r0.plan_key is None and r1.origin == "cli"
    assert 0 <= r1.metrics["lo"] <= r1.metrics["top1"] <= r1.metrics["hi"] <= 1 and r1.metrics["n"] == 96
    assert r1.metrics["params_ratio"] > 1 and "params_ratio" not in r0.metrics
    rc, out, err = run(capsys, "runs", "--json", tmp_path / "r.json", "--csv", tmp_path / "r.csv")
    assert rc == 0, err
    assert "2 run(s) in" in out and "uniform:0.5" in out and f"top-1 {100 * r1.metrics['top1']:.2f}% (n=96)" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["schema"] == "lrviz.runs/1" and [r["id"] for r in doc["runs"]] == [1, 2]
    assert doc["runs"][0]["plan_json"] and doc["runs"][0]["metrics"]["top1"] == r1.metrics["top1"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert [r["name"] for r in rows] == ["uniform:0.5", "original"] and float(rows[0]["m.top1"]) == r1.metrics["top1"]
    rc, out, _ = run(capsys, "runs", "--model", "helpers:tiny_net", "--kind", "evaluation", "--limit", "1")
    assert rc == 0 and "1 run(s)" in out and "(of 2)" in out and "original" in out
    rc, out, _ = run(capsys, "runs", "--model", r1.model[:6])
    assert "2 run(s)" in out
    rc, out, _ = run(capsys, "runs", "--model", "resnet50")
    assert rc == 0 and "0 run(s)" in out


def test_no_record_records_nothing(db, capsys):
    rc, _, err = run(capsys, "--no-record", "evaluate", *MODEL, "--data", DATA)
    assert rc == 0 and "recorded" not in err
    assert Store(db).count() == 0


@pytest.mark.parametrize("content", [b"garbage, not sqlite " * 100, None])
def test_a_store_that_cannot_be_used_costs_the_command_nothing(db, capsys, content, tmp_path):
    import sqlite3

    if content is None:  # another program's database
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE invoices (id INTEGER)")
        con.commit()
        con.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    rc, out, err = run(capsys, "evaluate", *MODEL, "--data", DATA, "--json", tmp_path / "e.json")
    assert rc == 0 and "top-1" in out and (tmp_path / "e.json").is_file()
    warn = [l for l in err.splitlines() if "experiment store" in l]
    assert len(warn) == 1 and warn[0].startswith("lrviz: warning: not recorded in the experiment store:")
    rc, out, err = run(capsys, "runs")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lrviz: error: ") and "Traceback" not in err
    assert ("not a readable SQLite database" in err) if content else ("not an lrviz experiment store" in err)
    assert db.read_bytes() == before


def test_compress_folder_is_a_model_and_its_fine_tuned_model_exports(db, capsys, tmp_path):
    out = tmp_path / "ft"
    rc, stdout, err = run(capsys, "compress", *MODEL, "--plan", "uniform:0.5", "--data", DATA, "--finetune", "1",
                          "--train-limit", "64", "--val-limit", "16", "--out", out)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    tuned = metrics["accuracy"]["compressed"]
    rc, stdout, err = run(capsys, "evaluate", out, "--data", DATA, "--json", tmp_path / "e.json")
    assert rc == 0, err
    got = json.loads((tmp_path / "e.json").read_text())
    # the folder rebuilds the fine-tuned weights: the same accuracy on the same (test) images
    assert (got["n"], got["top1"], got["top5"]) == (tuned["n"], tuned["top1"], tuned["top5"]) and got["loss"] == pytest.approx(tuned["loss"])
    runs = Store(db).runs(kind="finetune")
    assert len(runs) == 1 and runs[0].artifact == str(out.resolve()) and runs[0].metrics["top1"] == tuned["top1"]
    assert runs[0].metrics["epochs_run"] == 1
    # the fine-tuned model exports as ONNX with a parity check, and as a state_dict that evaluates identically
    rc, stdout, err = run(capsys, "export", out, "--plan", "full", "--format", "onnx", "--out", tmp_path / "onnx")
    assert rc == 0, err
    assert "max |difference| against PyTorch" in stdout and (tmp_path / "onnx" / "model.onnx").is_file()
    rc, stdout, err = run(capsys, "export", out, "--plan", "full", "--format", "state_dict", "--out", tmp_path / "sd")
    assert rc == 0, err
    rc, _, err = run(capsys, "evaluate", tmp_path / "sd", "--data", DATA, "--json", tmp_path / "e2.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "e2.json").read_text()) == got
    exports = Store(db).runs(kind="export")
    assert [r.metrics["format"] for r in exports] == ["onnx", "state_dict"]
    assert exports[0].metrics["max_abs_diff"] <= 1e-4 * exports[0].metrics["output_scale"]
    # a further plan on an already compressed model cannot be one state_dict plan: said, nothing written
    rc, _, err = run(capsys, "export", out, "--plan", "uniform:0.5", "--format", "state_dict", "--out", tmp_path / "no")
    assert rc == 2 and "already compressed" in err and not (tmp_path / "no").exists()


def test_compress_folder_evaluates_as_its_plan(db, capsys, tmp_path):
    out = tmp_path / "c"
    rc, _, err = run(capsys, "compress", *MODEL, "--plan", "uniform:0.5", "--out", out)
    assert rc == 0, err
    rc, _, err = run(capsys, "evaluate", out, "--data", DATA, "--json", tmp_path / "a.json")
    assert rc == 0, err
    rc, _, err = run(capsys, "evaluate", *MODEL, "--plan", out / "plan.json", "--data", DATA, "--json", tmp_path / "b.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())


def test_report_is_self_contained_and_says_how_to_reproduce(db, capsys, tmp_path):
    out = tmp_path / "report.html"
    rc, stdout, err = run(capsys, "report", *MODEL, "--plan", "uniform:0.5", "--data", DATA, "--out", out, "--batch", "2",
                          "--rounds", "1", "--execution", "eager")
    assert rc == 0, err
    html = out.read_text()
    assert "<script" in html and not re.search(r"<script[^>]*\ssrc=", html)  # plotly.js inline: opens offline
    for text in ("low-rank compression report", "Top-1 accuracy (96 images)", "Top-1 accuracy (projected)", "not projected yet",
                 "CPU latency (batch 2, median)", "VBMF threshold", "Per-layer ranks and cost", "Spectra and VBMF ranks",
                 "Environment: lrviz", "torch", f"Reproduce: lrviz report helpers:tiny_net --input-size 3,16,16 --plan uniform:0.5"):
        assert text in html, text
    evals = Store(db).runs(kind="evaluation")
    assert [r.name for r in evals] == ["original", "uniform:0.5"]
    t0, t1 = evals[0].metrics["top1"], evals[1].metrics["top1"]
    assert f"{100 * t0:.1f}% → {100 * t1:.1f}%" in html
    assert f"top-1 original {t0:.2%}, compressed {t1:.2%} (n=96" in stdout


def test_report_without_data_or_latency_and_bad_out(db, capsys, tmp_path):
    out = tmp_path / "r.html"
    rc, _, err = run(capsys, "report", *MODEL, "--plan", "uniform:0.5", "--out", out, "--no-latency")
    assert rc == 0, err
    html = out.read_text()
    assert "not measured yet" in html and "Top-1 accuracy (96 images)" not in html
    rc, _, err = run(capsys, "report", *MODEL, "--plan", "uniform:0.5", "--out", tmp_path, "--no-latency")
    assert rc == 2 and err.startswith("lrviz: error:") and err.count("\n") == 1


def test_bench_sweep_sensitivity_solve_are_recorded(db, capsys, tmp_path):
    rc, _, err = run(capsys, "bench", *MODEL, "--plan", "uniform:0.5", "--batch", "2", "--rounds", "1", "--execution", "eager",
                     "--no-layers", "--no-cache")
    assert rc == 0, err
    rc, _, err = run(capsys, "sensitivity", *MODEL, "--data", DATA, "--limit", "32", "--grid-points", "2")
    assert rc == 0, err
    rc, _, err = run(capsys, "solve", *MODEL, "--data", DATA, "--limit", "32", "--grid-points", "2", "--target", "params:1.5")
    assert rc == 0, err
    rc, _, err = run(capsys, "sweep", *MODEL, "--data", DATA, "--limit", "32", "--grid-points", "2", "--targets", "1.5",
                     "--strategies", "uniform", "--no-projection")
    assert rc == 0, err
    by = {r.kind: r for r in Store(db).runs()}
    assert set(by) == {"bench", "sensitivity", "solve", "sweep"}
    assert by["bench"].metrics["speedup_b2"] > 0 and by["bench"].payload[0]["batch"] == 2
    assert by["sensitivity"].metrics["n"] == 32 and by["sensitivity"].data == f"{DATA}:test"
    assert by["solve"].metrics["target"] == "params:1.5" and by["solve"].metrics["params_ratio"] >= 1.5 and by["solve"].plan_json
    assert by["sweep"].payload[0]["strategy"] == "uniform" and by["sweep"].metrics["targets"] == [1.5]
    rc, out, _ = run(capsys, "runs", "--kind", "bench")
    assert "x at b2" in out
