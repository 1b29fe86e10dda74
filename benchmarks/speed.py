"""Benchmark: measured speed of low-rank plans — executions, the issue's plans, the latency solver, CLI start.

Every figure is a ratio measured side by side in one run (``torch.utils.benchmark`` medians, the models
interleaved in alternating order), with the thread count printed. Nothing is asserted; the targets are
printed next to the figures.

Sections
--------
1. **Executions.** The demo and its ``vbmf`` plan under each execution of :mod:`lrviz.execution`
   (eager, BatchNorm folded, + channels-last, + ``torch.compile``), batch 1 and 64.
2. **The plans of the issue** through ``lrviz bench`` (execution ``auto``): demo ``vbmf`` at batch 64 and
   1, resnet50 ``ratio:3`` at batch 16 — speedup against the original under the same execution, against
   the original as loaded (eager), and measured speedup ÷ MAC ratio.
3. **The latency solver** through the CLI, exactly as a user runs it::

       lrviz solve demo --target latency:1.5 --batch 64 --data fashion-mnist-sample --limit 500 --out plan.json
       lrviz solve resnet50 --target latency:2 --batch 16 --out plan.json

   then every written plan re-measured independently with ``lrviz bench MODEL --plan plan.json``.
   Targets: ≥ 1.5× (demo), ≥ 2× (resnet50), measured ÷ MAC ratio ≥ 0.6.
4. **CLI start.** Whole-process wall time of ``lrviz --help`` next to ``python -c "import torch"``.

Run::

    python benchmarks/speed.py                 # everything (~15-25 min on 2 cores)
    python benchmarks/speed.py --skip-resnet   # the demo only (~5 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's count)")
    p.add_argument("--skip-resnet", action="store_true", help="demo only")
    p.add_argument("--skip-executions", action="store_true")
    return p.parse_args(argv)


def _lrviz(*argv, env=None) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lrviz.cli", *argv], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"lrviz {' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout, dt


def executions(threads):
    import torch

    from lrviz.analysis import analyze
    from lrviz.decompose import compress
    from lrviz.execution import EXECUTIONS, prepare
    from lrviz.latency import _interleaved, _random_input, _stats, benchmark_timer
    from lrviz.models import load_model
    from lrviz.plan import make_plan

    m = load_model("demo")
    a = analyze(m.module, m.input_size, "demo")
    small = compress(m.module, make_plan(a, "vbmf"))
    timer = benchmark_timer(0.2, threads)
    print("\n## 1. Executions (demo; ms, median of interleaved runs)")
    print(f"{'batch':>5s} {'model':10s} " + " ".join(f"{e:>14s}" for e in EXECUTIONS) + "   eager ÷ best")
    for batch in (1, 64):
        x = _random_input((batch, *m.input_size), "cpu")
        fns = {}
        for name, net in (("original", m.module), ("vbmf", small)):
            for ex in EXECUTIONS:
                fns[(name, ex)] = prepare(net, ex, x).module
        times = _interleaved({f"{k[0]}|{k[1]}": v for k, v in fns.items()}, x, timer, 3)
        for name in ("original", "vbmf"):
            ms = [_stats(times[f"{name}|{ex}"])[0] for ex in EXECUTIONS]
            print(f"{batch:5d} {name:10s} " + " ".join(f"{v:14.2f}" for v in ms) + f"   {ms[0] / min(ms):.2f}x")
        o = {ex: _stats(times[f"original|{ex}"])[0] for ex in EXECUTIONS}
        v = {ex: _stats(times[f"vbmf|{ex}"])[0] for ex in EXECUTIONS}
        print(f"{'':5s} {'speedup':10s} " + " ".join(f"{o[ex] / v[ex]:13.2f}x" for ex in EXECUTIONS)
              + "   (original ÷ vbmf, same execution)")
    del torch


def _bench(model, plan, batch, extra=(), threads=None):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "b.json"
        args = ["bench", model, "--plan", plan, "--batch", str(batch), "--no-layers", "--no-cache", "--json", str(out), *extra]
        if threads:
            args += ["--threads", str(threads)]
        _lrviz(*args)
        return json.loads(out.read_text())


def _row(label, d, target=None):
    per_mac = d["speedup"] / d["macs_ratio"]
    t = f"  target ≥ {target:g}x: {'met' if d['speedup'] >= target else 'MISSED'}" if target else ""
    print(f"{label:42s} {d['macs_ratio']:6.2f}x {d['original_eager_ms']:9.2f} {d['original_ms']:9.2f} {d['planned_ms']:9.2f} "
          f"{d['speedup']:7.2f}x {d['speedup_vs_eager']:7.2f}x {per_mac:6.2f} {d['execution']:>13s}{t}")


def _header(title):
    print(f"\n## {title}")
    print(f"{'model, plan, batch':42s} {'MACs':>7s} {'eager ms':>9s} {'orig ms':>9s} {'plan ms':>9s} {'speedup':>8s} "
          f"{'vs eager':>8s} {'÷MACs':>6s} {'execution':>13s}")


def issue_plans(threads, skip_resnet):
    _header("2. The issue's plans (lrviz bench, execution auto; speedup = original ÷ plan under the same execution)")
    for model, plan, batch in [("demo", "vbmf", 64), ("demo", "vbmf", 1)] + ([] if skip_resnet else [("resnet50", "ratio:3", 16)]):
        _row(f"{model}, {plan}, batch {batch}", _bench(model, plan, batch, threads=threads))
    _row("demo-compressed (bundled, fine-tuned), 64", _bench("demo", str(_bundled_plan()), 64, threads=threads))


def _bundled_plan() -> Path:
    import lrviz

    return Path(lrviz.__file__).parent / "assets" / "demo-compressed.plan.json"


def solver(threads, skip_resnet):
    _header("3. The latency solver (lrviz solve --target latency:T, then lrviz bench of the written plan)")
    runs = [("demo", 1.5, 64, ["--data", "fashion-mnist-sample", "--limit", "500"])]
    if not skip_resnet:
        runs.append(("resnet50", 2.0, 16, []))
    for model, target, batch, extra in runs:
        with tempfile.TemporaryDirectory() as d:
            plan = Path(d) / "plan.json"
            args = ["solve", model, "--target", f"latency:{target:g}", "--batch", str(batch), "--out", str(plan), *extra]
            if threads:
                args += ["--threads", str(threads)]
            out, dt = _lrviz(*args)
            solved = [line for line in out.splitlines() if line.startswith(("solved", "measured"))]
            print(f"# lrviz {' '.join(args[:6])} ... ({dt:.0f} s)")
            for line in solved:
                print(f"#   {line}")
            _row(f"{model}, solved latency:{target:g}, batch {batch}", _bench(model, str(plan), batch, threads=threads), target)


def cli_start():
    print("\n## 4. CLI start (whole process, median of 5)")
    def wall(cmd):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[2]
    h = wall([sys.executable, "-m", "lrviz.cli", "--help"])
    t = wall([sys.executable, "-c", "import torch"])
    print(f"lrviz --help {h:.3f} s; python -c 'import torch' {t:.3f} s; ratio {h / t:.2f}")


def main(argv=None):
    args = _args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if not args.skip_executions:
        executions(args.threads)
    issue_plans(args.threads, args.skip_resnet)
    solver(args.threads, args.skip_resnet)
    cli_start()


if __name__ == "__main__":
    main()
