"""Sensitivity measurement: downstream-only forward passes (torch.fx) vs whole forward passes.

Run: ``python benchmarks/sensitivity_speed.py [--limit 500] [--rounds 1]``. For each model the two
methods run interleaved (``--rounds`` times each, no disk cache) on the same calibration images and the
script prints the median seconds, the ratio, and the largest difference between their logit changes
(expected: 0). Models: the bundled demo (bundled 2,000-image Fashion-MNIST sample; all 22 layers) and
torchvision resnet18 (random init, synthetic 3x64x64 images, 1,000 classes; 6 layers spread over the
depth). Nothing is asserted.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from lrviz.data import get_dataset
from lrviz.models import load_model
from lrviz.sensitivity import measure_sensitivity


def run(name, model, ds, limit, layers, rounds):
    times = {True: [], False: []}
    results = {}
    for _ in range(rounds):
        for partial in (True, False):
            t = time.perf_counter()
            results[partial] = measure_sensitivity(model, ds, limit=limit, layers=layers, cache=False, anchors=(), partial=partial)
            times[partial].append(time.perf_counter() - t)
    a, b = results[True], results[False]
    diff = max(float(np.abs(a.curves[k].delta - b.curves[k].delta).max()) for k in a.curves)
    tp, tf = statistics.median(times[True]), statistics.median(times[False])
    n_layers = len(layers) if layers else len(a.layers)
    print(f"{name}: {n_layers} layers, {a.n} images: downstream-only {tp:.1f} s, whole passes {tf:.1f} s -> {tf / tp:.2f}x; "
          f"max |difference| of logit changes {diff:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    demo = load_model("demo")
    run("demo", demo.module, get_dataset("fashion-mnist-sample"), args.limit, None, args.rounds)
    r18 = load_model("resnet18", input_size=(3, 64, 64))
    layers = ["conv1", "layer1.0.conv1", "layer2.0.conv2", "layer3.0.downsample.0", "layer4.1.conv1", "fc"]
    run("resnet18", r18.module, get_dataset("synthetic:3,64,64,1000,128"), min(args.limit, 128), layers, args.rounds)


if __name__ == "__main__":
    main()
