"""Decompositions of a k×k conv beside Tucker-2: CP (canonical polyadic) and spatial SVD.

Both apply to an ungrouped ``nn.Conv2d`` with a kernel larger than 1×1 (a Tucker-2 layer) and take one
rank ``R``. A plan selects them per layer (:attr:`lrviz.plan.LayerPlan.method`).

**CP** (Lebedev et al. 2015; as in PTD, MUSCO, tensorly-torch). The kernel ``W`` ``(C_out, C_in, kh,
kw)`` is approximated by a sum of ``R`` rank-one tensors, ``W ≈ Σ_r a_r ∘ b_r ∘ c_r ∘ d_r``, fitted by
alternating least squares (:func:`cp_als`, float64, seeded, initialised from the leading singular
vectors of each unfolding). The conv becomes four::

    1×1 (C_in → R, B ᵀ)  →  kh×1 depthwise (R, C; stride/padding/dilation of the rows)
      →  1×kw depthwise (R, D; of the columns)  →  1×1 (R → C_out, A, the bias)

Params ``R·(C_in + kh + kw + C_out)``. CP is not nested (the best rank-R fit is no slice of the best
rank-(R+1) one), so each rank is its own fit, and the fit is a local optimum: it is exact only where
the tensor has an exact CP of rank R that ALS finds (tested on tensors built as one). Its largest
useful rank is the break-even one, ``⌈C_out·C_in·kh·kw / (C_out + C_in + kh + kw)⌉`` (more would not
save params); a plan at that rank keeps the layer dense.

**Spatial SVD** (Jaderberg et al. 2014; as AIMET does). The kernel reshaped to the matrix
``M[(c, y), (o, x)] = W[o, c, y, x]`` of shape ``(C_in·kh, C_out·kw)`` is truncated by SVD, which is
nested (a new rank is a slice) and exact at ``min(C_in·kh, C_out·kw)``::

    kh×1 conv (C_in → R; stride/padding/dilation of the rows)  →  1×kw conv (R → C_out; of the columns, the bias)

Params ``R·(C_in·kh + C_out·kw)``; its singular values are the layer's spectrum for this method
(:func:`spatial_spectrum`), like the Tucker-2 unfoldings' are for Tucker-2.

Both splits are exact rewrites of the padding: a 1×1 conv without bias and a conv along one axis
commute with padding the other axis (zeros, reflect, replicate or circular), so the rows' padding goes
to the row conv and the columns' to the column conv. Costs are closed forms (:func:`method_params`,
:func:`method_call_macs`), tested against ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import LrvizError
from .layers import TUCKER2, LayerInfo

__all__ = ["CP", "SPATIAL", "TUCKER", "METHODS", "CPConv2d", "SpatialConv2d", "check_method", "method_max_rank",
           "method_params", "method_call_macs", "cp_als", "CPFactors", "spatial_svd", "spatial_spectrum", "build_cp", "build_spatial",
           "rank_for_params", "tucker2_error", "spatial_error", "equal_size"]

TUCKER, CP, SPATIAL = "tucker2", "cp", "spatial"
#: Per-layer decompositions a plan can select for a k×k conv ("" in a plan = the layer's own kind).
METHODS = (TUCKER, CP, SPATIAL)
_ALS_ITERS = 150


class CPConv2d(nn.Sequential):
    """A k×k conv as ``reduce`` (1×1, C_in→R) → ``rows`` (kh×1 depthwise) → ``cols`` (1×kw depthwise) →
    ``expand`` (1×1, R→C_out, bias)."""


class SpatialConv2d(nn.Sequential):
    """A k×k conv as ``rows`` (kh×1, C_in→R) → ``cols`` (1×kw, R→C_out, bias)."""


def check_method(layer: LayerInfo, method: str) -> str:
    """``method`` if ``layer`` can use it, else :class:`LrvizError` (one line naming both)."""
    if method not in METHODS:
        raise LrvizError(f"layer {layer.name!r}: unknown decomposition {method!r}; allowed: {', '.join(METHODS)}")
    if method == TUCKER:
        if layer.kind != TUCKER2:
            raise LrvizError(f"layer {layer.name!r} ({layer.kind}) has a 1x1 kernel or is a Linear: only its SVD applies")
        return method
    if layer.kind != TUCKER2:
        raise LrvizError(f"layer {layer.name!r} ({layer.kind}): {method} needs a conv with a kernel larger than 1x1")
    if layer.groups != 1:
        raise LrvizError(f"layer {layer.name!r} is a grouped conv ({layer.groups} groups): {method} applies to "
                         "ungrouped convs only; use Tucker-2")
    return method


def method_max_rank(layer: LayerInfo, method: str) -> int:
    """The rank from which the layer stays dense: spatial SVD's exact rank ``min(C_in·kh, C_out·kw)``;
    CP's break-even rank (no more params than the dense kernel)."""
    o, i, kh, kw = (int(v) for v in layer.group_shape)
    if method == SPATIAL:
        return min(i * kh, o * kw)
    if method == CP:
        return math.ceil(o * i * kh * kw / (o + i + kh + kw))
    raise LrvizError(f"no single-rank form for decomposition {method!r}")


def method_params(layer: LayerInfo, method: str, rank: int) -> int:
    """Parameters of ``layer`` decomposed by ``method`` at ``rank`` (bias included)."""
    o, i, kh, kw = (int(v) for v in layer.group_shape)
    bias = o if layer.bias else 0
    if method == SPATIAL:
        return rank * (i * kh + o * kw) + bias
    return rank * (i + kh + kw + o) + bias


def _out_len(n: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


def method_call_macs(layer: LayerInfo, method: str, rank: int, batch: int, in_hw, out_hw) -> int:
    """MACs of one call of the decomposed layer on a ``batch × C_in × in_hw`` input (``out_hw`` its output)."""
    o, i, kh, kw = (int(v) for v in layer.group_shape)
    (h_in, w_in), (h_out, w_out) = in_hw, out_hw
    mid = batch * h_out * w_in  # after the row conv: output rows, input columns
    out = batch * h_out * w_out
    if method == SPATIAL:
        return mid * rank * i * kh + out * o * rank * kw
    return batch * h_in * w_in * i * rank + mid * rank * kh + out * rank * kw + out * o * rank


def rank_for_params(layer: LayerInfo, method: str, params: int) -> int:
    """The largest rank of ``method`` with at most ``params`` parameters (at least 1)."""
    per = method_params(layer, method, 1) - (method_params(layer, method, 0))
    bias = method_params(layer, method, 0)
    return max(1, min(method_max_rank(layer, method), (int(params) - bias) // per))


# --- CP by alternating least squares ------------------------------------------------------------

@dataclass(eq=False)
class CPFactors:
    """A rank-R CP of a kernel: ``W ≈ Σ_r A[:, r] ∘ B[:, r] ∘ C[:, r] ∘ D[:, r]`` (float64), and its
    relative error ``‖W − Ŵ‖_F / ‖W‖_F``."""

    A: torch.Tensor  # (C_out, R), carries the weights of the rank-one terms
    B: torch.Tensor  # (C_in, R)
    C: torch.Tensor  # (kh, R)
    D: torch.Tensor  # (kw, R)
    rel_error: float
    iterations: int

    def full(self) -> torch.Tensor:
        return torch.einsum("or,ir,yr,xr->oiyx", self.A, self.B, self.C, self.D)


def _khatri_rao(mats: list[torch.Tensor]) -> torch.Tensor:
    """Column-wise Kronecker product, the first matrix's index varying slowest."""
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[1])
    return out


def _unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def cp_als(weight: torch.Tensor, rank: int, *, iters: int = _ALS_ITERS, tol: float = 1e-7, seed: int = 0) -> CPFactors:
    """Rank-``rank`` CP of a 4-D kernel by alternating least squares (float64).

    Initialised with the leading left singular vectors of each unfolding (seeded random columns where the
    rank exceeds a mode's size); stops when the relative error improves by less than ``tol``.
    """
    w = weight.detach().to("cpu", torch.float64)
    if w.dim() != 4 or rank < 1:
        raise LrvizError(f"CP needs a 4-D kernel and a rank >= 1; got shape {tuple(w.shape)}, rank {rank}")
    gen = torch.Generator().manual_seed(int(seed))
    norm = float(torch.linalg.vector_norm(w)) or 1.0
    factors = []
    for mode in range(4):
        u = torch.linalg.svd(_unfold(w, mode), full_matrices=False)[0]
        k = min(rank, u.shape[1])
        f = torch.randn(w.shape[mode], rank, generator=gen, dtype=torch.float64)
        f[:, :k] = u[:, :k]
        factors.append(f)
    unfolded = [_unfold(w, m) for m in range(4)]
    err, prev, it = 1.0, math.inf, 0
    for it in range(1, iters + 1):
        for mode in range(4):
            others = [factors[m] for m in range(4) if m != mode]
            gram = torch.ones(rank, rank, dtype=torch.float64)
            for f in others:
                gram = gram * (f.T @ f)
            mttkrp = unfolded[mode] @ _khatri_rao(others)
            # least squares for this factor; a tiny ridge keeps the solve defined when columns coincide
            ridge = 1e-12 * float(gram.diagonal().mean()) * torch.eye(rank, dtype=torch.float64)
            factors[mode] = torch.linalg.solve(gram + ridge, mttkrp.T).T
            if mode < 3:  # keep the scale in the output factor
                scale = torch.linalg.vector_norm(factors[mode], dim=0).clamp_min(1e-300)
                factors[mode] = factors[mode] / scale
                factors[3 if mode != 3 else 0] = factors[3 if mode != 3 else 0] * scale
        a, b, c, d = factors
        err = float(torch.linalg.vector_norm(w - torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d))) / norm
        if prev - err < tol:
            break
        prev = err
    # the weights of the rank-one terms go to A (the expand 1x1)
    a, b, c, d = factors
    for m in (1, 2, 3):
        s = torch.linalg.vector_norm(factors[m], dim=0).clamp_min(1e-300)
        factors[m] = factors[m] / s
        a = a * s
    return CPFactors(a, factors[1], factors[2], factors[3], err, it)


# --- spatial SVD ---------------------------------------------------------------------------------

def _spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``M[(c, y), (o, x)] = W[o, c, y, x]``, shape ``(C_in·kh, C_out·kw)``, float64."""
    w = weight.detach().to("cpu", torch.float64)
    o, i, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def spatial_svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, Vh`` of the spatial matrix (float64, singular values descending)."""
    return torch.linalg.svd(_spatial_matrix(weight), full_matrices=False)


def spatial_spectrum(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of the spatial-SVD matrix ``(C_in·kh, C_out·kw)`` of a kernel, descending."""
    return torch.linalg.svdvals(_spatial_matrix(weight))


# --- one layer, three forms, equal size ---------------------------------------------------------

def tucker2_error(weight: torch.Tensor, r_out: int, r_in: int) -> float:
    """Relative kernel error ``‖W − W ×₀ P_out ×₁ P_in‖ / ‖W‖`` of weight-only Tucker-2 at ``(r_out, r_in)``
    (``P`` = projection on the leading left singular vectors of the mode's unfolding)."""
    w = weight.detach().to("cpu", torch.float64)
    u_out = torch.linalg.svd(_unfold(w, 0), full_matrices=False)[0][:, :r_out]
    u_in = torch.linalg.svd(_unfold(w, 1), full_matrices=False)[0][:, :r_in]
    approx = torch.einsum("oikl,or,pr,is,qs->pqkl", w, u_out, u_out, u_in, u_in)
    return float(torch.linalg.vector_norm(w - approx) / torch.linalg.vector_norm(w).clamp_min(1e-300))


def spatial_error(weight: torch.Tensor, rank: int) -> float:
    """Relative kernel error of spatial SVD at ``rank`` (Eckart–Young: the discarded singular values)."""
    s = spatial_spectrum(weight)
    return float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt().clamp_min(1e-300))


def equal_size(layer: LayerInfo, weight: torch.Tensor, tucker_ranks: tuple[int, int], cp_error: bool = False) -> list[dict]:
    """The layer at the params of its Tucker-2 ranks in each form: ``method, rank, params, rel_error`` (the
    kernel's relative Frobenius error; CP's only with ``cp_error``, as it needs an ALS fit)."""
    from .cost import layer_params

    check_method(layer, CP)
    params = layer_params(layer, tuple(tucker_ranks))
    rows = [{"method": TUCKER, "rank": f"{tucker_ranks[0]}, {tucker_ranks[1]}", "params": params,
             "rel_error": tucker2_error(weight, *tucker_ranks)}]
    for method in (SPATIAL, CP):
        r = rank_for_params(layer, method, params)
        err = None
        if method == SPATIAL:
            err = spatial_error(weight, r)
        elif cp_error:
            err = cp_als(weight, r).rel_error
        rows.append({"method": method, "rank": str(r), "params": method_params(layer, method, r), "rel_error": err})
    return rows


# --- modules -------------------------------------------------------------------------------------

def _geometry(module: nn.Conv2d):
    from .layers import _padding_of

    kh, kw = module.kernel_size
    if isinstance(module.padding, str) and module.padding == "same" and (kh % 2 == 0 or kw % 2 == 0):
        raise LrvizError("padding='same' with an even kernel pads unevenly: CP / spatial SVD cannot split it; use Tucker-2")
    (sh, sw), (ph, pw), (dh, dw) = module.stride, _padding_of(module), module.dilation
    return (sh, sw), (ph, pw), (dh, dw)


def _conv(c_in, c_out, kernel, weight, bias, param, **geo) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, bias=bias is not None, device="meta", **geo)
    conv.weight = param(weight)
    if bias is not None:
        conv.bias = param(bias)
    return conv


def _meta_or(t: torch.Tensor | None, shape) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=torch.float64) if t is None else t


def build_cp(module: nn.Conv2d, factors: CPFactors | None, rank: int, param) -> CPConv2d:
    """The CP form of ``module`` from ``factors`` (None: shapes only, on the meta device)."""
    o, i, kh, kw = module.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _geometry(module)
    mode = module.padding_mode
    f = factors
    A = _meta_or(None if f is None else f.A, (o, rank))
    B = _meta_or(None if f is None else f.B, (i, rank))
    C = _meta_or(None if f is None else f.C, (kh, rank))
    D = _meta_or(None if f is None else f.D, (kw, rank))
    bias = None if module.bias is None else module.bias.detach()
    return CPConv2d(OrderedDict([
        ("reduce", _conv(i, rank, 1, B.T.reshape(rank, i, 1, 1), None, param)),
        ("rows", _conv(rank, rank, (kh, 1), C.T.reshape(rank, 1, kh, 1), None, param, stride=(sh, 1), padding=(ph, 0),
                       dilation=(dh, 1), groups=rank, padding_mode=mode)),
        ("cols", _conv(rank, rank, (1, kw), D.T.reshape(rank, 1, 1, kw), None, param, stride=(1, sw), padding=(0, pw),
                       dilation=(1, dw), groups=rank, padding_mode=mode)),
        ("expand", _conv(rank, o, 1, A.reshape(o, rank, 1, 1), bias, param)),
    ]))


def build_spatial(module: nn.Conv2d, svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, rank: int, param) -> SpatialConv2d:
    """The spatial-SVD form of ``module`` at ``rank`` from :func:`spatial_svd` (None: shapes only)."""
    o, i, kh, kw = module.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _geometry(module)
    mode = module.padding_mode
    if svd is None:
        rows = torch.empty((rank, i, kh, 1), device="meta")
        cols = torch.empty((o, rank, 1, kw), device="meta")
    else:
        u, s, vh = svd
        root = s[:rank].sqrt()
        rows = (u[:, :rank] * root).T.reshape(rank, i, kh, 1)  # V[r, c, y] = U[(c, y), r]·√s_r
        cols = (root[:, None] * vh[:rank]).reshape(rank, o, kw).permute(1, 0, 2).reshape(o, rank, 1, kw)
    bias = None if module.bias is None else module.bias.detach()
    return SpatialConv2d(OrderedDict([
        ("rows", _conv(i, rank, (kh, 1), rows, None, param, stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                       padding_mode=mode)),
        ("cols", _conv(rank, o, (1, kw), cols, bias, param, stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                       padding_mode=mode)),
    ]))
