"""Sensitivity measurement fanned out over Ray vs one process, side by side in one run, as ratios: the
same model, images and grid measured locally, on a local Ray with one worker of the driver's threads
(what --ray gives on this machine: bitwise the local result) and with one worker per CPU (1 thread
each). Each run measures every layer (no cache); the curves are compared with the local ones.

    python benchmarks/ray_fanout.py [--model demo] [--images 200] [--grid-points 16]

Run it alone: on a machine with few cores two heavy processes slow each other several times. On such a
machine fan-out buys nothing (the cores are the limit, and each worker pays Ray's start and its own copy
of the model); it pays where there are more cores or GPUs than one torch process uses well, and on a
cluster. This benchmark measures what Ray costs here, and that the results stay the local ones.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _curves(sens) -> dict:
    import numpy as np

    out = {f"{k}": np.concatenate([c.top1, c.loss, c.delta.ravel()]) for k, c in sens.curves.items()}
    out.update({f"pair {k}": p.inter.ravel() for k, p in sens.pairs.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--data", default="fashion-mnist-sample")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--grid-points", type=int, default=16)
    args = ap.parse_args()

    import numpy as np
    import torch

    from lrviz.data import get_dataset
    from lrviz.distributed import RayExecutor
    from lrviz.models import load_model
    from lrviz.sensitivity import measure_sensitivity

    loaded = load_model(args.model)
    ds = get_dataset(args.data, "test")
    threads = torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    print(f"{loaded.name} on {args.images} images of {args.data}, grid {args.grid_points}; {cpus} CPUs, torch {threads} threads; "
          f"load average {os.getloadavg()[0]:.2f}")

    def measure(executor=None):
        t0 = time.perf_counter()
        s = measure_sensitivity(loaded.module, ds, limit=args.images, grid_points=args.grid_points, cache=False, device="cpu",
                                executor=executor)
        return time.perf_counter() - t0, s

    rows = []
    local_s, local = measure()
    ref = _curves(local)
    rows.append(("local (this process)", 1, threads, local_s, 0.0))
    for per_task in sorted({threads, 1}, reverse=True):
        t0 = time.perf_counter()
        ex = RayExecutor("local", per_task)
        start = time.perf_counter() - t0
        try:
            secs, s = measure(ex)
        finally:
            ex.close()
        got = _curves(s)
        diff = max(float(np.max(np.abs(got[k].astype(np.float64) - ref[k].astype(np.float64)), initial=0)) for k in ref)
        rows.append((f"Ray, {ex.workers} worker(s) x {per_task} thread(s) (+{start:.1f} s start)", ex.workers, per_task, secs, diff))
    print(f"{'backend':52s} {'seconds':>8s} {'vs local':>9s} {'max |diff|':>11s}")
    for name, _, _, secs, diff in rows:
        print(f"{name:52s} {secs:8.1f} {local_s / secs:8.2f}x {diff:11.2e}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
