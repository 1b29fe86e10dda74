"""Sizing on paper: what measuring layer sensitivities costs for a model (tasks, forward passes, images)
and how long it takes on this CPU, one GPU and 8 GPUs through Ray, from a throughput measured here and a
stated GPU throughput assumption.

    python benchmarks/sizing.py                                   # resnet50, 224x224, 1000 classes
    python benchmarks/sizing.py --model demo --images 500         # the demo: checks the estimate against a real run
    python benchmarks/sizing.py --gpu-images-per-s 3000           # another GPU assumption

Per layer (one Ray task each): the passes of its modes' rank grids (``lrviz.sensitivity.rank_grid``)
plus its two-mode pair grid (``pair_grid``), each pass running only the part of the network downstream
of the truncated layer (``partial``): weighted by the MACs from that layer to the output, a pass costs
that fraction of a whole forward pass. The CPU throughput (images/s of whole forward passes, batch
``--batch``) is measured here; the GPU one is an assumption you state. 8 GPUs: the layers spread over 8
workers, longest first (the wall time is the busiest worker's), plus the original's pass and the anchors
on the driver. With ``--measure`` the real sensitivity measurement runs too (small models only) and the
estimate is printed beside it.
"""

from __future__ import annotations

import argparse
import heapq
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _downstream_fractions(analysis) -> dict[str, float]:
    """Per layer: the MACs of it and every decomposable layer after it, over all of them (forward order)."""
    macs = [(l.name, l.macs if hasattr(l, "macs") else 0) for l in analysis.layers]
    from lrviz.cost import layer_macs

    macs = [(l.name, layer_macs(l, analysis.io[l.name])) for l in analysis.layers]
    total = sum(m for _, m in macs) or 1
    out, rest = {}, total
    for name, m in macs:
        out[name] = rest / total
        rest -= m
    return out


def _throughput(model, input_size, batch: int, seconds: float = 8.0) -> float:
    import torch

    x = torch.randn(batch, *input_size)
    model = model.eval()
    with torch.inference_mode():
        model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
    return n / (time.perf_counter() - t0)


def _spread(costs: list[float], workers: int) -> float:
    """Wall time of ``costs`` on ``workers`` (longest first to the least busy)."""
    heap = [0.0] * workers
    for c in sorted(costs, reverse=True):
        heapq.heappush(heap, heapq.heappop(heap) + c)
    return max(heap)


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--input-size", default="3,224,224")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--images", type=int, nargs="*", default=[1000, 5000, 50000], help="calibration images")
    ap.add_argument("--batch", type=int, default=16, help="batch of the measured throughput (resnet50 here: 14.4 images/s at 16, 9.5 at 64)")
    ap.add_argument("--grid-points", type=int, default=16)
    ap.add_argument("--gpu-images-per-s", type=float, default=2000.0,
                    help="assumed whole-forward-pass throughput of one GPU for this model (fp32)")
    ap.add_argument("--measure", action="store_true", help="also run the real measurement (small models) and compare")
    args = ap.parse_args()

    import torch

    from lrviz.analysis import analyze
    from lrviz.models import load_model
    from lrviz.sensitivity import DEFAULT_ANCHORS, pair_grid, rank_grid

    size = tuple(int(v) for v in args.input_size.split(","))
    kw = {} if args.model.startswith("demo") else {"input_size": size, "num_classes": args.num_classes}
    loaded = load_model(args.model, **kw)
    a = analyze(loaded.module, loaded.input_size, loaded.name, spectra=False)
    frac = _downstream_fractions(a)
    tasks = []
    for l in a.layers:
        grid = sum(len(rank_grid(f, args.grid_points)) for f in l.full_ranks)
        pairs = len(pair_grid(l.full_ranks[0])) * len(pair_grid(l.full_ranks[1])) if len(l.full_ranks) == 2 else 0
        tasks.append((l.name, grid, pairs, (grid + pairs) * frac[l.name]))
    passes = sum(t[1] + t[2] for t in tasks)
    equiv = sum(t[3] for t in tasks)
    driver = 1 + len(DEFAULT_ANCHORS)  # the original's pass and the anchors (whole passes, on the driver)
    cpu = _throughput(loaded.module, loaded.input_size, args.batch)
    print(f"{loaded.name}, input {'x'.join(map(str, loaded.input_size))}: {len(tasks)} decomposable layers = {len(tasks)} tasks; "
          f"{passes:,} truncated passes (grid {args.grid_points} per mode + pair grids) + {driver} whole passes on the driver")
    print(f"  partial passes (downstream only) = {equiv:,.0f} whole-forward-pass equivalents; largest task "
          f"{max(t[3] for t in tasks):.1f}, smallest {min(t[3] for t in tasks):.2f}")
    print(f"  measured here: {cpu:,.1f} images/s (whole forward, batch {args.batch}, {torch.get_num_threads()} CPU threads); "
          f"assumed: {args.gpu_images_per_s:,.0f} images/s on one GPU")
    print(f"{'images':>8s} {'forward images':>15s} {'this CPU':>10s} {'1 GPU':>9s} {'8 GPUs (Ray)':>13s}")
    for n in args.images:
        work = (equiv + driver) * n
        one = work / args.gpu_images_per_s
        eight = (_spread([t[3] * n for t in tasks], 8) + driver * n) / args.gpu_images_per_s
        print(f"{n:8,d} {work:15,.0f} {_fmt(work / cpu):>10s} {_fmt(one):>9s} {_fmt(eight):>13s}")
    if args.measure:
        from lrviz.data import get_dataset
        from lrviz.sensitivity import measure_sensitivity

        n = args.images[0]
        ds = get_dataset("fashion-mnist-sample", "test")
        t0 = time.perf_counter()
        measure_sensitivity(loaded.module, ds, limit=n, grid_points=args.grid_points, cache=False, device="cpu")
        real = time.perf_counter() - t0
        print(f"measured: the sensitivity run on {n} images took {_fmt(real)}; estimated {_fmt((equiv + driver) * n / cpu)} "
              f"(ratio measured / estimated {real / ((equiv + driver) * n / cpu):.2f})")


if __name__ == "__main__":
    main()
