"""Parameter and MAC counts, original and planned.

Convention
----------
lrviz counts **MACs**: one multiply-accumulate = 1, at batch size 1, for ``nn.Conv1d/2d/3d`` and
``nn.Linear`` layers only (bias additions, BatchNorm, activations, pooling and element-wise ops are
not counted). **FLOPs = 2 × MACs** — the convention of ``torch.utils.flop_counter.FlopCounterMode``,
which the tests use as the independent reference. **Params** = every entry of ``model.parameters()``
(BatchNorm affine weights included, buffers such as running statistics not).

Spatial sizes come from one recorded forward pass (:func:`record_io`); everything else is closed form:

* conv: ``H_out·W_out·C_out·(C_in/groups)·kh·kw``
* linear: ``positions·in·out`` (positions = leading dims other than the batch, 1 for a plain vector)
* Tucker-2 (R_out, R_in): ``H_in·W_in·C_in·R_in + H_out·W_out·(R_in·R_out·kh·kw + R_out·C_out)`` —
  the first 1×1 runs at input resolution, stride sits on the core.
* SVD of a 1×1 conv / Linear at rank r: ``P·(C_in·r + r·C_out)`` (P = output positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from .layers import SVD_CONV, SVD_LINEAR, TUCKER2, LayerInfo

__all__ = [
    "LayerIO",
    "CostReport",
    "record_io",
    "count_params",
    "count_macs",
    "layer_params",
    "layer_macs",
    "factor_structure",
]

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerIO:
    """Spatial sizes seen by a layer in one forward pass at batch 1.

    ``in_hw``/``out_hw`` are ``(H, W)`` for 2-D convs; for Linear ``positions`` is the number of
    vectors per sample the layer is applied to (1 for a classifier head).
    """

    in_hw: tuple[int, ...]
    out_hw: tuple[int, ...]
    positions: int = 1
    macs: int = 0


def _module_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return int(out.numel() // out.shape[0]) * m.in_features
    # conv: every output element costs (C_in/groups)·prod(kernel) MACs
    k = 1
    for d in m.kernel_size:
        k *= int(d)
    return int(out.numel() // out.shape[0]) * (m.in_channels // m.groups) * k


def record_io(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, LayerIO]:
    """Run one forward pass (zeros, batch 1, eval mode, no grad) and record each counted layer's sizes.

    The model's training flag is restored afterwards; its weights are not touched.
    """
    io: dict[str, LayerIO] = {}
    hooks = []

    def make_hook(name):
        def hook(m, args, out):
            x = args[0]
            if isinstance(m, nn.Linear):
                pos = int(x.numel() // x.shape[0] // m.in_features)
                rec = LayerIO(in_hw=(), out_hw=(), positions=pos, macs=_module_macs(m, x, out))
            else:
                rec = LayerIO(in_hw=tuple(x.shape[2:]), out_hw=tuple(out.shape[2:]), positions=1, macs=_module_macs(m, x, out))
            prev = io.get(name)
            if prev is not None:  # module called more than once per forward: accumulate MACs
                rec = LayerIO(rec.in_hw, rec.out_hw, rec.positions, prev.macs + rec.macs)
            io[name] = rec

        return hook

    for name, m in model.named_modules():
        if isinstance(m, _COUNTED):
            hooks.append(m.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_size), device=dev, dtype=dt))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return io


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (BatchNorm affine included, buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Total MACs at batch 1 of all conv and linear layers (see module docstring)."""
    return int(sum(r.macs for r in record_io(model, input_size).values()))


def factor_structure(layer: LayerInfo, ranks: tuple[int, ...]) -> tuple[bool, bool]:
    """Which factors a planned layer has: ``(has_out_factor, has_in_factor)``.

    Tucker-2: a mode gets a 1×1 factor only when its rank is below the channel count. SVD: both
    factors exist when the rank is below full, neither otherwise. ``(False, False)`` = layer dense.
    """
    full = layer.full_ranks
    if layer.kind == TUCKER2:
        return (ranks[0] < full[0], ranks[1] < full[1])
    low = ranks[0] < full[0]
    return (low, low)


def layer_params(layer: LayerInfo, ranks: tuple[int, ...] | None = None) -> int:
    """Parameters of a layer, dense (``ranks=None``) or decomposed at ``ranks``."""
    shape = layer.weight_shape
    bias = shape[0] if layer.bias else 0
    dense = 1
    for d in shape:
        dense *= d
    if ranks is None:
        return dense + bias
    out_f, in_f = factor_structure(layer, ranks)
    if not (out_f or in_f):
        return dense + bias
    if layer.kind == TUCKER2:
        c_out, c_in, kh, kw = shape
        r_out = ranks[0] if out_f else c_out
        r_in = ranks[1] if in_f else c_in
        return (c_in * r_in if in_f else 0) + r_in * r_out * kh * kw + (r_out * c_out if out_f else 0) + bias
    m, n = shape[0], shape[1]
    r = ranks[0]
    return n * r + r * m + bias


def layer_macs(layer: LayerInfo, io: LayerIO, ranks: tuple[int, ...] | None = None) -> int:
    """MACs at batch 1 of a layer, dense (``ranks=None``) or decomposed at ``ranks``."""
    shape = layer.weight_shape
    if layer.kind == SVD_LINEAR:
        P = io.positions
    else:
        P = io.out_hw[0] * io.out_hw[1]
    if layer.kind == TUCKER2:
        c_out, c_in, kh, kw = shape
        if ranks is None:
            return P * c_out * c_in * kh * kw
        out_f, in_f = factor_structure(layer, ranks)
        r_out = ranks[0] if out_f else c_out
        r_in = ranks[1] if in_f else c_in
        p_in = io.in_hw[0] * io.in_hw[1]
        return (p_in * c_in * r_in if in_f else 0) + P * (r_in * r_out * kh * kw + (r_out * c_out if out_f else 0))
    m, n = shape[0], shape[1]
    if ranks is None or not factor_structure(layer, ranks)[0]:
        return P * m * n
    r = ranks[0]
    return P * (n * r + r * m)


@dataclass(frozen=True, eq=False)
class CostReport:
    """Params and MACs, original vs planned, per layer and in total.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per decomposable layer: ``name, kind, ranks, params, params_planned, macs,
        macs_planned``.
    params, macs : int
        Original totals (whole model).
    params_planned, macs_planned : int
        Totals after applying the plan.
    """

    table: pd.DataFrame
    params: int
    macs: int
    params_planned: int
    macs_planned: int

    @property
    def params_ratio(self) -> float:
        """Original / planned params (×)."""
        return self.params / max(self.params_planned, 1)

    @property
    def macs_ratio(self) -> float:
        """Original / planned MACs (×)."""
        return self.macs / max(self.macs_planned, 1)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def flops_planned(self) -> int:
        return 2 * self.macs_planned

    def to_dict(self) -> dict:
        return {
            "units": "MACs (FLOPs = 2 x MACs), params = all model.parameters() entries",
            "params": {"original": int(self.params), "compressed": int(self.params_planned)},
            "macs": {"original": int(self.macs), "compressed": int(self.macs_planned)},
            "params_ratio": float(self.params_ratio),
            "macs_ratio": float(self.macs_ratio),
        }
