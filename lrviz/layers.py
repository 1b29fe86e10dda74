"""Find the layers lrviz can decompose, and replace modules by dotted name.

Decomposable layers
-------------------
* ``nn.Conv2d`` with a kernel larger than 1×1 → **Tucker-2** on the two channel modes (Kim et al.
  2016): 1×1 (C_in→R_in) → k×k core (R_in→R_out, keeps stride / padding / dilation) → 1×1
  (R_out→C_out, keeps the bias).
* ``nn.Conv2d`` with a 1×1 kernel → **truncated SVD** of the C_out×C_in matrix (two 1×1 convs; the
  first keeps stride and padding).
* ``nn.Linear`` → truncated SVD (two linears).

Grouped convolutions
--------------------
A conv with ``groups = G > 1`` is ``G`` independent convs, group ``g`` mapping input channels
``g·C_in/G …`` to output channels ``g·C_out/G …`` with its own kernel slice ``(C_out/G, C_in/G, kh,
kw)``. lrviz decomposes every group with **its own bases** and **one rank pair shared by all groups**
(as BALF does), so the result is again three grouped convs: 1×1 (``groups=G``, C_in→G·R_in) →
k×k core (``groups=G``, G·R_in→G·R_out) → 1×1 (``groups=G``, G·R_out→C_out); a grouped 1×1 conv
becomes two grouped 1×1 convs (G·r in the middle). Ranks are **per group**: full rank is
``(C_out/G, C_in/G)`` (Tucker-2) or ``min(C_out/G, C_in/G)`` (SVD). The weight shape of a grouped
layer is recorded as ``(G, C_out/G, C_in/G, kh, kw)`` — the stack of per-group kernels — so every
plan, plan file and cost formula that carries a weight shape also carries the groups.

Depthwise convs (one input channel per group) are skipped: with one output channel per group too (the
usual case) or a 1×1 kernel, every group already has rank 1 and there is nothing to truncate. (A
depthwise k×k conv with a channel multiplier ``m > 1`` is a grouped conv whose output mode, of ``m``
channels per group, can be truncated; the plan keeps that factor only where it pays.) Also skipped, with the reason: transposed convs,
Conv1d/3d, and subclasses of ``nn.Conv2d`` / ``nn.Linear`` that override ``forward`` (weight
standardisation, dynamic "same" padding, ...) — their decomposition would not compute what they
compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .errors import LrvizError, is_int

__all__ = ["LayerInfo", "SkippedLayer", "MODE_OUT", "MODE_IN", "MODE_MATRIX", "layer_modes", "find_layers", "get_module", "set_module"]

TUCKER2 = "tucker2"
SVD_CONV = "svd_conv"
SVD_LINEAR = "svd_linear"

#: Channel modes — one vocabulary in code, JSON, UI and README. A Tucker-2 layer has an output-channel
#: mode ``"out"`` (the mode-0 unfolding ``C_out × C_in·kh·kw``, its rank R_out) and an input-channel mode
#: ``"in"`` (the mode-1 unfolding ``C_in × C_out·kh·kw``, its rank R_in); an SVD layer (1×1 conv, Linear)
#: has one mode, its ``"matrix"`` (rank r).
MODE_OUT, MODE_IN, MODE_MATRIX = "out", "in", "matrix"


def layer_modes(kind: str) -> tuple[str, ...]:
    """The channel modes of a layer kind, in rank order: ``("out", "in")`` for Tucker-2, ``("matrix",)`` else."""
    return (MODE_OUT, MODE_IN) if kind == TUCKER2 else (MODE_MATRIX,)


@dataclass(frozen=True)
class LayerInfo:
    """A decomposable layer.

    Attributes
    ----------
    name : str
        Dotted module name (``model.get_submodule(name)``).
    kind : str
        ``"tucker2"`` (k×k conv), ``"svd_conv"`` (1×1 conv) or ``"svd_linear"`` (Linear).
    weight_shape : tuple of int
        ``(out_channels, in_channels, kh, kw)`` for convs, ``(out_features, in_features)`` for Linear,
        ``(groups, out_channels/groups, in_channels/groups, kh, kw)`` for grouped convs (five entries).
    stride, padding, dilation : tuple of int
        Conv geometry (``(1, 1)``, ``(0, 0)``, ``(1, 1)`` for Linear; ``padding`` of a
        ``padding="same"`` conv is its top/left padding).
    bias : bool
        Whether the layer has a bias.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = False

    @property
    def groups(self) -> int:
        """Number of conv groups (1 unless :attr:`weight_shape` has five entries)."""
        return int(self.weight_shape[0]) if len(self.weight_shape) == 5 else 1

    @property
    def group_shape(self) -> tuple[int, ...]:
        """Kernel of one group: ``(C_out/G, C_in/G, kh, kw)`` (the weight shape when ``G == 1``)."""
        return tuple(self.weight_shape[1:]) if len(self.weight_shape) == 5 else tuple(self.weight_shape)

    @property
    def out_channels(self) -> int:
        """Output channels (or features) of the whole layer."""
        return self.groups * int(self.group_shape[0])

    @property
    def in_channels(self) -> int:
        """Input channels (or features) of the whole layer."""
        return self.groups * int(self.group_shape[1])

    @property
    def module_weight_shape(self) -> tuple[int, ...]:
        """Shape of the module's ``weight`` tensor (``(C_out, C_in/G, kh, kw)`` for a grouped conv)."""
        if len(self.weight_shape) == 5:
            return (self.out_channels, *self.group_shape[1:])
        return tuple(self.weight_shape)

    @property
    def full_ranks(self) -> tuple[int, ...]:
        """Ranks that reproduce the layer exactly, per group: ``(C_out/G, C_in/G)`` for Tucker-2,
        ``(min(m, n),)`` for SVD of an ``m × n`` (per-group) matrix."""
        o, i = int(self.group_shape[0]), int(self.group_shape[1])
        if self.kind == TUCKER2:
            return (o, i)
        return (min(o, i),)

    @property
    def kernel_size(self) -> tuple[int, int]:
        shape = self.group_shape
        if len(shape) == 4:
            return (int(shape[2]), int(shape[3]))
        return (1, 1)

    def check_ranks(self, ranks) -> tuple[int, ...]:
        """``ranks`` validated for this layer: one integer per mode (:func:`layer_modes`), each in
        ``1..full`` (per group for a grouped conv); a single int is accepted for a one-mode layer.

        Raises :class:`LrvizError` naming the layer, the ranks given and what is allowed — never
        clamps (a plan lrviz wrote cannot hold such ranks). The one rank validator of plans and
        :func:`lrviz.build_layer`.
        """
        full = self.full_ranks
        vals = (ranks,) if is_int(ranks) else ranks
        try:
            vals = list(vals)
        except TypeError as e:
            raise LrvizError(f"layer {self.name!r}: ranks must be a list of integers, got {ranks!r}") from e
        if len(vals) != len(full) or not all(is_int(v) for v in vals):
            want = "[r_out, r_in]" if self.kind == TUCKER2 else "[r]"
            raise LrvizError(f"layer {self.name!r} ({self.kind}) needs integer ranks {want}; got {ranks!r}")
        per = f" per group ({self.groups} groups)" if self.groups > 1 else ""
        out = []
        for v, f in zip(map(int, vals), full):
            if v < 1:
                raise LrvizError(f"layer {self.name!r}: rank {v} is impossible; allowed 1..{f}{per}")
            if v > f:
                raise LrvizError(f"layer {self.name!r}: rank {v} is above the full rank {f}; allowed 1..{f}{per} "
                                 "(the full rank keeps that mode dense)")
            out.append(v)
        return tuple(out)


@dataclass(frozen=True)
class SkippedLayer:
    """A layer with weights that lrviz leaves dense, and why."""

    name: str
    type: str
    reason: str


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _padding_of(m: nn.Conv2d) -> tuple[int, int]:
    """Numeric (top, left) padding; ``"valid"`` is 0, ``"same"`` is ``d·(k−1)//2`` (PyTorch puts any odd
    extra on the bottom/right)."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(_pair(m.dilation), _pair(m.kernel_size)))
    return _pair(m.padding)


def _own_forward(m: nn.Module, base: type) -> bool:
    """Whether ``type(m)`` (a subclass of ``base``) computes something else than ``base`` does."""
    cls = type(m)
    if cls.forward is not base.forward:
        return True
    return base is nn.Conv2d and cls._conv_forward is not nn.Conv2d._conv_forward


def find_layers(model: nn.Module) -> tuple[list[LayerInfo], list[SkippedLayer]]:
    """List decomposable layers and the weighted layers that are skipped.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    layers : list of LayerInfo
        In module registration order (a module registered under several names is listed once, under
        its first name).
    skipped : list of SkippedLayer
        Conv/Linear-like layers that cannot be decomposed, with the reason. Normalisation layers
        (BatchNorm, LayerNorm, ...) are not listed: they are not candidates.
    """
    layers: list[LayerInfo] = []
    skipped: list[SkippedLayer] = []
    for name, m in model.named_modules():
        if name == "":
            continue
        tname = type(m).__name__
        if isinstance(m, nn.Conv2d):
            if _own_forward(m, nn.Conv2d):
                skipped.append(SkippedLayer(name, tname, f"{tname} overrides nn.Conv2d's forward (e.g. weight standardisation "
                                                         "or dynamic padding): a decomposition would compute something else"))
                continue
            g = int(m.groups)
            kh, kw = m.kernel_size
            kind = SVD_CONV if (kh, kw) == (1, 1) else TUCKER2
            if g > 1 and m.in_channels // g == 1 and (kind == SVD_CONV or m.out_channels // g == 1):
                skipped.append(SkippedLayer(name, tname, f"depthwise conv (groups={g}, 1 input channel per group): every "
                                                         "group already has rank 1, nothing to truncate"))
                continue
            shape = tuple(m.weight.shape)
            if g > 1:
                shape = (g, shape[0] // g, *shape[1:])
            layers.append(
                LayerInfo(
                    name=name,
                    kind=kind,
                    weight_shape=shape,
                    stride=_pair(m.stride),
                    padding=_padding_of(m),
                    dilation=_pair(m.dilation),
                    bias=m.bias is not None,
                )
            )
        elif isinstance(m, nn.Linear):
            if _own_forward(m, nn.Linear):
                skipped.append(SkippedLayer(name, tname, f"{tname} overrides nn.Linear's forward: a decomposition "
                                                         "would compute something else"))
                continue
            layers.append(LayerInfo(name=name, kind=SVD_LINEAR, weight_shape=tuple(m.weight.shape), bias=m.bias is not None))
        elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            skipped.append(SkippedLayer(name, tname, "transposed conv is not supported"))
        elif isinstance(m, (nn.Conv1d, nn.Conv3d)):
            skipped.append(SkippedLayer(name, tname, "only 2-D convolutions are supported"))
        elif isinstance(m, (nn.Bilinear, nn.Embedding, nn.MultiheadAttention)):
            skipped.append(SkippedLayer(name, tname, f"{tname} is not supported"))
    return layers, skipped


def get_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with a clear error."""
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise LrvizError(f"model has no layer named {name!r}") from e


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` by ``new`` (in place, on ``model``)."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise LrvizError(f"model has no layer named {name!r}")
    setattr(parent, child, new)
