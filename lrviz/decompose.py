"""Tucker-2 and truncated-SVD decomposition of layers, with cached, sliceable factors.

Every factor is an orthonormal basis of one channel mode, taken from the eigenvectors of that mode's
Gram matrix in float64 (for a matrix, this is the truncated SVD: projecting onto the top-r left — or
right — singular vectors gives the Eckart–Young optimum). Bases are computed once per layer
(:class:`LayerFactors`) and sorted by decreasing eigenvalue, so a new rank is a slice of them and a
small tensor contraction — not a new decomposition.

Tucker-2 (Kim et al. 2016) of ``W`` ``(C_out, C_in, kh, kw)`` with bases ``U_out`` ``(C_out, C_out)``,
``U_in`` ``(C_in, C_in)``::

    core = W ×₀ U_out[:, :R_out]ᵀ ×₁ U_in[:, :R_in]ᵀ            # (R_out, R_in, kh, kw)
    y    = conv1x1(U_out[:, :R_out]) ∘ conv_kxk(core) ∘ conv1x1(U_in[:, :R_in]ᵀ) (x)

The first 1×1 has no bias and maps zero to zero, so it commutes with the core's padding; stride,
padding, dilation and padding mode stay on the core; the bias moves to the last 1×1. A mode whose
rank equals its channel count gets no factor (it would be a rotation that only costs).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import LrvizError
from .layers import TUCKER2, LayerInfo, find_layers, get_module, set_module

__all__ = [
    "LayerFactors",
    "FactorCache",
    "Tucker2Conv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "factorize",
    "build_layer",
    "compress",
]


class Tucker2Conv2d(nn.Sequential):
    """A k×k conv as ``reduce`` (1×1, C_in→R_in) → ``core`` (k×k) → ``expand`` (1×1, R_out→C_out).

    ``reduce`` or ``expand`` is absent when that mode is kept at full rank.
    """


class LowRankConv2d(nn.Sequential):
    """A 1×1 conv as ``reduce`` (1×1, C_in→r, keeps stride/padding) → ``expand`` (1×1, r→C_out, bias)."""


class LowRankLinear(nn.Sequential):
    """A Linear as ``reduce`` (in→r, no bias) → ``expand`` (r→out, bias)."""


def _sym_eig_desc(g: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric matrix, columns by decreasing eigenvalue, signs fixed.

    Sign convention (as scikit-learn's ``svd_flip``): the largest-magnitude entry of every vector is
    positive, so factors are deterministic.
    """
    _, vecs = torch.linalg.eigh(g)
    vecs = vecs.flip(1)
    idx = vecs.abs().argmax(dim=0)
    signs = torch.sign(vecs[idx, torch.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


@dataclass(eq=False)
class LayerFactors:
    """Full bases of one layer, computed once; :func:`build_layer` slices them for any rank.

    Attributes
    ----------
    layer : LayerInfo
    weight : Tensor
        float64 copy of the weight (CPU).
    bias : Tensor or None
    basis_out : Tensor or None
        Tucker-2: ``U_out`` ``(C_out, C_out)``; SVD with ``m ≤ n``: left singular vectors ``(m, m)``.
    basis_in : Tensor or None
        Tucker-2: ``U_in`` ``(C_in, C_in)``; SVD with ``m > n``: right singular vectors ``(n, n)``.
    module : nn.Module
        Untouched copy of the original layer (returned when the plan keeps it dense).
    """

    layer: LayerInfo
    weight: torch.Tensor
    bias: torch.Tensor | None
    basis_out: torch.Tensor | None
    basis_in: torch.Tensor | None
    module: nn.Module


def factorize(layer: LayerInfo, module: nn.Module) -> LayerFactors:
    """Compute the full bases of a layer (the expensive step; cache the result)."""
    w = module.weight.detach().to("cpu", torch.float64)
    b = None if module.bias is None else module.bias.detach().to("cpu", torch.float64)
    if layer.kind == TUCKER2:
        a0 = w.flatten(1)
        a1 = w.transpose(0, 1).flatten(1)
        u_out = _sym_eig_desc(a0 @ a0.T)
        u_in = _sym_eig_desc(a1 @ a1.T)
    else:
        m = w.flatten(1)
        if m.shape[0] <= m.shape[1]:
            u_out, u_in = _sym_eig_desc(m @ m.T), None
        else:
            u_out, u_in = None, _sym_eig_desc(m.T @ m)
    return LayerFactors(layer, w, b, u_out, u_in, copy.deepcopy(module))


def _check_ranks(layer: LayerInfo, ranks) -> tuple[int, ...]:
    full = layer.full_ranks
    try:
        ranks = tuple(int(r) for r in ranks)
    except (TypeError, ValueError) as e:
        raise LrvizError(f"layer {layer.name!r}: ranks must be integers, got {ranks!r}") from e
    if len(ranks) != len(full):
        want = "(r_out, r_in)" if layer.kind == TUCKER2 else "(r,)"
        raise LrvizError(f"layer {layer.name!r} ({layer.kind}) needs ranks {want}; got {ranks}")
    for r, f in zip(ranks, full):
        if not 1 <= r <= f:
            raise LrvizError(f"layer {layer.name!r}: rank {r} is impossible; allowed 1..{f} (full rank {f})")
    return ranks


def build_layer(f: LayerFactors, ranks: tuple[int, ...], dtype=None, device=None) -> nn.Module:
    """Build the decomposed replacement of a layer at ``ranks`` from cached factors.

    Parameters
    ----------
    f : LayerFactors
    ranks : tuple of int
        ``(R_out, R_in)`` for Tucker-2, ``(r,)`` for SVD. A rank equal to the full rank leaves that mode
        unfactored; all full → a copy of the original layer.
    dtype, device : optional
        Of the new weights (default: those of the original layer).
    """
    layer = f.layer
    ranks = _check_ranks(layer, ranks)
    orig = f.module
    dtype = dtype or orig.weight.dtype
    device = device or orig.weight.device

    def param(t: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(t.to(device=device, dtype=dtype).contiguous())

    w = f.weight
    if layer.kind == TUCKER2:
        c_out, c_in, kh, kw = layer.weight_shape
        r_out, r_in = ranks
        use_out, use_in = r_out < c_out, r_in < c_in
        if not (use_out or use_in):
            return copy.deepcopy(orig)
        core = w
        parts: list[tuple[str, nn.Module]] = []
        if use_in:
            p_in = f.basis_in[:, :r_in]  # (C_in, R_in)
            core = torch.einsum("oikl,is->oskl", core, p_in)
            red = nn.Conv2d(c_in, r_in, 1, bias=False)
            red.weight = param(p_in.T[:, :, None, None])
            parts.append(("reduce", red))
        if use_out:
            p_out = f.basis_out[:, :r_out]  # (C_out, R_out)
            core = torch.einsum("oikl,or->rikl", core, p_out)
        mid = nn.Conv2d(
            core.shape[1],
            core.shape[0],
            (kh, kw),
            stride=orig.stride,
            padding=orig.padding,
            dilation=orig.dilation,
            padding_mode=orig.padding_mode,
            bias=(f.bias is not None and not use_out),
        )
        mid.weight = param(core)
        if mid.bias is not None:
            mid.bias = param(f.bias)
        parts.append(("core", mid))
        if use_out:
            exp = nn.Conv2d(r_out, c_out, 1, bias=f.bias is not None)
            exp.weight = param(p_out[:, :, None, None])
            if f.bias is not None:
                exp.bias = param(f.bias)
            parts.append(("expand", exp))
        return Tucker2Conv2d(OrderedDict(parts))

    # truncated SVD of the (C_out, C_in) matrix: W ≈ U_r·(U_rᵀ·W) or (W·V_r)·V_rᵀ
    m = w.flatten(1)
    n_out, n_in = m.shape
    (r,) = ranks
    if r >= min(n_out, n_in):
        return copy.deepcopy(orig)
    if f.basis_out is not None:
        u = f.basis_out[:, :r]
        first, second = u.T @ m, u  # (r, n_in), (n_out, r)
    else:
        v = f.basis_in[:, :r]
        first, second = v.T, m @ v
    if layer.kind == "svd_linear":
        red = nn.Linear(n_in, r, bias=False)
        exp = nn.Linear(r, n_out, bias=f.bias is not None)
        red.weight = param(first)
        exp.weight = param(second)
        cls = LowRankLinear
    else:
        red = nn.Conv2d(n_in, r, 1, stride=orig.stride, padding=orig.padding, padding_mode=orig.padding_mode, bias=False)
        exp = nn.Conv2d(r, n_out, 1, bias=f.bias is not None)
        red.weight = param(first[:, :, None, None])
        exp.weight = param(second[:, :, None, None])
        cls = LowRankConv2d
    if f.bias is not None:
        exp.bias = param(f.bias)
    return cls(OrderedDict([("reduce", red), ("expand", exp)]))


class FactorCache:
    """Lazily computed :class:`LayerFactors` of one model, keyed by layer name.

    The cache takes a private deep copy of the model's decomposable layers as they are when first
    factorised; it never modifies the model. Thread-safe (Streamlit runs sessions in threads).
    """

    def __init__(self, model: nn.Module):
        self._model = model
        self._layers = {l.name: l for l in find_layers(model)[0]}
        self._factors: dict[str, LayerFactors] = {}
        self._lock = threading.Lock()

    @property
    def layers(self) -> dict[str, LayerInfo]:
        return dict(self._layers)

    def get(self, name: str) -> LayerFactors:
        with self._lock:
            f = self._factors.get(name)
            if f is None:
                if name not in self._layers:
                    raise LrvizError(f"layer {name!r} is not decomposable; decomposable: {sorted(self._layers)[:8]}...")
                f = factorize(self._layers[name], get_module(self._model, name))
                self._factors[name] = f
            return f

    def __contains__(self, name: str) -> bool:
        return name in self._factors


def compress(model: nn.Module, plan, factors: FactorCache | None = None, progress=None) -> nn.Module:
    """Return a new model with every planned layer decomposed; ``model`` is never modified.

    Parameters
    ----------
    model : nn.Module
    plan : RankPlan
        Layers not in the plan, or at full rank on every mode, stay dense.
    factors : FactorCache, optional
        Reuse factors across calls (a new rank is then a slice). Must belong to ``model``.
    progress : callable, optional
        ``progress(done, total, name)`` after each layer.
    """
    factors = factors or FactorCache(model)
    new = copy.deepcopy(model)
    known = factors.layers
    todo = [lp for lp in plan.layers if not lp.is_dense]
    for i, lp in enumerate(todo):
        info = known.get(lp.name)
        if info is None:
            raise LrvizError(f"plan layer {lp.name!r} is not a decomposable layer of this model")
        if info.weight_shape != tuple(lp.weight_shape):
            raise LrvizError(
                f"plan layer {lp.name!r} has weight shape {tuple(lp.weight_shape)} but the model's is "
                f"{info.weight_shape}: the plan was made for another architecture"
            )
        set_module(new, lp.name, build_layer(factors.get(lp.name), lp.ranks))
        if progress is not None:
            progress(i + 1, len(todo), lp.name)
    return new
