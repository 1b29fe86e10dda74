"""Measure the bundled demo's layer sensitivities on the bundled sample and ship them with lrviz.

Run: ``python benchmarks/bundle_sensitivities.py [--images 500]`` (about 2 minutes on 2 idle cores).

The dashboard opens on the ``demo`` model, the bundled 2,000-image Fashion-MNIST test sample and
500 quick-evaluation images; with these sensitivities in ``lrviz/assets/sensitivity/<key>/`` its
projection is data-driven from the first second (:func:`lrviz.sensitivity_cache.bundled_dir`). The
key hashes the weights, the exact calibration tensors, the grid and the cache format, so the files
are used only for exactly that combination, and a change of any of them (e.g. ``FORMAT_VERSION``)
needs a re-run of this script. The files are the disk cache's own, re-written compressed; the old
bundled folders are removed.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from lrviz import sources
from lrviz.models import load_model
from lrviz.sensitivity import measure_sensitivity
from lrviz.sensitivity_cache import BUNDLED_ROOT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500, help="calibration images (the dashboard's default quick-evaluation size)")
    args = ap.parse_args()
    lm = load_model("demo")
    src = sources.dataset_source("fashion-mnist-sample", lm.input_size)  # exactly what the dashboard loads
    ds = sources.load_dataset(src)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sens = measure_sensitivity(lm.module, ds, limit=args.images, cache_root=tmp, data_name=f"{src.label}, {args.images} images",
                                   progress=lambda d, t, n: print(f"{d}/{t} {n}", file=sys.stderr))
        print(f"measured {len(sens.layers)} layers + {len(sens.anchors)} anchors on {sens.n} images in {time.perf_counter() - t0:.1f} s")
        folder = Path(tmp) / sens.key
        if BUNDLED_ROOT.exists():
            shutil.rmtree(BUNDLED_ROOT)
        out = BUNDLED_ROOT / sens.key
        out.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            if f.suffix == ".npz":
                with np.load(f, allow_pickle=False) as z:
                    np.savez_compressed(out / f.name, **{k: z[k] for k in z.files})
            elif f.is_file():
                shutil.copy(f, out / f.name)
                (out / f.name).chmod(0o644)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
