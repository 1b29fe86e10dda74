"""Allocation methods side by side on the demo: the greedy budget solver, the exact knapsack of the
additive model, Bayesian optimisation (optuna, on the projection), the data-free continuous rank search,
uniform and weakened VBMF at the same MAC (or params) reductions, right after
decomposition (no fine-tuning), measured on images no method saw.

    python benchmarks/allocators.py [--targets 2,3,4,6] [--metric macs] [--calibration 500]

Images: calibration (sensitivities, which both the solver and the knapsack use) = a seeded subset of
``--calibration`` images of the bundled 2,000-image Fashion-MNIST test sample; scored = the *other* 8,000
Fashion-MNIST test images (needs ``apt-get install dataset-fashion-mnist``; without it, the remaining
images of the bundled sample, said so in the output). Prints, per target, each method's cost ratio,
projected top-1 (calibration images) and measured top-1 (scored images) with its 95 % interval, and the
time each allocator took.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="2,3,4,6")
    ap.add_argument("--metric", default="macs", choices=["params", "macs"])
    ap.add_argument("--calibration", type=int, default=500)
    args = ap.parse_args()

    import torch.utils.data as tud

    from lrviz import FactorCache, analyze, compress, plan_cost
    from lrviz.allocate import bayes_plan, continuous_plan, knapsack_plan, layer_choices
    from lrviz.budget import solve_many, strategy_plan
    from lrviz.data import get_dataset
    from lrviz.errors import LrvizError
    from lrviz.evaluate import evaluate
    from lrviz.models import load_model
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity

    targets = [float(t) for t in args.targets.split(",")]
    lm = load_model("demo")
    calib = get_dataset("fashion-mnist-sample")
    try:
        test = get_dataset("fashion-mnist", "test")
        taken = set(calib.source_indices)
        scored = tud.Subset(test, [i for i in range(len(test)) if i not in taken])
        scored_name = f"the other {len(scored):,} Fashion-MNIST test images"
    except LrvizError:
        scored = tud.Subset(calib, range(args.calibration, len(calib)))
        scored_name = f"the {len(scored):,} bundled sample images after the calibration ones (full test set not installed)"
    fc = FactorCache(lm.module)
    a = analyze(lm.module, lm.input_size, lm.name)
    t0 = time.perf_counter()
    sens = measure_sensitivity(lm.module, calib, limit=args.calibration, factors=fc)
    print(f"demo; sensitivities on the first {sens.n} bundled test-sample images ({time.perf_counter() - t0:.1f} s, cached after "
          f"the first run); scored on {scored_name}; no fine-tuning; load average {os.getloadavg()[0]:.2f}")
    proj = SensitivityProjector.from_sensitivities(sens)
    base = evaluate(lm.module, scored)
    print(f"original: top-1 {base.top1:.2%} on the scored images")

    t0 = time.perf_counter()
    greedy = dict(zip(targets, solve_many(a, proj, targets, args.metric)))
    t_greedy = time.perf_counter() - t0
    t0 = time.perf_counter()
    choices = layer_choices(a, proj, args.metric)
    knap = {t: knapsack_plan(a, proj, args.metric, t, choices=choices) for t in targets}
    t_knap = time.perf_counter() - t0
    t0 = time.perf_counter()
    cont = {t: continuous_plan(a, args.metric, t) for t in targets}
    t_cont = time.perf_counter() - t0
    t0 = time.perf_counter()
    bayes = {t: bayes_plan(a, proj, args.metric, t) for t in targets}
    t_bayes = time.perf_counter() - t0
    print(f"allocation time for {len(targets)} targets: greedy solver {t_greedy:.2f} s, knapsack {t_knap:.2f} s, "
          f"continuous {t_cont:.2f} s, Bayesian optimisation {t_bayes:.2f} s (120 trials each) "
          f"({sum(len(g.ranks) for g in choices[0])} Pareto choices over {len(choices[0])} layers)")
    print(f"{'target':>6s} {'method':24s} {'params':>7s} {'MACs':>7s} {'projected':>10s} {'measured top-1 [95% CI]':>26s}")
    for t in targets:
        plans = {"greedy solver": greedy[t].plan if greedy[t] is not None else None, "knapsack (additive)": knap[t],
                 "Bayesian opt. (optuna)": bayes[t], "continuous (data-free)": cont[t],
                 "uniform": strategy_plan(a, "uniform", args.metric, t), "weakened VBMF": strategy_plan(a, "vbmf", args.metric, t)}
        for name, plan in plans.items():
            if plan is None:
                print(f"{t:6g} {name:24s} {'out of reach':>7s}")
                continue
            cost = plan_cost(a, plan)
            pr = proj.project(plan)
            r = evaluate(compress(lm.module, plan, fc), scored)
            print(f"{t:6g} {name:24s} {cost.params_ratio:6.2f}x {cost.macs_ratio:6.2f}x {pr.top1:10.2%} "
                  f"{r.top1:9.2%} [{r.top1_ci[0]:.2%}, {r.top1_ci[1]:.2%}]")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
