"""The experiment store (lrviz.store): records, schema upgrades, concurrent writers, bad files."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from lrviz.errors import LrvizError
from lrviz.store import MIGRATIONS, SCHEMA_VERSION, STORE_ENV, Store, store_path


def test_record_round_trip_and_filters(tmp_path):
    s = Store(tmp_path / "x.sqlite")
    a = s.record("evaluation", model="m1", model_name="demo", data="fashion-mnist:test", metrics={"top1": 0.9, "n": 500, "bad": math.nan})
    b = s.record("config", model="m1", data="fashion-mnist:test", name="c1", metrics={"top1": 0.8}, payload={"rows": [1, 2]},
                 origin="dashboard")
    s.record("evaluation", model="m2", data="fashion-mnist:test", metrics={"top1": 0.5})
    assert a < b
    runs = s.runs(model="m1")
    assert [r.id for r in runs] == [a, b]
    assert runs[0].metrics == {"top1": 0.9, "n": 500, "bad": None}  # NaN stored as null, never as invalid JSON
    assert runs[1].payload == {"rows": [1, 2]} and runs[1].origin == "dashboard" and runs[1].name == "c1"
    assert [r.id for r in s.runs(kind="evaluation")] == [a, a + 2]
    assert [r.id for r in s.runs(kind=("config",), model="m1")] == [b]
    assert [r.id for r in s.runs(limit=1)] == [a + 2]  # the newest one
    assert s.count() == 3
    assert s.delete(b) and not s.delete(b) and s.count() == 2


def test_replace_keeps_one_record_per_name(tmp_path):
    s = Store(tmp_path / "x.sqlite")
    s.record("config", model="m", data="d", name="c", metrics={"v": 1}, replace=True)
    s.record("config", model="m", data="d", name="c", metrics={"v": 2}, replace=True)
    s.record("config", model="m", data="d", name="other", metrics={"v": 3}, replace=True)
    assert [(r.name, r.metrics["v"]) for r in s.runs(kind="config")] == [("c", 2), ("other", 3)]


def test_plan_is_kept_with_its_key(tmp_path):
    from helpers import tiny_net

    from lrviz import make_plan
    from lrviz.analysis import analyze
    from lrviz.keys import plan_key
    from lrviz.plan import RankPlan

    demo_analysis = analyze(tiny_net(), (3, 16, 16), "tiny")
    plan = make_plan(demo_analysis, "uniform:0.5")
    s = Store(tmp_path / "x.sqlite")
    s.record("evaluation", model="m", plan=plan)
    run = s.runs()[0]
    assert run.plan_key == plan_key(plan)
    assert RankPlan.from_json(run.plan_json, demo_analysis.layers).ranks() == plan.ranks()


def test_wal_mode_and_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "sub" / "env.sqlite"))
    assert store_path() == tmp_path / "sub" / "env.sqlite"
    s = Store()
    assert s.path == tmp_path / "sub" / "env.sqlite" and s.path.is_file()
    con = sqlite3.connect(s.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    monkeypatch.delenv(STORE_ENV)
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(tmp_path / "cache"))
    assert store_path() == tmp_path / "cache" / "experiments.sqlite"


def test_a_store_of_schema_1_is_upgraded_and_keeps_its_records(tmp_path):
    p = tmp_path / "old.sqlite"
    con = sqlite3.connect(p)
    for stmt in MIGRATIONS[0]:
        con.execute(stmt)
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO runs (created, kind, model, data, name, metrics) VALUES (1.0, 'evaluation', 'm', 'd', 'old', '{\"top1\": 0.7}')")
    con.commit()
    con.close()
    s = Store(p)
    (old,) = s.runs()
    assert old.name == "old" and old.metrics == {"top1": 0.7} and old.model_name == "" and old.payload is None and old.origin == "cli"
    s.record("sweep", model="m", payload=[{"a": 1}])
    assert sqlite3.connect(p).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r.kind for r in Store(p).runs()] == ["evaluation", "sweep"]


def test_newer_schema_is_refused_clearly(tmp_path):
    p = tmp_path / "new.sqlite"
    Store(p)
    con = sqlite3.connect(p)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(LrvizError, match="newer lrviz"):
        Store(p)


@pytest.mark.parametrize("content", [b"this is not a database at all" * 50, b"SQLite format 3\x00" + b"\xff" * 2000])
def test_corrupt_file_gives_a_clear_error(tmp_path, content):
    p = tmp_path / "bad.sqlite"
    p.write_bytes(content)
    with pytest.raises(LrvizError, match="not a readable SQLite database|experiment store"):
        Store(p)
    assert p.read_bytes() == content  # nothing written over it


def test_foreign_database_is_refused(tmp_path):
    p = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LrvizError, match="not an lrviz experiment store.*customers"):
        Store(p)
    con = sqlite3.connect(p)
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    with pytest.raises(LrvizError, match="not an lrviz experiment store"):
        Store(p)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(LrvizError, match="not a file"):
        Store(tmp_path)


def test_two_processes_writing_at_once_lose_no_record(tmp_path):
    p = tmp_path / "shared.sqlite"
    code = textwrap.dedent(f"""
        import sys
        from lrviz.store import Store
        tag = sys.argv[1]
        for i in range(120):
            Store({str(p)!r}).record("evaluation", model=tag, name=str(i), metrics={{"i": i}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in ("a", "b")]
    assert [pr.wait(timeout=120) for pr in procs] == [0, 0]
    s = Store(p)
    for tag in ("a", "b"):
        assert sorted(int(r.name) for r in s.runs(model=tag)) == list(range(120))
    assert s.count() == 240


def test_artifact_dirs_are_new_private_and_removed_with_their_record(tmp_path):
    s = Store(tmp_path / "x.sqlite")
    d1, d2 = s.new_artifact_dir("finetune"), s.new_artifact_dir("finetune")
    assert d1 != d2 and d1.parent == s.files_dir and (d1.stat().st_mode & 0o777) == 0o700
    (d1 / "w.pt").write_bytes(b"x")
    rid = s.record("finetune", model="m", artifact=d1)
    assert s.get(rid).artifact == str(d1)
    s.delete(rid)
    assert not d1.exists() and d2.exists()


def test_unknown_kind(tmp_path):
    with pytest.raises(LrvizError, match="unknown record kind"):
        Store(tmp_path / "x.sqlite").record("party", model="m")
