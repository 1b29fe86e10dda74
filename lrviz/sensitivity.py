"""Layer sensitivity: what truncating one layer (one mode) at a time does to the model's output.

For every decomposable layer and every channel mode (Tucker-2: ``"out"`` and ``"in"``; SVD:
``"matrix"``, see :func:`lrviz.layers.layer_modes`) the model is run on a fixed calibration set with
*only that mode* of *only that layer* truncated, at a grid of ranks (:func:`rank_grid`). What is kept
is not just accuracy: the change of every sample's logits, ``Δz[l, m, r] = z(l, m, r) − z₀`` (for
models with many classes only the true class and the original's top classes, see
:data:`MAX_CLASSES`). That is what the projection (:mod:`lrviz.project`) adds up to predict any plan
without evaluating it, and what the budget solver (:mod:`lrviz.budget`) optimises. Joint *anchor*
truncations (a uniform rank fraction on every layer but the output one, :func:`anchor_ranks`) are
measured too, so the projection's gain is calibrated out of the box.

A truncated mode is exactly what :func:`lrviz.compress` builds (the same cached bases and
:func:`lrviz.build_layer`), so at full rank the curve equals the original and at any grid rank a
single-layer plan's projection equals its measurement. Only the part of the network downstream of
the truncated layer is recomputed for each rank (:mod:`lrviz.downstream`). Results are cached on
disk, one file per layer, safe for concurrent processes (:mod:`lrviz.sensitivity_cache`).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .cost import record_io
from .decompose import FactorCache, build_layer
from .downstream import DownstreamRunner, forward_logits
from .errors import LrvizError
from .layers import LayerInfo, find_layers, get_module, layer_modes, set_module
from .plan import uniform_rank
from .sensitivity_cache import SensitivityCache, cache_key, model_fingerprint, sensitivity_dir
from .sensitivity_cache import LOCK_DIR, _layer_file, _load_layer  # noqa: F401 (the cache's layout, read by tests/test_concurrency.py)

__all__ = [
    "MAX_CLASSES",
    "DEFAULT_POINTS",
    "DEFAULT_ANCHORS",
    "ModeCurve",
    "PairTerm",
    "PAIR_FRACTIONS",
    "COARSE_POINTS",
    "pair_grid",
    "Sensitivities",
    "rank_grid",
    "anchor_ranks",
    "cross_entropy",
    "model_fingerprint",
    "sensitivity_dir",
    "measure_sensitivity",
    "load_sensitivity",
    "LayerJob",
    "LayerWorker",
]

log = logging.getLogger(__name__)

#: Logits kept per sample: the true class and the original model's top classes (all when fewer).
MAX_CLASSES = 16

#: Ranks measured per mode (besides 1, 2, 3): every rank of small modes, else this many evenly spaced.
#: Dense on purpose: the logit change of a truncation is not linear in the rank between grid points
#: (interpolating rank 3 from ranks 2 and 4 of a 16-channel mode correlated only 0.37 with the truth).
DEFAULT_POINTS = 16

#: Uniform rank fractions of the joint "anchor" truncations measured after the layers.
DEFAULT_ANCHORS = (0.75, 0.55, 0.4)

#: Rank fractions of the joint two-mode grid measured for every Tucker-2 layer (:class:`PairTerm`).
PAIR_FRACTIONS = (0.125, 0.25, 0.5, 0.75)

#: Grid of the quick first estimate (:data:`COARSE_POINTS` ranks per mode, no pair terms): about a
#: third of the forward passes of the default grid.
COARSE_POINTS = 4


def pair_grid(full: int) -> list[int]:
    """Ranks of one mode in a layer's two-mode grid: ``ceil(f·full)`` for f in :data:`PAIR_FRACTIONS`, below ``full``."""
    return sorted(r for r in {max(1, math.ceil(f * int(full))) for f in PAIR_FRACTIONS} if r < int(full))


def rank_grid(full: int, points: int = DEFAULT_POINTS) -> list[int]:
    """Ranks measured for a mode of full rank ``full``, ascending, below ``full``: every rank when
    ``full ≤ points + 1``, else 1, 2, 3 and ``points`` evenly spaced ranks (multiples of ``full/points``)."""
    full, points = int(full), int(points)
    if points < 2:
        raise LrvizError(f"the rank grid needs at least 2 points per mode; got {points}")
    if full <= 1:
        return []
    if full <= points + 1:
        return list(range(1, full))
    ranks = {1, 2, 3} | {int(round(k * full / points)) for k in range(1, points)}
    return sorted(r for r in ranks if 1 <= r < full)


def anchor_ranks(infos: Sequence[LayerInfo], order: Sequence[str], fraction: float) -> dict[str, list[int]]:
    """Ranks of an anchor: :func:`lrviz.plan.uniform_rank` (``ceil(fraction·R)``) on every mode of
    every layer except the last one run (``order``: the layers in forward order)."""
    last = order[-1] if order else None
    return {l.name: [uniform_rank(f, fraction) for f in l.full_ranks] for l in infos if l.name != last}


@dataclass(eq=False)
class ModeCurve:
    """One mode of one layer: ranks (ascending, ending with the full rank) and what each did.

    Attributes
    ----------
    layer : str
    mode : str
        ``"out"``, ``"in"`` or ``"matrix"`` (:data:`lrviz.layers.MODE_OUT`, ...).
    index : int
        The mode's position in :func:`lrviz.layers.layer_modes` (= in a plan's ranks).
    full : int
    ranks : ndarray of int, shape (G + 1,)
        The measured grid plus the full rank (last).
    delta : ndarray of float32, shape (G + 1, N, M)
        Change of the kept logits vs the original; zero at the full rank.
    top1, loss : ndarray, shape (G + 1,)
        Measured accuracy and mean cross-entropy with only this mode truncated.
    """

    layer: str
    mode: str
    index: int
    full: int
    ranks: np.ndarray
    delta: np.ndarray
    top1: np.ndarray
    loss: np.ndarray

    def delta_at(self, rank: int) -> np.ndarray:
        """Logit change at any rank: linear interpolation between the measured ranks."""
        r = int(rank)
        rs = self.ranks
        if r >= rs[-1]:
            return self.delta[-1]
        if r <= rs[0]:
            return self.delta[0]
        j = int(np.searchsorted(rs, r))
        if rs[j] == r:
            return self.delta[j]
        t = (r - rs[j - 1]) / (rs[j] - rs[j - 1])
        return (1.0 - t) * self.delta[j - 1] + t * self.delta[j]


def _bracket(grid: np.ndarray, r: int) -> list[tuple[int, float]]:
    """Linear-interpolation weights of rank ``r`` on ``grid`` (ascending; clamped at both ends)."""
    if r >= grid[-1]:
        return [(len(grid) - 1, 1.0)]
    if r <= grid[0]:
        return [(0, 1.0)]
    j = int(np.searchsorted(grid, r))
    if grid[j] == r:
        return [(j, 1.0)]
    t = (r - grid[j - 1]) / (grid[j] - grid[j - 1])
    return [(j - 1, 1.0 - t), (j, t)]


@dataclass(eq=False)
class PairTerm:
    """What truncating *both* modes of a Tucker-2 layer does beyond the sum of the two single-mode changes.

    ``inter[u, v] = z(r_out = ranks0[u], r_in = ranks1[v]) − z₀ − Δz_out(ranks0[u]) − Δz_in(ranks1[v])``
    on a small grid (:func:`pair_grid`, plus the full ranks, where it is zero by definition). The two
    modes of one layer act on the same kernel, so their errors overlap: on the demo model a layer with
    both modes at a quarter of their channels changes the logits by 0.7–0.9× the sum of the two.

    Attributes
    ----------
    layer : str
    ranks0, ranks1 : ndarray of int
        Grid of the out mode and of the in mode, each ending with the full rank.
    inter : ndarray of float32, shape (len(ranks0), len(ranks1), N, M)
    """

    layer: str
    ranks0: np.ndarray
    ranks1: np.ndarray
    inter: np.ndarray

    def at(self, r0: int, r1: int) -> np.ndarray | None:
        """The interaction at ranks ``(r0, r1)`` (bilinear between grid points), None when a mode is whole."""
        if r0 >= self.ranks0[-1] or r1 >= self.ranks1[-1]:
            return None
        out = None
        for u, a in _bracket(self.ranks0, int(r0)):
            for v, b in _bracket(self.ranks1, int(r1)):
                if a * b == 0.0:
                    continue
                term = (a * b) * self.inter[u, v]
                out = term if out is None else out + term
        return out


@dataclass(eq=False)
class Sensitivities:
    """Per-layer, per-mode sensitivity curves on one calibration set (see module docstring).

    Attributes
    ----------
    key : str
        Cache key (model + data + grid).
    base_logits : ndarray (N, M)
        The original model's kept logits.
    label_pos : ndarray (N,)
        Column of the true class in ``base_logits``.
    rest_lse : ndarray (N,)
        log-sum-exp of the logits not kept (−inf when all are kept); held fixed in the loss.
    num_classes : int
    curves : dict[(layer, mode index), ModeCurve]
        Keyed by layer name and :attr:`ModeCurve.index`.
    layers : tuple of str
        Layers measured (all decomposable layers of the model, in order), complete or not.
    complete : bool
        False when the run was cancelled before every layer was measured.
    data : str
        Description of the calibration data.
    seconds : float
        Time spent measuring in this call (0 when everything came from the cache).
    cached_layers : int
        Layers read from the disk cache in this call.
    anchors : list of dict
        The joint anchor truncations, each ``fraction, ranks, full, top1, loss``.
    pairs : dict[str, PairTerm]
        The two-mode interaction of every Tucker-2 layer (empty with ``pairs=False``).
    grid_points, with_pairs : int, bool
        The rank grid density and whether pair terms were measured (:attr:`coarse`).
    partial_layers : tuple of str
        Layers measured in this call by downstream-only passes (:class:`lrviz.downstream.DownstreamRunner`);
        the other measured layers ran whole forward passes (untraceable model, ``partial=False``, or
        upstream values too large to keep).
    """

    key: str
    base_logits: np.ndarray
    label_pos: np.ndarray
    rest_lse: np.ndarray
    num_classes: int
    curves: dict[tuple[str, int], ModeCurve]
    layers: tuple[str, ...]
    complete: bool = True
    data: str = ""
    seconds: float = 0.0
    cached_layers: int = 0
    anchors: list = field(default_factory=list)
    partial_layers: tuple[str, ...] = ()
    pairs: dict = field(default_factory=dict)
    grid_points: int = DEFAULT_POINTS
    with_pairs: bool = True

    @property
    def n(self) -> int:
        return int(self.base_logits.shape[0])

    def top1_of(self, logits: np.ndarray) -> float:
        return float((logits.argmax(axis=-1) == self.label_pos).mean())

    def loss_of(self, logits: np.ndarray) -> float:
        return float(cross_entropy(logits, self.label_pos, self.rest_lse).mean())

    @functools.cached_property
    def base_top1(self) -> float:
        return self.top1_of(self.base_logits)

    @functools.cached_property
    def base_correct(self) -> np.ndarray:
        """Per sample, 1.0 where the original ranks the true class first (else 0.0)."""
        return (self.base_logits.argmax(axis=-1) == self.label_pos).astype(np.float64)

    @functools.cached_property
    def base_loss(self) -> float:
        return self.loss_of(self.base_logits)

    @property
    def coarse(self) -> bool:
        """Whether this is the quick first estimate (a grid coarser than the default, or no pair terms)."""
        return self.grid_points < DEFAULT_POINTS or not self.with_pairs

    def curve(self, layer: str, index: int) -> ModeCurve | None:
        """The curve of ``layer``'s mode at position ``index`` of :func:`lrviz.layers.layer_modes`
        (its rank's position in the plan's ranks), or None when not measured."""
        return self.curves.get((layer, int(index)))

    def table(self) -> pd.DataFrame:
        """One row per measured point: ``layer, mode, rank, full, top1, loss, drop`` (top-1 points lost)."""
        rows = []
        base = self.base_top1
        for (name, _), c in self.curves.items():
            for r, a, l in zip(c.ranks, c.top1, c.loss):
                rows.append({"layer": name, "mode": c.mode, "rank": int(r), "full": c.full, "top1": float(a), "loss": float(l),
                             "drop": base - float(a)})
        return pd.DataFrame(rows, columns=["layer", "mode", "rank", "full", "top1", "loss", "drop"])

    def to_dict(self) -> dict:
        """JSON-ready summary (curves as accuracy/loss per rank; the logit changes stay on disk)."""
        layers: dict[str, dict] = {}
        for (name, _), c in self.curves.items():
            layers.setdefault(name, {})[c.mode] = {
                "full": c.full, "ranks": [int(r) for r in c.ranks],
                "top1": [round(float(a), 6) for a in c.top1], "loss": [round(float(v), 6) for v in c.loss],
            }
        return {
            "schema": "lrviz.sensitivity/1", "key": self.key, "data": self.data, "n": self.n,
            "num_classes": self.num_classes, "base_top1": self.base_top1, "base_loss": self.base_loss,
            "complete": self.complete, "seconds": round(self.seconds, 3), "layers": layers,
            "anchors": [{"fraction": a["fraction"], "top1": a["top1"], "loss": a["loss"]} for a in self.anchors],
        }


def cross_entropy(logits: np.ndarray, label_pos: np.ndarray, rest_lse: np.ndarray) -> np.ndarray:
    """Per-sample CE from kept logits (``...×N×M``) with the other classes' log-sum-exp held fixed."""
    m = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=-1)) + m[..., 0]
    lse = np.logaddexp(lse, rest_lse)
    true = np.take_along_axis(logits, np.broadcast_to(label_pos[:, None], logits.shape[:-1] + (1,)), axis=-1)[..., 0]
    return lse - true


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


def measure_sensitivity(
    model: nn.Module, dataset, *, limit: int | None = 1000, seed: int = 0, layers: Sequence[str] | None = None,
    grid_points: int = DEFAULT_POINTS, batch_size: int = 500, device: str | torch.device | None = None,
    factors: FactorCache | None = None, cache: bool = True, cache_root: str | os.PathLike | None = None, data_name: str = "",
    progress: Callable[[int, int, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
    cache_only: bool = False, anchors: Sequence[float] = DEFAULT_ANCHORS, partial: bool = True, pairs: bool = True,
    executor=None,
) -> Sensitivities:
    """Measure (or load from the disk cache) every layer's per-mode sensitivity curve.

    Parameters
    ----------
    model : nn.Module
        Never modified (a private copy is truncated).
    dataset : Dataset
        Calibration data: the first ``limit`` items (None = all) of a fixed permutation seeded by
        ``seed`` (:func:`lrviz.data.subset`).
    layers : sequence of str, optional
        Measure only these decomposable layers (default: all).
    grid_points, batch_size : int
        Rank grid density (:func:`rank_grid`); images per forward pass.
    device : optional
        Default: CUDA when available, else CPU.
    factors : FactorCache, optional
        Shared bases of ``model`` (computed when absent).
    cache, cache_root, cache_only : bool, path, bool
        Read and write the disk cache (:mod:`lrviz.sensitivity_cache`; root default
        :func:`sensitivity_dir`); ``cache_only`` measures nothing and returns what the cache holds
        (``complete=False`` when layers are missing).
    data_name : str
        Description of the data, stored with the result.
    progress : callable, optional
        ``progress(done, total, layer)`` after each layer (cached layers count as done).
    should_stop : callable, optional
        Polled between forward passes; when it returns True the run stops and the result has
        ``complete=False`` (layers finished so far are cached and reused next time).
    anchors : sequence of float
        Uniform rank fractions of joint truncations (:func:`anchor_ranks`) measured once the layers
        are complete, so the projection's gain is calibrated out of the box
        (:meth:`lrviz.project.SensitivityProjector.from_sensitivities`).
    partial : bool
        Recompute only the part of the network downstream of the truncated layer
        (:mod:`lrviz.downstream`; same numbers as whole forward passes, faster).
    pairs : bool
        Also measure every Tucker-2 layer's two-mode interaction (:class:`PairTerm`, a 4 × 4 grid of
        joint truncations per layer, about 45 % more passes). The quick first estimate is
        ``grid_points=COARSE_POINTS, pairs=False``.
    executor : optional
        Where the layers not in the cache are measured: None, here, one after the other; or a layer
        executor such as :class:`lrviz.distributed.RayExecutor`, whose ``map(job, infos, should_stop)``
        runs :meth:`LayerJob.prepare` and :meth:`LayerWorker.run` on its workers and yields ``(i,
        result)`` as each layer finishes. Either way this process writes every layer into the same
        disk cache (same key, same files) and measures the anchors itself; with the same kind of
        device and thread count the curves are bitwise those of a local run.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    infos = _layers_to_measure(model, layers, batch_size, grid_points)
    x, y = _collect(dataset, limit, seed)
    work = copy.deepcopy(model).to(dev).eval()
    factors = _factors_for(model, factors)
    idx, base, label_pos, rest, num_classes = _reference(work, x, y, batch_size, dev)
    key, key_src = cache_key(model, x, y, grid_points, MAX_CLASSES, pairs, factors.kind)
    store = SensitivityCache((Path(cache_root) if cache_root is not None else sensitivity_dir()) / key, key_src, base.shape, cache)
    result = Sensitivities(key, base, label_pos, rest, num_classes, {}, tuple(l.name for l in infos), True,
                           data_name or f"{len(y)} images", grid_points=int(grid_points), with_pairs=bool(pairs))
    t0 = time.perf_counter()
    measurer = _Measurer(work, x, idx, result, factors, batch_size, dev, partial, grid_points, should_stop, pairs)
    found: dict[str, list] = {}

    def record(info: LayerInfo, curves: list[ModeCurve], cached: bool) -> None:
        found[info.name] = curves
        result.cached_layers += int(cached)
        if progress is not None:
            progress(len(found), len(infos), info.name)

    if executor is None:
        result.complete = store.obtain(infos, measurer.layer, record, cache_only=cache_only, should_stop=should_stop)
    else:
        job = LayerJob(model if _on_cpu(model) else copy.deepcopy(model).cpu(), x, idx, label_pos, num_classes, batch_size,
                       int(grid_points), bool(partial), bool(pairs), f"{key}-{uuid.uuid4().hex}", factors.stats)
        fanned = [0.0]

        def measure_many(todo: list[LayerInfo]):
            t = time.perf_counter()
            try:
                for i, (curves, was_partial) in executor.map(job, todo, should_stop):
                    if was_partial:
                        measurer.partial_layers.append(todo[i].name)
                    yield todo[i], curves
            finally:
                fanned[0] += time.perf_counter() - t

        result.complete = store.obtain_many(infos, measure_many, record, cache_only=cache_only, should_stop=should_stop)
        measurer.seconds += fanned[0]
    items = [(info.name, c) for info in infos for c in found.get(info.name, ())]  # layer order
    result.curves = {(name, c.index): c for name, c in items if isinstance(c, ModeCurve)}
    result.pairs = {name: c for name, c in items if isinstance(c, PairTerm)}
    if result.complete and anchors and not cache_only:
        got = store.anchors(lambda: measurer.anchors(infos, anchors), should_stop)  # None: stopped
        result.complete = got is not None
        result.anchors = got or []
    elif cache_only:
        result.anchors = store.load_anchors() or []
    result.seconds, result.partial_layers = measurer.seconds, tuple(measurer.partial_layers)
    log.info("sensitivity %s: %d layers (%d cached) in %.1fs", key, len(infos), result.cached_layers, time.perf_counter() - t0)
    return result


def _layers_to_measure(model: nn.Module, layers: Sequence[str] | None, batch_size, grid_points: int) -> list[LayerInfo]:
    """The decomposable layers to measure (all, or those named), after checking the arguments."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LrvizError(f"batch_size must be a positive integer, got {batch_size!r}")
    infos, _ = find_layers(model)
    if not infos:
        raise LrvizError("the model has no decomposable layers (Conv2d with groups=1, Linear)")
    by_name = {l.name: l for l in infos}
    if layers is not None:
        unknown = [n for n in layers if n not in by_name]
        if unknown:
            raise LrvizError(f"not decomposable layers of this model: {unknown}")
        infos = [by_name[n] for n in layers]
    rank_grid(2, grid_points)  # validates
    return infos


def _collect(dataset, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibration images and labels, as two tensors."""
    from .data import make_loader, subset

    data = subset(dataset, limit, seed=seed)
    if len(data) == 0:
        raise LrvizError("The calibration set is empty; there is nothing to measure.")
    xs, ys = [], []
    for x, y in make_loader(data, batch_size=512):
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def _factors_for(model: nn.Module, factors: FactorCache | None) -> FactorCache:
    if factors is None:
        return FactorCache(model)
    factors.check(model)  # a cache made for another model would measure the wrong layers
    return factors


def _reference(work: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev):
    """The original model's output on the calibration set, reduced to the kept classes.

    Returns ``idx`` (N, M), the kept classes of every sample (all when there are at most
    :data:`MAX_CLASSES`, else the true class and the original's top ones); ``base`` (N, M), their
    logits (float32); ``label_pos`` (N,), the true class's column; ``rest`` (N,), the log-sum-exp of
    the logits not kept (−inf when all are); and the number of classes.
    """
    with torch.inference_mode():
        z0 = forward_logits(work, x, batch_size, dev)
    k = z0.shape[1]
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise LrvizError(f"labels range {int(y.min())}..{int(y.max())} but the model has {k} outputs; use a model trained for this data")
    if k <= MAX_CLASSES:
        idx = torch.arange(k).expand(len(y), k)
        label_pos = y.clone()
    else:
        masked = z0.clone()
        masked[torch.arange(len(y)), y] = -math.inf
        top = masked.topk(MAX_CLASSES - 1, dim=1).indices
        idx = torch.cat([y[:, None], top], dim=1)
        label_pos = torch.zeros(len(y), dtype=torch.long)
    base, rest = _kept_reference(z0, idx)
    return idx, base, label_pos.numpy().astype(np.int64), rest, int(k)


def _kept_reference(z0: torch.Tensor, idx: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(base, rest)``: the logits ``z0`` (N, K) of the kept classes ``idx`` (N, M), float32, and the
    log-sum-exp of the others, float64 (−inf when every class is kept)."""
    if idx.shape[1] == z0.shape[1]:
        rest = torch.full((z0.shape[0],), -math.inf)
    else:
        keep = torch.zeros_like(z0, dtype=torch.bool).scatter_(1, idx, True)
        rest = torch.where(keep, torch.full_like(z0, -math.inf), z0).logsumexp(dim=1)
    return z0.gather(1, idx).numpy().astype(np.float32), rest.numpy().astype(np.float64)


@dataclass(eq=False)
class LayerJob:
    """What measuring any one layer of a run needs, in one picklable object: what a layer executor
    (``measure_sensitivity(..., executor=...)``, e.g. :class:`lrviz.distributed.RayExecutor`) ships
    to its workers.

    :meth:`prepare` on a worker builds what the local run builds — the model copied to the worker's
    device, its reference logits there on the run's kept classes (``idx``, chosen by the driver, so
    every worker's logit changes have the driver's columns), the factors of the same model — and
    :meth:`LayerWorker.run` measures one layer with the same code as the local run
    (:class:`_Measurer`), so on the same kind of device and the same thread count the curves are
    bitwise those of a local run.

    Attributes
    ----------
    model : nn.Module
        The original model, on the CPU (never modified).
    x : Tensor (N, C, H, W)
        The calibration images.
    idx : Tensor (N, M)
        The kept classes of every sample.
    label_pos : ndarray (N,)
        Column of the true class in the kept logits.
    num_classes, batch_size, grid_points : int
    partial, pairs : bool
        As in :func:`measure_sensitivity`.
    token : str
        Names the run: a worker keeps what :meth:`prepare` built for the next layer of the same run.
    stats : ActivationStats or None
        Data-aware factors' statistics (:mod:`lrviz.activations`); None: weight-only factors.
    """

    model: nn.Module
    x: torch.Tensor
    idx: torch.Tensor
    label_pos: np.ndarray
    num_classes: int
    batch_size: int
    grid_points: int
    partial: bool
    pairs: bool
    token: str
    stats: object = None

    def prepare(self, device) -> "LayerWorker":
        dev = torch.device(device)
        work = copy.deepcopy(self.model).to(dev).eval()
        with torch.inference_mode():
            z0 = forward_logits(work, self.x, self.batch_size, dev)
        base, rest = _kept_reference(z0, self.idx)
        sens = Sensitivities("", base, np.asarray(self.label_pos), rest, self.num_classes, {}, ())
        measurer = _Measurer(work, self.x, self.idx, sens, FactorCache(self.model, self.stats), self.batch_size, dev, self.partial,
                             self.grid_points, None, self.pairs)
        return LayerWorker(measurer)


class LayerWorker:
    """A worker's side of a :class:`LayerJob`: :meth:`run` measures one layer."""

    def __init__(self, measurer: "_Measurer"):
        self.measurer = measurer

    def run(self, info: LayerInfo) -> tuple[list, bool]:
        """``(curves, partial)``: ``info``'s curves (as :meth:`_Measurer.layer`) and whether they were
        measured by downstream-only passes."""
        curves = self.measurer.layer(info)
        return curves, info.name in self.measurer.partial_layers


class _Measurer:
    """The truncated forward passes of one run: every grid rank of every mode of a layer
    (:meth:`layer`) and the joint anchors (:meth:`anchors`), scored against ``sens`` (its reference
    logits); the time spent is :attr:`seconds`, the layers measured downstream-only :attr:`partial_layers`."""

    def __init__(self, work, x, idx, sens: Sensitivities, factors: FactorCache, batch_size: int, dev, partial: bool,
                 points: int, should_stop, pairs: bool = True):
        self.pairs = pairs
        self.work, self.x, self.idx, self.sens, self.factors = work, x, idx, sens, factors
        self.batch_size, self.dev, self.partial, self.points, self.should_stop = batch_size, dev, partial, points, should_stop
        self.runner: DownstreamRunner | None = None
        self.seconds = 0.0
        self.partial_layers: list[str] = []

    def _stopped(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def _kept(self, logits: torch.Tensor) -> np.ndarray:
        return logits.gather(1, self.idx).numpy().astype(np.float32)

    def layer(self, info: LayerInfo) -> list[ModeCurve] | None:
        """``info``'s curves, one per mode with a non-empty grid (None when stopped)."""
        t = time.perf_counter()
        if self.runner is None:
            self.runner = DownstreamRunner(self.work, self.x, self.batch_size, self.dev, self.partial)
        model = self.runner.model
        original = get_module(model, info.name)
        out: list[ModeCurve] = []
        try:
            if self.runner.begin(info.name):
                self.partial_layers.append(info.name)
            for m, mode in enumerate(layer_modes(info.kind)):
                grid = rank_grid(info.full_ranks[m], self.points)
                if not grid:
                    continue  # a mode of one channel: nothing to truncate
                curve = self._mode_curve(model, info, m, mode, grid)
                if curve is None:
                    return None
                out.append(curve)
            if self.pairs and len(out) == 2 and len(info.full_ranks) == 2:
                pair = self._pair_term(model, info, out[0], out[1])
                if pair is None:
                    return None
                out.append(pair)
        finally:
            set_module(model, info.name, original)
            self.runner.end()
            self.seconds += time.perf_counter() - t
        return out

    def _mode_curve(self, model: nn.Module, info: LayerInfo, m: int, mode: str, grid: list[int]) -> ModeCurve | None:
        """Mode ``m`` of ``info`` truncated to every rank of ``grid``, the others at full rank (None when stopped)."""
        full = int(info.full_ranks[m])
        deltas, top1s, losses = [], [], []
        for r in grid:
            if self._stopped():
                return None
            ranks = list(info.full_ranks)
            ranks[m] = r
            set_module(model, info.name, build_layer(self.factors.get(info.name), tuple(ranks)).to(self.dev).eval())
            with torch.inference_mode():
                z = self._kept(self.runner.logits())
            deltas.append(z - self.sens.base_logits)
            top1s.append(self.sens.top1_of(z))
            losses.append(self.sens.loss_of(z))
        deltas.append(np.zeros_like(self.sens.base_logits))  # the full rank: the original
        return ModeCurve(info.name, mode, m, full, np.asarray(grid + [full], dtype=np.int64), np.stack(deltas).astype(np.float32),
                         np.asarray(top1s + [self.sens.base_top1]), np.asarray(losses + [self.sens.base_loss]))

    def _pair_term(self, model: nn.Module, info: LayerInfo, c0: ModeCurve, c1: ModeCurve) -> PairTerm | None:
        """Both modes of ``info`` truncated together on :func:`pair_grid`, minus the two single-mode changes (None when stopped)."""
        g0, g1 = pair_grid(c0.full), pair_grid(c1.full)
        base = self.sens.base_logits
        inter = np.zeros((len(g0) + 1, len(g1) + 1) + base.shape, dtype=np.float32)
        for u, r0 in enumerate(g0):
            for v, r1 in enumerate(g1):
                if self._stopped():
                    return None
                set_module(model, info.name, build_layer(self.factors.get(info.name), (r0, r1)).to(self.dev).eval())
                with torch.inference_mode():
                    z = self._kept(self.runner.logits())
                inter[u, v] = z - base - c0.delta_at(r0) - c1.delta_at(r1)
        return PairTerm(info.name, np.asarray(g0 + [c0.full], dtype=np.int64), np.asarray(g1 + [c1.full], dtype=np.int64), inter)

    def anchors(self, infos: Sequence[LayerInfo], fractions: Sequence[float]) -> list[dict]:
        """The joint anchor truncations (:func:`anchor_ranks`), one whole forward pass each."""
        t = time.perf_counter()
        names = {l.name for l in infos}
        order = [n for n in record_io(self.work, tuple(self.x.shape[1:])) if n in names]  # forward (call) order
        full = {l.name: list(l.full_ranks) for l in infos}
        out = []
        for f in fractions:
            ranks = anchor_ranks(infos, order, float(f))
            z = self._kept(self._joint_logits(ranks))
            out.append({"fraction": float(f), "ranks": ranks, "full": {n: full[n] for n in ranks}, "top1": self.sens.top1_of(z),
                        "loss": self.sens.loss_of(z)})
        self.seconds += time.perf_counter() - t
        return out

    def _joint_logits(self, ranks: dict[str, list[int]]) -> torch.Tensor:
        originals = {n: get_module(self.work, n) for n in ranks}
        try:
            for n, r in ranks.items():
                set_module(self.work, n, build_layer(self.factors.get(n), tuple(r)).to(self.dev).eval())
            with torch.inference_mode():
                return forward_logits(self.work, self.x, self.batch_size, self.dev)
        finally:
            for n, mod in originals.items():
                set_module(self.work, n, mod)


def load_sensitivity(*args, **kwargs) -> Sensitivities:
    """:func:`measure_sensitivity` with ``cache_only=True``: layers not cached are left out and the result
    has ``complete=False``. (Still runs the original model once on the calibration set.)"""
    kwargs["cache_only"] = True
    return measure_sensitivity(*args, **kwargs)
