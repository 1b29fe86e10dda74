"""Tucker-2, CP and spatial SVD side by side on the demo, at the same per-layer sizes, right after
decomposition (no fine-tuning).

    python benchmarks/decompositions.py [--targets 2,3] [--calibration 500]

For each MACs target, the greedy solver's plan (sensitivities on ``--calibration`` images of the bundled
*training* sample) is taken as it is (Tucker-2 / SVD), then with every k×k conv it truncates re-cast as CP,
and as spatial SVD, each at the largest rank with no more params than that layer's Tucker-2 ranks
(``--decomp '*=cp'``). Prints each plan's params and MACs ratios, the mean relative kernel error of the
re-cast layers, the time the CP fits took, and top-1 on the full 10,000-image Fashion-MNIST test set
(no test image chose anything).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="2,3")
    ap.add_argument("--calibration", type=int, default=500)
    args = ap.parse_args()

    import torch

    from lrviz import FactorCache, analyze, compress, plan_cost
    from lrviz.budget import solve_many
    from lrviz.data import get_dataset
    from lrviz.evaluate import evaluate
    from lrviz.layers import get_module
    from lrviz.methods import spatial_error
    from lrviz.models import load_model
    from lrviz.plan import apply_methods
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity

    lm = load_model("demo")
    net = lm.module.eval()
    a = analyze(net, lm.input_size, lm.name)
    fc = FactorCache(net)
    calib = get_dataset("fashion-mnist-train-sample", "train")
    test = get_dataset("fashion-mnist", "test")
    proj = SensitivityProjector.from_sensitivities(measure_sensitivity(net, calib, limit=args.calibration, factors=fc))
    targets = [float(t) for t in args.targets.split(",")]
    print(f"demo; solver plans from sensitivities on {args.calibration} training-sample images; top-1 on the 10,000 test "
          f"images, no fine-tuning; load average {os.getloadavg()[0]:.2f}")
    print(f"{'plan':28s} {'params':>7s} {'MACs':>6s} {'kernel err':>10s} {'top-1':>7s} {'fit s':>6s}")
    for t, res in zip(targets, solve_many(a, proj, targets, "macs")):
        base = res.plan
        for form in ("tucker2", "cp", "spatial"):
            plan = base if form == "tucker2" else apply_methods(base, [("*", form, None)])
            t0 = time.perf_counter()
            small = compress(net, plan, fc)
            fit = time.perf_counter() - t0
            errs = []
            for lp in plan.layers:
                if lp.method and not lp.is_dense:
                    w = get_module(net, lp.name).weight
                    errs.append(spatial_error(w, lp.ranks[0]) if lp.method == "spatial" else
                                fc.method_factors(lp.name, "cp", lp.ranks[0]).rel_error)  # the fit compress() made
            cost = plan_cost(a, plan)
            top1 = evaluate(small, test).top1
            err = f"{sum(errs) / len(errs):.3f}" if errs else "-"
            print(f"{f'solver {t:g}x MACs, {form}':28s} {cost.params_ratio:6.2f}x {cost.macs_ratio:5.2f}x {err:>10s} "
                  f"{top1:7.2%} {fit if form == 'cp' else 0:6.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    del torch


if __name__ == "__main__":
    main()
