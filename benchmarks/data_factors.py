"""Data-aware vs weight-only factors on the demo, at the same ranks, right after decomposition.

    python benchmarks/data_factors.py [--stats-images 2000] [--targets 2,3,4]

Statistics (each layer's input second moment, and the next BatchNorm's gain) from ``--stats-images``
images of the bundled *training* sample; the solver's plans from sensitivities on 500 bundled test-sample
images (weight-only factors); uniform plans bisected to the same MAC reductions; every model scored on
the full 10,000-image Fashion-MNIST test set (``apt-get install dataset-fashion-mnist``) — no scored image
chose a plan, and none fed the statistics. Also prints, per target, the mean relative output error of
the truncated layers on scored images (each layer alone), where the whitening's guarantee lives.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats-images", type=int, default=2000)
    ap.add_argument("--targets", default="2,3,4")
    args = ap.parse_args()

    import torch

    from lrviz import FactorCache, analyze, compress
    from lrviz.activations import input_statistics
    from lrviz.budget import solve_many, strategy_plan
    from lrviz.data import get_dataset
    from lrviz.decompose import build_layer
    from lrviz.evaluate import evaluate
    from lrviz.layers import get_module
    from lrviz.models import load_model
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity

    targets = [float(t) for t in args.targets.split(",")]
    lm = load_model("demo")
    net = lm.module.eval()
    calib = get_dataset("fashion-mnist-sample")
    train = get_dataset("fashion-mnist-train-sample", "train")
    test = get_dataset("fashion-mnist", "test")
    a = analyze(net, lm.input_size, lm.name)
    proj = SensitivityProjector.from_sensitivities(measure_sensitivity(net, calib, limit=500))
    t0 = time.perf_counter()
    stats = input_statistics(net, train, limit=args.stats_images)
    print(f"demo; statistics of {len(stats.second_moment)} layers ({len(stats.out_scale)} with a BatchNorm gain) from "
          f"{stats.images} training-sample images in {time.perf_counter() - t0:.1f} s; scored on the 10,000 test images; "
          f"load average {os.getloadavg()[0]:.2f}")
    fw, fd = FactorCache(net), FactorCache(net, stats)
    xs = torch.stack([test[i][0] for i in range(256)])
    acts = {}
    hooks = [get_module(net, l.name).register_forward_pre_hook(lambda m, inp, n=l.name: acts.__setitem__(n, inp[0].detach()))
             for l in a.layers]
    with torch.no_grad():
        net(xs)
    for h in hooks:
        h.remove()
    print(f"{'plan':22s} {'MACs':>6s} {'weights':>8s} {'data':>8s} {'diff':>7s}   layer output error (weights / data)")
    solved = dict(zip(targets, solve_many(a, proj, targets, "macs")))
    for t in targets:
        for name, plan in (("solver", solved[t].plan if solved[t] else None), ("uniform", strategy_plan(a, "uniform", "macs", t))):
            if plan is None:
                continue
            tw = evaluate(compress(net, plan, fw), test).top1
            td = evaluate(compress(net, plan, fd), test).top1
            errs = [[], []]
            with torch.no_grad():
                for lp in plan.layers:
                    if lp.is_dense:
                        continue
                    x = acts[lp.name]
                    y = get_module(net, lp.name)(x)
                    for j, fc in enumerate((fw, fd)):
                        errs[j].append(float(((build_layer(fc.get(lp.name), lp.ranks)(x) - y) ** 2).mean() / (y ** 2).mean()))
            ew, ed = (sum(e) / max(len(e), 1) for e in errs)
            print(f"{name + f' {t:g}x':22s} {a.total('macs') / max(1, _macs(a, plan)):5.2f}x {tw:8.2%} {td:8.2%} "
                  f"{100 * (td - tw):+6.2f}   {ew:.4f} / {ed:.4f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _macs(a, plan) -> int:
    from lrviz.plan import plan_cost

    return plan_cost(a, plan).macs_planned


if __name__ == "__main__":
    main()
