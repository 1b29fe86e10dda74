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

Grouped convs (``groups = G``) are decomposed per group: group ``g``'s kernel ``W_g`` ``(C_out/G,
C_in/G, kh, kw)`` gets its own bases ``U_out,g``, ``U_in,g`` and its own core, all groups truncated to
the same per-group ranks ``(R_out, R_in)``. Because the groups never mix, the three factors are again
grouped convs with ``groups=G``: reduce (C_in → G·R_in), core (G·R_in → G·R_out, the original
geometry) and expand (G·R_out → C_out); group ``g`` of each holds group ``g``'s factor. A grouped 1×1
conv becomes two grouped 1×1 convs through G·r channels. For ``G = 1`` this is the ordinary
decomposition.

A :class:`FactorCache` belongs to one model: it records a fingerprint of that model's decomposable
weights (:func:`weights_fingerprint`) and :func:`compress` refuses a cache whose fingerprint does not
match the model it is given.

Models on the ``meta`` device (no values) decompose structurally: every factor has its true shape and
no values, which is enough to count the params and MACs of a plan on a model too large to build.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import LrvizError
from .layers import SVD_LINEAR, TUCKER2, LayerInfo, find_layers, get_module, set_module
from .memory import check_memory, estimate_compress
from .spectra import GRAM_BLOCK_BYTES, row_gram

__all__ = [
    "LayerFactors",
    "FactorCache",
    "Tucker2Conv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "factorize",
    "build_layer",
    "compress",
    "compress_structure",
    "weights_fingerprint",
]


class Tucker2Conv2d(nn.Sequential):
    """A k×k conv as ``reduce`` (1×1, C_in→R_in) → ``core`` (k×k) → ``expand`` (1×1, R_out→C_out).

    ``reduce`` or ``expand`` is absent when that mode is kept at full rank. For a grouped conv all
    three are grouped convs (``groups=G``, G·R_in and G·R_out channels in between).
    """


class LowRankConv2d(nn.Sequential):
    """A 1×1 conv as ``reduce`` (1×1, C_in→r, keeps stride/padding) → ``expand`` (1×1, r→C_out, bias).

    For a grouped conv both are grouped (``groups=G``, G·r channels in between).
    """


class LowRankLinear(nn.Sequential):
    """A Linear as ``reduce`` (in→r, no bias) → ``expand`` (r→out, bias)."""


def _sym_eig_desc(g: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of symmetric matrices ``(..., n, n)``, columns by decreasing eigenvalue, signs fixed.

    Sign convention (as scikit-learn's ``svd_flip``): the largest-magnitude entry of every vector is
    positive, so factors are deterministic.
    """
    _, vecs = torch.linalg.eigh(g)
    vecs = vecs.flip(-1)
    idx = vecs.abs().argmax(dim=-2, keepdim=True)  # (..., 1, n): row of each column's largest entry
    signs = torch.sign(torch.gather(vecs, -2, idx))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vecs * signs


@dataclass(eq=False)
class LayerFactors:
    """Full bases of one layer, computed once; :func:`build_layer` slices them for any rank.

    Attributes
    ----------
    layer : LayerInfo
    weight : Tensor
        The module's weight (CPU, in its own dtype: that of the private copy ``module``; promoted to
        float64 block by block where it is used), ``(C_out, C_in/G, kh, kw)`` or ``(out, in)``.
    bias : Tensor or None
    basis_out : Tensor or None
        Tucker-2: ``U_out`` ``(C_out, C_out)``; SVD with ``m ≤ n``: left singular vectors ``(m, m)``.
        Grouped convs: one per group, ``(G, C_out/G, C_out/G)`` (resp. ``(G, m, m)`` per-group).
    basis_in : Tensor or None
        Tucker-2: ``U_in`` ``(C_in, C_in)``; SVD with ``m > n``: right singular vectors ``(n, n)``.
        Grouped convs: ``(G, C_in/G, C_in/G)`` (resp. ``(G, n, n)``).
    module : nn.Module
        Untouched copy of the original layer (returned when the plan keeps it dense).
    reduce_in : Tensor or None
        Data-aware Tucker-2 only: the input mode's reduce matrix ``Rᵀ`` (columns = the rows of the 1×1
        ``reduce`` conv), paired with ``basis_in`` = ``B`` (what the core contracts with): the input
        channels are approximated by the oblique projection ``B[:, :r] R[:r]``. None: ``R = Bᵀ`` (the
        orthogonal projection of the weight-only factors).
    data_aware : bool
        Whether the bases come from input statistics (:mod:`lrviz.activations`).
    project_out : Tensor or None
        Data-aware with an output scale ``D`` (the following BatchNorm's gain): the output mode keeps
        ``y ≈ E Pᵀ y`` with ``basis_out`` = ``E = D⁻¹U`` (the ``expand`` weights) and ``project_out`` =
        ``P = D U`` (what the core is projected with). None: ``P = E`` (an orthogonal projection).
    """

    layer: LayerInfo
    weight: torch.Tensor
    bias: torch.Tensor | None
    basis_out: torch.Tensor | None
    basis_in: torch.Tensor | None
    module: nn.Module
    reduce_in: torch.Tensor | None = None
    data_aware: bool = False
    project_out: torch.Tensor | None = None
    mean_in: torch.Tensor | None = None


def _grouped(w: torch.Tensor, layer: LayerInfo) -> torch.Tensor:
    """The module weight as a stack of per-group kernels ``(G, C_out/G, C_in/G, ...)``."""
    return w.reshape(layer.groups, *layer.group_shape)


def _mm64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float64 for stacks ``(G, p, q) @ (G, q, s)``, one of them in a lower precision
    (the layer's weight): it is promoted one block at a time (columns of ``b`` or rows of ``a``), so
    no float64 copy of the whole weight is made. Same products as promoting it first."""
    out = torch.empty(a.shape[0], a.shape[1], b.shape[2], dtype=torch.float64, device=a.device)
    if b.dtype != torch.float64:
        step = max(1, GRAM_BLOCK_BYTES // (8 * b.shape[0] * max(b.shape[1], 1)))
        for k in range(0, b.shape[2], step):
            out[..., k : k + step] = a.to(torch.float64) @ b[..., k : k + step].to(torch.float64)
    else:
        step = max(1, GRAM_BLOCK_BYTES // (8 * a.shape[0] * max(a.shape[2], 1)))
        for j in range(0, a.shape[1], step):
            out[:, j : j + step] = a[:, j : j + step].to(torch.float64) @ b
    return out


def _per_group(b: torch.Tensor | None, layer: LayerInfo) -> torch.Tensor | None:
    """A stored basis as ``(G, n, n)`` (stored ``(n, n)`` when ``G == 1``)."""
    if b is None or layer.groups > 1:
        return b
    return b.unsqueeze(0)


def _stored(b: torch.Tensor | None, layer: LayerInfo) -> torch.Tensor | None:
    if b is None or layer.groups > 1:
        return b
    return b[0]


def factorize(layer: LayerInfo, module: nn.Module, second_moment: torch.Tensor | None = None,
              out_scale: torch.Tensor | None = None, mean: torch.Tensor | None = None) -> LayerFactors:
    """Compute the full bases of a layer (the expensive step; cache the result).

    Parameters
    ----------
    layer : LayerInfo
        As found by :func:`lrviz.find_layers` for ``module``.
    module : nn.Module
        The ``nn.Conv2d`` / ``nn.Linear`` itself (not modified).
    second_moment : Tensor, optional
        ``C = E[x xᵀ]`` of the layer's input channels (:func:`lrviz.activations.input_statistics`):
        data-aware bases whose truncation minimises the error of the layer's output on such inputs
        (:func:`_data_aware`). None (and for grouped convolutions): the weight-only bases.
    out_scale : Tensor, optional
        With ``second_moment``: per output channel, the gain the error meets next (a BatchNorm's).
    """
    if second_moment is not None and layer.groups == 1:
        return _data_aware(layer, module, second_moment, out_scale, mean)
    if tuple(module.weight.shape) != layer.module_weight_shape:
        raise LrvizError(
            f"layer {layer.name!r}: the module's weight is {tuple(module.weight.shape)} but the layer info says "
            f"{layer.module_weight_shape}; call find_layers on this model again"
        )
    dev = "meta" if module.weight.is_meta else "cpu"
    private = copy.deepcopy(module)
    # the private copy's weight in its own dtype: promoted to float64 block by block where it is used
    # (Gram matrices here, contractions in build_layer), so no float64 copy of it is kept (memory)
    w = private.weight.detach().to(dev)
    b = None if module.bias is None else module.bias.detach().to(dev, torch.float64)
    wg = _grouped(w, layer)  # (G, o, i, kh, kw) or (1, m, n) for a Linear
    if layer.kind == TUCKER2:
        unfold_out = wg.flatten(2)  # the "out" (mode-0) unfolding of every group: (G, o, i·kh·kw)
        unfold_in = wg.transpose(1, 2).flatten(2)  # the "in" (mode-1) unfolding: (G, i, o·kh·kw)
        u_out = _sym_eig_desc(row_gram(unfold_out))
        u_in = _sym_eig_desc(row_gram(unfold_in))
    else:
        m = wg.flatten(2)  # (G, m, n)
        if m.shape[1] <= m.shape[2]:
            u_out, u_in = _sym_eig_desc(row_gram(m)), None
        else:
            u_out, u_in = None, _sym_eig_desc(row_gram(m.transpose(1, 2)))
    return LayerFactors(layer, w, b, _stored(u_out, layer), _stored(u_in, layer), private)


def _data_aware(layer: LayerInfo, module: nn.Module, second_moment: torch.Tensor, out_scale: torch.Tensor | None = None,
                mean: torch.Tensor | None = None) -> LayerFactors:
    """Bases chosen from the input statistics ``C = L Lᵀ`` (Cholesky; a tiny ridge only when ``C`` is
    singular) and the output gain ``D`` (the next BatchNorm's; identity without one), so that truncation
    minimises the expected squared error of the layer's scaled output ``D y``. With ``W̃ = D W``:

    * matrix (Linear, 1×1 conv): ``U`` = the leading eigenvectors of ``W̃ C W̃ᵀ``; ``W ≈ D⁻¹U_r U_rᵀ D W``
      is the best rank-r map for inputs with second moment ``C``, measured after ``D``.
    * Tucker-2, output mode: the same ``U`` from ``Σ_kl W̃_kl C W̃_klᵀ`` (the scaled outputs' second
      moment when pixels are uncorrelated), kept as the oblique projection ``D⁻¹U_r U_rᵀ D``; input mode:
      ``V`` = the eigenvectors of ``Lᵀ Ã Ãᵀ L`` (``Ã`` = the mode-1 unfolding of ``W̃``), ``B = L V``,
      ``R = Vᵀ L⁻¹``: the oblique projection ``B_r R_r`` of the input channels whose loss hurts the
      output least.

    With ``C = I`` and no output gain these are exactly the weight-only bases (tested)."""
    from .activations import whitening

    private = copy.deepcopy(module)
    w = private.weight.detach().cpu()
    b = None if module.bias is None else module.bias.detach().to("cpu", torch.float64)
    c = second_moment.to(torch.float64)
    n_in, n_out = layer.module_weight_shape[1], layer.module_weight_shape[0]
    if tuple(c.shape) != (n_in, n_in):
        raise LrvizError(f"layer {layer.name!r}: input statistics are {tuple(c.shape)}, the layer takes {n_in} input channels")
    d = None if out_scale is None else out_scale.to(torch.float64).clamp_min(1e-12)
    if d is not None and tuple(d.shape) != (n_out,):
        raise LrvizError(f"layer {layer.name!r}: an output scale of {tuple(d.shape)} for {n_out} output channels")
    if mean is not None:
        mean = mean.to(torch.float64)
        c = c - torch.outer(mean, mean)  # the covariance: the mean's error goes into the bias (build_layer)
    l, l_inv = whitening(c)
    w64 = w.to(torch.float64)
    wd = w64 if d is None else w64 * d.view(-1, *([1] * (w64.dim() - 1)))  # W̃ = D W
    tucker = layer.kind == TUCKER2
    # the output mode: the leading eigenvectors U of W̃ C W̃ᵀ (Tucker-2: summed over the kernel's positions)
    u = _sym_eig_desc(row_gram((torch.einsum("oikl,ij->ojkl", wd, l).flatten(1) if tucker else wd.reshape(wd.shape[0], -1) @ l)
                               .unsqueeze(0)))[0]
    expand, project = (u, None) if d is None else (u / d.view(-1, 1), u * d.view(-1, 1))  # E = D⁻¹U, P = D U
    basis_in = reduce_in = None
    if tucker:  # the input mode: V of Lᵀ Ã Ãᵀ L, B = L V, R = Vᵀ L⁻¹
        a = wd.transpose(0, 1).flatten(1)  # (C_in, C_out·kh·kw)
        v = _sym_eig_desc((l.T @ row_gram(a.unsqueeze(0))[0] @ l).unsqueeze(0))[0]
        basis_in, reduce_in = l @ v, (v.T @ l_inv).T.contiguous()
    return LayerFactors(layer, w, b, expand, basis_in, private, reduce_in=reduce_in, data_aware=True, project_out=project,
                        mean_in=mean)


def build_layer(f: LayerFactors, ranks: tuple[int, ...], dtype=None, device=None) -> nn.Module:
    """Build the decomposed replacement of a layer at ``ranks`` from cached factors.

    Parameters
    ----------
    f : LayerFactors
    ranks : tuple of int
        ``(R_out, R_in)`` for Tucker-2, ``(r,)`` for SVD; per group for grouped convs (checked by
        :meth:`lrviz.layers.LayerInfo.check_ranks`). A rank equal to the full rank leaves that mode
        unfactored; all full → a copy of the original layer.
    dtype, device : optional
        Of the new weights (default: those of the original layer).
    """
    ranks = f.layer.check_ranks(ranks)
    if ranks == f.layer.full_ranks:
        return copy.deepcopy(f.module)
    param = _param_maker(dtype or f.module.weight.dtype, device or f.module.weight.device)
    built = _tucker2(f, ranks, param) if f.layer.kind == TUCKER2 else _truncated_svd(f, ranks, param)
    if f.mean_in is not None:
        _correct_bias(f, built, param)
    return built


def _summed_map(module: nn.Module) -> torch.Tensor:
    """The matrix a chain of convs / linears applies to a constant input (kernels summed over space), float64."""
    out = None
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().to("cpu", torch.float64)
            mat = w.sum(dim=(2, 3)) if w.dim() == 4 else w
            out = mat if out is None else mat @ out
    return out


def _correct_bias(f: LayerFactors, built: nn.Module, param) -> None:
    """Add to the last bias of ``built`` the error its truncation makes on the mean input ``μ`` (away from
    the borders, where a conv sees the mean everywhere): the output's mean stays the original's."""
    w = f.weight.to(torch.float64)
    orig = w.sum(dim=(2, 3)) if w.dim() == 4 else w
    delta = (orig - _summed_map(built)) @ f.mean_in
    last = [m for m in built.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    bias = delta if last.bias is None else last.bias.detach().to("cpu", torch.float64) + delta
    last.bias = param(bias)


def _param_maker(dtype, device):
    def param(t: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(t.to(device=device, dtype=dtype).contiguous())

    return param


def _conv(c_in: int, c_out: int, kernel, weight: torch.Tensor, bias: torch.Tensor | None, param, **geometry) -> nn.Conv2d:
    """A conv whose parameters are ``weight`` and ``bias`` (created on the meta device: no allocation,
    no random init — every parameter is assigned)."""
    conv = nn.Conv2d(c_in, c_out, kernel, bias=bias is not None, device="meta", **geometry)
    conv.weight = param(weight)
    if bias is not None:
        conv.bias = param(bias)
    return conv


def _linear(n_in: int, n_out: int, weight: torch.Tensor, bias: torch.Tensor | None, param) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=bias is not None, device="meta")
    lin.weight = param(weight)
    if bias is not None:
        lin.bias = param(bias)
    return lin


def _tucker2(f: LayerFactors, ranks: tuple[int, int], param) -> Tucker2Conv2d:
    """Tucker-2 of every group's kernel: ``reduce`` (U_in,gᵀ) → ``core`` → ``expand`` (U_out,g); a mode at
    full rank gets no factor and the core keeps that side's channels."""
    layer, orig, G = f.layer, f.module, f.layer.groups
    o, i, kh, kw = layer.group_shape
    r_out, r_in = ranks
    core = _grouped(f.weight, layer).to(torch.float64)  # (G, o, i, kh, kw)
    parts: list[tuple[str, nn.Module]] = []
    if r_in < i:
        p_in = _per_group(f.basis_in, layer)[:, :, :r_in]  # (G, i, R_in)
        q_in = p_in if f.reduce_in is None else _per_group(f.reduce_in, layer)[:, :, :r_in]  # Rᵀ (data-aware) or U_in
        core = torch.einsum("goikl,gis->goskl", core, p_in)  # core ×₁ U_inᵀ (data-aware: ×₁ Bᵀ)
        parts.append(("reduce", _conv(G * i, G * r_in, 1, q_in.transpose(1, 2).reshape(G * r_in, i, 1, 1), None, param,
                                      groups=G)))
    if r_out < o:
        p_out = _per_group(f.basis_out, layer)[:, :, :r_out]  # (G, o, R_out): the expand weights
        proj = p_out if f.project_out is None else _per_group(f.project_out, layer)[:, :, :r_out]
        core = torch.einsum("goikl,gor->grikl", core, proj)  # core ×₀ U_outᵀ (data-aware with a gain: ×₀ (D U)ᵀ)
    co, ci = core.shape[1], core.shape[2]
    # stride, padding, dilation and padding mode stay on the core; the bias moves to the last 1×1
    parts.append(("core", _conv(G * ci, G * co, (kh, kw), core.reshape(G * co, ci, kh, kw), f.bias if r_out == o else None,
                                param, stride=orig.stride, padding=orig.padding, dilation=orig.dilation, groups=G,
                                padding_mode=orig.padding_mode)))
    if r_out < o:
        parts.append(("expand", _conv(G * r_out, G * o, 1, p_out.reshape(G * o, r_out, 1, 1), f.bias, param, groups=G)))
    return Tucker2Conv2d(OrderedDict(parts))


def _truncated_svd(f: LayerFactors, ranks: tuple[int], param) -> LowRankLinear | LowRankConv2d:
    """Truncated SVD of every group's ``(m, n)`` matrix: ``W_g ≈ U_r·(U_rᵀ·W_g)`` or ``(W_g·V_r)·V_rᵀ``
    (whichever basis is the smaller one), as ``reduce`` → ``expand``."""
    layer, orig, G = f.layer, f.module, f.layer.groups
    o, i = layer.group_shape[:2]
    mat = _grouped(f.weight, layer).reshape(G, o, i)
    (r,) = ranks
    if f.basis_out is not None:
        u = _per_group(f.basis_out, layer)[:, :, :r]  # (G, m, r)
        p = u if f.project_out is None else _per_group(f.project_out, layer)[:, :, :r]
        first, second = _mm64(p.transpose(1, 2), mat), u  # (G, r, n), (G, m, r)
    else:
        v = _per_group(f.basis_in, layer)[:, :, :r]  # (G, n, r)
        first, second = v.transpose(1, 2), _mm64(mat, v)
    if layer.kind == SVD_LINEAR:
        return LowRankLinear(OrderedDict([("reduce", _linear(i, r, first[0], None, param)),
                                          ("expand", _linear(r, o, second[0], f.bias, param))]))
    red = _conv(G * i, G * r, 1, first.reshape(G * r, i, 1, 1), None, param, stride=orig.stride, padding=orig.padding,
                padding_mode=orig.padding_mode, groups=G)
    exp = _conv(G * r, G * o, 1, second.reshape(G * o, r, 1, 1), f.bias, param, groups=G)
    return LowRankConv2d(OrderedDict([("reduce", red), ("expand", exp)]))


def _tensor_digest(h, t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    if t.is_meta:
        h.update(b"meta")  # no values: the structure is all there is
        return
    h.update(memoryview(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))


def _layer_digest(layer: LayerInfo, module: nn.Module) -> str:
    h = hashlib.sha256(repr((layer.name, layer.kind, layer.weight_shape)).encode())
    _tensor_digest(h, module.weight)
    _tensor_digest(h, module.bias)
    return h.hexdigest()


def weights_fingerprint(model: nn.Module, *, all_tensors: bool = False) -> str:
    """SHA-256 of a model's weights — the one fingerprint of lrviz.

    By default of its decomposable layers: names, kinds, shapes and the bytes of their weights and
    biases — all that factors depend on (other parameters, e.g. BatchNorm, are not included; this is
    what a :class:`FactorCache` records). With ``all_tensors``: every entry of ``model.state_dict()``
    (names, shapes, dtypes and bytes, BatchNorm statistics included) — all that the model's output
    depends on besides its architecture (the sensitivity cache key, :mod:`lrviz.sensitivity_cache`).

    One pass over those tensors (about 0.06 s per 100 MB of weights on one CPU core).
    """
    if all_tensors:
        h = hashlib.sha256()
        for name, t in model.state_dict().items():
            h.update(name.encode())
            _tensor_digest(h, t)
        return h.hexdigest()
    return _combined(_layer_digest(l, get_module(model, l.name)) for l in find_layers(model)[0])


def _combined(digests) -> str:
    """One SHA-256 of per-layer digests, in order."""
    h = hashlib.sha256()
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()


class FactorCache:
    """Lazily computed :class:`LayerFactors` of one model, keyed by layer name.

    The cache records the model's :func:`weights_fingerprint` when it is made (:attr:`fingerprint`);
    :func:`compress` refuses it for a model with another fingerprint (another model, or this one after
    its weights changed), and a layer is only factorised if its weights still match. It never modifies
    the model. Thread-safe (Streamlit runs sessions in threads).
    """

    def __init__(self, model: nn.Module, stats=None):
        self._model = model
        self._layers = {l.name: l for l in find_layers(model)[0]}
        self._digests = {n: _layer_digest(l, get_module(model, n)) for n, l in self._layers.items()}
        self._fingerprint = _combined(self._digests.values())
        self._factors: dict[str, LayerFactors] = {}
        self._lock = threading.Lock()
        self._stats = stats  # lrviz.activations.ActivationStats: data-aware factors
        self._method_factors: dict[tuple, object] = {}  # CP fits / spatial SVDs (lrviz.methods)

    @property
    def kind(self) -> str:
        """``"weights"`` (bases from the weights alone) or ``"data:<fingerprint of the statistics>"``."""
        return "weights" if self._stats is None else f"data:{self._stats.fingerprint()}"

    @property
    def stats(self):
        """The :class:`lrviz.activations.ActivationStats` of data-aware factors, else None."""
        return self._stats

    @property
    def layers(self) -> dict[str, LayerInfo]:
        return dict(self._layers)

    @property
    def fingerprint(self) -> str:
        """:func:`weights_fingerprint` of the model when the cache was made."""
        return self._fingerprint

    def check(self, model: nn.Module) -> None:
        """Raise :class:`LrvizError` unless ``model`` has the weights this cache was made from."""
        fp = weights_fingerprint(model)
        if fp == self._fingerprint:
            return
        if model is self._model:
            raise LrvizError(
                "the model's weights changed since this FactorCache was made (fine-tuned or loaded in place?), so "
                "its factors are stale; make a new FactorCache(model) or pass no factors"
            )
        raise LrvizError(
            f"this FactorCache was made for another model: its decomposable weights have fingerprint "
            f"{self._fingerprint[:12]}…, the given model's are {fp[:12]}…; pass factors=FactorCache(model) for "
            f"this model, or no factors"
        )

    def get(self, name: str) -> LayerFactors:
        with self._lock:
            f = self._factors.get(name)
            if f is None:
                if name not in self._layers:
                    raise LrvizError(f"layer {name!r} is not decomposable; decomposable: {sorted(self._layers)[:8]}...")
                module = get_module(self._model, name)
                if _layer_digest(self._layers[name], module) != self._digests[name]:
                    raise LrvizError(
                        f"layer {name!r} changed since this FactorCache was made; make a new FactorCache(model)"
                    )
                moment = None if self._stats is None else self._stats.second_moment.get(name)
                if moment is None:
                    f = factorize(self._layers[name], module)
                else:
                    f = factorize(self._layers[name], module, moment, self._stats.out_scale.get(name), self._stats.mean.get(name))
                self._factors[name] = f
            return f

    def __contains__(self, name: str) -> bool:
        return name in self._factors

    def build_method(self, name: str, method: str, rank: int) -> nn.Module:
        """Layer ``name`` decomposed by CP or spatial SVD at ``rank`` (:mod:`lrviz.methods`), from the
        weights alone (also in a data-aware cache). The spatial SVD is computed once per layer and
        sliced; a CP fit is computed once per (layer, rank). On the meta device: shapes only."""
        from .methods import SPATIAL, build_cp, build_spatial

        module = self.get(name).module
        made = self.method_factors(name, method, rank)
        param = _param_maker(module.weight.dtype, module.weight.device)
        return (build_spatial if method == SPATIAL else build_cp)(module, made, int(rank), param)

    def method_factors(self, name: str, method: str, rank: int):
        """The cached CP fit (:class:`lrviz.methods.CPFactors`, per layer and rank) or spatial SVD (``U, S, Vh``, per
        layer) of layer ``name``, computed on first use; None on the meta device (no values)."""
        from .methods import CP, SPATIAL, check_method, cp_als, spatial_svd

        f = self.get(name)  # checks the layer and its weights
        check_method(f.layer, method)
        if method not in (CP, SPATIAL):
            raise LrvizError(f"build_method builds CP or spatial SVD layers; got {method!r}")
        weight = f.module.weight
        key = (name, method) if method == SPATIAL else (name, method, int(rank))
        with self._lock:
            made = self._method_factors.get(key)
        if made is None and not weight.is_meta:
            made = spatial_svd(weight) if method == SPATIAL else cp_als(weight, int(rank))
            with self._lock:
                self._method_factors[key] = made
        return made


def compress_structure(model: nn.Module, plan) -> nn.Module:
    """The planned model's structure for loading a state_dict into: decomposed on the meta device (no
    factorisation is run, no CP is fitted), then given uninitialised CPU storage. Every parameter and
    persistent buffer must be loaded afterwards (``load_state_dict(..., strict=True)``)."""
    meta = copy.deepcopy(model).to("meta")
    net = compress(meta, plan).to_empty(device="cpu")
    saved = set(net.state_dict())
    originals = dict(model.named_buffers())
    with torch.no_grad():  # non-persistent buffers are not in a state_dict: take them from the original
        for name, buf in net.named_buffers():
            if name not in saved and name in originals:
                buf.copy_(originals[name])
    return net


def compress(model: nn.Module, plan, factors: FactorCache | None = None, progress=None) -> nn.Module:
    """Return a new model with every planned layer decomposed; ``model`` is never modified.

    Parameters
    ----------
    model : nn.Module
    plan : RankPlan
        Layers not in the plan, or at full rank on every mode, stay dense.
    factors : FactorCache, optional
        Reuse factors across calls (a new rank is then a slice). Must belong to ``model`` (same
        decomposable weights): a cache made for another model raises :class:`LrvizError`.
    progress : callable, optional
        ``progress(done, total, name)`` after each layer.

    Notes
    -----
    A module registered under several names (the same object reachable twice) is replaced everywhere
    by the same decomposed module, so it stays shared.
    """
    if factors is None:
        factors = FactorCache(model)
    else:
        factors.check(model)
    known = factors.layers
    # before any work: a clear message when the new model and the factors cannot fit in memory
    planned = [lp for lp in plan.layers if not lp.is_dense and lp.name in known]
    check_memory(estimate_compress(model, [known[lp.name] for lp in planned], factors, {lp.name: lp.ranks for lp in planned}))
    new = copy.deepcopy(model)
    names_of: dict[int, list[str]] = {}
    for n, m in new.named_modules(remove_duplicate=False):
        if n:
            names_of.setdefault(id(m), []).append(n)
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
        method = getattr(lp, "method", "")
        built = factors.build_method(lp.name, method, lp.ranks[0]) if method else build_layer(factors.get(lp.name), lp.ranks)
        for alias in names_of.get(id(get_module(new, lp.name)), [lp.name]):
            set_module(new, alias, built)
        if progress is not None:
            progress(i + 1, len(todo), lp.name)
    return new
