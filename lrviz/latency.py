"""Measured latency: per-layer latency tables over ranks, break-even ranks, and end-to-end benchmarks.

MACs say what a plan *could* save; latency says what it does. Two measurements:

**Latency table** (:func:`measure_latency_table`). For every decomposable layer, the replacement
module that :func:`lrviz.decompose.build_layer` would build is timed at the layer's real input shape
(from the analysis' recorded sizes, times the batch) on a grid of ranks per mode, with each mode also at
its full rank (no factor): for a Tucker-2 layer a 2-D grid that includes the one-factor structures
and the dense layer itself. Between grid points the time is interpolated linearly (extrapolated from the
last two factored points up to just below the full rank: a factored mode never turns into the dense
one by interpolation). Layers run in channels-last memory (see :mod:`lrviz.execution`), in eval mode,
under ``torch.inference_mode``. Times depend on shapes, not values, so a table entry is cached on disk
per layer *geometry* + batch + device + threads + torch version, and identical layers (the blocks of a
ResNet stage) are measured once.

From a table: :meth:`LayerLatency.break_even` — the largest rank of a mode at which the layer is
still faster than dense — and :meth:`LatencyTable.fastest_structure` — among keeping each mode at the
planned rank or at full rank, the fastest (so a factor that would slow the layer down is dropped).
:meth:`LatencyTable.predict_ms` adds the planned layers' times to the measured rest of the model (end
to end minus the dense layers) for a predicted end-to-end latency — the solver's cost model.

**Benchmark** (:func:`bench`). The original and the planned model timed end to end, interleaved in one
run (``torch.utils.benchmark.Timer.blocked_autorange`` in alternating order, so drift hits both alike),
both under the *same* execution — the one :func:`choose_execution` measured fastest for the planned model
on this device — plus the original as it was loaded (eager), and every decomposable layer of both.

All timing goes through a *timer* ``timer(fn, x) -> list[seconds]``; tests pass a deterministic fake.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .errors import LrvizError
from .execution import EXECUTIONS, fresh_compile_cache, prepare, to_channels_last
from .layers import SVD_LINEAR, TUCKER2, LayerInfo, get_module

__all__ = [
    "LATENCY_FORMAT",
    "BenchResult",
    "LatencyTable",
    "LayerLatency",
    "bench",
    "benchmark_timer",
    "choose_execution",
    "layer_input_shape",
    "measure_latency_table",
    "rank_grid",
]

log = logging.getLogger(__name__)

#: Version of the cached latency-table entries and benchmark files.
LATENCY_FORMAT = 1

Timer = Callable[[Callable, torch.Tensor], Sequence[float]]


# --- timing ----------------------------------------------------------------------------------------

def benchmark_timer(min_run_time: float = 0.05, threads: int | None = None) -> Timer:
    """A timer: ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time)`` of ``fn(x)``, returning
    the per-call times in seconds (one warm-up call first)."""
    from torch.utils.benchmark import Timer as _T

    n = int(threads or torch.get_num_threads())

    def timer(fn, x) -> list[float]:
        with torch.inference_mode():
            fn(x)
            m = _T(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=n).blocked_autorange(min_run_time=min_run_time)
        return [float(t) for t in m.times]

    return timer


def _stats(times: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range, in ms."""
    a = np.asarray(times, dtype=np.float64) * 1000.0
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return float(med), float(q3 - q1)


# --- latency table ---------------------------------------------------------------------------------

def rank_grid(full: int, points: int = 5) -> tuple[int, ...]:
    """Factored ranks (all ``< full``) at which a mode is timed: up to ``points`` ranks spread from low to
    just below full, on multiples of 8 (4 below 32 channels, 1 below 8) — the widths vector units like."""
    full = int(full)
    if full <= 1:
        return ()
    step = 8 if full >= 32 else 4 if full >= 8 else 1
    cands = list(range(step, full, step)) or list(range(1, full))
    if len(cands) <= points:
        return tuple(cands)
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, points)).astype(int))
    return tuple(cands[i] for i in idx)


def _weights_1d(grid: tuple[int, ...], full: int, r: int) -> list[tuple[int, float]]:
    """Interpolation weights of rank ``r`` on one mode's axis ``grid + (full,)`` (index, weight)."""
    r = int(r)
    k = len(grid)
    if r >= full or k == 0:
        return [(k, 1.0)]
    if r <= grid[0]:
        return [(0, 1.0)]
    for j in range(1, k):
        if r <= grid[j]:
            t = (r - grid[j - 1]) / (grid[j] - grid[j - 1])
            return [(j - 1, 1.0 - t), (j, t)]
    if k == 1:
        return [(0, 1.0)]
    t = (r - grid[-2]) / (grid[-1] - grid[-2])  # above the last factored point: extrapolate its trend
    return [(k - 2, 1.0 - t), (k - 1, t)]


@dataclass(frozen=True, eq=False)
class LayerLatency:
    """Measured time of one layer's replacement over a grid of ranks.

    ``grids[m]`` are the factored ranks of mode ``m``; the table's axis ``m`` is ``grids[m] + (full,)``,
    its last entry the mode without a factor. ``ms[..., ...]`` median milliseconds, ``iqr`` their spread.
    """

    name: str
    full_ranks: tuple[int, ...]
    grids: tuple[tuple[int, ...], ...]
    ms: np.ndarray
    iqr: np.ndarray
    input_shape: tuple[int, ...]

    @property
    def dense_ms(self) -> float:
        return float(self.ms[(-1,) * self.ms.ndim])

    def at(self, ranks: Sequence[int]) -> float:
        """Milliseconds at ``ranks`` (interpolated between grid points)."""
        ws = [_weights_1d(g, f, r) for g, f, r in zip(self.grids, self.full_ranks, ranks)]
        if len(ws) == 1:
            return float(sum(w * self.ms[i] for i, w in ws[0]))
        return float(sum(w0 * w1 * self.ms[i, j] for i, w0 in ws[0] for j, w1 in ws[1]))

    def break_even(self, mode: int, other: int | None = None) -> int:
        """The largest rank of ``mode`` (below full) at which the layer is faster than dense, with the other
        mode (Tucker-2) at rank ``other`` (default: full, i.e. one factor); 0 when no rank is."""
        full = self.full_ranks[mode]
        dense = self.dense_ms
        best = 0
        for r in range(1, full):
            ranks = list(self.full_ranks)
            ranks[mode] = r
            if len(ranks) == 2 and other is not None:
                ranks[1 - mode] = int(other)
            if self.at(ranks) < dense:
                best = r
        return best

    def to_dict(self) -> dict:
        return {"name": self.name, "full_ranks": list(self.full_ranks), "grids": [list(g) for g in self.grids],
                "ms": self.ms.tolist(), "iqr_ms": self.iqr.tolist(), "input_shape": list(self.input_shape)}


@dataclass(frozen=True, eq=False)
class LatencyTable:
    """Per-layer latency tables of one model at one batch size and device, plus its end-to-end time."""

    layers: dict[str, LayerLatency]
    batch: int
    device: str
    threads: int
    total_ms: float | None = None  # the original end to end (under ``execution``), when measured
    execution: str = "channels_last"
    cached: int = 0
    scale: float = 1.0  # end-to-end ms per ms of the per-layer table (see :meth:`calibrated`)

    def layer_ms(self, layer: LayerInfo, ranks: Sequence[int]) -> float:
        return self.layers[layer.name].at(ranks)

    def fastest_structure(self, layer: LayerInfo, ranks: Sequence[int]) -> tuple[int, ...]:
        """Among keeping each mode at ``ranks`` or at full rank, the fastest ranks (ties: fewer factors)."""
        from .plan import cheapest_structure

        if layer.name not in self.layers:
            return tuple(int(r) for r in ranks)
        return cheapest_structure(layer, tuple(ranks), lambda r: self.layer_ms(layer, r))

    def rest_ms(self) -> float:
        """End-to-end time minus the dense layers' times (pooling, activations, undecomposed layers...)."""
        if self.total_ms is None:
            raise LrvizError("the latency table has no end-to-end time: measure it with total=True")
        return self.total_ms - self.scale * self._layers_ms(None)

    def _layers_ms(self, plan) -> float:
        by_name = {lp.name: lp for lp in plan.layers} if plan is not None else {}
        total = 0.0
        for name, t in self.layers.items():
            lp = by_name.get(name)
            total += t.at(lp.ranks) if lp is not None else t.dense_ms
        return total

    def predict_ms(self, plan) -> float:
        """Predicted end-to-end milliseconds of ``plan``: the rest of the model + ``scale`` × the planned
        layers' table times."""
        return self.rest_ms() + self.scale * self._layers_ms(plan)

    def layer_ms_scaled(self, layer: LayerInfo, ranks: Sequence[int]) -> float:
        return self.scale * self.layer_ms(layer, ranks)

    def calibrated(self, original_ms: float, plan, planned_ms: float) -> "LatencyTable":
        """The table re-fitted to two end-to-end measurements under the execution actually used — the
        original and one plan, timed side by side: ``original = rest + s·Σ dense`` and ``planned = rest +
        s·Σ plan`` give the scale ``s`` (how much faster or slower the layers run end to end than alone,
        e.g. under ``torch.compile``) and the rest. Unchanged scale (only the total) when the two
        measurements cannot determine it (the plan changes no layer time, or ``s`` would not be positive)."""
        from dataclasses import replace

        dense, planned = self._layers_ms(None), self._layers_ms(plan)
        s = (original_ms - planned_ms) / (dense - planned) if dense - planned > 1e-9 else -1.0
        if not (s > 0 and math.isfinite(s)):
            return replace(self, total_ms=float(original_ms))
        return replace(self, total_ms=float(original_ms), scale=float(s))

    def predicted_speedup(self, plan) -> float:
        return float(self.total_ms / max(self.predict_ms(plan), 1e-9))

    def to_dict(self) -> dict:
        return {"format": LATENCY_FORMAT, "batch": self.batch, "device": self.device, "threads": self.threads,
                "execution": self.execution, "total_ms": self.total_ms, "scale": self.scale,
                "layers": [t.to_dict() for t in self.layers.values()]}


def layer_input_shape(layer: LayerInfo, io, batch: int) -> tuple[int, ...]:
    """The shape of the layer's (first call's) input at ``batch`` images."""
    call = io.all_calls[0]
    if layer.kind == SVD_LINEAR:
        return (int(batch) * max(int(call.positions), 1), int(layer.in_channels))
    return (int(batch) * int(call.batch), int(layer.in_channels), *map(int, call.in_hw))


def _geometry_key(layer: LayerInfo, module: nn.Module, shape, batch, device, threads, grid_points) -> str:
    geo = {"format": LATENCY_FORMAT, "kind": layer.kind, "weight": list(layer.weight_shape), "groups": layer.groups,
           "bias": bool(layer.bias), "shape": list(shape), "batch": int(batch), "device": str(device), "threads": int(threads),
           "grid_points": int(grid_points), "torch": torch.__version__}
    for attr in ("stride", "padding", "dilation", "padding_mode"):
        if hasattr(module, attr):
            geo[attr] = str(getattr(module, attr))
    return hashlib.sha256(json.dumps(geo, sort_keys=True).encode()).hexdigest()[:24]


def _read_cached(kind: str, key: str):
    """The cached JSON document ``<cache>/<kind>/<key>.json`` of this format, or None."""
    from .storage import cache_root

    try:
        doc = json.loads((cache_root() / kind / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == LATENCY_FORMAT else None


def _write_cached(kind: str, key: str, doc: dict) -> None:
    """Write ``<cache>/<kind>/<key>.json`` atomically; a read-only cache only costs a re-measurement."""
    from .storage import atomic_write, cache_root, private_dir

    try:
        private_dir(cache_root() / kind)
        atomic_write(cache_root() / kind / f"{key}.json", json.dumps(doc).encode())
    except (OSError, LrvizError) as e:
        log.debug("%s cache not written: %s", kind, e)


def _random_input(shape, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(device)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _timed_module(module: nn.Module, device) -> nn.Module:
    m = module.to(device).eval()
    return to_channels_last(m)


def measure_latency_table(
    model: nn.Module,
    analysis,
    *,
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    timer: Timer | None = None,
    grid_points: int = 5,
    layers: Sequence[str] | None = None,
    total: bool = True,
    execution: str = "channels_last",
    cache: bool = True,
    factors=None,
    progress=None,
) -> LatencyTable:
    """Time every decomposable layer (or those in ``layers``) of ``model`` over a rank grid.

    Parameters
    ----------
    model : nn.Module
        The original model (not modified; its factors come from ``factors`` or a new
        :class:`lrviz.decompose.FactorCache`).
    analysis : ModelAnalysis
        Its analysis (layers and recorded input sizes; spectra are not needed).
    batch, device, threads
        Where and how: the input of every layer is its recorded input at ``batch`` images.
    timer : callable, optional
        ``timer(fn, x) -> seconds``; default :func:`benchmark_timer` (``min_run_time`` 0.05 s).
    grid_points : int
        Factored ranks per mode (:func:`rank_grid`).
    total : bool
        Also time the original end to end under ``execution`` (needed by :meth:`LatencyTable.predict_ms`).
    cache : bool
        Read and write the on-disk cache (never with a custom ``timer``).
    progress : callable, optional
        ``progress(done, total, name)`` after each layer.
    """
    from .decompose import FactorCache, build_layer

    dev = torch.device(device)
    n_threads = int(threads or torch.get_num_threads())
    use_cache = cache and timer is None
    timer = timer or benchmark_timer(0.05, n_threads)
    factors = factors or FactorCache(model)
    names = list(layers) if layers is not None else [l.name for l in analysis.layers]
    by_name = {l.name: l for l in analysis.layers}
    out: dict[str, LayerLatency] = {}
    memo: dict[str, LayerLatency] = {}
    cached = 0
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        for k, name in enumerate(names):
            l = by_name[name]
            module = get_module(model, name)
            shape = layer_input_shape(l, analysis.io[name], batch)
            key = _geometry_key(l, module, shape, batch, dev, n_threads, grid_points)
            grids = tuple(rank_grid(f, grid_points) for f in l.full_ranks)
            if key in memo:
                t = memo[key]
            else:
                doc = _read_cached("latency", key) if use_cache else None
                if doc is not None:
                    ms, iqr = np.asarray(doc["ms"], dtype=np.float64), np.asarray(doc["iqr_ms"], dtype=np.float64)
                    cached += 1
                else:
                    ms, iqr = _measure_layer(factors.get(name), l, grids, shape, dev, timer, build_layer)
                    if use_cache:
                        _write_cached("latency", key, {"format": LATENCY_FORMAT, "ms": ms.tolist(), "iqr_ms": iqr.tolist()})
                t = LayerLatency(name, l.full_ranks, grids, ms, iqr, shape)
                memo[key] = t
            out[name] = LayerLatency(name, l.full_ranks, grids, t.ms, t.iqr, shape)
            if progress is not None:
                progress(k + 1, len(names), name)
        total_ms = None
        if total:
            x = _random_input((int(batch), *analysis.input_size), dev)
            if execution == "compile":
                fresh_compile_cache()
            prep = prepare(model, execution, x, device=dev)
            total_ms = _stats(timer(prep.module, x))[0]
    finally:
        torch.set_num_threads(prev_threads)
    return LatencyTable(out, int(batch), str(dev), n_threads, total_ms, execution, cached)


def _measure_layer(f, layer: LayerInfo, grids, shape, dev, timer, build_layer) -> tuple[np.ndarray, np.ndarray]:
    axes = [tuple(g) + (full,) for g, full in zip(grids, layer.full_ranks)]
    ms = np.zeros([len(a) for a in axes], dtype=np.float64)
    iqr = np.zeros_like(ms)
    x = _random_input(shape, dev)
    for idx in np.ndindex(*ms.shape):
        ranks = tuple(a[i] for a, i in zip(axes, idx))
        mod = _timed_module(build_layer(f, ranks), dev)
        ms[idx], iqr[idx] = _stats(timer(mod, x))
    return ms, iqr


# --- execution choice and end-to-end benchmark ------------------------------------------------------

def choose_execution(model: nn.Module, input_size, *, batch: int, device: str = "cpu", timer: Timer | None = None,
                     candidates: Sequence[str] = EXECUTIONS) -> tuple[str, dict[str, float], dict[str, object]]:
    """Time ``model`` under each execution in ``candidates`` and return ``(fastest, {execution: ms},
    {execution: Prepared})``; an execution that could not be fully applied (e.g. no compiler) is timed
    as what it fell back to and reported under its own name with its notes."""
    dev = torch.device(device)
    timer = timer or benchmark_timer(0.1)
    x = _random_input((int(batch), *input_size), dev)
    if "compile" in candidates:
        fresh_compile_cache()
    times, prepared = {}, {}
    for ex in candidates:
        p = prepare(model, ex, x, device=dev)
        prepared[ex] = p
        times[ex] = _stats(timer(p.module, x))[0]
    best = min(times, key=times.get)
    return best, times, prepared


@dataclass(frozen=True)
class BenchResult:
    """One end-to-end comparison at one batch size (see :func:`bench`); times in milliseconds."""

    batch: int
    device: str
    threads: int
    execution: str
    applied: tuple[str, ...]
    original_ms: float
    original_iqr_ms: float
    planned_ms: float
    planned_iqr_ms: float
    original_eager_ms: float
    original_eager_iqr_ms: float
    macs_ratio: float
    layers: tuple[dict, ...] = ()
    executions: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    cached: bool = False

    @property
    def speedup(self) -> float:
        """Original ÷ planned, both under the same execution."""
        return self.original_ms / max(self.planned_ms, 1e-12)

    @property
    def speedup_vs_eager(self) -> float:
        """Original as loaded (eager) ÷ planned under the chosen execution."""
        return self.original_eager_ms / max(self.planned_ms, 1e-12)

    def to_dict(self) -> dict:
        return {"original_ms": self.original_ms, "planned_ms": self.planned_ms, "speedup": self.speedup,
                "macs_ratio": self.macs_ratio, "batch": self.batch, "device": self.device, "threads": self.threads,
                "layers": list(self.layers), "original_iqr_ms": self.original_iqr_ms, "planned_iqr_ms": self.planned_iqr_ms,
                "execution": self.execution, "applied": list(self.applied), "original_eager_ms": self.original_eager_ms,
                "original_eager_iqr_ms": self.original_eager_iqr_ms, "speedup_vs_eager": self.speedup_vs_eager,
                "executions_ms": dict(self.executions), "notes": list(self.notes), "format": LATENCY_FORMAT}

    @classmethod
    def from_dict(cls, d: dict, cached: bool = False) -> "BenchResult":
        return cls(batch=int(d["batch"]), device=str(d["device"]), threads=int(d["threads"]), execution=str(d["execution"]),
                   applied=tuple(d["applied"]), original_ms=float(d["original_ms"]), original_iqr_ms=float(d["original_iqr_ms"]),
                   planned_ms=float(d["planned_ms"]), planned_iqr_ms=float(d["planned_iqr_ms"]),
                   original_eager_ms=float(d["original_eager_ms"]), original_eager_iqr_ms=float(d["original_eager_iqr_ms"]),
                   macs_ratio=float(d["macs_ratio"]), layers=tuple(d["layers"]), executions=dict(d["executions_ms"]),
                   notes=tuple(d["notes"]), cached=cached)


def _interleaved(fns: dict[str, Callable], x, timer: Timer, rounds: int) -> dict[str, list[float]]:
    """Every function timed in each of ``rounds`` rounds, the order reversed every other round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].extend(timer(fns[n], x))
    return times


def _bench_key(original: nn.Module, plan, batch, device, threads, execution, per_layer, rounds) -> str:
    from .decompose import weights_fingerprint

    doc = {"format": LATENCY_FORMAT, "weights": weights_fingerprint(original), "plan": plan.ranks(), "batch": int(batch),
           "device": str(device), "threads": int(threads), "execution": execution, "per_layer": bool(per_layer),
           "rounds": int(rounds), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def bench(
    original: nn.Module,
    planned: nn.Module,
    plan,
    analysis,
    *,
    batches: Sequence[int] = (1, 64),
    device: str = "cpu",
    threads: int | None = None,
    execution: str = "auto",
    per_layer: bool = True,
    rounds: int = 5,
    min_run_time: float = 0.1,
    timer: Timer | None = None,
    cache: bool = True,
    progress=None,
) -> list[BenchResult]:
    """Original vs planned latency, end to end and per layer, at each batch size.

    ``execution="auto"`` times the planned model under every execution of :data:`lrviz.execution.EXECUTIONS`
    and runs both models under the fastest; a name fixes it. Results are cached on disk per model weights
    + plan + batch + device + threads + execution (``cache=False`` re-measures; never with a custom timer).
    Neither model is modified.
    """
    from .plan import plan_cost

    if execution != "auto" and execution not in EXECUTIONS:
        raise LrvizError(f"unknown execution {execution!r}; choose auto or one of {', '.join(EXECUTIONS)}")
    dev = torch.device(device)
    n_threads = int(threads or torch.get_num_threads())
    use_cache = cache and timer is None
    t = timer or benchmark_timer(min_run_time, n_threads)
    macs_ratio = plan_cost(analysis, plan).macs_ratio  # closed form: no forward pass of either model
    results = []
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        for bi, batch in enumerate(batches):
            key = _bench_key(original, plan, batch, dev, n_threads, execution, per_layer, rounds)
            if use_cache:
                doc = _read_cached("bench", key)
                if doc is not None:
                    results.append(BenchResult.from_dict(doc, cached=True))
                    continue
            x = _random_input((int(batch), *analysis.input_size), dev)
            if progress is not None:
                progress(bi, len(batches), f"batch {batch}: choosing the execution")
            if execution == "compile":
                fresh_compile_cache()  # (choose_execution starts from an empty cache itself)
            if execution == "auto":
                ex, ex_times, prepped = choose_execution(planned, analysis.input_size, batch=batch, device=str(dev), timer=t)
                p_planned = prepped[ex]
            else:
                ex, ex_times = execution, {}
                p_planned = prepare(planned, ex, x, device=dev)
            p_orig = prepare(original, ex, x, device=dev)
            eager = prepare(original, "eager", x, device=dev)
            if progress is not None:
                progress(bi, len(batches), f"batch {batch}: timing end to end ({ex})")
            times = _interleaved({"original": p_orig.module, "planned": p_planned.module, "eager": eager.module}, x, t, rounds)
            layers = _per_layer(original, planned, analysis, batch, dev, t, rounds) if per_layer else ()
            o, oi = _stats(times["original"])
            p, pi = _stats(times["planned"])
            e, ei = _stats(times["eager"])
            notes = tuple(dict.fromkeys(p_orig.notes + p_planned.notes))
            res = BenchResult(int(batch), str(dev), n_threads, ex, p_planned.applied, o, oi, p, pi, e, ei, float(macs_ratio),
                              tuple(layers), ex_times, notes)
            if use_cache:
                _write_cached("bench", key, res.to_dict())
            results.append(res)
            if progress is not None:
                progress(bi + 1, len(batches), f"batch {batch}: {o:.2f} ms -> {p:.2f} ms")
    finally:
        torch.set_num_threads(prev_threads)
    return results


def _per_layer(original, planned, analysis, batch, dev, timer, rounds) -> list[dict]:
    rows = []
    for l in analysis.layers:
        shape = layer_input_shape(l, analysis.io[l.name], batch)
        x = _random_input(shape, dev)
        a = _timed_module(copy.deepcopy(get_module(original, l.name)), dev)
        b = _timed_module(copy.deepcopy(get_module(planned, l.name)), dev)
        times = _interleaved({"a": a, "b": b}, x, timer, max(1, rounds // 2))
        rows.append({"name": l.name, "original_ms": _stats(times["a"])[0], "planned_ms": _stats(times["b"])[0]})
    return rows
