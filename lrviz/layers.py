"""Find the layers lrviz can decompose, and replace modules by dotted name.

Decomposable layers
-------------------
* ``nn.Conv2d`` with ``groups == 1`` and a kernel larger than 1×1 → **Tucker-2** on the two channel
  modes (Kim et al. 2016): 1×1 (C_in→R_in) → k×k core (R_in→R_out, keeps stride / padding / dilation)
  → 1×1 (R_out→C_out, keeps the bias).
* ``nn.Conv2d`` with a 1×1 kernel and ``groups == 1`` → **truncated SVD** of the C_out×C_in matrix
  (two 1×1 convs; the first keeps stride and padding).
* ``nn.Linear`` → truncated SVD (two linears).

Everything else with weights (grouped / depthwise / transposed convs, Conv1d/3d, ...) is reported as
skipped, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .errors import LrvizError

__all__ = ["LayerInfo", "SkippedLayer", "find_layers", "get_module", "set_module"]

TUCKER2 = "tucker2"
SVD_CONV = "svd_conv"
SVD_LINEAR = "svd_linear"


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
        ``(out_channels, in_channels, kh, kw)`` for convs, ``(out_features, in_features)`` for Linear.
    stride, padding, dilation : tuple of int
        Conv geometry (``(1, 1)``, ``(0, 0)``, ``(1, 1)`` for Linear).
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
    def full_ranks(self) -> tuple[int, ...]:
        """Ranks that reproduce the layer exactly: ``(C_out, C_in)`` for Tucker-2, ``(min(m, n),)`` for SVD."""
        if self.kind == TUCKER2:
            return (self.weight_shape[0], self.weight_shape[1])
        return (min(self.weight_shape[0], self.weight_shape[1]),)

    @property
    def kernel_size(self) -> tuple[int, int]:
        if len(self.weight_shape) == 4:
            return (self.weight_shape[2], self.weight_shape[3])
        return (1, 1)


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


def find_layers(model: nn.Module) -> tuple[list[LayerInfo], list[SkippedLayer]]:
    """List decomposable layers and the weighted layers that are skipped.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    layers : list of LayerInfo
        In module registration order.
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
            if m.groups != 1:
                why = "depthwise conv" if m.groups == m.in_channels else f"grouped conv (groups={m.groups})"
                skipped.append(SkippedLayer(name, tname, f"{why}: Tucker-2 needs groups=1"))
                continue
            if isinstance(m.padding, str):
                skipped.append(SkippedLayer(name, tname, f"padding='{m.padding}' is not supported; use numbers"))
                continue
            kh, kw = m.kernel_size
            kind = SVD_CONV if (kh, kw) == (1, 1) else TUCKER2
            layers.append(
                LayerInfo(
                    name=name,
                    kind=kind,
                    weight_shape=tuple(m.weight.shape),
                    stride=_pair(m.stride),
                    padding=_pair(m.padding),
                    dilation=_pair(m.dilation),
                    bias=m.bias is not None,
                )
            )
        elif isinstance(m, nn.Linear):
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
