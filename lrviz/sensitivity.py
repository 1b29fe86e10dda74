"""Layer sensitivity: what truncating one layer (one mode) at a time does to the model's output.

For every decomposable layer and every channel mode (Tucker-2: ``out`` and ``in``; SVD: the one
rank) the model is run on a fixed calibration set with *only that mode* of *only that layer*
truncated, at a grid of ranks (:func:`rank_grid`). What is kept is not just accuracy: the change of
every sample's logits, ``Δz[l, m, r] = z(l, m, r) − z₀`` (for models with many classes only the true
class and the original's top classes, see :data:`MAX_CLASSES`). That is what the projection
(:mod:`lrviz.project`) adds up to predict any plan without evaluating it, and what the budget
solver (:mod:`lrviz.budget`) optimises.

A truncated mode is exactly what :func:`lrviz.compress` builds (the same cached bases and
:func:`lrviz.build_layer`), so at full rank the curve equals the original and at any grid rank a
single-layer plan's projection equals its measurement.

Results are cached on disk (``~/.cache/lrviz/sensitivity/<key>``, one file per layer, so a cancelled
run resumes where it stopped). The key hashes the model's weights and architecture, the exact
calibration tensors (so the dataset, split, transform and subset are all covered), the grid and
:data:`FORMAT_VERSION`. Several processes (or dashboard sessions) may measure the same key at once:
every file is written atomically (temporary file + ``os.replace``), each layer is measured under an
exclusive ``fcntl.flock`` lock of its own (a layer another process is measuring is taken up after
the others, usually from the cache by then), and a cache file that cannot be read is measured again.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .cost import record_io
from .decompose import FactorCache, build_layer
from .errors import LrvizError
from .layers import TUCKER2, LayerInfo, find_layers, get_module, layer_modes, set_module
from .storage import FileLock, atomic_write, cache_root

__all__ = [
    "MAX_CLASSES",
    "DEFAULT_POINTS",
    "ModeCurve",
    "Sensitivities",
    "rank_grid",
    "model_fingerprint",
    "sensitivity_dir",
    "measure_sensitivity",
    "load_sensitivity",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the SVD mode is "matrix" (was "rank")

#: Logits kept per sample: the true class and the original model's top classes (all when fewer).
MAX_CLASSES = 16

#: Ranks measured per mode (besides 1, 2, 3): every rank of small modes, else this many evenly spaced.
#: Dense on purpose: the logit change of a truncation is not linear in the rank between grid points
#: (interpolating rank 3 from ranks 2 and 4 of a 16-channel mode correlated only 0.37 with the truth).
DEFAULT_POINTS = 16

#: Uniform rank fractions of the joint "anchor" truncations measured after the layers.
DEFAULT_ANCHORS = (0.75, 0.55, 0.4)


#: Most memory the upstream values kept for downstream-only passes may take (else whole passes).
FRONTIER_BYTES = 2 * 2**30

ANCHORS_FILE = "anchors.json"
#: Lock files of a cache key's folder (one per cache file; ``fcntl.flock``, see :class:`lrviz.storage.FileLock`).
LOCK_DIR = ".locks"
_BUSY = object()




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


def sensitivity_dir() -> Path:
    """Root of the on-disk cache (``$LRVIZ_CACHE_DIR/sensitivity`` or ``~/.cache/lrviz/sensitivity``)."""
    return cache_root() / "sensitivity"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's architecture (module tree) and every parameter and buffer."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().to("cpu").contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(eq=False)
class ModeCurve:
    """One mode of one layer: ranks (ascending, ending with the full rank) and what each did.

    Attributes
    ----------
    layer, mode : str
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
    layers : tuple of str
        Layers measured (all decomposable layers of the model, in order), complete or not.
    complete : bool
        False when the run was cancelled before every layer was measured.
    data : str
        Description of the calibration data.
    seconds : float
        Time spent measuring in this call (0 when everything came from the cache).
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
    def base_loss(self) -> float:
        return self.loss_of(self.base_logits)

    def curve(self, layer: str, mode: int) -> ModeCurve | None:
        return self.curves.get((layer, int(mode)))

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


def _collect(dataset, limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import make_loader, subset

    data = subset(dataset, limit, seed=seed)
    if len(data) == 0:
        raise LrvizError("The calibration set is empty; there is nothing to measure.")
    xs, ys = [], []
    for x, y in make_loader(data, batch_size=512):
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)


def _forward(model: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    outs = []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size].to(device))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise LrvizError("The model must return logits of shape N x num_classes.")
        outs.append(out.float().cpu())
    return torch.cat(outs)


def _layer_file(folder: Path, name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return folder / f"layer-{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}.npz"


def measure_sensitivity(
    model: nn.Module,
    dataset,
    *,
    limit: int | None = 1000,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    grid_points: int = DEFAULT_POINTS,
    batch_size: int = 500,
    device: str | torch.device | None = None,
    factors: FactorCache | None = None,
    cache: bool = True,
    cache_root: str | os.PathLike | None = None,
    data_name: str = "",
    progress: Callable[[int, int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cache_only: bool = False,
    anchors: Sequence[float] = DEFAULT_ANCHORS,
    partial: bool = True,
) -> Sensitivities:
    """Measure (or load from the disk cache) every layer's per-mode sensitivity curve.

    Parameters
    ----------
    model : nn.Module
        Never modified (a private copy is truncated).
    dataset : Dataset
        Calibration data; the first ``limit`` items of a fixed permutation (:func:`lrviz.data.subset`).
    limit : int or None
        Calibration images (None = all).
    layers : sequence of str, optional
        Measure only these decomposable layers (default: all).
    grid_points : int
        Rank grid density (:func:`rank_grid`).
    batch_size : int
    device : optional
        Default: CUDA when available, else CPU.
    factors : FactorCache, optional
        Shared bases of ``model`` (computed when absent).
    cache : bool
        Read and write the disk cache.
    cache_root : path, optional
        Default :func:`sensitivity_dir`.
    data_name : str
        Description of the data, stored with the result.
    progress : callable, optional
        ``progress(done, total, layer)`` after each layer (cached layers count as done).
    should_stop : callable, optional
        Polled between forward passes; when it returns True the run stops and the result has
        ``complete=False`` (layers finished so far are cached and reused next time).
    anchors : sequence of float
        Uniform rank fractions of *joint* truncations (every measured layer but the last one run,
        usually the classifier) also measured once, so the projection's gain is calibrated out of the
        box (:meth:`lrviz.project.SensitivityProjector.from_sensitivities`).
    partial : bool
        Recompute only the part of the network downstream of the truncated layer (``torch.fx``; the
        upstream part runs once per layer). Same numbers as whole forward passes (tested), faster;
        models that cannot be traced fall back to whole passes.
    cache_only : bool
        Measure nothing: return what the cache holds (``complete=False`` when layers are missing).

    Returns
    -------
    Sensitivities
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
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

    x, y = _collect(dataset, limit, seed)
    work = copy.deepcopy(model).to(dev).eval()
    if factors is None:
        factors = FactorCache(model)
    else:
        factors.check(model)  # a cache made for another model would measure the wrong layers
    with torch.inference_mode():
        z0 = _forward(work, x, batch_size, dev)
    k = z0.shape[1]
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise LrvizError(f"labels range {int(y.min())}..{int(y.max())} but the model has {k} outputs; use a model trained for this data")
    # kept classes: all when few, else the true class + the original's top ones
    if k <= MAX_CLASSES:
        idx = torch.arange(k).expand(len(y), k)
        label_pos = y.clone()
        rest = torch.full((len(y),), -math.inf)
    else:
        masked = z0.clone()
        masked[torch.arange(len(y)), y] = -math.inf
        top = masked.topk(MAX_CLASSES - 1, dim=1).indices
        idx = torch.cat([y[:, None], top], dim=1)
        label_pos = torch.zeros(len(y), dtype=torch.long)
        keep = torch.zeros_like(z0, dtype=torch.bool).scatter_(1, idx, True)
        rest = torch.where(keep, torch.full_like(z0, -math.inf), z0).logsumexp(dim=1)
    base = z0.gather(1, idx).numpy().astype(np.float32)
    label_pos_np = label_pos.numpy().astype(np.int64)
    rest_np = rest.numpy().astype(np.float64)

    key_src = json.dumps({
        "v": FORMAT_VERSION, "model": model_fingerprint(model), "data": _data_fingerprint(x, y),
        "grid": int(grid_points), "max_classes": MAX_CLASSES,
    }, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    folder = Path(cache_root) / key if cache_root is not None else sensitivity_dir() / key

    result = Sensitivities(key, base, label_pos_np, rest_np, int(k), {}, tuple(l.name for l in infos), True,
                           data_name or f"{len(y)} images")
    total = len(infos)
    t0 = time.perf_counter()
    spent = 0.0
    runner = None
    found: dict[str, list[ModeCurve]] = {}

    def load(info: LayerInfo) -> list[ModeCurve] | None:
        return _load_layer(_layer_file(folder, info.name), info, base.shape) if cache else None

    def measure(info: LayerInfo) -> list[ModeCurve] | None:
        nonlocal runner, spent
        t1 = time.perf_counter()
        if runner is None:
            runner = _SuffixRunner(work, x, batch_size, dev, partial)
        curves = _measure_layer(runner, info, factors, base, idx, label_pos_np, rest_np, should_stop, grid_points)
        spent += time.perf_counter() - t1
        if curves is not None and cache:
            _save_layer(_layer_file(folder, info.name), info, curves, key_src)
        return curves

    def record(info: LayerInfo, curves: list[ModeCurve], cached: bool) -> None:
        found[info.name] = curves
        result.cached_layers += int(cached)
        if progress is not None:
            progress(len(found), total, info.name)

    def locked(info: LayerInfo, wait: bool):
        """Load or measure ``info`` holding its lock; ``_BUSY`` when another process holds it and
        ``wait`` is False, None when stopped."""
        lock = _lock(folder, _layer_file(folder, info.name).name)
        if not lock.acquire(blocking=wait, should_stop=should_stop):
            return _BUSY if not wait else None
        try:
            curves = load(info)  # another process may have finished it while this one waited
            if curves is not None:
                return curves, True
            curves = measure(info)
            return None if curves is None else (curves, False)
        finally:
            lock.release()

    # Pass 1 in layer order; a layer that another process (or session) is measuring right now is
    # left for pass 2, which waits for its lock and then usually finds it in the cache. Each layer
    # is measured once, whoever takes its lock first.
    deferred: list[LayerInfo] = []
    stopped = False
    for info in infos:
        curves = load(info)
        if curves is not None:
            record(info, curves, True)
            continue
        if cache_only:
            result.complete = False
            continue
        if should_stop is not None and should_stop():
            stopped = True
            break
        if cache:
            got = locked(info, wait=False)
        else:
            curves = measure(info)
            got = None if curves is None else (curves, False)
        if got is _BUSY:
            deferred.append(info)
            continue
        if got is None:
            stopped = True
            break
        record(info, *got)
    for info in deferred if not stopped else ():
        got = locked(info, wait=True)
        if got is None:
            stopped = True
            break
        record(info, *got)
    if stopped:
        result.complete = False
    for info in infos:  # curves in layer order, whatever order they were obtained in
        for c in found.get(info.name, ()):
            result.curves[(info.name, c.index)] = c
    if result.complete and anchors and not cache_only:
        apath = folder / ANCHORS_FILE
        got = _load_anchors(apath) if cache else None
        lock = _lock(folder, ANCHORS_FILE) if cache and got is None else None
        if lock is not None and not lock.acquire(should_stop=should_stop):
            result.complete = False
        else:
            try:
                if lock is not None:
                    got = _load_anchors(apath)
                if got is None:
                    if should_stop is not None and should_stop():
                        result.complete = False
                    else:
                        t1 = time.perf_counter()
                        got = _measure_anchors(work, infos, factors, x, base, idx, label_pos_np, rest_np, batch_size, dev, anchors)
                        spent += time.perf_counter() - t1
                        if cache:
                            atomic_write(apath, json.dumps(got).encode())
            finally:
                if lock is not None:
                    lock.release()
        if got is not None:
            result.anchors = got
    if cache_only:
        got = _load_anchors(folder / ANCHORS_FILE)
        if got is not None:
            result.anchors = got
    result.seconds = spent
    log.info("sensitivity %s: %d layers (%d cached) in %.1fs", key, len(infos), result.cached_layers, time.perf_counter() - t0)
    return result


class _SuffixRunner:
    """Forward passes that recompute only what depends on one layer (``torch.fx``).

    Everything upstream of the truncated layer (and every branch that does not depend on it, such as
    a residual path around it) is the same for every rank of that layer, so it runs once per layer:
    the values the downstream part reads (the *frontier*) are kept, and each rank runs only the
    downstream nodes (:class:`torch.fx.Interpreter` with a pre-filled environment). Falls back to
    whole forward passes when the model cannot be traced.
    """

    def __init__(self, work: nn.Module, x: torch.Tensor, batch_size: int, dev, partial: bool = True):
        self.work, self.x, self.batch_size, self.dev = work, x, batch_size, dev
        self.gm = None
        if partial:
            try:
                self.gm = torch.fx.symbolic_trace(work)
            except Exception as exc:  # dynamic control flow etc.: whole forward passes instead
                log.info("torch.fx cannot trace the model (%s): sensitivities use whole forward passes", exc)
        self.envs: list[dict] | None = None

    @property
    def model(self) -> nn.Module:
        return self.gm if self.gm is not None else self.work

    def begin(self, name: str) -> None:
        """Run the original model once, keeping the frontier values of layer ``name``'s downstream part."""
        self.envs = None
        if self.gm is None:
            return
        graph = self.gm.graph
        starts = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
        down: set = set()
        stack = list(starts)
        while stack:
            n = stack.pop()
            if n not in down:
                down.add(n)
                stack.extend(n.users)
        out_nodes = [n for n in graph.nodes if n.op == "output"]
        if not starts or not out_nodes or out_nodes[0] not in down:
            return
        frontier = {a for n in down for a in n.all_input_nodes if a not in down}
        rest = [n for n in graph.nodes if n not in down and n not in frontier]

        gm = self.gm

        class _Keep(torch.fx.Interpreter):
            def run_node(self, n):
                v = super().run_node(n)
                if n in frontier:
                    kept[n] = v
                return v

        envs = []
        batches = range(0, self.x.shape[0], self.batch_size)
        with torch.inference_mode():
            for i in batches:
                kept: dict = {}
                _Keep(gm).run(self.x[i : i + self.batch_size].to(self.dev))
                if not envs:  # memory guard: keeping the frontier of every batch must stay small
                    size = sum(v.numel() * v.element_size() for v in kept.values() if isinstance(v, torch.Tensor))
                    if size * len(batches) > FRONTIER_BYTES:
                        log.info("layer %s: upstream values too large to keep (%.1f GB): whole forward passes", name,
                                 size * len(batches) / 1e9)
                        return
                env = dict.fromkeys(rest)
                env.update(kept)
                envs.append(env)
        self.envs = envs

    def logits(self) -> torch.Tensor:
        if self.envs is None:
            return _forward(self.model, self.x, self.batch_size, self.dev)
        outs = []
        for i, env in zip(range(0, self.x.shape[0], self.batch_size), self.envs):
            out = torch.fx.Interpreter(self.gm).run(self.x[i : i + self.batch_size].to(self.dev), initial_env=dict(env))
            outs.append(out.float().cpu())
        return torch.cat(outs)

    def end(self) -> None:
        self.envs = None


def _measure_layer(runner: _SuffixRunner, info: LayerInfo, factors, base, idx, label_pos, rest, should_stop, points):
    model = runner.model
    original = get_module(model, info.name)
    fac = factors.get(info.name)
    out: list[ModeCurve] = []
    full = info.full_ranks
    dev = runner.dev
    try:
        runner.begin(info.name)
        for m, mname in enumerate(layer_modes(info.kind)):
            grid = rank_grid(full[m], points)
            if not grid:
                continue
            deltas, top1s, losses = [], [], []
            for r in grid:
                if should_stop is not None and should_stop():
                    return None
                ranks = list(full)
                ranks[m] = r
                set_module(model, info.name, build_layer(fac, tuple(ranks)).to(dev).eval())
                with torch.inference_mode():
                    z = runner.logits().gather(1, idx).numpy().astype(np.float32)
                deltas.append(z - base)
                top1s.append(float((z.argmax(1) == label_pos).mean()))
                losses.append(float(cross_entropy(z, label_pos, rest).mean()))
            b_top1 = float((base.argmax(1) == label_pos).mean())
            b_loss = float(cross_entropy(base, label_pos, rest).mean())
            deltas.append(np.zeros_like(base))
            out.append(ModeCurve(info.name, mname, m, int(full[m]), np.asarray(grid + [int(full[m])], dtype=np.int64),
                                 np.stack(deltas).astype(np.float32), np.asarray(top1s + [b_top1]), np.asarray(losses + [b_loss])))
    finally:
        set_module(model, info.name, original)
        runner.end()
    return out


def anchor_ranks(infos: Sequence[LayerInfo], order: Sequence[str], fraction: float) -> dict[str, list[int]]:
    """Ranks of an anchor: ``ceil(fraction·R)`` on every mode of every layer except the last one run."""
    last = order[-1] if order else None
    out = {}
    for l in infos:
        if l.name == last:
            continue
        out[l.name] = [max(1, math.ceil(fraction * f - 1e-9)) for f in l.full_ranks]
    return out


def _measure_anchors(work, infos, factors, x, base, idx, label_pos, rest, batch_size, dev, fractions) -> list[dict]:
    names = {l.name for l in infos}
    order = [n for n in record_io(work, tuple(x.shape[1:])) if n in names]  # forward (call) order
    by_name = {l.name: l for l in infos}
    out = []
    for f in fractions:
        ranks = anchor_ranks(infos, order, float(f))
        originals = {n: get_module(work, n) for n in ranks}
        try:
            for n, r in ranks.items():
                set_module(work, n, build_layer(factors.get(n), tuple(r)).to(dev).eval())
            with torch.inference_mode():
                z = _forward(work, x, batch_size, dev).gather(1, idx).numpy().astype(np.float32)
        finally:
            for n, mod in originals.items():
                set_module(work, n, mod)
        out.append({"fraction": float(f), "ranks": ranks, "full": {n: list(by_name[n].full_ranks) for n in ranks}, "top1": float((z.argmax(1) == label_pos).mean()),
                    "loss": float(cross_entropy(z, label_pos, rest).mean())})
    return out


def _load_anchors(path: Path) -> list | None:
    """The cached anchors, or None when missing or unreadable (then they are measured again)."""
    try:
        got = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, UnicodeDecodeError):
        log.warning("ignoring unreadable sensitivity cache file %s", path)
        return None
    if got is None:
        return None
    ok = isinstance(got, list) and all(isinstance(a, dict) and {"fraction", "ranks", "top1", "loss"} <= set(a) for a in got)
    if not ok:
        log.warning("ignoring malformed sensitivity cache file %s", path)
        return None
    return got


def _lock(folder: Path, name: str) -> FileLock:
    """The inter-process lock of one cache file (``<folder>/.locks/<name>.lock``)."""
    locks = folder / LOCK_DIR
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{name}.lock")


def _save_layer(path: Path, info: LayerInfo, curves: list[ModeCurve], key_src: str) -> None:
    """Write one layer's curves atomically (unique temporary file + ``os.replace``): a reader, or a
    process that dies halfway, never leaves a torn file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"meta": np.frombuffer(json.dumps({"layer": info.name, "shape": list(info.weight_shape), "kind": info.kind,
                                                 "key": key_src, "modes": [c.mode for c in curves],
                                                 "index": [c.index for c in curves]}).encode(), dtype=np.uint8)}
    for j, c in enumerate(curves):
        arrays[f"ranks{j}"] = c.ranks
        arrays[f"delta{j}"] = c.delta.astype(np.float16) if np.abs(c.delta).max(initial=0) < 6e4 else c.delta
        arrays[f"top1{j}"] = c.top1
        arrays[f"loss{j}"] = c.loss
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_layer(path: Path, info: LayerInfo, logits_shape: tuple[int, ...] | None = None) -> list[ModeCurve] | None:
    """One layer's cached curves, or None when missing, for another layer, or unreadable in any way
    (a torn, truncated or tampered file is measured again and overwritten, never fatal).

    ``logits_shape`` ``(N, M)``: the kept logits' shape the stored changes must have.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta["layer"] != info.name or tuple(meta["shape"]) != tuple(info.weight_shape):
                return None
            out = []
            for j, (mode, index) in enumerate(zip(meta["modes"], meta["index"])):
                c = ModeCurve(info.name, mode, int(index), int(info.full_ranks[int(index)]), z[f"ranks{j}"].astype(np.int64),
                              z[f"delta{j}"].astype(np.float32), z[f"top1{j}"], z[f"loss{j}"])
                g = len(c.ranks)
                if (c.delta.ndim != 3 or c.delta.shape[0] != g or c.top1.shape != (g,) or c.loss.shape != (g,)
                        or (logits_shape is not None and tuple(c.delta.shape[1:]) != tuple(logits_shape))
                        or g == 0 or int(c.ranks[-1]) != c.full):
                    raise ValueError(f"inconsistent arrays for mode {mode!r}")
                out.append(c)
            return out
    except Exception as exc:  # BadZipFile, EOFError, zlib errors, missing keys, bad JSON, ...: recompute
        log.warning("ignoring unreadable sensitivity cache file %s (%s: %s)", path, type(exc).__name__, exc)
        return None


def load_sensitivity(*args, **kwargs) -> Sensitivities:
    """:func:`measure_sensitivity` with ``cache_only=True``: layers not cached are left out and the result
    has ``complete=False``. (Still runs the original model once on the calibration set.)"""
    kwargs["cache_only"] = True
    return measure_sensitivity(*args, **kwargs)
