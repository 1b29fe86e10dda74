"""Benchmark: lrviz's whole-model analysis against the usual ways of getting the same singular values.

For every decomposable layer of a torchvision model (random init under ``torch.manual_seed(0)``) the
same list of unfoldings is processed by

(a) ``svd+evbmf``   the common public recipe: ``numpy.linalg.svd(A)`` (full SVD, ``full_matrices=True``,
                    U and V computed only to read the singular values), then EVBMF on those values
                    (``lrviz.vbmf.evbmf``, so only the SVD step differs from lrviz);
(b) ``svdvals``     bare ``torch.linalg.svdvals(A)`` in float32, no EVBMF;
(c) ``lrviz``       ``lrviz.analyze(model, input_size)`` end to end (spectra + EVBMF for every layer and the
                    forward pass that records spatial sizes), and ``lrviz core`` — lrviz's spectra + EVBMF
                    only (``lrviz.spectra.layer_spectra(..., then=evbmf)``, the step ``analyze`` runs:
                    unfoldings a few at a time on worker threads, float32 where well conditioned; no
                    forward pass), the like-for-like comparison with (a) and (b).

Unfoldings (as in :mod:`lrviz.spectra`): k×k conv → mode-0 ``W.flatten(1)`` and mode-1
``W.transpose(0, 1).flatten(1)``; 1×1 conv / Linear → the ``C_out × C_in`` matrix.

The methods are interleaved over ``--rounds`` rounds (the order rotates each round) and the median
wall time of each is reported with the ratios (a)/(c) and (b)/(c). (a) is slow; when one run of it takes
longer than ``--a-max-seconds`` it is not repeated (the output says so). Before timing, every method's
singular values are checked once against a float64 reference (``numpy.linalg.svd(..., compute_uv=False)``
of the float64 unfolding); the largest difference relative to σ_max is printed. Nothing is asserted.

Run::

    python benchmarks/analysis.py                   # resnet50, 3 rounds, all cores
    python benchmarks/analysis.py --model vgg16 --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="torchvision.models constructor name (resnet50, resnet18, vgg16, ...)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; methods are interleaved within each (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch / BLAS threads (default: number of usable CPU cores)")
    p.add_argument("--input-size", type=int, nargs=3, default=(3, 224, 224), metavar=("C", "H", "W"), help="input of the forward pass in lrviz.analyze (default 3 224 224)")
    p.add_argument("--a-max-seconds", type=float, default=60.0, help="if one run of (a) takes longer, (a) is not repeated (default 60)")
    p.add_argument("--budget-seconds", type=float, default=240.0, help="no further run of (a) starts once it would likely end past this many seconds of timing (default 240)")
    p.add_argument("--skip-a", action="store_true", help="leave out the slow full-SVD recipe (a)")
    p.add_argument("--breakdown", action="store_true", help="also time (b) and lrviz's spectra per unfolding shape (once) and print the costliest shapes")
    return p.parse_args(argv)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


ARGS = _parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    if ARGS.threads is None:
        ARGS.threads = _usable_cpus()
    # NumPy's LAPACK (used by recipe (a)) reads its thread count when first loaded: set it before the import
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(ARGS.threads))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
import lrviz  # noqa: E402
from lrviz.layers import find_layers, get_module  # noqa: E402
from lrviz.spectra import layer_spectra, singular_values, unfoldings  # noqa: E402
from lrviz.vbmf import evbmf  # noqa: E402


# --------------------------------------------------------------------------------------------- set-up


def build_model(name: str) -> torch.nn.Module:
    ctor = getattr(torchvision.models, name, None)
    if ctor is None or not callable(ctor):
        raise SystemExit(f"unknown torchvision model {name!r}")
    torch.manual_seed(0)
    model = ctor(weights=None)
    return model.eval()


def model_unfoldings(model: torch.nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """``(layer, mode, matrix)`` for every unfolding lrviz analyses, in module order."""
    layers, _ = find_layers(model)
    out = []
    for l in layers:
        w = get_module(model, l.name).weight
        for mode, mat in unfoldings(w, l.kind).items():
            out.append((l.name, mode, mat))
    return out


# --------------------------------------------------------------------------------------------- methods
# Each returns the list of singular-value arrays (in the order of the unfoldings) so the first run can
# be checked for agreement; (a) and lrviz also return their EVBMF ranks.


def method_a(unfs):
    """Public recipe: full numpy SVD (U, S, Vᵀ) of every unfolding, then EVBMF on S."""
    values, ranks = [], []
    for _, _, mat in unfs:
        a = mat.cpu().numpy()
        _, s, _ = np.linalg.svd(a)  # full_matrices=True, as public VBMF code calls it
        values.append(s)
        ranks.append(evbmf(s, a.shape).rank)
    return values, ranks


def method_b(unfs):
    """Bare fp32 singular values, no EVBMF."""
    with torch.no_grad():
        values = [torch.linalg.svdvals(mat) for _, _, mat in unfs]
    return [v.numpy() for v in values], None


def make_method_core(model):
    layers, _ = find_layers(model)
    pairs = [(l, get_module(model, l.name).weight) for l in layers]

    def method_core(unfs):
        """lrviz's spectra + EVBMF only (no forward pass): ``lrviz.spectra.layer_spectra(..., then=evbmf)``,
        the step ``lrviz.analyze`` runs."""
        found = {}
        for sp, est in layer_spectra(pairs, then=evbmf):
            for mode in sp.modes:
                found[(sp.layer.name, mode)] = (sp.values[mode], est[mode].rank)
        values = [found[(layer, mode)][0] for layer, mode, _ in unfs]
        ranks = [found[(layer, mode)][1] for layer, mode, _ in unfs]
        return values, ranks

    return method_core


def make_method_full(model, input_size, name):
    def method_full(unfs):
        """``lrviz.analyze`` end to end."""
        res = lrviz.analyze(model, tuple(input_size), name)
        values, ranks = [], []
        for layer, mode, _ in unfs:
            values.append(res.spectra[layer].values[mode])
            ranks.append(res.vbmf[layer][mode].rank)
        return values, ranks

    return method_full


# --------------------------------------------------------------------------------------------- checks


def agreement(reference, values) -> tuple[float, int]:
    """Largest ``max|s - s_ref| / σ_max`` over all unfoldings, and the index where it occurs."""
    worst, where = 0.0, -1
    for i, (ref, s) in enumerate(zip(reference, values)):
        s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
        smax = float(ref[0]) if len(ref) and ref[0] > 0 else 1.0
        d = float(np.max(np.abs(s - ref))) / smax
        if d > worst:
            worst, where = d, i
    return worst, where


# --------------------------------------------------------------------------------------------- report


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        lapack = cfg["Build Dependencies"]["lapack"]
        return f"{lapack.get('name', '?')} {lapack.get('version', '')}".strip()
    except Exception:  # older NumPy or unusual builds
        return "?"


def fmt_s(x: float) -> str:
    return f"{x:9.3f}" if x == x else "      n/a"


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    t_setup = time.perf_counter()
    model = build_model(args.model)
    unfs = model_unfoldings(model)
    n_layers = len({u[0] for u in unfs})
    n_elems = sum(u[2].numel() for u in unfs)
    biggest = max(unfs, key=lambda u: u[2].shape[0] * u[2].shape[1] * max(u[2].shape))

    print("lrviz analysis benchmark")
    print(f"  model        : torchvision {args.model} (random init, torch.manual_seed(0)), input {tuple(args.input_size)}")
    print(f"  unfoldings   : {len(unfs)} matrices from {n_layers} decomposable layers, {n_elems / 1e6:.2f} M entries")
    print(f"                 largest {tuple(biggest[2].shape)} ({biggest[0]} {biggest[1]})")
    print(f"  torch        : {torch.__version__}  torchvision {torchvision.__version__}  numpy {np.__version__} ({blas_name()})  lrviz {lrviz.__version__}")
    print(f"  python       : {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"  cpu          : {cpu_name()}")
    print(f"  cores        : os.cpu_count()={os.cpu_count()} usable={_usable_cpus()}  torch threads={torch.get_num_threads()}  "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}")
    print()

    full = make_method_full(model, args.input_size, args.model)
    method_core = make_method_core(model)
    methods = {
        "(a) numpy full SVD + EVBMF": method_a,
        "(b) torch.linalg.svdvals fp32": method_b,
        "(c) lrviz.analyze (end to end)": full,
        "(c') lrviz spectra + EVBMF": method_core,
    }
    key_a, key_b, key_c, key_core = list(methods)
    if args.skip_a:
        del methods[key_a]

    # warm-up (untimed): first-call overheads of LAPACK / torch kernels / scipy / allocator
    method_b(unfs)
    method_core(unfs)
    if key_a in methods:
        method_a(unfs[:2])
    lrviz.analyze(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 5)), (3, 8, 8))

    # reference singular values (float64, values only) for the agreement check — untimed
    reference = [np.linalg.svd(m.to(torch.float64).numpy(), compute_uv=False) for _, _, m in unfs]

    times: dict[str, list[float]] = {k: [] for k in methods}
    first: dict[str, tuple] = {}
    a_capped = a_budget = False
    names = list(methods)
    t_timing = time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            if k == key_a and times[k]:
                if a_capped or times[k][0] > args.a_max_seconds:
                    a_capped = True
                    continue
                if a_budget or time.perf_counter() - t_timing + min(times[k]) > args.budget_seconds:
                    a_budget = True
                    continue
            t0 = time.perf_counter()
            out = methods[k](unfs)
            dt = time.perf_counter() - t0
            times[k].append(dt)
            first.setdefault(k, out)
            print(f"  round {r + 1}/{args.rounds}  {k:<32s} {dt:8.3f} s", flush=True)
    print()

    med = {k: statistics.median(v) for k, v in times.items()}
    c_full = med[key_c]
    c_core = med[key_core]
    header = f"{'method':<34s} {'runs':>4s} {'median s':>9s} {'min s':>9s} {'max s':>9s} {'÷ (c) full':>11s} {'÷ (c′) core':>12s}"
    print(header)
    print("-" * len(header))
    for k, v in times.items():
        print(f"{k:<34s} {len(v):4d} {fmt_s(med[k])} {fmt_s(min(v))} {fmt_s(max(v))} {med[k] / c_full:10.2f}× {med[k] / c_core:11.2f}×")
    print("-" * len(header))
    if key_a in times:
        ra_full, ra_core = med[key_a] / c_full, med[key_a] / c_core
        print(f"(a)/(c)  speed-up of lrviz over SVD+EVBMF recipe : {ra_full:7.2f}× end to end, {ra_core:7.2f}× spectra+EVBMF   (target ≥ 40×)")
    rb_full, rb_core = med[key_b] / c_full, med[key_b] / c_core
    print(f"(b)/(c)  bare svdvals time ÷ lrviz time          : {rb_full:7.2f}  end to end, {rb_core:7.2f}  spectra+EVBMF   "
          f"(lrviz takes {1 / rb_full:.2f}× / {1 / rb_core:.2f}× the svdvals time; target ≤ 0.3×)")
    lo = {k: min(v) for k, v in times.items()}
    ratios = []
    if key_a in times:
        ratios.append(f"(a)/(c) {lo[key_a] / lo[key_c]:.2f}× end to end, {lo[key_a] / lo[key_core]:.2f}× spectra+EVBMF")
    ratios.append(f"(b)/(c) {lo[key_b] / lo[key_c]:.2f} end to end, {lo[key_b] / lo[key_core]:.2f} spectra+EVBMF")
    print("best-of-runs ratios (min times)                : " + ";  ".join(ratios))
    noisy = [k[:4].strip() for k, v in times.items() if len(v) > 1 and max(v) > 2.0 * min(v)]
    if noisy:
        print(f"warning: timings of {', '.join(noisy)} vary more than 2× between rounds — the machine is noisy "
              "(other load, CPU steal); trust the min more than the median, or rerun with more --rounds")
    if a_capped:
        print(f"note: one run of (a) took {times[key_a][0]:.1f} s > {args.a_max_seconds:g} s, so (a) was run only once (its 'median' is that run)")
    elif a_budget:
        print(f"note: (a) was run {len(times[key_a])} of {args.rounds} times: another run would have gone past --budget-seconds={args.budget_seconds:g}")
    if args.rounds < 3:
        print("note: fewer than 3 rounds — medians are single or paired runs")
    print()

    # agreement of singular values (first run of each method) with the float64 reference
    print("singular-value agreement vs float64 numpy SVD: max over unfoldings of max|σ - σ_ref| / σ_max")
    for k, (vals, _) in first.items():
        if k == key_c:
            continue  # identical code path to (c'), checked below
        d, i = agreement(reference, vals)
        where = f"  (worst: {unfs[i][0]} {unfs[i][1]} {tuple(unfs[i][2].shape)})" if i >= 0 else ""
        print(f"  {k:<32s} {d:.2e}{where}")
    if key_c in first and key_core in first:
        d = max(float(np.max(np.abs(a - b))) for a, b in zip(first[key_c][0], first[key_core][0]))
        label = "(c) analyze vs (c') spectra"
        print(f"  {label:<32s} {d:.2e} (absolute)")
    # pairwise, as the brief asks: lrviz against the two others
    for k in (key_a, key_b):
        if k in first:
            d, _ = agreement([np.sort(np.asarray(v, np.float64))[::-1] for v in first[k][0]], first[key_core][0])
            print(f"  {'lrviz vs ' + k[:3]:<32s} {d:.2e}")
    if key_a in first:
        ra, rc = first[key_a][1], first[key_core][1]
        diff = [(unfs[i][0], unfs[i][1], ra[i], rc[i]) for i in range(len(unfs)) if ra[i] != rc[i]]
        print(f"  EVBMF ranks, (a) vs lrviz: {len(unfs) - len(diff)}/{len(unfs)} identical"
              + ("" if not diff else "; differ at " + ", ".join(f"{l} {m} {x}≠{y}" for l, m, x, y in diff[:5])))

    if args.breakdown:
        print()
        print("per-shape breakdown (one pass, one unfolding at a time, seconds summed over unfoldings of that shape;\n"
              "lrviz = singular_values(m, fast=True), without analyze's worker threads)")
        groups: dict[tuple[int, int], list[torch.Tensor]] = {}
        for _, _, m in unfs:
            groups.setdefault(tuple(m.shape), []).append(m)
        rows = []
        for shp, mats in groups.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                for m in mats:
                    torch.linalg.svdvals(m)
            tb = time.perf_counter() - t0
            t0 = time.perf_counter()
            for m in mats:
                singular_values(m, fast=True)
            tc = time.perf_counter() - t0
            rows.append((shp, len(mats), tb, tc))
        rows.sort(key=lambda r: -max(r[2], r[3]))
        print(f"  {'shape':>12s} {'n':>3s} {'svdvals s':>10s} {'lrviz s':>10s} {'b/c':>6s}")
        for shp, n, tb, tc in rows[:12]:
            print(f"  {str(shp):>12s} {n:3d} {tb:10.4f} {tc:10.4f} {tb / tc:6.2f}")

    print()
    print(f"total benchmark wall time {time.perf_counter() - t_setup:.1f} s")


if __name__ == "__main__":
    main(ARGS)
