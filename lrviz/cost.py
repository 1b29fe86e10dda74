"""Parameter and MAC counts, original and planned.

Convention
----------
lrviz counts **MACs**: one multiply-accumulate = 1, at batch size 1, for ``nn.Conv1d/2d/3d`` and
``nn.Linear`` modules only (bias additions, BatchNorm, activations, pooling, element-wise ops and
matrix products outside such modules — e.g. the attention products of a transformer — are not
counted). **FLOPs = 2 × MACs** — the convention of ``torch.utils.flop_counter.FlopCounterMode``, which
the tests use as the independent reference. **Params** = every entry of ``model.parameters()``
(BatchNorm affine weights included, buffers such as running statistics not; a module used several
times is counted once).

Spatial sizes come from one recorded forward pass (:func:`record_io`), **per call**: a module called
more than once in a forward pass (a shared block, a recurrent stem, a layer applied at two
resolutions) gets one :class:`LayerCall` per call, and its MACs — dense or planned — are the sum over
its calls. Everything else is closed form, per call (``G`` = groups, ``C_in``/``C_out`` = channels of
the whole layer, ``P_in``/``P`` = input/output positions ``H·W``, times the call's leading dim when the
model folds patches or frames into the batch dim):

* conv: ``P·C_out·(C_in/G)·kh·kw``
* linear: ``P·in·out`` (P = every leading dim of its input at batch 1, 1 for a plain vector)
* Tucker-2 at per-group ranks (R_out, R_in): ``P_in·C_in·R_in + P·(G·R_in·R_out·kh·kw + R_out·C_out)``
  — the first 1×1 runs at input resolution, stride sits on the core; a mode kept at full rank has no
  factor and its term is dropped (``R = C/G`` in the core).
* SVD of a (grouped) 1×1 conv / Linear at per-group rank r: ``P·(C_in·r + r·C_out)``.

A budget or a reduction ratio is given in one of :data:`METRICS` (``"params"`` or ``"macs"``):
:func:`layer_cost` and :meth:`CostReport.ratio` take it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn

from .errors import LrvizError
from .layers import SVD_LINEAR, TUCKER2, LayerInfo

__all__ = [
    "LayerCall",
    "LayerIO",
    "CostReport",
    "record_io",
    "count_params",
    "count_macs",
    "layer_params",
    "layer_macs",
    "layer_cost",
    "factor_structure",
    "METRICS",
    "check_metric",
]

#: What a budget or a reduction ratio counts.
METRICS = ("params", "macs")

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerCall:
    """Sizes seen by a layer in one call, for one input sample (a forward pass at batch 1).

    Attributes
    ----------
    in_hw, out_hw : tuple of int
        ``(H, W)`` for 2-D convs (``()`` for Linear).
    positions : int
        Vectors a Linear is applied to: every leading dim of its input (1 for a classifier head; 1 for
        convs).
    macs : int
        Dense MACs of this call.
    batch : int
        Images a conv processed in this call: its input's leading dim, 1 unless the model folds
        something into the batch dim (patches, frames, ...).
    """

    in_hw: tuple[int, ...]
    out_hw: tuple[int, ...]
    positions: int = 1
    macs: int = 0
    batch: int = 1


@dataclass(frozen=True)
class LayerIO:
    """Sizes seen by a layer in one forward pass at batch 1.

    Attributes
    ----------
    in_hw, out_hw, positions : tuple of int, tuple of int, int
        Those of the **first** call (kept for display; use :attr:`all_calls` for costs).
    macs : int
        Dense MACs of the layer summed over all its calls.
    calls : tuple of LayerCall
        Every call, in call order; empty means one call with the sizes above (the form of a
        hand-made ``LayerIO``).
    """

    in_hw: tuple[int, ...]
    out_hw: tuple[int, ...]
    positions: int = 1
    macs: int = 0
    calls: tuple[LayerCall, ...] = ()

    @property
    def all_calls(self) -> tuple[LayerCall, ...]:
        """Every call's sizes (at least one)."""
        return self.calls or (LayerCall(self.in_hw, self.out_hw, self.positions, self.macs),)

    @property
    def n_calls(self) -> int:
        """How many times the layer ran in the forward pass."""
        return len(self.all_calls)


def _module_macs(m: nn.Module, out: torch.Tensor) -> int:
    # the forward pass is at batch 1, so every element of ``out`` belongs to the one sample (a model may
    # fold patches or frames into the batch dim: the leading dim is not necessarily 1)
    if isinstance(m, nn.Linear):
        return int(out.numel()) * m.in_features
    # conv: every output element costs (C_in/groups)·prod(kernel) MACs
    k = 1
    for d in m.kernel_size:
        k *= int(d)
    return int(out.numel()) * (m.in_channels // m.groups) * k


def record_io(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, LayerIO]:
    """Run one forward pass (zeros, batch 1, eval mode, no grad) and record each counted layer's sizes.

    Every call of a module is recorded (:attr:`LayerIO.calls`); the dict is ordered by each layer's
    first call. A module registered under several names is recorded under its first name. The model's
    training flag is restored afterwards; its weights are not touched.
    """
    calls: dict[str, list[LayerCall]] = {}
    hooks = []

    def make_hook(name):
        def hook(m, args, out):
            x = args[0]
            if isinstance(m, nn.Linear):
                pos = int(x.numel() // m.in_features)
                rec = LayerCall(in_hw=(), out_hw=(), positions=pos, macs=_module_macs(m, out))
            else:
                batch = int(x.shape[0]) if x.dim() == len(m.kernel_size) + 2 else 1  # unbatched conv input: 1
                rec = LayerCall(in_hw=tuple(x.shape[-len(m.kernel_size):]), out_hw=tuple(out.shape[-len(m.kernel_size):]),
                                positions=1, macs=_module_macs(m, out), batch=batch)
            calls.setdefault(name, []).append(rec)

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
    io: dict[str, LayerIO] = {}
    for name, cs in calls.items():
        first = cs[0]
        io[name] = LayerIO(first.in_hw, first.out_hw, first.positions, int(sum(c.macs for c in cs)), tuple(cs))
    return io


def count_params(model: nn.Module) -> int:
    """Number of parameter entries (BatchNorm affine included, buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Total MACs at batch 1 of all conv and linear layers, every call counted (see module docstring)."""
    return int(sum(r.macs for r in record_io(model, input_size).values()))


def factor_structure(layer: LayerInfo, ranks: tuple[int, ...]) -> tuple[bool, bool]:
    """Which factors a planned layer has: ``(has_out_factor, has_in_factor)``.

    Tucker-2: a mode gets a 1×1 factor only when its rank is below the (per-group) channel count.
    SVD: both factors exist when the rank is below full, neither otherwise. ``(False, False)`` = layer
    dense.
    """
    full = layer.full_ranks
    if layer.kind == TUCKER2:
        return (ranks[0] < full[0], ranks[1] < full[1])
    low = ranks[0] < full[0]
    return (low, low)


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def layer_params(layer: LayerInfo, ranks: tuple[int, ...] | None = None, method: str = "") -> int:
    """Parameters of a layer, dense (``ranks=None``) or decomposed at (per-group) ``ranks`` (by ``method``:
    ``""`` the layer's own decomposition, ``"cp"`` / ``"spatial"`` see :mod:`lrviz.methods`)."""
    bias = layer.out_channels if layer.bias else 0
    dense = _prod(layer.weight_shape)
    if ranks is None:
        return dense + bias
    if method and method != "tucker2":
        from .methods import method_max_rank, method_params

        return dense + bias if ranks[0] >= method_max_rank(layer, method) else method_params(layer, method, ranks[0])
    out_f, in_f = factor_structure(layer, ranks)
    if not (out_f or in_f):
        return dense + bias
    g, c_out, c_in = layer.groups, layer.out_channels, layer.in_channels
    if layer.kind == TUCKER2:
        o, i, kh, kw = layer.group_shape
        r_out = ranks[0] if out_f else o
        r_in = ranks[1] if in_f else i
        return (c_in * r_in if in_f else 0) + g * r_in * r_out * kh * kw + (r_out * c_out if out_f else 0) + bias
    return ranks[0] * (c_in + c_out) + bias


def _call_macs(layer: LayerInfo, call: LayerCall, ranks: tuple[int, ...] | None, method: str = "") -> int:
    b = 1 if layer.kind == SVD_LINEAR else call.batch
    if ranks is not None and method and method != "tucker2":
        from .methods import method_call_macs, method_max_rank

        if ranks[0] < method_max_rank(layer, method):
            return method_call_macs(layer, method, ranks[0], b, call.in_hw, call.out_hw)
        ranks = None
    P = call.positions if layer.kind == SVD_LINEAR else b * _prod(call.out_hw)
    g, c_out, c_in = layer.groups, layer.out_channels, layer.in_channels
    if layer.kind == TUCKER2:
        o, i, kh, kw = layer.group_shape
        if ranks is None:
            return P * c_out * i * kh * kw
        out_f, in_f = factor_structure(layer, ranks)
        r_out = ranks[0] if out_f else o
        r_in = ranks[1] if in_f else i
        p_in = b * _prod(call.in_hw)
        return (p_in * c_in * r_in if in_f else 0) + P * (g * r_in * r_out * kh * kw + (r_out * c_out if out_f else 0))
    if ranks is None or not factor_structure(layer, ranks)[0]:
        return P * c_out * (c_in // g)
    return P * ranks[0] * (c_in + c_out)


def layer_macs(layer: LayerInfo, io: LayerIO, ranks: tuple[int, ...] | None = None, method: str = "") -> int:
    """MACs at batch 1 of a layer, dense (``ranks=None``) or decomposed at (per-group) ``ranks`` (by
    ``method``, as :func:`layer_params`), summed over every call recorded in ``io`` (see module docstring)."""
    return int(sum(_call_macs(layer, c, ranks, method) for c in io.all_calls))


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else :class:`LrvizError`."""
    if metric not in METRICS:
        raise LrvizError(f"metric must be 'params' or 'macs'; got {metric!r}")
    return metric


def layer_cost(layer: LayerInfo, io: LayerIO, ranks: tuple[int, ...] | None, metric: str) -> int:
    """:func:`layer_macs` (``metric="macs"``) or :func:`layer_params` (``"params"``) of a layer."""
    return layer_macs(layer, io, ranks) if metric == "macs" else layer_params(layer, ranks)


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

    def ratio(self, metric: str) -> float:
        """:attr:`params_ratio` or :attr:`macs_ratio`, by ``metric`` (one of :data:`METRICS`)."""
        return self.macs_ratio if check_metric(metric) == "macs" else self.params_ratio

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
