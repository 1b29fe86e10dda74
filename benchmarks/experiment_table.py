"""The extended experiment table: training regime × factors × allocation method × MAC reduction, on the
demo architecture, top-1 on the full Fashion-MNIST test set right after decomposition and after 1 and
``--epochs`` epochs of fine-tuning.

    python benchmarks/experiment_table.py [--runs runs] [--regimes plain,ortho,overparam] [--factors weights,data]
        [--methods solver,knapsack,bayes,continuous,uniform,vbmf] [--data-methods M,...] [--targets 2,3,4,6]
        [--finetune solver/weights,uniform/weights] [--epochs 3] [--train-limit N] [--out runs/experiment_table]

Models: ``overparam`` is the bundled ``demo`` (``runs/overparam/model.pt`` when present); ``plain`` and
``ortho`` are ``runs/<regime>/model.pt``, trained by ``bash benchmarks/train_regimes.sh`` (same seed,
epochs and recipe as ``demo``). Regimes without a model are skipped, said so.

Images — no test image makes any choice:

* sensitivities (what the solver, knapsack and Bayesian allocators read) on ``--calibration`` images of
  the bundled *training* sample (``fashion-mnist-train-sample``); the data-aware factors' input statistics
  on ``--stats-images`` of the same training sample;
* fine-tuning on the 60k training split (``--train-limit`` a seeded subset), augmented, cosine learning
  rate, no distillation, nothing selected (the last epoch is kept; epoch 1 is read on the way);
* every top-1 on the full 10,000-image test set.

``--finetune`` names the ``method/factors`` pairs that are fine-tuned (every target and regime); the
others are decomposed only (fine-tuning every cell is ~10 CPU-hours). Rows are cached in
``OUT/rows.json`` (a re-run only measures what is missing); the table is printed and written to
``OUT/table.md``. The MAC ratios are the plans' own (each method meets the target in its own way: the
allocators at or above it, the one-parameter families within ±10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REGIMES = ("plain", "ortho", "overparam")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_regime(runs: Path, regime: str):
    import torch

    from lrviz.models import load_model

    lm = load_model("demo")
    path = runs / regime / "model.pt"
    if path.is_file():
        lm.module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return lm, str(path)
    if regime == "overparam":
        return lm, "bundled demo"
    return None, f"{path} missing (bash benchmarks/train_regimes.sh)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="runs/experiment_table")
    ap.add_argument("--regimes", default=",".join(REGIMES))
    ap.add_argument("--factors", default="weights,data")
    ap.add_argument("--methods", default="solver,knapsack,bayes,continuous,uniform,vbmf")
    ap.add_argument("--data-methods", default=None, help="methods run with data-aware factors (default: --methods)")
    ap.add_argument("--targets", default="2,3,4,6")
    ap.add_argument("--finetune", default="solver/weights,uniform/weights", help="method/factors pairs to fine-tune ('' none)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--train-limit", type=int, default=None, help="fine-tune on a seeded subset of N training images")
    ap.add_argument("--calibration", type=int, default=500)
    ap.add_argument("--stats-images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from lrviz import FactorCache, analyze, compress, plan_cost
    from lrviz.activations import input_statistics
    from lrviz.allocate import layer_choices
    from lrviz.budget import solve_many, strategy_plan
    from lrviz.data import get_dataset
    from lrviz.evaluate import evaluate
    from lrviz.project import SensitivityProjector
    from lrviz.sensitivity import measure_sensitivity
    from lrviz.train import finetune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "rows.json"
    rows = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    targets = [float(t) for t in args.targets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    tuned = {tuple(p.split("/")) for p in args.finetune.split(",") if p}
    calib = get_dataset("fashion-mnist-train-sample", "train")
    test = get_dataset("fashion-mnist", "test")
    train = get_dataset("fashion-mnist", "train", augment=True)
    log(f"load average {os.getloadavg()[0]:.2f}; calibration {args.calibration} train-sample images; scored on "
        f"{len(test):,} test images; fine-tuning {args.epochs} epochs on {args.train_limit or len(train):,} training images")

    def save():
        cache_path.write_text(json.dumps(rows, indent=1))

    for regime in args.regimes.split(","):
        lm, where = load_regime(Path(args.runs), regime)
        if lm is None:
            log(f"{regime}: skipped ({where})")
            continue
        net = lm.module.eval()
        a = analyze(net, lm.input_size, lm.name)
        base_key = f"{regime}|baseline"
        if base_key not in rows:
            rows[base_key] = {"regime": regime, "top1": evaluate(net, test).top1, "model": where}
            save()
        log(f"{regime} ({where}): baseline {rows[base_key]['top1']:.4f}")
        stats = None
        for kind in args.factors.split(","):
            kind_methods = [m for m in (args.data_methods or args.methods).split(",") if m] if kind == "data" else methods
            todo = [(m, t) for m in kind_methods for t in targets if f"{regime}|{kind}|{m}|{t:g}" not in rows
                    or ((m, kind) in tuned and rows[f"{regime}|{kind}|{m}|{t:g}"].get("ft_last") is None
                        and rows[f"{regime}|{kind}|{m}|{t:g}"].get("plan") is not None)]
            if not todo:
                continue
            if kind == "data" and stats is None:
                stats = input_statistics(net, calib, limit=args.stats_images, data_name="fashion-mnist-train-sample")
            fc = FactorCache(net, stats if kind == "data" else None)
            sens = measure_sensitivity(net, calib, limit=args.calibration, factors=fc, data_name="fashion-mnist-train-sample")
            proj = SensitivityProjector.from_sensitivities(sens)
            solved = dict(zip(targets, solve_many(a, proj, targets, "macs"))) if {"solver", "solver-cp"} & set(kind_methods) else {}
            choices = layer_choices(a, proj, "macs") if "knapsack" in kind_methods else None
            for m, t in todo:
                key = f"{regime}|{kind}|{m}|{t:g}"
                row = rows.get(key) or {"regime": regime, "factors": kind, "method": m, "target": t}
                plan = strategy_plan(a, m, "macs", t, proj, solved=solved.get(t), choices=choices)
                if plan is None:
                    row.update(plan=None)
                    rows[key] = row
                    save()
                    log(f"  {key}: out of reach")
                    continue
                cost = plan_cost(a, plan)
                small = compress(net, plan, fc)
                if "top1" not in row:
                    row.update(plan=plan.ranks(), params_ratio=cost.params_ratio, macs_ratio=cost.macs_ratio,
                               top1=evaluate(small, test).top1)
                msg = f"  {key}: {cost.macs_ratio:.2f}x MACs, decomposed {row['top1']:.4f}"
                if (m, kind) in tuned and args.epochs > 0:
                    t0 = time.perf_counter()
                    res = finetune(small, train, epochs=args.epochs, lr=args.lr, train_limit=args.train_limit, seed=args.seed,
                                   keep="last", val_set=test, val_limit=None, patience=args.epochs + 1)
                    after = {h.epoch: h.val_top1 for h in res.history}
                    row.update(ft1=after.get(1), ft_last=after.get(args.epochs), ft_epochs=args.epochs,
                               ft_images=args.train_limit or len(train), ft_seconds=time.perf_counter() - t0)
                    msg += f", +1 ep {row['ft1']:.4f}, +{args.epochs} ep {row['ft_last']:.4f}"
                rows[key] = row
                save()
                log(msg)
    text = render(rows, targets, methods, args.epochs)
    (out / "table.md").write_text(text)
    print(text)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def render(rows: dict, targets, methods, epochs: int) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}"

    lines = ["| regime | factors | method | " + " | ".join(f"{t:g}× MACs: dec / +1 / +{epochs}" for t in targets) + " |",
             "|---|---|---|" + "---|" * len(targets)]
    for regime in REGIMES:
        base = rows.get(f"{regime}|baseline")
        if base is None:
            continue
        lines.append(f"| **{regime}** | | baseline {pct(base['top1'])} | " + " | ".join("" for _ in targets) + " |")
        for kind in ("weights", "data"):
            for m in methods:
                cells = []
                for t in targets:
                    r = rows.get(f"{regime}|{kind}|{m}|{t:g}")
                    if r is None:
                        cells.append("")
                    elif r.get("plan") is None:
                        cells.append("unreachable")
                    else:
                        ft = f" / {pct(r.get('ft1'))} / {pct(r.get('ft_last'))}" if r.get("ft_last") is not None else ""
                        cells.append(f"{pct(r['top1'])}{ft} ({r['macs_ratio']:.2f}×)")
                if any(cells):
                    lines.append(f"| {regime} | {kind} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
