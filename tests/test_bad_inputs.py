"""Every bad input gets one clear line.

A corpus of bad inputs — weights files, plan specs and plan files, output paths, data, sizes and
limits, solver targets — each run through the command line. Every case must exit with code 2, print
exactly one line, ``lrviz: error: ...``, on stderr (no traceback, no warning, no log line; nothing on
stdout) and leave nothing half-written: the ``--out`` folder or ``--json`` file does not exist
afterwards, or an existing one is as it was. Most cases run in process; a few run as real processes
(``python -m lrviz.cli`` and the ``lrviz`` console script) to prove nothing else reaches stderr,
torch's own warnings included. The builtin ``demo`` model (1×28×28, 10 classes) and tiny synthetic
data keep it fast.
"""

import errno
import json
import logging
import os
import pickle
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from lrviz.cli import main
from lrviz.errors import LrvizError

DATA = "synthetic:1,28,28,10,32"  # the demo model's input and classes


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def run(capsys, caplog, *argv):
    """``main(argv)`` in process: (rc, stdout, stderr, escaped warnings, log records ≥ WARNING)."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    return rc, out, err, caught, loud


def assert_one_error_line(rc, out, err, caught=(), loud=()):
    assert rc == 2, f"rc={rc}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrviz: error: "), f"stderr is not one error line:\n{err}"
    assert len(lines[0]) > len("lrviz: error: ") + 10, err
    assert out == "", f"stdout:\n{out}"
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not loud, [r.getMessage() for r in loud]
    return lines[0]


def bad(capsys, caplog, *argv):
    return assert_one_error_line(*run(capsys, caplog, *argv))


def snapshot(path: Path):
    """Everything under ``path`` (names, bytes, modes), to check that it is untouched."""
    if not path.exists():
        return None
    if path.is_file():
        return ("file", path.read_bytes(), path.stat().st_mode)
    return ("dir", sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*")))


class _RunsCode:
    """Unpickling this runs ``touch MARKER`` through os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _demo_state():
    from lrviz.models import load_model

    return load_model("demo").module.state_dict()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bad weights files, built once. ``marker`` must never appear."""
    d = tmp_path_factory.mktemp("corpus")
    marker = d / "PWNED"
    state = _demo_state()
    files = {}

    def put(name, data):
        files[name] = d / name
        (d / name).write_bytes(data)

    put("code.pkl", pickle.dumps({"conv1.weight": _RunsCode(marker)}, protocol=4))
    torch.save({"conv1.weight": _RunsCode(marker)}, d / "code.pt")  # torch zip whose data.pkl runs code
    files["code.pt"] = d / "code.pt"
    from lrviz.models import builtin_models, load_model

    torch.save(load_model("demo").module, d / "whole-model.pt")
    files["whole-model.pt"] = d / "whole-model.pt"
    torch.save(state, d / "good.pt")
    good = (d / "good.pt").read_bytes()
    put("truncated.pt", good[: len(good) // 2])
    put("header-only.pt", good[:64])
    put("empty.pt", b"")
    put("text.pt", b"these are not weights\n")
    put("random.bin", bytes([0x13]) + random.Random(0).randbytes(4095))
    for name, obj in {
        "resnet18.pt": torchvision.models.resnet18(num_classes=10).state_dict(),  # wrong architecture
        "demo-5-classes.pt": builtin_models()["demo"].factory(5).state_dict(),
        "int8.pt": {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in state.items()},
        "complex.pt": {k: v.to(torch.complex64) if v.is_floating_point() else v for k, v in state.items()},
        "non-tensor.pt": {**state, "lr": 0.1, "epoch": 3},
        "list.pt": list(state.values()),
        "tensor.pt": torch.zeros(3),
        "empty-dict.pt": {},
        "int-keys.pt": {i: v for i, v in enumerate(state.values())},
    }.items():
        torch.save(obj, d / name)
        files[name] = d / name
    (d / "folder.pt").mkdir()
    files["folder.pt"] = d / "folder.pt"
    files["missing.pt"] = d / "missing.pt"
    files["good.pt"] = d / "good.pt"
    return {"dir": d, "marker": marker, "files": files, "state": state}


WEIGHTS_CASES = {
    "code.pkl": "refused to unpickle",
    "code.pt": "refused to unpickle",
    "whole-model.pt": "refused to unpickle",
    "truncated.pt": "not a readable PyTorch weights file",
    "header-only.pt": "not a readable PyTorch weights file",
    "empty.pt": "is empty (0 bytes)",
    "text.pt": "looks like text",
    "random.bin": "not a readable PyTorch weights file",
    "resnet18.pt": "do not match the model",
    "demo-5-classes.pt": "mis-shaped",
    "int8.pt": "int8 vs model float32",
    "complex.pt": "complex64 vs model float32",
    "non-tensor.pt": "not named tensors: lr, epoch",
    "list.pt": "holds a list, not a state_dict",
    "tensor.pt": "holds a Tensor, not a state_dict",
    "empty-dict.pt": "(empty), not a state_dict",
    "int-keys.pt": "not named tensors",
    "folder.pt": "does not exist (or is not a file)",
    "missing.pt": "does not exist",
}


# ------------------------------------------------------------------------------------------------
# weights files
# ------------------------------------------------------------------------------------------------


def test_the_code_payloads_are_real(corpus, tmp_path):
    """Control: the hostile files do run code when unpickled unsafely (so refusing them means something)."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({"w": _RunsCode(control)}))
    assert control.exists()
    control.unlink()
    torch.save({"w": _RunsCode(control)}, tmp_path / "c.pt")
    torch.load(tmp_path / "c.pt", weights_only=False)
    assert control.exists()
    assert not corpus["marker"].exists()


@pytest.mark.parametrize("name", list(WEIGHTS_CASES))
def test_bad_weights_file(capsys, caplog, corpus, tmp_path, name):
    out = tmp_path / "out"
    line = bad(capsys, caplog, "compress", "demo", "--weights", corpus["files"][name], "--plan", "uniform:0.5", "--out", out)
    assert WEIGHTS_CASES[name] in line
    assert str(corpus["files"][name]) in line  # names the file
    assert not out.exists()
    assert not corpus["marker"].exists()


def test_bad_weights_for_a_torchvision_architecture(capsys, caplog, corpus):
    line = bad(capsys, caplog, "analyze", "resnet18", "--input-size", "3,32,32", "--num-classes", "10",
               "--weights", corpus["files"]["good.pt"])  # demo weights for resnet18
    assert "do not match the model (ResNet)" in line and "architecture" in line


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_as_float32(corpus, tmp_path, caplog, dtype):
    """Policy: float16 / bfloat16 state_dicts are cast to the model's float32, with a logged note; the
    model then computes exactly what float32 weights rounded to that precision compute."""
    from lrviz.models import load_model

    state = corpus["state"]
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "half.pt"
    torch.save(low, path)
    rounded = tmp_path / "rounded.pt"
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in low.items()}, rounded)
    with caplog.at_level(logging.INFO, logger="lrviz.weights"):
        m = load_model("demo", weights=str(path))
    name = str(dtype).removeprefix("torch.")
    assert any(f"{name} tensors to the model's float32" in r.getMessage() for r in caplog.records)
    assert all(v.dtype == state[k].dtype for k, v in m.module.state_dict().items())
    ref = load_model("demo", weights=str(rounded))
    full = load_model("demo")
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, y_ref, y_full = m.module.eval()(x), ref.module.eval()(x), full.module.eval()(x)
    assert torch.equal(y, y_ref)  # the cast is exact: same weights, same outputs
    scale = y_full.abs().max().item()
    tol = {torch.float16: 0.005, torch.bfloat16: 0.02}[dtype]  # weight rounding: 2^-11 and 2^-8 relative (measured 0.0012, 0.0032)
    assert (y - y_full).abs().max().item() <= tol * scale


def test_half_precision_weights_through_the_cli(capsys, caplog, corpus, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in corpus["state"].items()}, path)
    rc, out, err, caught, loud = run(capsys, caplog, "evaluate", "demo", "--weights", path, "--data", DATA, "--limit", "16")
    assert rc == 0 and "top-1" in out and "error" not in err


# ------------------------------------------------------------------------------------------------
# plan specs and plan files
# ------------------------------------------------------------------------------------------------

PLAN_SPECS = {
    "ratio:0": "must be ≥ 1",
    "ratio:-3": "must be ≥ 1",
    "ratio:1e9": "cannot reach a 1e+09x params reduction",
    "ratio:abc": "'abc' is not a number",
    "ratio:inf": "not a finite number",
    "ratio:nan": "not a finite number",
    "ratio": "needs a value",
    "energy:1.5": r"value must be in (0, 1]; got 1.5",
    "energy:0": r"value must be in (0, 1]",
    "energy:": "needs a value",
    "uniform:0": r"value must be in (0, 1]",
    "uniform:-0.5": r"value must be in (0, 1]",
    "vbmf:abc": "'abc' is not a number",
    "vbmf:2": r"value must be in [0, 1]",
    "tucker": "unknown plan spec 'tucker'",
    "full:3": "unknown plan spec",
    "": "empty plan spec",
    "   ": "empty plan spec",
}


@pytest.mark.parametrize("spec", list(PLAN_SPECS), ids=[s.strip() or "empty" for s in PLAN_SPECS])
def test_bad_plan_spec(capsys, caplog, tmp_path, spec):
    out = tmp_path / "out"
    line = bad(capsys, caplog, "compress", "demo", "--plan", spec, "--out", out)
    assert PLAN_SPECS[spec] in line
    assert not out.exists()


def test_bad_plan_spec_for_evaluate_and_project(capsys, caplog):
    assert "unknown plan spec" in bad(capsys, caplog, "evaluate", "demo", "--data", DATA, "--plan", "tuker")
    assert "must be ≥ 1" in bad(capsys, caplog, "project", "demo", "--data", DATA, "--plan", "ratio:0.5")


@pytest.fixture(scope="module")
def plan_doc():
    from lrviz.analysis import analyze
    from lrviz.models import load_model
    from lrviz.plan import make_plan

    m = load_model("demo")
    return make_plan(analyze(m.module, m.input_size, "demo", spectra=False), "uniform:0.5").to_dict()


def _tucker(d):
    return next(l for l in d["layers"] if l["kind"] == "tucker2")


def _edit(fn):
    def make(doc):
        d = json.loads(json.dumps(doc))
        fn(d)
        return json.dumps(d)

    return make


PLAN_FILES = {
    "wrong-schema": (_edit(lambda d: d.update(schema="lrviz.plan/0")), "not an lrviz plan"),
    "no-schema": (_edit(lambda d: d.pop("schema")), "not an lrviz plan"),
    "layers-not-a-list": (_edit(lambda d: d.update(layers={"conv1": [1, 1]})), "no 'layers' list"),
    "rank-zero": (_edit(lambda d: _tucker(d).update(ranks=[0, 4])), "rank 0 is impossible; allowed 1.."),
    "rank-negative": (_edit(lambda d: _tucker(d).update(ranks=[-2, 4])), "rank -2 is impossible"),
    "rank-not-integer": (_edit(lambda d: _tucker(d).update(ranks=[2.5, 4])), "needs integer ranks"),
    "rank-string": (_edit(lambda d: _tucker(d).update(ranks=["3", 4])), "needs integer ranks"),
    "rank-bool": (_edit(lambda d: _tucker(d).update(ranks=[True, 4])), "needs integer ranks"),
    "rank-too-large": (_edit(lambda d: _tucker(d).update(ranks=[10**6, 4])), "is above the full rank"),
    "wrong-number-of-ranks": (_edit(lambda d: _tucker(d).update(ranks=[3])), "needs integer ranks [r_out, r_in]"),
    "ranks-missing": (_edit(lambda d: _tucker(d).pop("ranks")), "is malformed"),
    "unknown-layer": (_edit(lambda d: _tucker(d).update(name="no.such.layer")), "is not a decomposable layer of this model"),
    "wrong-weight-shape": (_edit(lambda d: _tucker(d)["weight_shape"].__setitem__(0, 999)), "wrong architecture"),
    "wrong-kind": (_edit(lambda d: _tucker(d).update(kind="svd_conv")), "wrong architecture"),
    "unknown-kind": (_edit(lambda d: _tucker(d).update(kind="cp")), "unknown kind 'cp'"),
    "bad-shape-length": (_edit(lambda d: _tucker(d).update(weight_shape=[3, 3])), "weight_shape must be 4"),
    "duplicate-layer": (_edit(lambda d: d["layers"].append(dict(_tucker(d)))), "appears twice"),
    "not-json": (lambda doc: "{not json", "not valid JSON"),
    "json-list": (lambda doc: "[1, 2, 3]", "got 'list'"),
    "json-null": (lambda doc: "null", "got 'NoneType'"),
    "binary": (lambda doc: b"\xff\xfe\x00garbage", "cannot read plan file"),
}


@pytest.mark.parametrize("case", list(PLAN_FILES))
def test_bad_plan_file(capsys, caplog, tmp_path, plan_doc, case):
    make, msg = PLAN_FILES[case]
    text = make(plan_doc)
    path = tmp_path / "plan.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    line = bad(capsys, caplog, "compress", "demo", "--plan", path, "--out", out)
    assert msg in line and str(path) in line
    assert not out.exists()


def test_plan_file_missing_or_a_folder(capsys, caplog, tmp_path):
    assert "does not exist" in bad(capsys, caplog, "compress", "demo", "--plan", tmp_path / "nope.json", "--out", tmp_path / "o")
    (tmp_path / "dir.json").mkdir()
    assert "is not a file" in bad(capsys, caplog, "compress", "demo", "--plan", tmp_path / "dir.json", "--out", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_the_unedited_plan_file_compresses(tmp_path, capsys, caplog, plan_doc, monkeypatch):
    """Control for the plan-file cases: the same file, unedited, is accepted."""
    _fast_export(monkeypatch)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_doc))
    rc, out, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", path, "--out", tmp_path / "o")
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["layers"] == plan_doc["layers"]


# ------------------------------------------------------------------------------------------------
# output paths
# ------------------------------------------------------------------------------------------------


def _fast_export(monkeypatch, fail_after_bytes=None):
    """Replace the .pt2 export (seconds) by a small file write; optionally fail midway like a full disk."""
    import lrviz.export

    def fake(model, input_size, path):
        path = Path(path)
        path.write_bytes(b"x" * (fail_after_bytes or 16))
        if fail_after_bytes is not None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return path

    monkeypatch.setattr(lrviz.export, "save_program", fake)


def test_out_is_an_existing_file(capsys, caplog, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    before = snapshot(target)
    line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", target)
    assert "exists and is not a folder" in line
    assert snapshot(target) == before


def test_out_under_a_file(capsys, caplog, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", f / "sub" / "dir")
    assert "is a file, not a folder" in line
    assert f.read_text() == "x"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_out_in_an_unwritable_pseudo_filesystem(capsys, caplog):
    line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", "/proc/lrviz-test-out")
    assert "not writable" in line
    assert not Path("/proc/lrviz-test-out").exists()


def test_out_in_a_read_only_folder(capsys, caplog, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions are not enforced (running as root)")
        line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", ro / "out")
        assert "not writable" in line
        assert "not writable" in bad(capsys, caplog, "analyze", "demo", "--json", ro / "a.json")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_out_is_a_non_empty_folder(capsys, caplog, tmp_path):
    """Policy: a non-empty --out folder is refused unless --force."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "plan.json").write_text("old")
    before = snapshot(out)
    line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", out)
    assert "not empty" in line and "--force" in line
    assert snapshot(out) == before


def test_force_replaces_only_lrviz_files(capsys, caplog, tmp_path, monkeypatch):
    _fast_export(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "plan.json").write_text("old")
    rc, stdout, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", "uniform:0.5", "--out", out, "--force")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt2", "notes.txt", "plan.json", "state_dict.pt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "plan.json").read_text())["spec"] == "uniform:0.5"


def test_out_empty_folder_and_new_nested_folder(capsys, caplog, tmp_path, monkeypatch):
    _fast_export(monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "a" / "b" / "out"):
        rc, stdout, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", "uniform:0.5", "--out", out)
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt2", "plan.json", "state_dict.pt"]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["out"]  # no temporary folder left


def test_failure_midway_leaves_nothing(capsys, caplog, tmp_path, monkeypatch):
    _fast_export(monkeypatch, fail_after_bytes=1000)
    out = tmp_path / "new" / "out"
    rc, stdout, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", "uniform:0.5", "--out", out)
    last = err.splitlines()[-1]  # after the progress lines: the disk filled up at the very end
    assert rc == 2 and last.startswith("lrviz: error: cannot write --out") and "No space left on device" in last
    assert "nothing was written" in last and "Traceback" not in err
    assert not (tmp_path / "new").exists()  # not even the parent it created
    old = tmp_path / "old"
    old.mkdir()
    (old / "plan.json").write_text("old")
    before = snapshot(old)
    rc, stdout, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", "uniform:0.5", "--out", old, "--force")
    assert rc == 2 and "No space left on device" in err
    assert snapshot(old) == before


def test_compress_writes_a_real_program_atomically(capsys, caplog, tmp_path):
    out = tmp_path / "out"
    rc, stdout, err, *_ = run(capsys, caplog, "compress", "demo", "--plan", "uniform:0.5", "--out", out)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    m = torch.export.load(str(out / "model.pt2")).module()
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("where", ["folder", "under-a-file", "proc"])
def test_bad_json_target(capsys, caplog, tmp_path, where):
    if where == "proc" and not Path("/proc/self").exists():
        pytest.skip("needs /proc")
    f = tmp_path / "file"
    f.write_text("x")
    target = {"folder": tmp_path, "under-a-file": f / "a.json", "proc": Path("/proc/lrviz-test.json")}[where]
    line = bad(capsys, caplog, "analyze", "demo", "--json", target)
    assert str(target) in line
    assert f.read_text() == "x" and not Path("/proc/lrviz-test.json").exists()


def test_json_write_failure_keeps_the_old_file(capsys, caplog, tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text('{"old": true}')

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)  # the rename at the end of every atomic write
    rc, out, err, caught, loud = run(capsys, caplog, "analyze", "demo", "--json", target)
    assert rc == 2 and err.splitlines()[-1].startswith("lrviz: error: cannot write --json")
    assert target.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_bad_out_for_solve_and_train(capsys, caplog, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file, not a folder" in bad(capsys, caplog, "solve", "demo", "--data", DATA, "--target", "params:2",
                                            "--out", f / "plan.json")
    assert "is a folder" in bad(capsys, caplog, "solve", "demo", "--data", DATA, "--target", "params:2", "--out", tmp_path)
    assert "exists and is not a folder" in bad(capsys, caplog, "train", "demo", "--data", DATA, "--out", f)
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("folders")
    from PIL import Image

    (d / "not-images" / "cat").mkdir(parents=True)
    for i in range(3):
        (d / "not-images" / "cat" / f"{i}.png").write_text("this is not a png")
    (d / "txt-only" / "cat").mkdir(parents=True)
    (d / "txt-only" / "cat" / "a.txt").write_text("hello")
    (d / "empty").mkdir()
    (d / "empty-classes" / "cat").mkdir(parents=True)
    (d / "truncated" / "cat").mkdir(parents=True)
    Image.new("L", (64, 64), 128).save(d / "good.png")
    (d / "truncated" / "cat" / "a.png").write_bytes((d / "good.png").read_bytes()[:40])
    (d / "a-file").write_text("x")
    return d


DATA_CASES = {
    "imagefolder:{d}/not-images": "is not a readable image",
    "imagefolder:{d}/truncated": "is not a readable image",
    "imagefolder:{d}/txt-only": "no usable images",
    "imagefolder:{d}/empty": "no usable images",
    "imagefolder:{d}/empty-classes": "no usable images",
    "imagefolder:{d}/missing": "does not exist",
    "imagefolder:{d}/a-file": "not a directory",
    "imagefolder": "needs a folder",
    "cifar99": "Unknown dataset 'cifar99'",
    "": "non-empty string",
    "fashion-mnist:x": "takes no argument",
    "synthetic:1,28,28": "synthetic:C,H,W,K,N",
    "synthetic:a,b,c,d,e": "synthetic:C,H,W,K,N",
    "synthetic:1,28,28,1,8": "classes >= 2",
    "synthetic:1,28,28,10,0": "images >= 1",
    "synthetic:0,28,28,10,8": "channels must be 1..64",
    "synthetic:1,28,28,10,1e9": "synthetic:C,H,W,K,N",
    "synthetic:64,1024,1024,10,1000": "the limit is",
    "synthetic:3,28,28,10,8": "has 3 channel(s) but model demo expects 1",
    "synthetic:1,28,28,20,8": "has 20 classes but the model outputs 10",
}


@pytest.mark.parametrize("spec", list(DATA_CASES))
def test_bad_data(capsys, caplog, folders, spec):
    gray = ["--grayscale"] if spec.startswith("imagefolder") else []
    line = bad(capsys, caplog, "evaluate", "demo", "--data", spec.format(d=folders), *gray, "--limit", "8")
    assert DATA_CASES[spec] in line


def test_bad_data_for_compress_fails_before_any_work(capsys, caplog, folders, tmp_path):
    out = tmp_path / "out"
    line = bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", out, "--data", f"imagefolder:{folders}/not-images",
               "--grayscale")
    assert "is not a readable image" in line and not out.exists()
    assert "test-set sample only" in bad(capsys, caplog, "compress", "demo", "--plan", "vbmf", "--out", out, "--data",
                                         "fashion-mnist-sample", "--finetune", "1")
    assert not out.exists()


def test_bad_data_root_and_split(capsys, caplog, tmp_path):
    assert "--data-root" in bad(capsys, caplog, "evaluate", "demo", "--data", "fashion-mnist", "--data-root", tmp_path / "nope")
    assert "test-set sample only" in bad(capsys, caplog, "sensitivity", "demo", "--data", "fashion-mnist-sample", "--split", "train")
    assert "2 values but the images have 1 channel" in bad(capsys, caplog, "evaluate", "demo", "--data", DATA, "--mean", "0.1,0.2")


# ------------------------------------------------------------------------------------------------
# sizes, limits, batch sizes, numbers
# ------------------------------------------------------------------------------------------------

EV = ["evaluate", "demo", "--data", DATA]
CO = ["compress", "demo", "--plan", "vbmf", "--out", "{out}"]
TR = ["train", "demo", "--data", DATA, "--out", "{out}"]
SW = ["sweep", "demo", "--data", DATA]

VALUE_CASES = {
    "input-size-zero": (["analyze", "demo", "--input-size", "0,32,32"], "three positive integers"),
    "input-size-negative": (["analyze", "demo", "--input-size=-1,28,28"], "three positive integers"),
    "input-size-two": (["analyze", "demo", "--input-size", "1,28"], "three positive integers"),
    "input-size-text": (["analyze", "demo", "--input-size", "abc"], "three positive integers"),
    "input-size-huge": (["analyze", "demo", "--input-size", "1,100000,100000"], "too large"),
    "input-size-wrong": (["analyze", "demo", "--input-size", "3,28,28"], "does not accept input of size 3,28,28"),
    "limit-zero": ([*EV, "--limit", "0"], "--limit: must be an integer ≥ 1, got 0"),
    "limit-negative": ([*EV, "--limit", "-5"], "--limit: must be an integer ≥ 1, got -5"),
    "limit-text": ([*EV, "--limit", "abc"], "expected an integer ≥ 1, got 'abc'"),
    "limit-float": ([*EV, "--limit", "1.5"], "expected an integer ≥ 1, got '1.5'"),
    "batch-size-zero": ([*EV, "--batch-size", "0"], "--batch-size: must be an integer ≥ 1"),
    "num-classes-zero": (["analyze", "demo", "--num-classes", "0"], "--num-classes: must be an integer ≥ 1"),
    "num-classes-text": (["analyze", "demo", "--num-classes", "ten"], "--num-classes: expected an integer"),
    "num-classes-wrong": (["analyze", "demo", "--num-classes", "5"], "for 10 classes, but num_classes=5"),
    "resize-zero": ([*EV, "--resize", "0"], "--resize: expected H or H,W"),
    "resize-three": ([*EV, "--resize", "1,2,3"], "--resize: expected H or H,W"),
    "mean-text": ([*EV, "--mean", "abc"], "--mean: expected the per-channel mean"),
    "std-zero": ([*EV, "--std", "0"], "--std: the per-channel std must be > 0"),
    "std-nan": ([*EV, "--std", "nan"], "--std: the per-channel std must be > 0"),
    "finetune-negative": ([*CO, "--finetune", "-1"], "--finetune: must be an integer ≥ 0"),
    "lr-zero": ([*CO, "--lr", "0"], "--lr: must be a finite number > 0"),
    "lr-nan": ([*CO, "--lr", "nan"], "--lr: must be a finite number > 0"),
    "val-limit-zero": ([*CO, "--val-limit", "0"], "--val-limit: must be an integer ≥ 1"),
    "train-limit-zero": ([*CO, "--train-limit", "0"], "--train-limit: must be an integer ≥ 1"),
    "epochs-negative": ([*TR, "--epochs", "-1"], "--epochs: must be an integer ≥ 1"),
    "epochs-zero": ([*TR, "--epochs", "0"], "--epochs: must be an integer ≥ 1"),
    "weight-decay-negative": ([*TR, "--weight-decay", "-1"], "--weight-decay: must be a finite number ≥ 0"),
    "seed-negative": ([*TR, "--seed", "-1"], "--seed: must be an integer ≥ 0"),
    "regime-unknown": ([*TR, "--regime", "fast"], "invalid choice: 'fast'"),
    "grid-points-one": (["sensitivity", "demo", "--data", DATA, "--grid-points", "1"], "--grid-points: must be an integer ≥ 2"),
    "snap-zero": (["solve", "demo", "--data", DATA, "--target", "params:2", "--snap", "0"], "--snap: must be an integer ≥ 1"),
    "targets-below-one": ([*SW, "--targets", "2,0.5"], "--targets: the reduction targets must be ≥ 1; got 0.5"),
    "targets-text": ([*SW, "--targets", "abc"], "--targets: expected the reduction targets"),
    "targets-empty": ([*SW, "--targets", ""], "--targets: expected the reduction targets"),
    "strategies-unknown": ([*SW, "--strategies", "solver,greedy"], "unknown strategy 'greedy'"),
    "strategies-empty": ([*SW, "--strategies", ","], "unknown strateg"),
    "finetune-epochs-negative": ([*SW, "--finetune-epochs", "-1"], "--finetune-epochs: must be an integer ≥ 0"),
    "metric-unknown": ([*SW, "--metric", "flops"], "invalid choice: 'flops'"),
    "plan-missing": (["compress", "demo", "--out", "{out}"], "the following arguments are required: --plan"),
    "command-missing": ([], "the following arguments are required: command"),
    "command-unknown": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "option-unknown": (["analyze", "demo", "--bogus"], "unrecognized arguments: --bogus"),
    "model-unknown": (["analyze", "demo2"], "unknown model 'demo2'"),
    "weights-empty": (["analyze", "demo", "--weights", ""], "weights must be"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_value(capsys, caplog, tmp_path, case):
    argv, msg = VALUE_CASES[case]
    out = tmp_path / "out"
    line = bad(capsys, caplog, *[a.format(out=out) for a in argv])
    assert msg in line
    assert not out.exists()


def test_help_still_works(capsys):
    for argv in ([], ["compress"], ["solve"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--help"])
        assert info.value.code == 0
        out, err = capsys.readouterr()
        assert out.startswith("usage: lrviz") and err == ""


# ------------------------------------------------------------------------------------------------
# solver targets
# ------------------------------------------------------------------------------------------------

TARGETS = {
    "params:0": "must be a finite number ≥ 1",
    "macs:-2": "must be a finite number ≥ 1",
    "params:0.5": "must be a finite number ≥ 1",
    "params:abc": "'abc' is not a number",
    "params:": "'' is not a number",
    "params:inf": "must be a finite number ≥ 1",
    "joules:3": "unknown metric 'joules'",
    "latency:0.5": "must be a finite number ≥ 1",
    "": "empty target",
    "params:1e6": "cannot be met: the most demo allows is about",
    "macs:1e6": "cannot be met: the most demo allows is about",
}


@pytest.mark.parametrize("target", list(TARGETS), ids=[t or "empty" for t in TARGETS])
def test_bad_solver_target(capsys, caplog, tmp_path, target):
    out = tmp_path / "plan.json"
    line = bad(capsys, caplog, "solve", "demo", "--data", DATA, "--limit", "16", "--target", target, "--out", out)
    assert TARGETS[target] in line
    assert "params:4" in line or "cannot be met" in line  # says how to write one
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# real processes: nothing else reaches stderr
# ------------------------------------------------------------------------------------------------


def test_real_processes_print_one_line(corpus, folders, tmp_path):
    """Three real processes (each pays for importing torch, so few) where a warning or log line from
    torch or PIL would show: a protocol-4 pickle (torch warns about it before refusing it), a folder of
    files that are not images, and a ratio the model cannot reach (the check runs before the analysis
    prints its progress)."""
    py = [sys.executable, "-m", "lrviz.cli"]
    script = shutil.which("lrviz") or str(Path(sys.executable).with_name("lrviz"))
    if not Path(script).exists():
        script = None
    cases = [
        (py + ["analyze", "demo", "--weights", str(corpus["files"]["code.pkl"])], "refused to unpickle"),
        ([*(script and [script] or py), "evaluate", "demo", "--data", f"imagefolder:{folders}/not-images", "--grayscale"],
         "not a readable image"),
        (py + ["compress", "demo", "--plan", "ratio:1e9", "--out", str(tmp_path / "o1")], "cannot reach"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    procs = [(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env), argv, msg)
             for argv, msg in cases]
    for proc, argv, msg in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("lrviz: error: ") and msg in err, (argv, err)
        assert out == "", (argv, out)
    assert not (tmp_path / "o1").exists()
    assert not corpus["marker"].exists()


# ------------------------------------------------------------------------------------------------
# the dashboard's loaders raise LrvizError (shown with st.error), never another type
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["code.pkl", "code.pt", "truncated.pt", "text.pt", "resnet18.pt", "int8.pt", "list.pt"])
def test_dashboard_load_source_raises_lrviz_error(corpus, tmp_path, name):
    from lrviz import sources as dashboard

    upload = f"upload-{Path(name).stem}.pt"
    src = dashboard.state_dict_source("demo", corpus["files"][name].read_bytes(), upload, directory=tmp_path)
    with pytest.raises(LrvizError) as info:
        dashboard.load_source(src)
    assert type(info.value) is LrvizError
    assert upload in str(info.value) and src.weights not in str(info.value)  # the user's file, not the stored copy
    assert not corpus["marker"].exists()


@pytest.mark.parametrize("spec,msg", [
    ("imagefolder:{d}/not-images", "is not a readable image"),
    ("imagefolder:{d}/empty", "no usable images"),
    ("imagefolder:{d}/missing", "does not exist"),
    ("synthetic:1,28,28", "synthetic:C,H,W,K,N"),
])
def test_dashboard_load_dataset_raises_lrviz_error(folders, spec, msg):
    from lrviz import sources as dashboard

    with pytest.raises(LrvizError, match=msg) as info:
        dashboard.load_dataset(dashboard.dataset_source(spec.format(d=folders), (1, 28, 28)))
    assert type(info.value) is LrvizError
