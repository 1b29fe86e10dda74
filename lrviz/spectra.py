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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import MODE_IN, MODE_MATRIX, MODE_OUT, TUCKER2, LayerInfo

__all__ = ["LayerSpectrum", "unfoldings", "singular_values", "energy_curve", "retained_energy", "energy_rank", "layer_spectrum"]


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
    w = weight.detach()
    if groups > 1:
        w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])  # (G, C_out/G, C_in/G, kh, kw)
        if kind == TUCKER2:
            return {MODE_OUT: w.flatten(2), MODE_IN: w.transpose(1, 2).flatten(2)}
        return {MODE_MATRIX: w.flatten(2)}
    if kind == TUCKER2:
        return {MODE_OUT: w.flatten(1), MODE_IN: w.transpose(0, 1).flatten(1)}
    return {MODE_MATRIX: w.flatten(1)}


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


def gram(a: torch.Tensor) -> torch.Tensor:
    """Smaller Gram matrix of ``a`` as float64: ``a·aᵀ`` if rows ≤ cols else ``aᵀ·a``.

    ``a`` is a matrix or a stack ``(G, rows, cols)`` of matrices (one Gram matrix each). The product is
    accumulated in float64, except for very large matrices (work above ``GRAM_FP64_MAX_WORK``) where
    it is formed in float32 (≈2× faster) and then promoted; singular values below ~1e-3·σ_max of such
    matrices are then only approximate. Computed block by block (:func:`row_gram`): no float64 copy
    of the unfolding is made.
    """
    rows, cols = a.shape[-2], a.shape[-1]
    small, big = sorted((rows, cols))
    batch = a.shape[0] if a.dim() == 3 else 1
    x = a if rows <= cols else a.transpose(-2, -1)
    return row_gram(x, exact=batch * small * small * big <= GRAM_FP64_MAX_WORK)


def singular_values(a: torch.Tensor) -> np.ndarray:
    """Singular values of a matrix, descending, as float64 numpy (length ``min(rows, cols)``).

    Computed from the eigenvalues of the smaller Gram matrix (see module docstring). For a stack
    ``(G, rows, cols)`` of per-group matrices: their root-mean-square spectrum
    ``sqrt(mean_g σ_i(A_g)²)`` (see the module docstring for why).
    """
    ev = torch.linalg.eigvalsh(gram(a))
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


def layer_spectrum(layer: LayerInfo, weight: torch.Tensor) -> LayerSpectrum:
    """Spectrum of one layer's weight (the module's ``weight``; see :func:`unfoldings`)."""
    mats = unfoldings(weight, layer.kind, layer.groups)
    return LayerSpectrum(
        layer=layer,
        values={k: singular_values(m) for k, m in mats.items()},
        shapes={k: (int(m.shape[-2]), int(m.shape[-1])) for k, m in mats.items()},
    )
