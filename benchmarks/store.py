"""The experiment store under load: one writer alone vs two and four writer processes at once (WAL mode), and
reads of a model's records — side by side in one run, printed as ratios. Every record written is counted
back (none may be lost).

    python benchmarks/store.py [--records 300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WRITER = textwrap.dedent("""
    import sys, time
    from lrviz.store import Store
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = Store(path)
    t0 = time.perf_counter()
    for i in range(n):
        s.record("evaluation", model=tag, data="fashion-mnist:test", name=str(i),
                 metrics={"top1": 0.9, "lo": 0.88, "hi": 0.92, "n": 500, "i": i}, payload={"row": [i] * 20})
    print(time.perf_counter() - t0)
""")


def writers(path: Path, k: int, n: int) -> tuple[float, list[float]]:
    """Wall time of ``k`` writer processes of ``n`` records each, started together, and each one's own time."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{k}-{j}", str(n)], stdout=subprocess.PIPE, text=True)
             for j in range(k)]
    own = [float(p.communicate()[0]) for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit("a writer failed")
    return wall, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300, help="records per writer")
    args = ap.parse_args()
    from lrviz.store import Store

    n = args.records
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        Store(path)
        rows = []
        for k in (1, 2, 4):
            wall, own = writers(path, k, n)
            rows.append((k, wall, max(own), k * n / max(own)))
        s = Store(path)
        total = s.count()
        expected = n * (1 + 2 + 4)
        t0 = time.perf_counter()
        reps = 50
        for _ in range(reps):
            got = s.runs(model="w4-0")
        read_ms = (time.perf_counter() - t0) / reps * 1e3
        size = path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("bench.sqlite-*"))
    print(f"{n} records per writer; records counted back {total} of {expected} ({'none lost' if total == expected else 'LOST'})")
    base = rows[0][3]
    print(f"{'writers':>8s} {'wall s':>8s} {'ms/record (each)':>17s} {'records/s (all)':>16s} {'vs one writer':>14s}")
    for k, wall, own, rate in rows:
        print(f"{k:8d} {wall:8.2f} {1e3 * own / n:17.2f} {rate:16.0f} {rate / base:13.2f}x")
    print(f"reading one model's {len(got)} records (of {total}): {read_ms:.1f} ms; database + WAL {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
