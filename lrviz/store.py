"""The experiment store: every evaluation, saved configuration, sweep, fine-tuning run, benchmark and
export, in one local SQLite database that outlives a dashboard tab and is shared with the command line.

Where: ``$LRVIZ_DB`` when set, else ``experiments.sqlite`` in lrviz's cache folder
(:func:`lrviz.storage.cache_root`). Files a record points to (fine-tuned weights) live in the folder
``<database>.files/<run id>/`` beside it.

Concurrency: the database runs in WAL mode (readers never block the writer; the CLI and several
dashboard sessions write at once) and every write is one short ``BEGIN IMMEDIATE`` transaction with a
busy timeout, so concurrent writers wait for each other instead of failing or losing a record. Each
operation opens its own connection (Streamlit runs scripts on many threads).

Identity: a record is keyed by the model's fingerprint (:func:`model_key`: its architecture and every
tensor of its state_dict), the data (a name such as ``fashion-mnist:test``) and the plan (its ranks,
:func:`lrviz.keys.plan_key`, with the plan's JSON kept so it can be loaded again).

Schema: versioned with ``PRAGMA user_version`` and a ``lrviz_meta`` table that marks the file as
lrviz's. A store written by an older lrviz is upgraded in place when opened (:data:`MIGRATIONS`, one
step per version); one written by a newer lrviz, a corrupt file or another program's database gives
an :class:`~lrviz.errors.LrvizError` that says which, never a traceback.

Schema history: 1 — ``runs`` with scalar metrics; 2 — adds the model's display name, a JSON payload
(tables such as a sweep's rows), an artifact path, the origin (cli / dashboard) and lrviz's version.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import LrvizError
from .storage import cache_root

__all__ = ["STORE_ENV", "SCHEMA_VERSION", "KINDS", "Run", "Store", "store_path", "model_key", "open_store", "eval_metrics", "cost_metrics"]

#: Environment variable that moves the database.
STORE_ENV = "LRVIZ_DB"
#: The schema this lrviz writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: What a record can be.
KINDS = ("evaluation", "config", "sweep", "finetune", "bench", "export", "sensitivity", "solve")
#: Seconds a writer waits for another's transaction before giving up.
BUSY_TIMEOUT_S = 30.0
_APP_ID = "lrviz experiment store"

#: ``MIGRATIONS[v]`` takes a store at version ``v`` to ``v + 1`` (``MIGRATIONS[0]`` creates it).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        "CREATE TABLE lrviz_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"INSERT INTO lrviz_meta VALUES ('application', '{_APP_ID}')",
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL, "
        "data TEXT NOT NULL DEFAULT '-', plan_key TEXT, plan_json TEXT, name TEXT NOT NULL DEFAULT '', metrics TEXT NOT NULL DEFAULT '{}')",
        "CREATE INDEX runs_model ON runs (model, data, kind)",
    ),
    (  # 1 -> 2
        "ALTER TABLE runs ADD COLUMN model_name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN payload TEXT",
        "ALTER TABLE runs ADD COLUMN artifact TEXT",
        "ALTER TABLE runs ADD COLUMN origin TEXT NOT NULL DEFAULT 'cli'",
        "ALTER TABLE runs ADD COLUMN lrviz_version TEXT NOT NULL DEFAULT ''",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

_COLUMNS = ("id", "created", "kind", "model", "model_name", "data", "plan_key", "plan_json", "name", "metrics", "payload",
            "artifact", "origin", "lrviz_version")


def store_path() -> Path:
    """The database file: ``$LRVIZ_DB``, else ``experiments.sqlite`` under lrviz's cache folder."""
    env = os.environ.get(STORE_ENV)
    return Path(env).expanduser() if env else cache_root() / "experiments.sqlite"


def model_key(model) -> str:
    """The model's fingerprint as the store keys it: 16 hex digits of
    :func:`lrviz.sensitivity_cache.model_fingerprint` (architecture + every state_dict tensor)."""
    from .sensitivity_cache import model_fingerprint

    return model_fingerprint(model)[:16]


def _version() -> str:
    from . import __version__

    return __version__


def _clean(obj):
    """``obj`` as plain JSON: NaN / inf become null, numpy scalars and tuples plain values."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _dumps(obj) -> str:
    return json.dumps(_clean(obj), allow_nan=False, sort_keys=True)


@dataclass(frozen=True)
class Run:
    """One record of the store."""

    id: int
    created: float
    kind: str
    model: str
    model_name: str
    data: str
    plan_key: str | None
    plan_json: str | None
    name: str
    metrics: dict
    payload: Any
    artifact: str | None
    origin: str
    lrviz_version: str

    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict:
        """One flat row (metrics spread into ``m.<name>`` columns; the payload and plan JSON left out): CSV and tables."""
        row = {k: v for k, v in self.to_dict().items() if k not in ("metrics", "payload", "plan_json")}
        row["created"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        for k, v in sorted(self.metrics.items()):
            row[f"m.{k}"] = json.dumps(v) if isinstance(v, (dict, list)) else v
        return row


class Store:
    """An lrviz experiment store at ``path`` (default :func:`store_path`), created or upgraded on open.

    Raises
    ------
    LrvizError
        When the file is not an SQLite database, is another program's database, was written by a
        newer lrviz, or cannot be created.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else store_path()
        self._open_checked()

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise LrvizError(f"cannot open the experiment store {self.path}: {e}; set {STORE_ENV} to a file you can write") from e
        con.row_factory = sqlite3.Row
        return con

    def _fail(self, e: Exception, doing: str) -> LrvizError:
        msg = str(e)
        if isinstance(e, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg or "encrypted" in msg):
            return LrvizError(f"the experiment store {self.path} is not a readable SQLite database ({msg}); move it away or set "
                              f"{STORE_ENV} to another file")
        return LrvizError(f"experiment store {self.path}: {doing} failed: {msg}")

    def _open_checked(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise LrvizError(f"the experiment store {self.path} is not a file; set {STORE_ENV} to a file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LrvizError(f"cannot create the folder of the experiment store {self.path}: {e.strerror or e}") from e
        con = self._connect()
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                self._migrate(con)
            elif version > SCHEMA_VERSION:
                raise LrvizError(f"the experiment store {self.path} has schema {version}, written by a newer lrviz (this one reads "
                                 f"up to {SCHEMA_VERSION}); upgrade lrviz or set {STORE_ENV} to another file")
            self._check_ours(con)
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise self._fail(e, "opening") from e
        finally:
            con.close()

    def _check_ours(self, con: sqlite3.Connection) -> None:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        app = None
        if "lrviz_meta" in tables:
            row = con.execute("SELECT value FROM lrviz_meta WHERE key='application'").fetchone()
            app = row[0] if row else None
        if app != _APP_ID or "runs" not in tables:
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise LrvizError(f"{self.path} is an SQLite database but not an lrviz experiment store (its tables: {shown}); set "
                             f"{STORE_ENV} to another file")

    def _migrate(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see the new version
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > 0 or con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                if version == 0:  # tables but no version: someone else's database
                    con.execute("ROLLBACK")
                    self._check_ours(con)
                    raise LrvizError(f"{self.path} is an lrviz store without a schema version; set {STORE_ENV} to another file")
                self._check_ours(con)
            for v in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[v]:
                    con.execute(stmt)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("INSERT OR REPLACE INTO lrviz_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    # -- records -------------------------------------------------------------------------------------

    def record(self, kind: str, *, model: str, model_name: str = "", data: str = "-", plan=None, name: str = "",
               metrics: dict | None = None, payload: Any = None, artifact: str | os.PathLike | None = None, origin: str = "cli",
               replace: bool = False) -> int:
        """Add a record; returns its id. ``plan`` is a :class:`~lrviz.plan.RankPlan` (its key and JSON are kept) or None.
        ``replace`` first removes the records of the same kind, model, data and name (a saved configuration
        saved again) in the same transaction."""
        if kind not in KINDS:
            raise LrvizError(f"unknown record kind {kind!r}; one of {', '.join(KINDS)}")
        pk = pj = None
        if plan is not None:
            from .keys import plan_key

            pk, pj = plan_key(plan), plan.to_json()
        values = (time.time(), kind, str(model), str(model_name), str(data), pk, pj, str(name), _dumps(metrics or {}),
                  None if payload is None else _dumps(payload), None if artifact is None else str(artifact), str(origin), _version())
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            if replace:
                con.execute("DELETE FROM runs WHERE kind=? AND model=? AND data=? AND name=?", (kind, str(model), str(data), str(name)))
            cur = con.execute("INSERT INTO runs (created, kind, model, model_name, data, plan_key, plan_json, name, metrics, payload, "
                              "artifact, origin, lrviz_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
            con.execute("COMMIT")
            return int(cur.lastrowid)
        except sqlite3.Error as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise self._fail(e, "writing a record") from e
        finally:
            con.close()

    def runs(self, kind: str | Iterable[str] | None = None, model: str | None = None, data: str | None = None,
             name: str | None = None, limit: int | None = None) -> list[Run]:
        """Records matching every given field, oldest first (``limit``: the newest ``limit`` of them)."""
        where, args = [], []
        if kind is not None:
            kinds = [kind] if isinstance(kind, str) else list(kind)
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += kinds
        for col, val in (("model", model), ("data", data), ("name", name)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(str(val))
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        con = self._connect()
        try:
            rows = con.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self._fail(e, "reading") from e
        finally:
            con.close()
        return [self._run(r) for r in reversed(rows)]

    def get(self, run_id: int) -> Run | None:
        con = self._connect()
        try:
            row = con.execute("SELECT * FROM runs WHERE id=?", (int(run_id),)).fetchone()
        except sqlite3.Error as e:
            raise self._fail(e, "reading") from e
        finally:
            con.close()
        return None if row is None else self._run(row)

    def delete(self, run_id: int) -> bool:
        """Remove one record (its artifact folder too, when it is in this store's files folder); True when it existed."""
        run = self.get(run_id)
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            n = con.execute("DELETE FROM runs WHERE id=?", (int(run_id),)).rowcount
            con.execute("COMMIT")
        except sqlite3.Error as e:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise self._fail(e, "deleting a record") from e
        finally:
            con.close()
        if run is not None and run.artifact:
            self._remove_artifact(Path(run.artifact))
        return bool(n)

    def count(self) -> int:
        con = self._connect()
        try:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.Error as e:
            raise self._fail(e, "reading") from e
        finally:
            con.close()

    # -- files records point to ------------------------------------------------------------------------

    @property
    def files_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".files")

    def new_artifact_dir(self, what: str) -> Path:
        """A new, empty folder for a record's files (``<database>.files/<what>-<time>-<pid>``), mode 0700."""
        from .storage import private_dir

        root = private_dir(self.files_dir)
        stem = f"{what}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        for i in range(1000):
            p = root / (stem if i == 0 else f"{stem}-{i}")
            try:
                os.mkdir(p, 0o700)
                return p
            except FileExistsError:
                continue
        raise LrvizError(f"cannot create a folder under {root}")

    def _remove_artifact(self, p: Path) -> None:
        import shutil

        try:
            if p.resolve().parent == self.files_dir.resolve():
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass

    @staticmethod
    def _run(row: sqlite3.Row) -> Run:
        d = {k: row[k] for k in _COLUMNS}
        d["metrics"] = json.loads(d["metrics"] or "{}")
        d["payload"] = None if d["payload"] is None else json.loads(d["payload"])
        return Run(**d)


def open_store(path: str | os.PathLike | None = None) -> Store:
    """:class:`Store` at ``path`` (default :func:`store_path`)."""
    return Store(path)


def eval_metrics(res, cost=None) -> dict:
    """The metrics of an evaluation as the store keeps them: top-1 with its 95 % interval, top-5, loss, images
    (and the plan's params / MACs ratios when ``cost``, a :class:`~lrviz.cost.CostReport`, is given)."""
    m = {"top1": float(res.top1), "lo": float(res.top1_ci[0]), "hi": float(res.top1_ci[1]), "n": int(res.n),
         "top5": None if getattr(res, "top5", None) is None else float(res.top5),
         "loss": None if getattr(res, "loss", None) is None else float(res.loss)}
    if cost is not None:
        m.update(cost_metrics(cost))
    return m


def cost_metrics(cost) -> dict:
    """Params and MACs before / after a plan and their ratios (from a :class:`~lrviz.cost.CostReport`)."""
    return {"params": int(cost.params), "params_planned": int(cost.params_planned), "params_ratio": float(cost.params_ratio),
            "macs": int(cost.macs), "macs_planned": int(cost.macs_planned), "macs_ratio": float(cost.macs_ratio)}
