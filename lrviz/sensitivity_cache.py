"""The on-disk cache of layer sensitivities (:func:`lrviz.sensitivity.measure_sensitivity`).

One folder per key under :func:`sensitivity_dir` (``~/.cache/lrviz/sensitivity/<key>``;
``$LRVIZ_CACHE_DIR`` moves it): one ``.npz`` file per layer, so a cancelled run resumes where it
stopped, and ``anchors.json`` for the joint anchor truncations. The key (:func:`cache_key`) hashes the
model's architecture and weights (:func:`model_fingerprint`), the exact calibration tensors (so the dataset, split, transform and subset are all covered), the grid and
:data:`FORMAT_VERSION`.

Several processes (or dashboard sessions) may measure the same key at once (:meth:`SensitivityCache.obtain`):
every file is written atomically (temporary file + ``os.replace``), each layer is measured under an
exclusive ``fcntl.flock`` lock of its own (a layer another process is measuring is taken up after the
others, usually from the cache by then), and a cache file that cannot be read is measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from .decompose import weights_fingerprint
from .layers import LayerInfo
from .storage import FileLock, atomic_write, cache_root

__all__ = ["FORMAT_VERSION", "ANCHORS_FILE", "BUNDLED_ROOT", "bundled_dir", "LOCK_DIR", "sensitivity_dir", "model_fingerprint", "cache_key", "SensitivityCache"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: the SVD mode is "matrix" (was "rank"); 3: two-mode pair terms of Tucker-2 layers

ANCHORS_FILE = "anchors.json"
#: Sensitivities shipped with lrviz, one folder per key (read-only; :func:`bundled_dir`).
BUNDLED_ROOT = Path(__file__).parent / "assets" / "sensitivity"
#: Lock files of a cache key's folder (one per cache file; ``fcntl.flock``, see :class:`lrviz.storage.FileLock`).
LOCK_DIR = ".locks"

#: :meth:`SensitivityCache.load_or_measure`: another process holds the layer's lock.
BUSY = object()


def sensitivity_dir() -> Path:
    """Root of the on-disk cache (``$LRVIZ_CACHE_DIR/sensitivity`` or ``~/.cache/lrviz/sensitivity``)."""
    return cache_root() / "sensitivity"


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's architecture (its module tree, ``repr(model)``) and of every tensor of its
    state_dict (:func:`lrviz.decompose.weights_fingerprint` with ``all_tensors=True``): all that its
    output depends on."""
    h = hashlib.sha256(repr(model).encode())
    h.update(weights_fingerprint(model, all_tensors=True).encode())
    return h.hexdigest()


def cache_key(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, grid_points: int, max_classes: int,
              pairs: bool = True, factors: str = "weights") -> tuple[str, str]:
    """``(key, key_src)``: the folder name (24 hex digits) and the JSON it hashes — the model
    (:func:`model_fingerprint`), the calibration tensors, the grid (and whether pair terms are
    measured), the format, and the factors' kind (:attr:`lrviz.FactorCache.kind`) when they are not the
    weight-only ones (so weight-only keys, the bundled ones among them, are unchanged)."""
    doc = {
        "v": FORMAT_VERSION, "model": model_fingerprint(model), "data": _data_fingerprint(x, y),
        "grid": int(grid_points), "max_classes": int(max_classes), "pairs": bool(pairs),
    }
    if factors != "weights":
        doc["factors"] = str(factors)
    key_src = json.dumps(doc, sort_keys=True)
    return hashlib.sha256(key_src.encode()).hexdigest()[:24], key_src


def _data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(str(tuple(x.shape)).encode())
    h.update(x.detach().to(torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def bundled_dir(key: str) -> Path | None:
    """The read-only folder of sensitivities shipped with lrviz for ``key`` (the bundled demo on the
    bundled sample, see ``benchmarks/bundle_sensitivities.py``), or None when there is none or
    ``$LRVIZ_NO_BUNDLED_SENSITIVITIES`` is set (to 1, true, yes)."""
    if os.environ.get("LRVIZ_NO_BUNDLED_SENSITIVITIES", "").strip().lower() in ("1", "true", "yes"):
        return None
    folder = BUNDLED_ROOT / key
    return folder if folder.is_dir() else None


class SensitivityCache:
    """One key's folder: per-layer curves and the anchors, each read, measured and written under its
    own lock. With ``enabled=False`` nothing is read or written (every load misses). A layer or the
    anchors missing from the folder are read from the bundled copy (:func:`bundled_dir`) when lrviz
    ships one for the key; nothing is ever written there."""

    def __init__(self, folder: Path, key_src: str, logits_shape: tuple[int, ...], enabled: bool = True):
        self.folder, self.key_src, self.logits_shape, self.enabled = Path(folder), key_src, tuple(logits_shape), enabled
        self.bundled = bundled_dir(self.folder.name) if enabled else None

    def load_layer(self, info: LayerInfo):
        """``info``'s cached curves, or None (missing, disabled, or unreadable)."""
        if not self.enabled:
            return None
        got = _load_layer(_layer_file(self.folder, info.name), info, self.logits_shape)
        if got is None and self.bundled is not None:
            got = _load_layer(_layer_file(self.bundled, info.name), info, self.logits_shape)
        return got

    def obtain(self, infos: Sequence[LayerInfo], measure: Callable, record: Callable, *, cache_only: bool = False,
               should_stop: Callable[[], bool] | None = None) -> bool:
        """Every layer's curves, from the cache or from ``measure(info)`` (None = stopped).

        Pass 1 goes in layer order; a layer another process (or session) is measuring right now is
        left for pass 2, which waits for its lock and then usually finds it cached — each layer is
        measured once, whoever takes its lock first. ``record(info, curves, cached)`` is called for
        every layer obtained. Returns False when stopped, or when ``cache_only`` and a layer is not
        cached (it is then not measured).
        """
        complete = True
        deferred: list[LayerInfo] = []
        for info in infos:
            curves = self.load_layer(info)
            if curves is not None:
                record(info, curves, True)
                continue
            if cache_only:
                complete = False
                continue
            if should_stop is not None and should_stop():
                return False
            got = self.load_or_measure(info, measure, wait=False, should_stop=should_stop)
            if got is BUSY:
                deferred.append(info)
                continue
            if got is None:
                return False
            record(info, *got)
        return self._deferred(deferred, measure, record, should_stop) and complete

    def _deferred(self, deferred: Sequence[LayerInfo], measure: Callable, record: Callable, should_stop) -> bool:
        """Pass 2 of :meth:`obtain`: wait for each layer another process held, then load (or measure)
        it; False when stopped."""
        for info in deferred:
            got = self.load_or_measure(info, measure, wait=True, should_stop=should_stop)
            if got is None:
                return False
            record(info, *got)
        return True

    def obtain_many(self, infos: Sequence[LayerInfo], measure_many: Callable, record: Callable, *, cache_only: bool = False,
                    should_stop: Callable[[], bool] | None = None) -> bool:
        """:meth:`obtain` with the missing layers measured together: ``measure_many(todo)`` yields
        ``(info, curves)`` for the layers of ``todo`` as each finishes, in any order (a layer executor
        runs them in parallel), and stops early when stopped.

        Same files and the same locking protocol as :meth:`obtain`: each layer to measure is first
        locked (a layer another process holds is left for the end, when it is usually cached by then),
        and each result is written and unlocked as soon as it arrives, so a run stopped halfway keeps
        what it finished. Returns False when stopped, or when ``cache_only`` and a layer is not cached.
        """
        complete = True
        todo: list[LayerInfo] = []
        deferred: list[LayerInfo] = []
        locks: dict[str, FileLock] = {}
        try:
            for info in infos:
                curves = self.load_layer(info)
                if curves is not None:
                    record(info, curves, True)
                    continue
                if cache_only:
                    complete = False
                    continue
                if self.enabled:
                    lock = _lock(self.folder, _layer_file(self.folder, info.name).name)
                    if not lock.acquire(blocking=False):
                        deferred.append(info)
                        continue
                    curves = self.load_layer(info)  # another process may have finished it meanwhile
                    if curves is not None:
                        lock.release()
                        record(info, curves, True)
                        continue
                    locks[info.name] = lock
                todo.append(info)
            if cache_only:
                return complete
            if should_stop is not None and should_stop():
                return False
            got = 0
            if todo:
                with closing(iter(measure_many(todo))) as results:  # closed early: the executor cancels what is left
                    for info, curves in results:
                        if curves is None:
                            return False
                        if self.enabled:
                            _save_layer(_layer_file(self.folder, info.name), info, curves, self.key_src)
                            locks.pop(info.name).release()
                        record(info, curves, False)
                        got += 1
            if got < len(todo):
                return False  # stopped
        finally:
            for lock in locks.values():
                lock.release()

        def measure_one(info: LayerInfo):
            with closing(iter(measure_many([info]))) as results:
                return next((curves for _, curves in results), None)

        return self._deferred(deferred, measure_one, record, should_stop) and complete

    def load_or_measure(self, info: LayerInfo, measure: Callable, wait: bool, should_stop=None):
        """Under ``info``'s lock: ``(cached curves, True)``, else ``(measure(info), False)`` (saved);
        :data:`BUSY` when another process holds the lock and ``wait`` is False; None when stopped."""
        if not self.enabled:
            curves = measure(info)
            return None if curves is None else (curves, False)
        lock = _lock(self.folder, _layer_file(self.folder, info.name).name)
        if not lock.acquire(blocking=wait, should_stop=should_stop):
            return BUSY if not wait else None
        try:
            curves = self.load_layer(info)  # another process may have finished it while this one waited
            if curves is not None:
                return curves, True
            curves = measure(info)
            if curves is None:
                return None
            _save_layer(_layer_file(self.folder, info.name), info, curves, self.key_src)
            return curves, False
        finally:
            lock.release()

    def load_anchors(self) -> list | None:
        """The cached anchors (read even when disabled; else the bundled ones), or None."""
        got = _load_anchors(self.folder / ANCHORS_FILE)
        if got is None and self.bundled is not None:
            got = _load_anchors(self.bundled / ANCHORS_FILE)
        return got

    def anchors(self, measure: Callable[[], list], should_stop=None) -> list | None:
        """The anchors: cached, else ``measure()`` under their lock (and saved); None when stopped."""
        got = self.load_anchors() if self.enabled else None
        if got is not None:
            return got
        lock = _lock(self.folder, ANCHORS_FILE) if self.enabled else None
        if lock is not None and not lock.acquire(should_stop=should_stop):
            return None
        try:
            got = self.load_anchors() if lock is not None else None
            if got is None:
                if should_stop is not None and should_stop():
                    return None
                got = measure()
                if self.enabled:
                    atomic_write(self.folder / ANCHORS_FILE, json.dumps(got).encode())
            return got
        finally:
            if lock is not None:
                lock.release()


def _layer_file(folder: Path, name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return folder / f"layer-{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}.npz"


def _lock(folder: Path, name: str) -> FileLock:
    """The inter-process lock of one cache file (``<folder>/.locks/<name>.lock``)."""
    locks = folder / LOCK_DIR
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(locks / f"{name}.lock")


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


def _save_layer(path: Path, info: LayerInfo, curves, key_src: str) -> None:
    """Write one layer's curves atomically (unique temporary file + ``os.replace``): a reader, or a
    process that dies halfway, never leaves a torn file under the final name."""
    from .sensitivity import PairTerm

    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = [c for c in curves if isinstance(c, PairTerm)]
    curves = [c for c in curves if not isinstance(c, PairTerm)]
    arrays = {"meta": np.frombuffer(json.dumps({"layer": info.name, "shape": list(info.weight_shape), "kind": info.kind,
                                                 "key": key_src, "modes": [c.mode for c in curves],
                                                 "index": [c.index for c in curves], "pair": bool(pairs)}).encode(), dtype=np.uint8)}
    for p in pairs:
        arrays["pair_ranks0"], arrays["pair_ranks1"] = p.ranks0, p.ranks1
        arrays["pair"] = p.inter.astype(np.float16) if np.abs(p.inter).max(initial=0) < 6e4 else p.inter
    for j, c in enumerate(curves):
        arrays[f"ranks{j}"] = c.ranks
        arrays[f"delta{j}"] = c.delta.astype(np.float16) if np.abs(c.delta).max(initial=0) < 6e4 else c.delta
        arrays[f"top1{j}"] = c.top1
        arrays[f"loss{j}"] = c.loss
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_layer(path: Path, info: LayerInfo, logits_shape: tuple[int, ...] | None = None):
    """One layer's cached curves (a list of :class:`lrviz.sensitivity.ModeCurve`), or None when
    missing, for another layer, or unreadable in any way (a torn, truncated or tampered file is
    measured again and overwritten, never fatal).

    ``logits_shape`` ``(N, M)``: the kept logits' shape the stored changes must have.
    """
    from .sensitivity import ModeCurve, PairTerm  # the result types live with the method that measures them

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
            if meta.get("pair"):
                p = PairTerm(info.name, z["pair_ranks0"].astype(np.int64), z["pair_ranks1"].astype(np.int64), z["pair"].astype(np.float32))
                if (len(out) != 2 or p.inter.shape[:2] != (len(p.ranks0), len(p.ranks1)) or int(p.ranks0[-1]) != out[0].full
                        or int(p.ranks1[-1]) != out[1].full or tuple(p.inter.shape[2:]) != tuple(out[0].delta.shape[1:])):
                    raise ValueError("inconsistent pair arrays")
                out.append(p)
            return out
    except Exception as exc:  # BadZipFile, EOFError, zlib errors, missing keys, bad JSON, ...: recompute
        log.warning("ignoring unreadable sensitivity cache file %s (%s: %s)", path, type(exc).__name__, exc)
        return None
