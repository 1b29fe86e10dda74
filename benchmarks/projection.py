"""Projection error, solver vs uniform/VBMF, and projection latency on the demo model (issue 5).

Run: ``python benchmarks/projection.py [--plans 30] [--out benchmarks/results/projection.json]``
(needs the full Fashion-MNIST: ``apt-get install dataset-fashion-mnist``; ~10 min on 2 cores).

What it measures
----------------
1. Random plans (and "family" plans: solver, uniform, weakened VBMF, energy at 1.5, 2, 3, 4, 6x
   fewer params): per-mode rank fraction ``u·exp(N(0, 0.4²))`` (``u ~ U(0.1, 0.9)`` per plan), break-even
   rule applied, classifier dense; plans kept when the params reduction is in [1.5, 6]. Each is
   measured (``evaluate``) on the same 2,000 Fashion-MNIST test images (no fine-tuning).
2. Projections of the same plans from sensitivities measured on a calibration set that is either
   (A) 1,000 *training* images (disjoint from the test images) or (B) the 2,000 test images
   themselves (what the dashboard does: calibration set = quick-evaluation subset). For each:
   out of the box (γ fitted to the three anchor plans measured with the sensitivities), γ = 1, and
   leave-one-out calibration (γ fitted to all other measured random plans, as the dashboard does
   after every quick evaluation). Reported: median and mean |projected − measured| in points and
   how often the measured value falls inside the 95 % band, also restricted to plans that keep
   >= 80 % top-1.
3. Solver vs uniform vs weakened VBMF at 3× (and 2×, 4×) fewer MACs, measured on the full 10k test set.
4. Time to project a plan after one slider move (sensitivities cached), median of 300.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


from lrviz import FactorCache, analyze, compress, effective_ranks, make_plan, plan_cost
from lrviz.budget import solve_many, strategy_plan
from lrviz.data import get_dataset
from lrviz.evaluate import evaluate
from lrviz.models import load_model
from lrviz.project import SensitivityProjector
from lrviz.sensitivity import measure_sensitivity


def random_plans(a, n, seed=0):
    full = make_plan(a, "full")
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        u = rng.uniform(0.1, 0.9)
        ch = {}
        for lp in full.layers:
            if lp.name == "fc":
                continue
            l = a.layer(lp.name)
            rs = tuple(max(1, math.ceil(min(1.0, u * math.exp(rng.gauss(0, 0.4))) * f)) for f in l.full_ranks)
            ch[lp.name] = effective_ranks(l, rs)[0]
        plan = full.with_ranks(ch, spec=f"random{len(out)}")
        if 1.5 <= plan_cost(a, plan).params_ratio <= 6:
            out.append(plan)
    return out


def errors(proj, plans, measured, base):
    errs, inside = [], []
    for plan, m in zip(plans, measured):
        p = proj.project(plan, base)
        errs.append(abs(p.top1 - m))
        inside.append(p.interval[0] <= m <= p.interval[1])
    return errs, inside


def loo(proj, plans, measured, base):
    errs, inside = [], []
    for i in range(len(plans)):
        others = [(plans[j], measured[j]) for j in range(len(plans)) if j != i]
        p = proj.calibrate(proj.anchor_points() + [(pl, m, base) for pl, m in others]).project(plans[i], base)
        errs.append(abs(p.top1 - measured[i]))
        inside.append(p.interval[0] <= measured[i] <= p.interval[1])
    return errs, inside


def summary(errs, inside, measured=None):
    out = {"median_abs_err_pts": 100 * statistics.median(errs), "mean_abs_err_pts": 100 * statistics.mean(errs),
           "max_abs_err_pts": 100 * max(errs), "band_coverage": sum(inside) / len(inside)}
    if measured is not None:  # the practically relevant region: plans that keep >= 80 % top-1
        near = [e for e, m in zip(errs, measured) if m >= 0.8]
        if near:
            out["median_abs_err_pts_when_measured_ge_80pct"] = 100 * statistics.median(near)
            out["plans_measured_ge_80pct"] = len(near)
    return out


def family_plans(a, proj):
    """Plans users actually make: solver, uniform, weakened VBMF and energy at 1.5-6x fewer params."""
    targets = (1.5, 2.0, 3.0, 4.0, 6.0)
    solved = dict(zip(targets, solve_many(a, proj, targets, "params")))
    out = []
    for t in targets:
        for s in ("solver", "uniform", "vbmf", "energy"):
            p = strategy_plan(a, s, "params", t, proj, solved=solved[t])
            if p is not None:
                out.append(p)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results/projection.json")
    args = ap.parse_args()
    lm = load_model("demo")
    a = analyze(lm.module, lm.input_size, "demo")
    fc = FactorCache(lm.module)
    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    n_test = 2000
    base = evaluate(lm.module, test, limit=n_test).top1
    plans = random_plans(a, args.plans)
    t0 = time.perf_counter()
    measured = []
    for i, p in enumerate(plans):
        measured.append(evaluate(compress(lm.module, p, fc), test, limit=n_test).top1)
        print(f"plan {i + 1}/{len(plans)}: {plan_cost(a, p).params_ratio:.2f}x -> {measured[-1]:.2%}", file=sys.stderr)
    doc = {"model": "demo", "n_test": n_test, "base_top1": base, "plans": len(plans),
           "params_ratios": [plan_cost(a, p).params_ratio for p in plans], "measured": measured,
           "measure_seconds": time.perf_counter() - t0, "calibration": {}}
    fam_plans, fam_measured = None, None
    for label, ds, limit, b in (("train-1000 (disjoint)", train, 1000, base), ("test-2000 (same images)", test, n_test, None)):
        t1 = time.perf_counter()
        sens = measure_sensitivity(lm.module, ds, limit=limit, factors=fc, progress=lambda d, t, n: print(f"sensitivity {d}/{t} {n}", file=sys.stderr))
        secs = time.perf_counter() - t1
        proj = SensitivityProjector.from_sensitivities(sens)
        gamma1 = SensitivityProjector(sens)
        if fam_plans is None:  # solver plans from the disjoint calibration set; the same plans for both sets
            fam_plans = family_plans(a, proj)
            fam_measured = [evaluate(compress(lm.module, p, fc), test, limit=n_test).top1 for p in fam_plans]
            doc["family_plans"] = [{"spec": p.spec, "params_ratio": plan_cost(a, p).params_ratio, "measured": m}
                                   for p, m in zip(fam_plans, fam_measured)]
        res = {"sensitivity_seconds": secs, "from_cache": sens.cached_layers == len(sens.layers), "anchor_gamma": proj.gain,
               "random_plans": {
                   "out_of_the_box": summary(*errors(proj, plans, measured, b), measured),
                   "gamma_1": summary(*errors(gamma1, plans, measured, b), measured),
                   "leave_one_out": summary(*loo(proj, plans, measured, b), measured)},
               "family_plans": {
                   "out_of_the_box": summary(*errors(proj, fam_plans, fam_measured, b), fam_measured),
                   "leave_one_out": summary(*loo(proj, fam_plans, fam_measured, b), fam_measured)}}
        doc["calibration"][label] = res
        print(label, json.dumps(res, indent=1))
    # solver vs uniform vs VBMF at equal MACs, full test set
    sens = measure_sensitivity(lm.module, train, limit=1000, factors=fc)
    proj = SensitivityProjector.from_sensitivities(sens)
    doc["solver"] = []
    for t, res in zip((2.0, 3.0, 4.0), solve_many(a, proj, (2.0, 3.0, 4.0), "macs")):
        row = {"macs_target": t}
        for s in ("solver", "uniform", "vbmf"):
            plan = strategy_plan(a, s, "macs", t, proj, solved=res)
            if plan is None:
                row[s] = None
                continue
            c = plan_cost(a, plan)
            r = evaluate(compress(lm.module, plan, fc), test)
            row[s] = {"macs_ratio": c.macs_ratio, "params_ratio": c.params_ratio, "top1": r.top1, "ci": list(r.top1_ci)}
        doc["solver"].append(row)
        print(json.dumps(row), file=sys.stderr)
    # projection latency after one slider move
    plan = strategy_plan(a, "uniform", "params", 3.0)
    names = [lp.name for lp in plan.layers if not lp.is_dense]
    times = []
    rng = random.Random(1)
    for i in range(300):
        name = rng.choice(names)
        l = a.layer(name)
        new = plan.with_ranks({name: tuple(rng.randint(1, f) for f in l.full_ranks)})
        t1 = time.perf_counter()
        proj.project(new, base)
        plan_cost(a, new)
        times.append(time.perf_counter() - t1)
    doc["projection_ms"] = {"median": 1000 * statistics.median(times), "p95": 1000 * sorted(times)[int(0.95 * len(times))]}
    print("projection + plan_cost after a slider move:", doc["projection_ms"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
