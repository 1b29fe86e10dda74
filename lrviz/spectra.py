"""Singular spectra of layer weights.

For a k×k conv kernel ``W`` of shape ``(C_out, C_in, kh, kw)`` lrviz uses the two channel-mode
unfoldings of Tucker-2 (Kim et al. 2016):

* mode-0: ``W.flatten(1)``                 — ``C_out × (C_in·kh·kw)``, its rank bounds R_out;
* mode-1: ``W.transpose(0, 1).flatten(1)`` — ``C_in × (C_out·kh·kw)``, its rank bounds R_in.

A 1×1 conv or a Linear is the matrix ``C_out × C_in`` (``"matrix"``).

Only singular values are needed for spectra and EVBMF, so they are computed as the square roots of the
eigenvalues of the smaller Gram matrix ``A·Aᵀ`` (or ``Aᵀ·A``) in float64 — far cheaper than an SVD of the
unfolding and, in float64, accurate to about ``1e-8·σ_max`` (ample for ranks, energies and noise
estimates; the decomposition itself uses eigenvectors of the same Gram matrices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import TUCKER2, LayerInfo

__all__ = ["LayerSpectrum", "unfoldings", "singular_values", "energy_curve", "energy_rank", "layer_spectrum"]


def unfoldings(weight: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """Matrices whose singular values describe a layer.

    Parameters
    ----------
    weight : Tensor
        ``(C_out, C_in, kh, kw)`` for convs, ``(out_features, in_features)`` for Linear.
    kind : str
        ``"tucker2"`` → ``{"mode0", "mode1"}``; otherwise ``{"matrix"}``.
    """
    w = weight.detach()
    if kind == TUCKER2:
        return {"mode0": w.flatten(1), "mode1": w.transpose(0, 1).flatten(1)}
    return {"matrix": w.flatten(1)}


GRAM_FP64_MAX_WORK = 5e9  # multiply-adds; larger products (e.g. VGG's 4096×25088 head) use a float32 product


def gram(a: torch.Tensor) -> torch.Tensor:
    """Smaller Gram matrix of ``a`` as float64: ``a·aᵀ`` if rows ≤ cols else ``aᵀ·a``.

    The product is accumulated in float64, except for very large matrices (work above
    ``GRAM_FP64_MAX_WORK``) where it is formed in float32 (≈2× faster) and then promoted; singular
    values below ~1e-3·σ_max of such matrices are then only approximate.
    """
    small, big = sorted(a.shape)
    dt = torch.float64 if small * small * big <= GRAM_FP64_MAX_WORK else torch.float32
    a = a.to(dt)
    g = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return g.to(torch.float64)


def singular_values(a: torch.Tensor) -> np.ndarray:
    """Singular values of a matrix, descending, as float64 numpy (length ``min(a.shape)``).

    Computed from the eigenvalues of the smaller Gram matrix (see module docstring).
    """
    ev = torch.linalg.eigvalsh(gram(a))
    ev = torch.clamp(ev, min=0.0).flip(0)
    return ev.sqrt().cpu().numpy()


def energy_curve(s: np.ndarray) -> np.ndarray:
    """Retained energy ``Σ_{i≤r} s_i² / Σ s_i²`` for r = 1..len(s) (1.0 at full rank)."""
    s2 = np.asarray(s, dtype=np.float64) ** 2
    tot = s2.sum()
    if tot <= 0:
        return np.ones_like(s2)
    return np.cumsum(s2) / tot


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
        ``{"mode0": ..., "mode1": ...}`` (Tucker-2) or ``{"matrix": ...}``; descending float64.
    shapes : dict[str, tuple[int, int]]
        Shape ``(rows, cols)`` of each unfolding (needed by EVBMF).
    """

    layer: LayerInfo
    values: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def modes(self) -> list[str]:
        return list(self.values)


def layer_spectrum(layer: LayerInfo, weight: torch.Tensor) -> LayerSpectrum:
    """Spectrum of one layer's weight (see :func:`unfoldings`)."""
    mats = unfoldings(weight, layer.kind)
    return LayerSpectrum(
        layer=layer,
        values={k: singular_values(m) for k, m in mats.items()},
        shapes={k: (int(m.shape[0]), int(m.shape[1])) for k, m in mats.items()},
    )
