"""An lrviz export directory is a MODEL in the dashboard: opened from a folder path or from the experiment
store's fine-tuning / export records, rebuilt without unpickling anything, usable by every page; a bad
folder or an unreadable store is one error line, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest.importorskip("streamlit")

import torch  # noqa: E402
from helpers import dashboard_without_bundled  # noqa: E402

from lrviz import RankPlan, fmt, plan_cost, sources  # noqa: E402
from lrviz.analysis import analyze  # noqa: E402
from lrviz.cli import main  # noqa: E402
from lrviz.models import load_model  # noqa: E402
from lrviz.sensitivity import model_fingerprint  # noqa: E402
from lrviz.store import Store  # noqa: E402

APP_DIR = Path(__file__).resolve().parents[1]
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from pages._state import CTX_KEY  # noqa: E402

QUICK_N = 100
PLAN = "uniform:0.5"


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}; have {[m.label for m in at.metric]}")


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A ``state_dict`` export of the bundled demo with plan uniform:0.5, and the plan's planned params."""
    out = tmp_path_factory.mktemp("exports") / "demo_half"
    assert main(["export", "demo", "--plan", PLAN, "--format", "state_dict", "--out", str(out)]) == 0
    base = load_model("demo")
    a = analyze(base.module, base.input_size, base.name, spectra=False)
    plan = RankPlan.load(out / "plan.json", a.layers)
    return out, plan, plan_cost(a, plan).params_planned


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "experiments.sqlite"
    monkeypatch.setenv("LRVIZ_DB", str(path))
    return path


def open_folder(at, folder) -> None:
    at.text_input(key="export_dir_path").set_value(str(folder))
    ok(at.run())


# ---- the library side: source, key, load ------------------------------------------------------------------


def test_export_dir_source_keys_on_the_folder_content(export_dir, tmp_path):
    out, _, planned = export_dir
    src = sources.export_dir_source(out)
    assert src.key == sources.export_dir_source(str(out) + "/").key  # stable: same folder, same files
    assert src.key.startswith("export_dir:") and "plan uniform:0.5" in src.note and str(out) in src.note
    loaded, notes = sources.load_source(src)
    assert notes == [] and loaded.decomposable and n_params(loaded.module) == planned
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    k1 = sources.export_dir_source(copy).key
    state = torch.load(copy / "state_dict.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 1.0
    torch.save(state, copy / "state_dict.pt")
    k2 = sources.export_dir_source(copy).key
    doc = json.loads((copy / "plan.json").read_text())
    doc["parity"]["batch"] = 5
    (copy / "plan.json").write_text(json.dumps(doc))
    k3 = sources.export_dir_source(copy).key
    assert len({src.key, k1, k2, k3}) == 4  # new weights or a new plan.json: a new model


# ---- the dashboard: an export folder ------------------------------------------------------------------------


def test_an_export_folder_is_the_compressed_model_on_every_page(export_dir, db, monkeypatch):
    out, plan, planned = export_dir
    at = dashboard_without_bundled(monkeypatch, QUICK_N)
    at.radio(key="model_kind").set_value("export")
    ok(at.run())
    assert any("export folder" in i.value for i in at.info), [i.value for i in at.info]  # waits for a path, no error
    open_folder(at, out)
    assert not at.error, [e.value for e in at.error]
    ctx = at.session_state[CTX_KEY]
    before = model_fingerprint(ctx.loaded.module)
    assert n_params(ctx.loaded.module) == planned and ctx.loaded.source == "export directory (demo + plan uniform:0.5)"
    assert metric(at, "Parameters") == fmt.human(planned)
    assert any("Compressed model rebuilt from" in c.value and "plan uniform:0.5" in c.value for c in at.sidebar.caption), \
        [c.value for c in at.sidebar.caption]
    assert len(ctx.analysis.layers) > len(plan.layers)  # the factor layers are layers to analyse again
    at.switch_page("pages/spectra.py")
    ok(at.run())
    assert not at.error and at.title
    at.switch_page("pages/ranks.py")
    ok(at.run())
    at.button(key="preset_uniform").click()  # compressed further
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    at.button(key="quick_eval").click()
    ok(at.run())
    assert not at.error, [e.value for e in at.error]
    assert model_fingerprint(ctx.loaded.module) == before  # the shared, cached model is unchanged


def _bad_folders(root: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Folders that are not a loadable export, and a word of the error each must give."""
    empty = root / "empty"
    empty.mkdir()
    plain = root / "plain"
    plain.mkdir()
    doc = json.loads((good / "plan.json").read_text())
    plain_doc = {k: v for k, v in doc.items() if k not in ("architecture", "format", "parity")}
    (plain / "plan.json").write_text(json.dumps(plain_doc))
    pt2 = root / "pt2"
    pt2.mkdir()
    (pt2 / "plan.json").write_text(json.dumps({**doc, "format": "pt2"}))
    (pt2 / "model.pt2").write_bytes(b"PK")
    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "state_dict.pt").write_bytes(b"\x80\x02 not a state_dict")
    wrong = root / "wrong"
    shutil.copytree(good, wrong)
    torch.save({"weight": torch.zeros(3)}, wrong / "state_dict.pt")
    a_file = root / "a_file.pt"
    a_file.write_bytes(b"x")
    return {"missing": (root / "nowhere", "does not exist"), "file": (a_file, "not a folder"), "empty": (empty, "no plan.json"),
            "plain plan": (plain, "plain plan"), "pt2 export": (pt2, "model.pt2"),
            "corrupt state_dict": (corrupt, "not an archive torch.save writes"), "wrong tensors": (wrong, "does not match")}


class _Bomb:
    """Unpickling this would create ``path`` (what a malicious checkpoint does)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_export_folders_are_one_error_line(export_dir, db, monkeypatch, tmp_path):
    out, _, planned = export_dir
    cases = _bad_folders(tmp_path, out)
    marker = tmp_path / "unpickled"
    hostile = tmp_path / "hostile"
    shutil.copytree(out, hostile)
    torch.save({"weight": _Bomb(str(marker))}, hostile / "state_dict.pt")
    cases["pickled object"] = (hostile, "weights_only")
    at = dashboard_without_bundled(monkeypatch, QUICK_N)
    at.radio(key="model_kind").set_value("export")
    ok(at.run())
    for name, (folder, expect) in cases.items():
        open_folder(at, folder)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and expect in errors[0], (name, errors)
        assert "Traceback" not in errors[0] and CTX_KEY not in at.session_state, name
    assert not marker.exists()  # nothing was unpickled
    open_folder(at, out)  # and the app keeps working
    assert not at.error and metric(at, "Parameters") == fmt.human(planned)


# ---- the dashboard: the experiment store's records ------------------------------------------------------


def test_recorded_fine_tuned_models_open_from_the_store(export_dir, db, monkeypatch, tmp_path):
    out, plan, planned = export_dir
    store = Store(db)
    store.record("evaluation", model="m1", model_name="demo", artifact=str(out))  # not a model to open
    store.record("finetune", model="m1", model_name="demo", artifact=str(tmp_path / "gone"), plan=plan)  # folder deleted
    store.record("export", model="m1", model_name="demo", artifact=str(out), plan=plan, name="half")
    rid = store.record("finetune", model="m1", model_name="demo", artifact=str(out), plan=plan, name="ft 1 epoch",
                       origin="dashboard")
    at = dashboard_without_bundled(monkeypatch, QUICK_N)
    at.radio(key="model_kind").set_value("recorded")
    ok(at.run())
    box = at.selectbox(key="recorded_run")
    assert len(box.options) == 1 and box.value == rid  # one entry per folder: its newest record
    label = box.options[0]
    assert all(w in label for w in ("demo", "finetune", "uniform:0.5", "ft 1 epoch")), label
    assert not at.error, [e.value for e in at.error]
    assert n_params(at.session_state[CTX_KEY].loaded.module) == planned
    assert metric(at, "Parameters") == fmt.human(planned)


def test_an_empty_or_unreadable_store_leaves_the_sidebar_working(db, monkeypatch):
    at = dashboard_without_bundled(monkeypatch, QUICK_N)
    at.radio(key="model_kind").set_value("recorded")
    ok(at.run())
    assert not at.error and any("records no fine-tuned" in i.value for i in at.info), [i.value for i in at.info]
    db.write_bytes(b"this is not an SQLite database, just bytes" * 50)
    ok(at.run())
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Cannot list the recorded models:") and str(db) in errors[0], errors
    at.radio(key="model_kind").set_value("builtin")  # the rest of the sidebar still works
    ok(at.run())
    assert not at.error and at.session_state[CTX_KEY].loaded.name == "demo"
