"""Benchmark: peak memory (RSS) and wall time of lrviz's heavy steps, each in a fresh process.

Every measurement runs in its own child process (``python -c ...``), so nothing is shared or warm:
the peak resident set size is the child's own (``os.wait4`` → ``ru_maxrss``, the per-child form of
``resource.getrusage(RUSAGE_CHILDREN)``), the wall time is the parent's clock around the child
(interpreter start and imports included). Tasks:

``analyze``   exactly ``lrviz analyze MODEL`` (load the model with random weights, record the layer
              sizes with one forward pass, spectra + EVBMF of every layer), output discarded;
``compress``  ``lrviz.compress(model, make_plan(analysis, "ratio:3"))`` after the analysis: the
              factors (bases) of every decomposed layer and the new model.

Next to each figure the script prints lrviz's own estimate of the child's peak — the resident memory
of a fresh process once the model is loaded, plus :mod:`lrviz.memory`'s estimate of the step (what
the pre-flight memory check compares with the available memory) — and the machine's state: CPU
count, threads, load average, available memory. Nothing is asserted.

Run::

    python benchmarks/memory.py                                 # vgg16 and resnet50, analyze, 2 threads
    python benchmarks/memory.py --models vgg16 --tasks analyze,compress --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CHILD = {
    "analyze": (
        "import sys, os; from lrviz.cli import main; "
        "sys.stdout = open(os.devnull, 'w'); sys.exit(main(['analyze', {model!r}] + {extra!r}))"
    ),
    "compress": (
        "import sys; from lrviz.models import load_model; from lrviz import analyze, make_plan, compress; "
        "m = load_model({model!r}{size}); a = analyze(m.module, m.input_size, m.name); "
        "small = compress(m.module, make_plan(a, 'ratio:3'))"
    ),
}


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet50", help="comma-separated model specs (default vgg16,resnet50)")
    p.add_argument("--tasks", default="analyze", help="comma-separated: analyze, compress (default analyze)")
    p.add_argument("--rounds", type=int, default=1, help="fresh processes per (model, task); the median is reported (default 1)")
    p.add_argument("--threads", type=int, default=2, help="torch / BLAS threads of each child (default 2)")
    p.add_argument("--input-size", default=None, help="C,H,W passed to the model (default: the model's, 3,224,224 for torchvision)")
    p.add_argument("--json", default=None, help="also write the measurements to this file")
    return p.parse_args(argv)


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


ESTIMATE = (
    "import sys; from lrviz.models import load_model; from lrviz import memory; "
    "m = load_model({model!r}{size}); est = memory.estimate_analysis(m.module).bytes\n"
    "if {task!r} == 'compress':\n"
    "    from lrviz import analyze, make_plan\n"
    "    a = analyze(m.module, m.input_size, m.name); plan = make_plan(a, 'ratio:3'); known = {{l.name: l for l in a.layers}}\n"
    "    todo = [lp for lp in plan.layers if not lp.is_dense]\n"
    "    est = max(est, memory.estimate_compress(m.module, [known[lp.name] for lp in todo], None, {{lp.name: lp.ranks for lp in todo}}).bytes)\n"
    "print(memory.resident_memory() + est)"
)


def _estimate(model: str, task: str, size: str | None, threads: int) -> int | None:
    """lrviz's own estimate of the child's peak, from a fresh process: its resident memory once the
    model is loaded plus :mod:`lrviz.memory`'s estimate of the step (for ``compress``, the larger of
    the analysis and the decomposition of the ``ratio:3`` plan)."""
    code = ESTIMATE.format(model=model, task=task, size=f", input_size={size!r}" if size else "")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", LRVIZ_MEMORY_CHECK="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  (no estimate for {model} {task}: {out.stderr.strip()[-300:]})", file=sys.stderr)
        return None


def measure(model: str, task: str, threads: int, size: str | None) -> dict:
    """Run one task in a fresh process; returns ``{"peak_rss", "seconds", "rc"}`` (bytes, s)."""
    extra = ["--input-size", size] if size else []
    code = CHILD[task].format(model=model, extra=extra, size=f", input_size={size!r}" if size else "")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # kB on Linux, bytes on macOS
    if proc.returncode != 0:
        print(f"  {model} {task}: exit {proc.returncode}: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
    return {"peak_rss": int(rss), "seconds": seconds, "rc": proc.returncode}


def main(argv=None) -> int:
    args = _parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in CHILD]
    if bad:
        print(f"unknown task(s) {bad}; available: {sorted(CHILD)}", file=sys.stderr)
        return 2
    avail = _mem_available()
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, child threads {args.threads}; "
          f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"available memory {avail / 2**30:.1f} GiB" if avail else "")
    rows = []
    print(f"{'model':12s} {'task':9s} {'peak RSS MiB':>13s} {'estimate MiB':>13s} {'wall s':>8s}  load (1 min) before/after")
    for model in models:
        for task in tasks:
            est = _estimate(model, task, args.input_size, args.threads)
            runs = []
            for _ in range(args.rounds):
                load0 = os.getloadavg()[0]
                r = measure(model, task, args.threads, args.input_size)
                r["load_before"], r["load_after"] = load0, os.getloadavg()[0]
                runs.append(r)
            peak = statistics.median(r["peak_rss"] for r in runs)
            sec = statistics.median(r["seconds"] for r in runs)
            row = {"model": model, "task": task, "threads": args.threads, "peak_rss": peak, "seconds": sec,
                   "estimate": est, "runs": runs}
            rows.append(row)
            est_text = f"{est / 2**20:13.0f}" if est else f"{'-':>13s}"
            loads = ", ".join(f"{r['load_before']:.2f}/{r['load_after']:.2f}" for r in runs)
            print(f"{model:12s} {task:9s} {peak / 2**20:13.0f} {est_text} {sec:8.1f}  {loads}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpus": os.cpu_count(), "threads": args.threads, "mem_available": avail, "rows": rows}, f, indent=1)
    return 0 if all(r["rc"] == 0 for row in rows for r in row["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
