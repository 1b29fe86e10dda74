"""The dashboard's half of the experiment store (issue 13): what a session did — saved configurations,
measured plans, sweeps, fine-tuning runs with their weights, exports — is recorded in ``$LRVIZ_DB`` and a
new session (a new AppTest on the same store: a reloaded tab) starts with it; a store that cannot be
used is one error line, never a traceback.

Each test has its own store (``LRVIZ_DB`` in a temporary folder). Streamlit's caches are per process,
so a "reload after a server restart" also empties the shared result store (:func:`restart`): what the
new session shows then comes from the database, not from memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from helpers import dashboard_without_bundled  # noqa: E402

from lrviz.models import load_model  # noqa: E402
from lrviz.store import STORE_ENV, Store  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app.py"
if str(APP.parent) not in sys.path:
    sys.path.insert(0, str(APP.parent))

from pages._state import result_store  # noqa: E402

QUICK_N = 100


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at, page: str):
    at.switch_page(page)
    return ok(at.run())


def ctx_of(at):
    return at.session_state["_lrviz_ctx"]


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "experiments.sqlite"
    monkeypatch.setenv(STORE_ENV, str(path))
    return path


def restart() -> None:
    """Forget what this process measured (as a server restart does): the shared result store is emptied."""
    rs = result_store()
    with rs._lock:
        rs._data.clear()


@pytest.fixture(autouse=True)
def _fresh_process(db):
    """Each test starts as a fresh server would: what other tests of this process measured is forgotten (else an
    evaluation they made is found in the shared result store and never recorded here)."""
    restart()
    yield


def store_errors(at) -> list[str]:
    return [e.value for e in at.error if "Experiment store" in e.value]


def test_a_reload_keeps_saved_configurations_and_measured_plans(db, monkeypatch):
    at = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    at.button(key="quick_eval").click()
    ok(at.run())
    key = (ctx_of(at).model_id, ctx_of(at).data_key, QUICK_N)
    (row,) = at.session_state["_measured"][key]
    goto(at, "pages/compare.py")
    at.text_input(key="config_name").set_value("three-x")
    at.button(key="save_config").click()
    ok(at.run())
    assert not at.error and not at.warning, [e.value for e in at.error] + [w.value for w in at.warning]
    config = dict(at.session_state["_configs"][ctx_of(at).model_id]["three-x"])

    store = Store(db)
    evals = store.runs("evaluation")
    # one record per evaluation: the original, and the quick evaluation once (with its measured row)
    assert sorted(r.name for r in evals) == sorted(["original", row["label"]]), [(r.name, r.payload) for r in evals]
    (quick,) = [r for r in evals if r.payload is not None]
    assert quick.payload == row and quick.plan_key == row["plan_key"] and quick.data == "fashion-mnist-sample:test"
    assert quick.metrics["n"] == QUICK_N and quick.metrics["limit"] == QUICK_N and quick.origin == "dashboard"
    assert quick.metrics["params_ratio"] == pytest.approx(row["params_ratio"])
    (cfg,) = store.runs("config")
    assert cfg.name == "three-x" and cfg.plan_key == row["plan_key"] and cfg.metrics["top1"] == pytest.approx(row["top1"])

    # a new session after a restart: the Compare page lists the configuration, the history the records
    restart()
    at2 = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/compare.py")
    assert not store_errors(at2)
    assert list(at2.session_state["_configs"][ctx_of(at2).model_id]) == ["three-x"]
    assert at2.session_state["_configs"][ctx_of(at2).model_id]["three-x"] == config
    names = [list(df.value["name"]) for df in at2.dataframe if "name" in df.value]
    assert ["three-x"] in names, names
    history = next(df.value for df in at2.dataframe if "kind" in df.value and "origin" in df.value)
    assert sorted(history["kind"]) == ["config", "evaluation", "evaluation"]
    assert (history["data"] == "fashion-mnist-sample:test").all() and (history["origin"] == "dashboard").all()
    assert (history.loc[history["kind"] == "config", "on"] == f"{QUICK_N} images").all()  # the images of each top-1
    # ... the Ranks page has the measured plan (with what was projected before it was measured)
    goto(at2, "pages/ranks.py")
    assert at2.session_state["_measured"][key] == [row]
    # ... and shows its accuracy without measuring again
    at2.button(key="preset_ratio").click()
    ok(at2.run())
    assert any("Measured top-1 of this plan" in s.value and f"n={QUICK_N}" in s.value for s in at2.success), \
        [s.value for s in at2.success]
    assert len(store.runs("evaluation")) == 2

    # the history loads a record's plan into the Ranks page and deletes a record (the configuration with it)
    goto(at2, "pages/ranks.py").button(key="preset_full").click()
    ok(at2.run())
    goto(at2, "pages/compare.py")
    at2.selectbox(key="history_choice").set_value(cfg.id)
    ok(at2.run())
    at2.button(key="history_load").click()
    ok(at2.run())
    assert at2.session_state["_plans"][ctx_of(at2).model_id]["ranks"] == {
        lp["name"]: tuple(lp["ranks"]) for lp in json.loads(cfg.plan_json)["layers"]}
    assert any("Loaded the plan of record" in s.value for s in at2.success)
    at2.selectbox(key="history_choice").set_value(cfg.id)
    ok(at2.run())
    at2.button(key="history_delete").click()
    ok(at2.run())
    assert not store.runs("config") and "three-x" not in at2.session_state["_configs"][ctx_of(at2).model_id]


def _corrupt(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.commit()
    con.close()


def _newer(path: Path) -> None:
    Store(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()


@pytest.mark.parametrize("make, expect", [(_corrupt, "not a readable SQLite database"), (_foreign, "not an lrviz experiment store"),
                                          (_newer, "newer lrviz")])
def test_an_unusable_store_is_one_error_and_the_dashboard_works_on(db, monkeypatch, make, expect):
    make(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    at = dashboard_without_bundled(monkeypatch, QUICK_N)
    (err,) = store_errors(at)
    assert expect in err and str(db) in err, err
    at = goto(at, "pages/compare.py")
    at.text_input(key="config_name").set_value("kept in the session")
    at.button(key="save_config").click()
    ok(at.run())
    assert "kept in the session" in at.session_state["_configs"][ctx_of(at).model_id]
    assert len(store_errors(at)) == 1 and not at.warning, [e.value for e in at.error] + [w.value for w in at.warning]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # never written to


def test_a_sweep_survives_a_reload(db, monkeypatch):
    at = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/compare.py")
    at.multiselect(key="sweep_ratios").set_value([2.0])
    at.multiselect(key="sweep_strategies").set_value(["uniform"])
    at.button(key="run_sweep").click()
    ok(at.run())
    skey = (ctx_of(at).model_id, ctx_of(at).data_key, (QUICK_N, "params"))
    sweep = at.session_state["_sweeps"][skey]
    assert len(sweep) == 1 and sweep["top1"].notna().all()
    (run,) = Store(db).runs("sweep")
    assert run.metrics == {"metric": "params", "images": QUICK_N, "strategies": ["uniform"], "targets": [2.0]}

    at2 = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/compare.py")
    again = at2.session_state["_sweeps"][skey]
    cols = ["strategy", "target", "metric", "params_ratio", "macs_ratio", "spec", "ranks", "projected", "top1", "lo", "hi", "n"]
    pd.testing.assert_frame_equal(again[cols], sweep[cols], check_dtype=False)
    assert any("Measured on" in c.value for c in at2.caption) and at2.get("plotly_chart")


def test_a_finetuning_run_is_recorded_with_weights_that_load_as_a_model(db, monkeypatch):
    at = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/ranks.py")
    at.button(key="preset_ratio").click()
    ok(at.run())
    goto(at, "pages/finetune.py")
    at.number_input(key="ft_epochs").set_value(1)
    at.number_input(key="ft_train_n").set_value(128)
    at.number_input(key="ft_val_n").set_value(50)
    at.button(key="ft_start").click()
    ok(at.run())
    deadline = time.time() + 120
    while time.time() < deadline and not any("Fine-tuning" in s.value for s in at.success):
        time.sleep(0.5)
        ok(at.run())
    ft = at.session_state["_finetuned"][ctx_of(at).model_id]
    stored = ft["stored"]
    (run,) = Store(db).runs("finetune")
    assert stored["id"] == run.id and run.artifact == stored["artifact"] and run.plan_key == ft["plan_key"]
    assert run.metrics["epochs_run"] == 1 and run.metrics["val_n"] == 50 and run.metrics["train_n"] == 128
    assert run.payload["split"] == ft["split"] and run.payload["data_key"] == ctx_of(at).data_key
    assert any(f"record #{run.id}" in c.value and run.artifact in c.value for c in at.caption)

    # the weights: a state_dict export directory in the store's files that loads as a MODEL, same outputs
    assert Path(run.artifact).parent == Path(str(db) + ".files")
    loaded = load_model(run.artifact)
    x = torch.randn(4, *loaded.input_size, generator=torch.Generator().manual_seed(1))
    model = ft["model"]
    flags = [m.training for m in model.modules()]
    with torch.no_grad():
        was = model.training
        model.eval()
        want = model(x)
        model.train(was)
        assert torch.allclose(loaded.module(x), want, atol=1e-6)
    assert [m.training for m in model.modules()] == flags

    # an export of it is recorded with its parity
    at.button(key="build_export").click()
    ok(at.run())
    exports = {r.metrics["format"]: r for r in Store(db).runs("export")}
    assert {"pt2", "onnx"} <= set(exports) and all(r.metrics["finetuned"] for r in exports.values())
    assert exports["pt2"].metrics["max_abs_diff"] <= 1e-4 * exports["pt2"].metrics["output_scale"]

    # a reload lists the run and loads it back as the session's fine-tuned model of its plan
    restart()
    at2 = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/finetune.py")
    table = next(df.value for df in at2.dataframe if "validation images" in df.value)
    assert list(table["id"]) == [run.id] and list(table["weights"]) == [run.artifact]
    at2.button(key="ft_history_load").click()
    ok(at2.run())
    ft2 = at2.session_state["_finetuned"][ctx_of(at2).model_id]
    assert ft2["plan_key"] == run.plan_key and ft2["split"] == ft["split"]
    assert at2.session_state["_plans"][ctx_of(at2).model_id]["ranks"] == at.session_state["_plans"][ctx_of(at).model_id]["ranks"]
    with torch.no_grad():
        assert torch.allclose(ft2["model"](x), want, atol=1e-6)
    assert any("Fine-tuning finished" in s.value for s in at2.success), [s.value for s in at2.success]


def test_a_store_that_breaks_during_a_session_is_a_warning_not_a_traceback(db, monkeypatch):
    at = goto(dashboard_without_bundled(monkeypatch, QUICK_N), "pages/compare.py")
    assert not store_errors(at)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    _corrupt(db)
    at.text_input(key="config_name").set_value("after")
    at.button(key="save_config").click()
    ok(at.run())
    assert "after" in at.session_state["_configs"][ctx_of(at).model_id]
    warnings = [w.value for w in at.warning if "Experiment store" in w.value]
    assert warnings and all("not a readable SQLite database" in w for w in warnings), warnings
