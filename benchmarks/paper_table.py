"""Reproduce the paper-pipeline table on Fashion-MNIST (full 10k test set).

For each training regime (plain / ortho / overparam, trained by ``benchmarks/train_regimes.sh``):
baseline accuracy; the VBMF plan's params and MAC reduction; accuracy right after decomposition and
after 1 and 3 epochs of fine-tuning; and the same at one common params target (``ratio:T``) so the
regimes are compared at equal size.

    python benchmarks/paper_table.py [--runs runs] [--target 4] [--epochs 3]

Writes ``runs/paper_table.json`` and ``runs/paper_table.md`` and prints the table. The stem conv and the classifier
(1 input channel; 10 logits) are kept dense in every plan (``--exclude conv1 --exclude fc``), as is usual.
The VBMF-compressed, fine-tuned model of each regime is saved as ``runs/<regime>/vbmf_finetuned.pt``
with its plan ``runs/<regime>/vbmf_plan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import lrviz  # noqa: E402
from lrviz.data import get_dataset  # noqa: E402
from lrviz.evaluate import evaluate  # noqa: E402
from lrviz.train import finetune  # noqa: E402
from lrviz.zoo import DemoNet  # noqa: E402

EXCLUDE = ("conv1", "fc")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_plan(net, analysis, spec, train, test, epochs, lr, seed):
    plan = lrviz.make_plan(analysis, spec, exclude=EXCLUDE)
    cost = lrviz.plan_cost(analysis, plan)
    small = lrviz.compress(net, plan)
    row = {"spec": spec, "params_ratio": cost.params_ratio, "macs_ratio": cost.macs_ratio,
           "params": cost.params_planned, "macs": cost.macs_planned,
           "ranks": {lp.name: list(lp.ranks) for lp in plan.layers if not lp.is_dense}}
    row["top1_decomposed"] = evaluate(small, test).top1
    log(f"  {spec}: {cost.params_ratio:.2f}x params, {cost.macs_ratio:.2f}x MACs, decomposed top-1 {row['top1_decomposed']:.4f}")

    def cb(ev):
        if ev["event"] == "epoch":
            log(f"    epoch {ev['epoch']}: loss {ev['train_loss']:.4f}, test top-1 {ev['val_top1']:.4f}")

    # one cosine fine-tuning run of `epochs` epochs; full-test-set accuracy recorded after every epoch
    # (no early stopping, last weights kept: nothing is selected on the test set)
    res = finetune(small, train, epochs=epochs, lr=lr, val_set=test, val_limit=None, patience=epochs + 1,
                   seed=seed, progress=cb, keep="last")
    after = {h.epoch: h.val_top1 for h in res.history}
    row["top1_ft1"] = after[1]
    row[f"top1_ft{epochs}"] = after[epochs]
    log(f"    fine-tuned: 1 epoch {after[1]:.4f}, {epochs} epochs {after[epochs]:.4f}")
    return row, plan, res.model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--regimes", default="plain,ortho,overparam")
    ap.add_argument("--target", type=float, default=4.0, help="common params reduction for the fair comparison")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render-only", action="store_true", help="only rebuild the table from runs/<regime>/table_row.json")
    args = ap.parse_args()
    if args.render_only:
        rows = [json.loads(p.read_text()) for r in ("plain", "ortho", "overparam") if (p := Path(args.runs) / r / "table_row.json").exists()]
        print(render(rows, args.epochs, args.target, args.runs))
        return
    torch.set_num_threads(os.cpu_count() or 2)
    train = get_dataset("fashion-mnist", "train", augment=True)
    test = get_dataset("fashion-mnist", "test")
    table_path = Path(args.runs, "paper_table.json")
    # rows of regimes run earlier are kept (regimes can be run separately), in the order plain, ortho, overparam
    out_rows = []
    for regime in args.regimes.split(","):
        path = Path(args.runs) / regime / "model.pt"
        if not path.exists():
            log(f"skip {regime}: {path} missing")
            continue
        net = DemoNet()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        net.eval()
        a = lrviz.analyze(net, (1, 28, 28), f"demo-{regime}")
        base = evaluate(net, test)
        log(f"{regime}: baseline top-1 {base.top1:.4f}")
        row = {"regime": regime, "baseline_top1": base.top1, "baseline_ci": list(base.top1_ci), "params": a.params, "macs": a.macs}
        row["vbmf"], plan, model = run_plan(net, a, "vbmf", train, test, args.epochs, args.lr, args.seed)
        torch.save(model.state_dict(), Path(args.runs) / regime / "vbmf_finetuned.pt")
        plan.save(Path(args.runs) / regime / "vbmf_plan.json")
        row["common"], _, _ = run_plan(net, a, f"ratio:{args.target:g}", train, test, args.epochs, args.lr, args.seed)
        (Path(args.runs) / regime / "table_row.json").write_text(json.dumps(row, indent=1))
        # merge with rows of other regimes written meanwhile (regimes can run in separate processes)
        old = json.loads(table_path.read_text()) if table_path.exists() else []
        out_rows = [r for r in old if r["regime"] != regime] + [row]
        out_rows.sort(key=lambda r: ["plain", "ortho", "overparam"].index(r["regime"]) if r["regime"] in ("plain", "ortho", "overparam") else 9)
        table_path.write_text(json.dumps(out_rows, indent=1))
    print(render(out_rows, args.epochs, args.target, args.runs))


def render(out_rows, e, target, runs) -> str:
    """Markdown table (also written to RUNS/paper_table.md)."""
    lines = [
        f"| regime | baseline top-1 | VBMF params × | VBMF MACs × | VBMF: decomposed | +1 ep | +{e} ep | ratio:{target:g} params × | MACs × | decomposed | +1 ep | +{e} ep |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out_rows:
        v, c = r["vbmf"], r["common"]
        lines.append(
            f"| {r['regime']} | {r['baseline_top1']:.2%} | {v['params_ratio']:.2f} | {v['macs_ratio']:.2f} | {v['top1_decomposed']:.2%} | "
            f"{v['top1_ft1']:.2%} | {v[f'top1_ft{e}']:.2%} | {c['params_ratio']:.2f} | {c['macs_ratio']:.2f} | {c['top1_decomposed']:.2%} | "
            f"{c['top1_ft1']:.2%} | {c[f'top1_ft{e}']:.2%} |"
        )
    table = "\n".join(lines)
    Path(runs, "paper_table.md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
