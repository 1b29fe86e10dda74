"""The command line's side of the experiment store (:mod:`lrviz.store`): what each command records, and
``lrviz runs``.

Every command that measures or writes something (evaluate, compress, export, bench, sensitivity,
solve, sweep) records it once it has succeeded, keyed by the model's fingerprint + data + plan;
``lrviz --no-record ...`` skips that. A store that cannot be used (corrupt, foreign, newer) costs the
command nothing: one warning line on stderr, the results are still printed and written. ``lrviz runs``
reads the store and fails with the usual one-line error when it cannot.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time

from .errors import LrvizError
from .outputs import write_file

#: Columns of ``lrviz runs``'s table and CSV (metrics follow as ``m.<name>`` in the CSV).
RUN_COLUMNS = ("id", "created", "kind", "model_name", "model", "data", "name", "plan_key", "origin", "artifact")


def data_name(args, split: str | None = None) -> str:
    """The data a record is about: ``NAME:SPLIT`` (``-`` without data)."""
    name = getattr(args, "data", None)
    if not name:
        return "-"
    return f"{name}:{split or getattr(args, 'split', None) or 'test'}"


def record(args, kind: str, loaded, *, plan=None, name: str = "", metrics=None, payload=None, artifact=None, data: str | None = None) -> int | None:
    """Record one result in the experiment store (unless ``--no-record``); returns its id, or None when not recorded.

    Never fails the command: a store that cannot be opened or written is one warning line on stderr."""
    if getattr(args, "no_record", False):
        return None
    try:
        from .store import Store, model_key

        made = getattr(args, "_factor_cache", None)  # data-aware factors: said in the record, never mixed with weight-only ones
        if made is not None and made.kind != "weights":
            metrics, name = {**(metrics or {}), "factors": made.kind}, f"{name} [data factors]"
        store = Store()
        module = loaded.module if loaded.decomposable else loaded.runnable
        rid = store.record(kind, model=model_key(module), model_name=loaded.name, data=data or data_name(args), plan=plan, name=name,
                           metrics=metrics, payload=payload, artifact=None if artifact is None else str(artifact), origin="cli")
    except LrvizError as e:
        print(f"lrviz: warning: not recorded in the experiment store: {' '.join(str(e).split())}", file=sys.stderr)
        return None
    print(f"recorded as run {rid} in {store.path}", file=sys.stderr)
    return rid


def _matches(run, model: str | None) -> bool:
    if model is None:
        return True
    m = model.lower()
    return run.model_name.lower() == m or run.model.startswith(m)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary(run) -> str:
    """A record's result in a few words: top-1 (evaluations, configurations, fine-tuning), the speedup (benchmarks),
    the parity (exports), the images (sensitivities), the rows (sweeps)."""
    m = run.metrics
    if m.get("top1") is not None:
        return f"top-1 {100 * m['top1']:.2f}% (n={m.get('n', '?')})"
    speed = sorted((k for k in m if k.startswith("speedup_b")), key=lambda k: int(k[9:]))
    if speed:
        return ", ".join(f"{m[k]:.2f}x at b{k[9:]}" for k in speed if m[k] is not None)
    if m.get("speedup") is not None:
        return f"{m['speedup']:.2f}x measured"
    if m.get("max_abs_diff") is not None:
        return f"{m.get('format', '?')}, max diff {m['max_abs_diff']:.2g}"
    if m.get("projected_top1") is not None:
        return f"projected {100 * m['projected_top1']:.2f}%"
    if run.kind == "sensitivity":
        return f"{m.get('layers', '?')} layers, {m.get('n', '?')} images"
    if run.kind == "sweep" and isinstance(run.payload, list):
        return f"{len(run.payload)} rows"
    return "-"


def _table(runs) -> str:
    rows = [["id", "when", "kind", "model", "fingerprint", "data", "name", "params x", "MACs x", "result", "origin"]]
    for r in runs:
        m = r.metrics
        rows.append([str(r.id), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)), r.kind, r.model_name or "-", r.model[:10],
                     r.data, (r.name or (r.plan_key or "-"))[:30], _cell(m.get("params_ratio")), _cell(m.get("macs_ratio")),
                     summary(r), r.origin])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def runs_csv(runs) -> str:
    """The runs as CSV: the record's columns, then every metric as ``m.<name>`` (union over the runs)."""
    flat = [r.flat() for r in runs]
    metric_cols = sorted({k for f in flat for k in f if k.startswith("m.")})
    cols = list(RUN_COLUMNS) + ["lrviz_version"] + metric_cols
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for f in flat:
        w.writerow({k: ("" if f.get(k) is None else f.get(k)) for k in cols})
    return buf.getvalue()


def cmd_runs(args) -> int:
    from .outputs import check_file_target
    from .store import Store

    if args.csv:
        check_file_target(args.csv, "--csv")
    store = Store()
    runs = [r for r in store.runs(kind=args.kind, data=args.data) if _matches(r, args.model)]
    if args.limit is not None:
        runs = runs[-args.limit:]
    if runs:
        print(_table(runs))
    print(f"{len(runs)} run(s) in {store.path}" + (f" (of {store.count()})" if args.model or args.kind or args.data else ""))
    if args.json:
        write_file(args.json, json.dumps({"schema": "lrviz.runs/1", "store": str(store.path), "runs": [r.to_dict() for r in runs]},
                                         indent=1).encode())
        print(f"wrote {args.json}", file=sys.stderr)
    if args.csv:
        write_file(args.csv, runs_csv(runs).encode())
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def add_runs(sub) -> None:
    from .cli_args import positive_int
    from .store import KINDS, STORE_ENV

    r = sub.add_parser("runs", help="list the experiment store's records (evaluations, configurations, sweeps, fine-tuning, "
                                    "benchmarks, exports)",
                       description=f"The experiment store: ${STORE_ENV}, else experiments.sqlite in lrviz's cache folder.")
    r.add_argument("--model", metavar="M", help="only this model: its name (e.g. demo) or a fingerprint prefix")
    r.add_argument("--kind", choices=KINDS, help="only records of this kind")
    r.add_argument("--data", metavar="NAME:SPLIT", help="only records on this data, e.g. fashion-mnist:test")
    r.add_argument("--limit", type=positive_int, metavar="N", help="only the newest N")
    r.add_argument("--json", metavar="OUT", help="write the records (with metrics, payloads and plans) as JSON")
    r.add_argument("--csv", metavar="OUT", help="write the records as CSV (one column per metric)")
    r.set_defaults(func=cmd_runs)
