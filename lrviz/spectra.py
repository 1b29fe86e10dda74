"""Singular spectra of layer weights.

For a k×k conv kernel ``W`` of shape ``(C_out, C_in, kh, kw)`` lrviz uses the two channel-mode
unfoldings of Tucker-2 (Kim et al. 2016):

* ``"out"`` (the mode-0 unfolding): ``W.flatten(1)``                 — ``C_out × (C_in·kh·kw)``, its rank bounds R_out;
* ``"in"`` (the mode-1 unfolding):  ``W.transpose(0, 1).flatten(1)`` — ``C_in × (C_out·kh·kw)``, its rank bounds R_in.

A 1×1 conv or a Linear is the matrix ``C_out × C_in`` (``"matrix"``).

Grouped convs (``groups = G``) are decomposed group by group with one rank shared by all groups (see
:mod:`lrviz.layers`), so each mode has ``G`` per-group unfoldings ``A_g`` (shape ``(C_out/G) ×
(C_in/G·kh·kw)`` for ``"out"``, etc.). The layer's spectrum of a mode is their **root-mean-square
spectrum**::

    s_i = sqrt( (1/G) · Σ_g σ_i(A_g)² )          i = 1 .. min(rows, cols)

with the shape of one group's unfolding. It is the spectrum a shared rank acts on: truncating every
group to rank ``r`` keeps exactly ``Σ_{i≤r} s_i² / Σ_i s_i²`` of the mode's squared norm (so energy
plans mean what they say), and for pure noise of variance σ² every ``σ_i(A_g)`` follows the same
Marchenko–Pastur law as one ``rows × cols`` matrix, so the RMS spectrum does too and EVBMF's threshold
for that shape applies. ``G = 1`` gives the ordinary spectrum. (Pooling the groups' Gram matrices
instead would add up bases that are unrelated from group to group.)

Only singular values are needed for spectra and EVBMF, so they are computed as the square roots of the
eigenvalues of the smaller Gram matrix ``A·Aᵀ`` (or ``Aᵀ·A``) in float64 — far cheaper than an SVD of the
unfolding and, in float64, accurate to about ``1e-8·σ_max`` (ample for ranks, energies and noise
estimates; the decomposition itself uses eigenvectors of the same Gram matrices).

With ``fast`` (what :func:`lrviz.analyze` uses) a float32 unfolding is first tried in float32 (Gram
matrix and eigenvalues: about half the work), and that result is kept only if the unfolding is well
conditioned — every eigenvalue at least ``FAST_MIN_EIG_RATIO = 1e-2`` of the largest, i.e.
``σ_min ≥ 0.1·σ_max`` — where float32 rounding moves each ``σ_i`` by less than ``1e-4`` of itself
(measured: under ``2e-5``; about ``5e-6·σ_max`` on resnet50, as close as ``torch.linalg.svdvals`` in
float32 gets). Every other unfolding (the decaying spectra of trained layers, square random ones) is
computed in float64 as above, so small singular values are never float32 noise; a cheap Cholesky
pre-test on half of the float32 Gram matrix skips the float32 eigenvalues of most such unfoldings. Only the lower block
triangle of a Gram matrix is formed (``eigvalsh`` reads no more), which saves up to half of the
products.

:func:`layer_spectra` computes many layers' spectra concurrently (independent unfoldings on a few
worker threads; LAPACK's eigenvalue routine is mostly sequential work on these sizes, so several at
once use the cores far better than one multi-threaded call after another). The unfoldings in flight
together never need more memory than the largest one computed alone, which is what
:func:`lrviz.memory.estimate_analysis` counts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import MODE_IN, MODE_MATRIX, MODE_OUT, TUCKER2, LayerInfo

__all__ = ["LayerSpectrum", "unfoldings", "singular_values", "energy_curve", "retained_energy", "energy_rank", "layer_spectrum",
           "layer_spectra"]


def unfoldings(weight: torch.Tensor, kind: str, groups: int = 1) -> dict[str, torch.Tensor]:
    """Matrices whose singular values describe a layer.

    Parameters
    ----------
    weight : Tensor
        ``(C_out, C_in/groups, kh, kw)`` for convs (the module's weight), ``(out_features,
        in_features)`` for Linear.
    kind : str
        ``"tucker2"`` → ``{"out", "in"}``; otherwise ``{"matrix"}`` (see :func:`lrviz.layers.layer_modes`).
    groups : int
        Conv groups. With ``groups > 1`` every value is a stack ``(groups, rows, cols)`` of the
        per-group unfoldings.
    """
    return {m: unfolding(weight, kind, groups, m) for m in _modes(kind)}


def _modes(kind: str) -> tuple[str, ...]:
    return (MODE_OUT, MODE_IN) if kind == TUCKER2 else (MODE_MATRIX,)


def unfolding(weight: torch.Tensor, kind: str, groups: int, mode: str) -> torch.Tensor:
    """One of :func:`unfoldings` (only that one is formed: the mode-1 unfolding is a copy)."""
    if mode not in _modes(kind):
        raise ValueError(f"a {kind!r} layer has no unfolding {mode!r}")
    w = weight.detach()
    if groups > 1:
        w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])  # (G, C_out/G, C_in/G, kh, kw)
        return w.transpose(1, 2).flatten(2) if mode == MODE_IN else w.flatten(2)
    return w.transpose(0, 1).flatten(1) if mode == MODE_IN else w.flatten(1)


GRAM_FP64_MAX_WORK = 5e9  # multiply-adds; larger products (e.g. VGG's 4096×25088 head) use a float32 product
#: Most bytes of the piece of an unfolding converted (or multiplied) at a time in :func:`gram`.
GRAM_BLOCK_BYTES = 32 * 2**20


def row_gram(a: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """``a·aᵀ`` as float64 for a matrix ``(rows, cols)`` or a stack ``(G, rows, cols)``.

    With ``exact`` the products are accumulated in float64 (the contraction runs over column blocks
    of ``a``, each promoted on its own and added in place); otherwise the product is formed in float32
    (≈2× faster) row block by row block, written straight into the float64 result. Either way, beyond
    the result (``rows² · 8`` bytes per matrix) only one block of at most ``GRAM_BLOCK_BYTES`` is
    allocated — never a float64 copy of the whole of ``a``.
    """
    x = a if a.dim() == 3 else a.unsqueeze(0)
    batch, rows, cols = x.shape
    g = torch.zeros(batch, rows, rows, dtype=torch.float64, device=a.device)
    if exact:
        step = max(1, GRAM_BLOCK_BYTES // (8 * batch * max(rows, 1)))
        for k in range(0, cols, step):
            blk = x[..., k : k + step].to(torch.float64)
            g.baddbmm_(blk, blk.transpose(-2, -1))
    else:
        x32 = x.to(torch.float32)
        step = max(1, GRAM_BLOCK_BYTES // (4 * batch * max(rows, 1)))  # float32 rows of the product
        for i in range(0, rows, step):
            g[:, i : i + step] = x32[:, i : i + step] @ x32.transpose(-2, -1)
    return g if a.dim() == 3 else g[0]


def _is_exact(a: torch.Tensor) -> bool:
    rows, cols = a.shape[-2], a.shape[-1]
    small, big = sorted((rows, cols))
    batch = a.shape[0] if a.dim() == 3 else 1
    return batch * small * small * big <= GRAM_FP64_MAX_WORK


def gram(a: torch.Tensor) -> torch.Tensor:
    """Smaller Gram matrix of ``a`` as float64: ``a·aᵀ`` if rows ≤ cols else ``aᵀ·a``.

    ``a`` is a matrix or a stack ``(G, rows, cols)`` of matrices (one Gram matrix each). The product is
    accumulated in float64, except for very large matrices (work above ``GRAM_FP64_MAX_WORK``) where
    it is formed in float32 (≈2× faster) and then promoted; singular values below ~1e-3·σ_max of such
    matrices are then only approximate. Computed block by block (:func:`row_gram`): no float64 copy
    of the unfolding is made.
    """
    x = a if a.shape[-2] <= a.shape[-1] else a.transpose(-2, -1)
    return row_gram(x, exact=_is_exact(a))


#: Row blocks of at least this many rows split a Gram matrix into its lower block triangle.
_TRI_MIN_ROWS = 128
_TRI_MAX_BLOCKS = 8


def _row_bounds(rows: int, max_rows: int | None = None) -> list[int]:
    k = max(1, min(_TRI_MAX_BLOCKS, rows // _TRI_MIN_ROWS))
    if max_rows is not None:
        k = max(k, -(-rows // max(1, max_rows)))
    return [rows * i // k for i in range(k + 1)]


def lower_gram(x: torch.Tensor, exact: bool = True, block_bytes: int = GRAM_BLOCK_BYTES,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The lower block triangle (diagonal blocks included) of ``x·xᵀ`` as float64, for a matrix
    ``(rows, cols)``; the strictly upper blocks are left zero.

    Enough for ``torch.linalg.eigvalsh`` (which reads only the lower triangle) at up to about half the
    products of :func:`row_gram`. ``exact``: accumulated in float64 over column blocks of at most
    ``block_bytes`` (each promoted on its own); otherwise every row block's product is formed in float32
    (at most ``block_bytes`` at a time) and added into the result, of ``dtype`` (float64, or float32 for
    the fast path of :func:`_eigenvalues`). The sums are the same as :func:`row_gram`'s, in another order.
    """
    rows, cols = x.shape
    g = torch.zeros(rows, rows, dtype=torch.float64 if exact else dtype, device=x.device)
    if exact:
        bounds = _row_bounds(rows)
        step = max(1, block_bytes // (8 * max(rows, 1)))
        for k in range(0, cols, step):
            blk = x[:, k : k + step].to(torch.float64)
            for r0, r1 in zip(bounds, bounds[1:]):
                g[r0:r1, :r1].addmm_(blk[r0:r1], blk[:r1].T)
    else:
        x32 = x.to(torch.float32)
        bounds = _row_bounds(rows, max_rows=block_bytes // (4 * max(rows, 1)))
        for r0, r1 in zip(bounds, bounds[1:]):
            g[r0:r1, :r1] += x32[r0:r1] @ x32[:r1].T
    return g


#: Float32 spectra (:func:`_eigenvalues` with ``fast``) are kept only when every eigenvalue of the
#: float32 Gram matrix is at least this fraction of the largest, i.e. σ_min ≥ 0.1·σ_max: there the
#: float32 rounding (≈1e-6·λ_max) moves each σ_i by less than ~1e-4 of itself (measured: < 2e-5,
#: see tests/test_spectra.py). Worse-conditioned matrices are recomputed in float64.
FAST_MIN_EIG_RATIO = 1e-2
_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _may_be_well_conditioned(g32: torch.Tensor, ratio: float) -> bool:
    """Cheap pre-test before the float32 eigenvalues: whether the leading half of
    ``G − ratio·max_i G_ii·I`` (lower triangle) has a Cholesky factor. ``max_i G_ii ≤ λ_max``, so this
    passes every matrix with ``λ_min ≥ ratio·λ_max`` (and some others, which the eigenvalues then
    reject); it fails fast on the usual ill-conditioned unfolding, whose float32 eigenvalues would be
    thrown away."""
    k = max(1, g32.shape[0] // 2)  # a leading principal block: its λ_min is ≥ G's (interlacing), so
    shifted = g32[:k, :k].clone()   # a failure still proves λ_min(G) < ratio·λ_max, at 1/8 the cost
    shifted.diagonal().sub_(ratio * float(g32.diagonal().max().item()))
    return int(torch.linalg.cholesky_ex(shifted).info.item()) == 0


def _eigenvalues(a: torch.Tensor, block_bytes: int = GRAM_BLOCK_BYTES, fast: bool = False) -> torch.Tensor:
    """Eigenvalues (ascending, float64) of the smaller Gram matrix of a matrix or of each matrix of a stack.

    ``fast``: for a float32 (or half) matrix, first try the float32 Gram matrix and float32 eigenvalues
    (≈2× less work); kept only when the matrix is well conditioned (``FAST_MIN_EIG_RATIO``), otherwise
    the float64 result is computed. Not for the very large products (work above
    ``GRAM_FP64_MAX_WORK``, e.g. VGG's 4096×25088 head), which already form their product in float32:
    there float32 eigenvalues were measured slower on vgg16 (their square 4096×4096 neighbour is
    ill-conditioned and pays for both) and less accurate.
    """
    if a.dim() == 3:
        return torch.linalg.eigvalsh(gram(a))
    x = a if a.shape[0] <= a.shape[1] else a.T
    exact = _is_exact(a)
    if fast and exact and a.dtype in _FAST_DTYPES and min(x.shape) > 1:
        g32 = lower_gram(x, exact=False, block_bytes=block_bytes, dtype=torch.float32)
        if _may_be_well_conditioned(g32, FAST_MIN_EIG_RATIO):
            ev = torch.linalg.eigvalsh(g32)
            if bool(ev[0] >= FAST_MIN_EIG_RATIO * ev[-1]) and bool(ev[-1] > 0):
                return ev.to(torch.float64)
        del g32
    return torch.linalg.eigvalsh(lower_gram(x, exact=exact, block_bytes=block_bytes))


def singular_values(a: torch.Tensor, fast: bool = False) -> np.ndarray:
    """Singular values of a matrix, descending, as float64 numpy (length ``min(rows, cols)``).

    Computed from the eigenvalues of the smaller Gram matrix (see module docstring). For a stack
    ``(G, rows, cols)`` of per-group matrices: their root-mean-square spectrum
    ``sqrt(mean_g σ_i(A_g)²)`` (see the module docstring for why).

    ``fast`` (what :func:`lrviz.analyze` uses): a float32 matrix whose ``σ_min ≥ 0.1·σ_max`` (see
    ``FAST_MIN_EIG_RATIO``) is computed in float32 (≈2× less work; each σ_i within ~1e-4 of itself,
    measured < 2e-5); any other matrix, and every one without ``fast``, in float64 (≈1e-8·σ_max).
    """
    return _values_from_eigenvalues(_eigenvalues(a, fast=fast))


def _values_from_eigenvalues(ev: torch.Tensor) -> np.ndarray:
    ev = torch.clamp(ev, min=0.0).flip(-1)
    if ev.dim() == 2:  # per-group eigenvalues σ_i(A_g)², sorted per group → mean over groups
        ev = ev.mean(0)
    return ev.sqrt().cpu().numpy()


def energy_curve(s: np.ndarray) -> np.ndarray:
    """Retained energy ``Σ_{i≤r} s_i² / Σ s_i²`` for r = 1..len(s) (1.0 at full rank)."""
    s2 = np.asarray(s, dtype=np.float64) ** 2
    tot = s2.sum()
    if tot <= 0:
        return np.ones_like(s2)
    return np.cumsum(s2) / tot


def retained_energy(s: np.ndarray, rank: int) -> float:
    """Retained energy of ``s`` truncated to ``rank``: ``Σ_{i≤r} s_i² / Σ s_i²`` (0 at rank 0, 1 at or
    above the full rank)."""
    if rank <= 0:
        return 0.0
    e = energy_curve(s)
    return float(e[min(int(rank), len(e)) - 1])


def energy_rank(s: np.ndarray, fraction: float) -> int:
    """Smallest rank whose retained energy is ≥ ``fraction`` (at least 1)."""
    e = energy_curve(s)
    r = int(np.searchsorted(e, fraction - 1e-12, side="left")) + 1
    return max(1, min(r, len(e)))


@dataclass(frozen=True, eq=False)
class LayerSpectrum:
    """Singular values of a layer's unfoldings.

    Attributes
    ----------
    layer : LayerInfo
    values : dict[str, np.ndarray]
        ``{"out": ..., "in": ...}`` (Tucker-2) or ``{"matrix": ...}``; descending float64.
    shapes : dict[str, tuple[int, int]]
        Shape ``(rows, cols)`` of each unfolding (needed by EVBMF); of one group's unfolding for a
        grouped conv, whose values are the groups' root-mean-square spectrum.
    """

    layer: LayerInfo
    values: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def modes(self) -> list[str]:
        return list(self.values)


def layer_spectrum(layer: LayerInfo, weight: torch.Tensor, fast: bool = False) -> LayerSpectrum:
    """Spectrum of one layer's weight (the module's ``weight``; see :func:`unfoldings`; ``fast`` as in
    :func:`singular_values`)."""
    mats = unfoldings(weight, layer.kind, layer.groups)
    return LayerSpectrum(
        layer=layer,
        values={k: singular_values(m, fast=fast) for k, m in mats.items()},
        shapes={k: (int(m.shape[-2]), int(m.shape[-1])) for k, m in mats.items()},
    )


#: Gram blocks of the unfoldings computed concurrently by :func:`layer_spectra` (each is converted to
#: float64 on its own): 1 MiB, but at least 256 columns (enough to keep the products efficient).
POOL_BLOCK_BYTES = 2**20
_POOL_BLOCK_COLS = 256


def _pool_block(a: torch.Tensor) -> int:
    return max(POOL_BLOCK_BYTES, 8 * _POOL_BLOCK_COLS * min(int(a.shape[-2]), int(a.shape[-1])))
#: Most unfoldings :func:`layer_spectra` computes at once by default (and never more than torch's threads).
MAX_WORKERS = 4


def _task_bytes(a: torch.Tensor, copied: bool, block_bytes: int) -> int:
    """Peak additional bytes of :func:`_eigenvalues` of ``a`` with ``block_bytes`` blocks: the float64
    Gram matrix and LAPACK's copy of it, one block, and the unfolding itself when it is a copy."""
    g = a.shape[0] if a.dim() == 3 else 1
    small, big = sorted((int(a.shape[-2]), int(a.shape[-1])))
    if _is_exact(a):
        block = min(block_bytes, g * small * big * 8)
    else:
        block = min(block_bytes, g * small * small * 4)
    return 2 * g * small * small * 8 + block + (a.numel() * a.element_size() if copied else 0)


def _default_workers() -> int:
    return max(1, min(MAX_WORKERS, torch.get_num_threads()))


def layer_spectra(
    pairs: Sequence[tuple[LayerInfo, torch.Tensor]],
    workers: int | None = None,
    then: Callable[[np.ndarray, tuple[int, int]], object] | None = None,
    fast: bool = True,
) -> Iterator[tuple[LayerSpectrum, dict[str, object]]]:
    """Spectra of many layers (:func:`layer_spectrum` of each), computed concurrently.

    Parameters
    ----------
    pairs : sequence of (LayerInfo, Tensor)
        Each layer with its module's ``weight``.
    workers : int, optional
        Unfoldings in flight at once (threads); default ``min(MAX_WORKERS, torch.get_num_threads())``.
        ``1`` computes them one after another in the calling thread. CPU tensors only; others are
        always computed one after another.
    then : callable, optional
        ``then(values, shape)`` is applied to every unfolding's spectrum as soon as it is known (on the
        worker that computed it, e.g. :func:`lrviz.vbmf.evbmf`); its results are yielded per mode.

    Returns
    -------
    iterator of (LayerSpectrum, dict)
        In the order of ``pairs``, each as soon as all its modes are done; the dict maps each mode to
        ``then``'s result (empty without ``then``). With several workers the work starts at once, in
        the background (so the caller can do something else meanwhile); ``close()`` the iterator to
        cancel what has not started (it waits for the unfoldings in flight); an error on a worker is
        raised by the iterator.

    The values are those of :func:`layer_spectrum` (same sums, possibly in another order: within
    ~1e-14·σ_max). Unfoldings are formed only when their turn comes (the mode-1 unfolding is a copy),
    and the ones in flight together never need more memory than the largest one alone with
    ``GRAM_BLOCK_BYTES`` blocks.
    """
    pairs = list(pairs)
    tasks = [(i, mode) for i, (l, _) in enumerate(pairs) for mode in _modes(l.kind)]
    if workers is None:
        workers = _default_workers()
    workers = max(1, min(int(workers), len(tasks)))
    if workers > 1 and any(w.device.type != "cpu" for _, w in pairs):
        workers = 1

    def unfold(t):
        l, w = pairs[t[0]]
        return unfolding(w, l.kind, l.groups, t[1])

    def finish(t, ev):
        mat_shape = shapes[t]
        values = _values_from_eigenvalues(ev)
        return values, (then(values, mat_shape) if then is not None else None)

    shapes: dict[tuple[int, str], tuple[int, int]] = {}
    for t in tasks:
        l, w = pairs[t[0]]
        rows, cols = _unfolding_shape(tuple(w.shape), l.kind, l.groups, t[1])
        shapes[t] = (rows, cols)

    def assemble(i, results):
        l = pairs[i][0]
        modes = _modes(l.kind)
        sp = LayerSpectrum(layer=l, values={m: results[(i, m)][0] for m in modes}, shapes={m: shapes[(i, m)] for m in modes})
        return sp, ({m: results[(i, m)][1] for m in modes} if then is not None else {})

    if workers == 1:
        return _serial(pairs, unfold, finish, assemble, fast)
    return _Pool(pairs, tasks, workers, unfold, finish, assemble, fast)


def _unfolding_shape(wshape: tuple[int, ...], kind: str, groups: int, mode: str) -> tuple[int, int]:
    o, i = int(wshape[0]) // max(groups, 1), int(wshape[1])
    k = 1
    for v in wshape[2:]:
        k *= int(v)
    return (i, o * k) if mode == MODE_IN else (o, i * k)


def _serial(pairs, unfold, finish, assemble, fast):
    for i, (l, _) in enumerate(pairs):
        results = {}
        for m in _modes(l.kind):
            results[(i, m)] = finish((i, m), _eigenvalues(unfold((i, m)), fast=fast))
        yield assemble(i, results)


class _Pool:
    """Iterator over the layers of :func:`layer_spectra` computed on worker threads (started at once)."""

    def __init__(self, pairs, tasks, workers, unfold, finish, assemble, fast):
        self._gen, self._cancel = _start_pool(pairs, tasks, workers, unfold, finish, assemble, fast)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def close(self) -> None:
        """Cancel the unfoldings not started yet and wait for the ones in flight."""
        self._cancel()

    def __del__(self):
        cancel = getattr(self, "_cancel", None)
        if cancel is not None:
            cancel()


def _start_pool(pairs, tasks, workers, unfold, finish, assemble, fast):
    """Start ``tasks`` on ``workers`` threads under a memory budget; the returned results yield layers in order."""
    # Budget: the largest single unfolding computed alone with full blocks (what the memory estimate
    # counts). A task starts only while the tasks in flight, itself included, fit in it, or alone.
    def mat_meta(t):
        l, w = pairs[t[0]]
        return w, t[1] == MODE_IN

    def peak(t, block):
        w, copied = mat_meta(t)
        l = pairs[t[0]][0]
        rows, cols = _unfolding_shape(tuple(w.shape), l.kind, l.groups, t[1])
        shape = (l.groups, rows, cols) if l.groups > 1 else (rows, cols)
        probe = torch.empty(shape, dtype=w.dtype, device="meta")
        return _task_bytes(probe, copied, _pool_block(probe) if block is None else block)

    budget = max(peak(t, GRAM_BLOCK_BYTES) for t in tasks)
    need = {t: peak(t, None) for t in tasks}
    work = {t: _work(pairs, t) for t in tasks}
    pending = sorted(tasks, key=lambda t: -work[t])  # longest first: the short ones fill the gaps
    results: dict = {}
    state = {"running": 0, "bytes": 0, "error": None}
    cond = threading.Condition()

    def worker():
        while True:
            with cond:
                while True:
                    if state["error"] is not None or not pending:
                        return
                    t = pending[0]
                    if state["running"] == 0 or state["bytes"] + need[t] <= budget:
                        pending.pop(0)
                        state["running"] += 1
                        state["bytes"] += need[t]
                        break
                    cond.wait()
            try:
                a = unfold(t)
                block = GRAM_BLOCK_BYTES if need[t] >= budget else _pool_block(a)
                res = finish(t, _eigenvalues(a, block_bytes=block, fast=fast))
                del a
            except BaseException as e:  # re-raised in the calling thread
                with cond:
                    state["error"] = state["error"] or e
                    state["running"] -= 1
                    state["bytes"] -= need[t]
                    cond.notify_all()
                return
            with cond:
                results[t] = res
                state["running"] -= 1
                state["bytes"] -= need[t]
                cond.notify_all()

    threads = [threading.Thread(target=worker, name=f"lrviz-spectra-{k}", daemon=True) for k in range(workers)]
    for th in threads:
        th.start()

    def cancel():
        with cond:
            pending.clear()
            cond.notify_all()
        me = threading.current_thread()
        for th in threads:  # the ones in flight finish their unfolding (never left running torch code)
            if th is not me:
                th.join()

    def gen():
        try:
            for i, (l, _) in enumerate(pairs):
                modes = [(i, m) for m in _modes(l.kind)]
                with cond:
                    while state["error"] is None and not all(t in results for t in modes):
                        cond.wait()
                    if state["error"] is not None:
                        raise state["error"]
                    mine = {t: results.pop(t) for t in modes}
                yield assemble(i, mine)
            for th in threads:  # all done: the workers are leaving
                th.join()
        finally:
            cancel()

    return gen(), cancel


def _work(pairs, t) -> float:
    l, w = pairs[t[0]]
    rows, cols = _unfolding_shape(tuple(w.shape), l.kind, l.groups, t[1])
    small, big = sorted((rows, cols))
    return l.groups * small * small * (big + 2 * small)
