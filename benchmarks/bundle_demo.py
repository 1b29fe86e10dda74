"""Bundle the demo networks and the Fashion-MNIST samples into lrviz/assets with their model card.

    python benchmarks/bundle_demo.py [--run runs/overparam]
    python benchmarks/bundle_demo.py --samples-only

Redraws the two bundled samples from the full Fashion-MNIST idx files (the Debian package
``dataset-fashion-mnist``; :func:`lrviz.data_fashion_mnist.write_sample`): ``fashion-mnist-sample``
(2,000 test images, 200 per class) and ``fashion-mnist-train-sample`` (3,000 train images, 300 per
class, what the dashboard fine-tunes on offline), each the first N of every class in a seed-0
permutation of its split. ``--samples-only`` stops there.

Takes ``RUN/model.pt`` (trained by ``lrviz train demo --regime overparam ...``, see
``benchmarks/train_regimes.sh``) as ``demo``, and ``RUN/vbmf_finetuned.pt`` + ``RUN/vbmf_plan.json``
(written by ``benchmarks/paper_table.py``) as ``demo-compressed``; evaluates both on the full
Fashion-MNIST test set and on the bundled 2,000-image sample; writes ``lrviz/assets/model_card.json``
(read by the tests) and ``lrviz/assets/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import lrviz  # noqa: E402
from lrviz.data import get_dataset  # noqa: E402
from lrviz.data_fashion_mnist import write_sample  # noqa: E402
from lrviz.evaluate import evaluate  # noqa: E402

ASSETS = Path(lrviz.__file__).parent / "assets"


def bundle_7x(run: Path) -> None:
    """Copy ``RUN/model.pt`` + ``RUN/plan.json`` (``benchmarks/demo_7x.py``) as ``demo-7x``, measure it on the full
    test set and the bundled sample, and add it to the model card (JSON and Markdown; the other entries stay)."""
    shutil.copy(run / "model.pt", ASSETS / "demo-7x.pt")
    shutil.copy(run / "plan.json", ASSETS / "demo-7x.plan.json")
    # a fresh process registers demo-7x (lrviz.zoo registers the bundled plans it finds when imported)
    subprocess.run([sys.executable, __file__, "--card-7x", str(run)], check=True)


def card_7x(run: Path) -> None:
    result = json.loads((run / "result.json").read_text())
    from lrviz.models import load_model

    full, sample = get_dataset("fashion-mnist"), get_dataset("fashion-mnist-sample")
    card = json.loads((ASSETS / "model_card.json").read_text())
    m = load_model("demo-7x")
    a = lrviz.analyze(m.module, m.input_size, "demo-7x", spectra=False)
    rf, rs = evaluate(m.module, full), evaluate(m.module, sample)
    card["models"]["demo-7x"] = {"params": a.params, "macs": a.macs, "size_mb": a.params * 4 / 2**20,
                                 "test_top1": rf.top1, "test_top1_ci": list(rf.top1_ci), "test_loss": rf.loss,
                                 "sample_top1": rs.top1, "sample_top1_ci": list(rs.top1_ci), "sample_correct": rs.correct,
                                 "sample_n": rs.n}
    d, c = card["models"]["demo"], card["models"]["demo-7x"]
    drop = 100 * (d["test_top1"] - c["test_top1"])
    card["demo_7x"] = {"params_ratio": d["params"] / c["params"], "macs_ratio": d["macs"] / c["macs"], "top1_drop_points": drop,
                       "targets": {"params_ratio": 7.0, "macs_ratio": 6.0, "top1_drop_points": 0.5},
                       "accuracy_target_met": drop <= 0.5, "command": result["command"], "plan": result["plan_spec"],
                       "methods": result.get("methods", {}), "finetune": result["finetune"],
                       "calibration": result["calibration"], "selection": result["selection"]}
    plan = json.loads((ASSETS / "demo-7x.plan.json").read_text())
    cp = {e["name"]: e["ranks"][0] for e in plan["layers"] if e.get("method") == "cp"}
    card["demo_7x"]["cp_note"] = ("including the stem `conv1` at CP rank " + str(cp["conv1"]) + ", just under its dense size"
                                  if "conv1" in cp else "the stem stays dense")
    (ASSETS / "model_card.json").write_text(json.dumps(card, indent=1))
    s7 = card["demo_7x"]
    ft = s7["finetune"]
    section = f"""
## `demo-7x`

| model | params | MACs | size (fp32) | test top-1 (10k) | 95% CI | sample top-1 (2k) |
|---|---|---|---|---|---|---|
| `demo-7x` | {c['params']:,} | {c['macs']:,} | {c['size_mb']:.2f} MB | {c['test_top1']:.2%} | {c['test_top1_ci'][0]:.2%}–{c['test_top1_ci'][1]:.2%} | {c['sample_top1']:.2%} |

{s7['params_ratio']:.2f}× fewer params and {s7['macs_ratio']:.2f}× fewer MACs than `demo`, top-1 change
{-drop:+.2f} points on the full test set (targets: ≥ 7×, ≥ 6×, ≤ 0.5 points: the accuracy target is
{'met' if s7['accuracy_target_met'] else '**not** met'}).

* **Command**: `{s7['command']}` (seed {ft['seed']}).
* **Plan**: `{s7['plan']}` — the layer-wise smaller ranks of the greedy budget solver's plans at those params and
  MACs targets (the solver kept the stem `conv1` and the classifier `fc` dense), then {len(s7['methods'])} k×k convs
  re-cast as CP at the same size ({s7['cp_note']}); per-layer ranks in `demo-7x.plan.json`. Chosen with
  sensitivities on {s7['calibration']} and by decomposed loss on {s7['selection']} among 4 plans × 2 forms.
* **What the test set did**: three configurations were run and each measured once on the test set —
  the solver's `macs:8` plan fine-tuned at lr 0.01 (92.45 %), the joint plan in Tucker-2 form at lr 0.02
  (92.58 %), and this one (the CP form, chosen on training images) at lr 0.02. The recipe changes between them
  (joint plans, lr 0.02, CP candidates) came after seeing the earlier test figures, so this figure is not a
  pristine hold-out; no epoch, plan or form was picked by test accuracy.
* **Fine-tuning**: {ft['epochs']} epochs on {ft['images']:,} training images (augmented), SGD lr {ft['lr']} with cosine
  decay, distilled from `demo`, the last epoch kept ({ft['seconds'] / 60:.1f} min on the 2-core CPU).
* Regenerate: `{s7['command']}` then `python benchmarks/bundle_demo.py --only-7x {run}`.
"""
    md = (ASSETS / "MODEL_CARD.md").read_text()
    md = md.split("\n## `demo-7x`")[0].rstrip("\n") + "\n" + section
    (ASSETS / "MODEL_CARD.md").write_text(md)
    print(section)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/overparam")
    ap.add_argument("--only-7x", metavar="RUN", help="only bundle demo-7x from RUN (benchmarks/demo_7x.py's --out)")
    ap.add_argument("--card-7x", metavar="RUN", help=argparse.SUPPRESS)
    ap.add_argument("--samples-only", action="store_true", help="only redraw the bundled Fashion-MNIST samples")
    args = ap.parse_args()
    if args.only_7x:
        bundle_7x(Path(args.only_7x))
        return
    if args.card_7x:
        card_7x(Path(args.card_7x))
        return
    for split in ("test", "train"):
        path = write_sample(split)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.samples_only:
        return
    run = Path(args.run)
    hist = json.loads((run / "history.json").read_text())
    shutil.copy(run / "model.pt", ASSETS / "demo.pt")
    shutil.copy(run / "vbmf_finetuned.pt", ASSETS / "demo-compressed.pt")
    shutil.copy(run / "vbmf_plan.json", ASSETS / "demo-compressed.plan.json")
    from lrviz.models import load_model  # imports lrviz.zoo now, which registers the copied files

    full = get_dataset("fashion-mnist")
    sample = get_dataset("fashion-mnist-sample")
    card = {"data": "Fashion-MNIST (Zalando Research, MIT licence): 60k train / 10k test; sample = 2,000 test images, 200 per class "
                    "(seed 0); train sample = 3,000 train images, 300 per class (seed 0)",
            "train_command": "lrviz train demo --weights none --regime overparam --epochs 10 --seed 0 --data fashion-mnist --out runs/overparam",
            "train_config": hist["config"],
            "compress_command": "python benchmarks/paper_table.py (VBMF plan, stem conv1 and classifier fc kept dense, 3 epochs fine-tuning, lr 0.01, last epoch kept)",
            "units": "MACs at batch 1 (FLOPs = 2 x MACs); params = all parameters",
            "models": {}}
    for name in ("demo", "demo-compressed"):
        m = load_model(name)
        a = lrviz.analyze(m.module, m.input_size, name, spectra=False)
        rf, rs = evaluate(m.module, full), evaluate(m.module, sample)
        card["models"][name] = {"params": a.params, "macs": a.macs, "size_mb": a.params * 4 / 2**20,
                                "test_top1": rf.top1, "test_top1_ci": list(rf.top1_ci), "test_loss": rf.loss,
                                "sample_top1": rs.top1, "sample_top1_ci": list(rs.top1_ci), "sample_correct": rs.correct, "sample_n": rs.n}
        print(name, card["models"][name])
    d, c = card["models"]["demo"], card["models"]["demo-compressed"]
    card["compression"] = {"params_ratio": d["params"] / c["params"], "macs_ratio": d["macs"] / c["macs"],
                           "top1_drop_points": 100 * (d["test_top1"] - c["test_top1"])}
    (ASSETS / "model_card.json").write_text(json.dumps(card, indent=1))
    md = f"""# Model card: `demo` and `demo-compressed`

Bundled Fashion-MNIST classifiers (ResNet-20-style, 1×28×28 input, 10 classes; `lrviz/zoo.py`).

| model | params | MACs | size (fp32) | test top-1 (10k) | 95% CI | sample top-1 (2k) |
|---|---|---|---|---|---|---|
| `demo` | {d['params']:,} | {d['macs']:,} | {d['size_mb']:.2f} MB | {d['test_top1']:.2%} | {d['test_top1_ci'][0]:.2%}–{d['test_top1_ci'][1]:.2%} | {d['sample_top1']:.2%} |
| `demo-compressed` | {c['params']:,} | {c['macs']:,} | {c['size_mb']:.2f} MB | {c['test_top1']:.2%} | {c['test_top1_ci'][0]:.2%}–{c['test_top1_ci'][1]:.2%} | {c['sample_top1']:.2%} |

Compression: {card['compression']['params_ratio']:.2f}× fewer params, {card['compression']['macs_ratio']:.2f}× fewer MACs,
top-1 change {-card['compression']['top1_drop_points']:+.2f} points. Units: MACs at batch 1 (FLOPs = 2 × MACs).

* **Data**: {card['data']}.
* **`demo`** — trained with the paper's regime (over-parameterised Tucker-2 form + orthogonal
  regularisation + core group-lasso, folded back exactly), seed 0:
  `{card['train_command']}`
  (config: `{json.dumps(hist['config'])}`).
* **`demo-compressed`** — `demo` with EVBMF ranks per mode (stem and classifier kept dense), Tucker-2 / SVD, then
  3 epochs of fine-tuning: `{card['compress_command']}`. Its structure is rebuilt from
  `demo-compressed.plan.json`.
* Regenerate this card: `python benchmarks/bundle_demo.py`.
"""
    (ASSETS / "MODEL_CARD.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
