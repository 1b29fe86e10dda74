"""Hostile ``.pt2`` archives: nothing a file brings may run when lrviz opens it.

Each crafted archive starts from a clean ``torch.export.save`` of a tiny net and changes one thing the
way an attacker would. Where it shows that the threat is real, the test first opens the file with
plain ``torch.export.load`` and checks that the payload ran (a marker file appears); then lrviz must
refuse the file (or load it without the payload) and the marker must not exist afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lrviz.errors import LrvizError
from lrviz.models import load_model
from lrviz.pt2 import check_archive, load_program


class _Touch:
    """Pickles to a call that creates ``path`` (a harmless stand-in for ``os.system``)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    x = torch.zeros(2, 1, 8, 8)
    ep = torch.export.export(_net(), (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(ep, str(path))
    return path


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _prefix(entries: dict[str, bytes]) -> str:
    return next(iter(entries)).split("/", 1)[0]


def _edit_json(entries: dict[str, bytes], name: str, edit) -> None:
    doc = json.loads(entries[name])
    edit(doc)
    entries[name] = json.dumps(doc).encode()


def _pickled_weight_archive(clean: Path, path: Path, marker: Path, payload: str = "weight_0") -> Path:
    """A copy of ``clean`` whose first weight is flagged ``use_pickle`` and stored (as ``payload``) as a
    pickle that creates ``marker`` when it is unpickled."""
    entries = _entries(clean)
    pre = _prefix(entries)

    def flag(doc):
        doc["config"]["0.weight"]["use_pickle"] = True
        doc["config"]["0.weight"]["path_name"] = payload

    _edit_json(entries, f"{pre}/data/weights/model_weights_config.json", flag)
    entries[f"{pre}/data/weights/{payload}"] = pickle.dumps(_Touch(marker))
    return _write(path, entries)


def test_clean_export_loads_identically(clean):
    ours = load_program(clean)
    ref = torch.export.load(str(clean))
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.module()(x), ref.module()(x))
    assert torch.equal(ours.module()(x), _net()(x))
    check = check_archive(clean)
    assert check.models == ("model",)
    assert any("sample_inputs" in d for d in check.dropped)


def test_pickled_weight_runs_code_in_torch_but_not_in_lrviz(clean, tmp_path):
    marker = tmp_path / "pwned-weight"
    bad = _pickled_weight_archive(clean, tmp_path / "pickled_weight.pt2", marker, payload="weight_99")

    with pytest.raises(Exception):  # the payload is no tensor, so torch fails *after* running it
        torch.export.load(str(bad))
    assert marker.exists(), "the crafted archive should run its payload in plain torch.export.load"
    marker.unlink()

    with pytest.raises(LrvizError, match="stored as a pickle"):
        load_program(bad)
    with pytest.raises(LrvizError, match="stored as a pickle"):
        load_model(str(bad))
    assert not marker.exists()


def test_pickled_constant_and_custom_objects_refused(clean, tmp_path):
    marker = tmp_path / "pwned-const"
    for path_name, use_pickle in (("tensor_0", True), ("custom_obj_0", False), ("opaque_obj_0", False)):
        entries = _entries(clean)
        pre = _prefix(entries)
        cfg = f"{pre}/data/constants/model_constants_config.json"

        def add(doc, path_name=path_name, use_pickle=use_pickle):
            doc["config"]["evil"] = {
                "path_name": path_name,
                "is_param": False,
                "use_pickle": use_pickle,
                "tensor_meta": {"dtype": 7, "sizes": [], "requires_grad": False, "device": {"type": "cpu", "index": None},
                                "strides": [], "storage_offset": {"as_int": 0}, "layout": 7},
            }

        _edit_json(entries, cfg, add)
        entries[f"{pre}/data/constants/{path_name}"] = pickle.dumps(_Touch(marker))
        bad = _write(tmp_path / f"{path_name}.pt2", entries)
        with pytest.raises(LrvizError, match="pickle|raw tensor"):
            load_program(bad)
        assert not marker.exists()


def test_sample_inputs_payload_is_never_read(clean, tmp_path):
    """torch falls back to ``weights_only=False`` for sample inputs; lrviz drops them unread."""
    marker = tmp_path / "pwned-sample"
    entries = _entries(clean)
    pre = _prefix(entries)
    import io

    buf = io.BytesIO()
    torch.save(_Touch(marker), buf)  # a torch zip whose data.pkl calls open()
    entries[f"{pre}/data/sample_inputs/model.pt"] = buf.getvalue()
    bad = _write(tmp_path / "sample.pt2", entries)

    logging.getLogger("torch._export.serde.serialize").disabled = True
    try:
        try:
            torch.export.load(str(bad))
        except Exception:
            pass
    finally:
        logging.getLogger("torch._export.serde.serialize").disabled = False
    assert marker.exists(), "plain torch.export.load should fall back to weights_only=False and run it"
    marker.unlink()

    program = load_program(bad)  # the program itself is fine: it loads, the payload never runs
    assert program.example_inputs is None
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(program.module()(x), _net()(x))
    assert not marker.exists()


def test_shape_expression_injection_refused(clean, tmp_path):
    marker = tmp_path / "pwned-expr"
    entries = _entries(clean)
    pre = _prefix(entries)
    evil = f"__import__('builtins').open({str(marker)!r}, 'w') and Symbol('s31', positive=True, integer=True)"

    def inject(doc):
        stack = [doc]
        while stack:
            o = stack.pop()
            if isinstance(o, dict):
                for k, v in o.items():
                    if k == "expr_str":
                        o[k] = evil
                    else:
                        stack.append(v)
            elif isinstance(o, list):
                stack.extend(o)

    _edit_json(entries, f"{pre}/models/model.json", inject)
    bad = _write(tmp_path / "expr.pt2", entries)
    try:
        torch.export.load(str(bad))
    except Exception:
        pass
    assert marker.exists(), "sympy.sympify evaluates the crafted expression in plain torch.export.load"
    marker.unlink()
    with pytest.raises(LrvizError, match="shape expression"):
        load_program(bad)
    assert not marker.exists()


@pytest.mark.parametrize("expr", [
    "s0.__class__",
    "exec(chr(49))",
    "Symbol('s0')[0]",
    "Symbol('__import__')",
    "lambda: 0",
    "s0; s1",
])
def test_expression_checker_rejects(expr, clean, tmp_path):
    from lrviz.pt2 import _check_expr

    assert _check_expr(expr) is not None


@pytest.mark.parametrize("expr", [
    "Symbol('s31', positive=True, integer=True)",
    "Mul(Integer(2), Symbol('s0', positive=True, integer=True))",
    "FloorDiv(s0, 2) + 1",
    "Max(1, s0) <= 64",
])
def test_expression_checker_accepts_sympy(expr):
    from lrviz.pt2 import _check_expr

    assert _check_expr(expr) is None


def test_non_aten_target_refused(clean, tmp_path):
    entries = _entries(clean)
    pre = _prefix(entries)

    def retarget(doc):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.os.system"

    _edit_json(entries, f"{pre}/models/model.json", retarget)
    bad = _write(tmp_path / "target.pt2", entries)
    with pytest.raises(LrvizError, match="not an ATen operator"):
        load_program(bad)


def test_unknown_and_legacy_entries_refused(clean, tmp_path):
    entries = _entries(clean)
    pre = _prefix(entries)
    entries[f"{pre}/data/aotinductor/model/model.so"] = b"\x7fELF"
    with pytest.raises(LrvizError, match="does not open"):
        load_program(_write(tmp_path / "aoti.pt2", entries))

    legacy = _write(tmp_path / "legacy.pt2", {"x/serialized_exported_program.json": b"{}", "x/serialized_state_dict.pt": b""})
    with pytest.raises(LrvizError, match="legacy"):
        load_program(legacy)

    entries = _entries(clean)
    entries[f"{pre}/../escape"] = b"x"
    with pytest.raises(LrvizError, match="unsafe path|does not open"):
        load_program(_write(tmp_path / "trav.pt2", entries))


def _garbage_files(tmp_path: Path, clean: Path) -> dict[str, Path]:
    files = {}
    files["random bytes"] = tmp_path / "garbage.pt2"
    files["random bytes"].write_bytes(os.urandom(4096))
    files["empty"] = tmp_path / "empty.pt2"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "text.pt2"
    files["text"].write_text("hello, I am not a model\n")
    files["state_dict renamed"] = tmp_path / "sd.pt2"
    torch.save(_net().state_dict(), files["state_dict renamed"])
    data = clean.read_bytes()
    files["truncated"] = tmp_path / "truncated.pt2"
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


def test_garbage_files_one_clear_error_no_torch_logs(clean, tmp_path, caplog, capfd):
    for what, path in _garbage_files(tmp_path, clean).items():
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(LrvizError) as err:
                load_model(str(path))
        assert "\n" not in str(err.value), what
        assert not [r for r in caplog.records if r.name.startswith("torch")], (what, caplog.records)
    out, errtext = capfd.readouterr()
    assert "Traceback" not in out + errtext


def test_cli_on_hostile_pt2_prints_one_line(clean, tmp_path):
    marker = tmp_path / "pwned-cli"
    bad = _pickled_weight_archive(clean, tmp_path / "cli.pt2", marker)
    files = _garbage_files(tmp_path, clean)
    for path in (bad, files["state_dict renamed"], files["random bytes"]):
        proc = subprocess.run([sys.executable, "-m", "lrviz.cli", "analyze", str(path)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lrviz: error: "), proc.stderr
        assert proc.stdout == ""
    assert not marker.exists()


def test_dashboard_upload_of_hostile_pt2(clean, tmp_path):
    from lrviz import sources as dashboard

    marker = tmp_path / "pwned-upload"
    bad = _pickled_weight_archive(clean, tmp_path / "up.pt2", marker)
    source = dashboard.program_source(bad.read_bytes(), "model.pt2", directory=tmp_path / "uploads")
    with pytest.raises(LrvizError, match="pickle"):
        dashboard.load_source(source)
    assert not marker.exists()
    good = dashboard.program_source(clean.read_bytes(), "model.pt2", directory=tmp_path / "uploads")
    loaded, _ = dashboard.load_source(good)
    assert loaded.program is not None and loaded.num_classes == 3
