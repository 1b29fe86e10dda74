"""How a model is run for speed: BatchNorm folded into its conv, channels-last memory, ``torch.compile``.

A low-rank plan replaces one conv by two or three thinner ones. In PyTorch's default execution (NCHW,
every BatchNorm and ReLU a separate pass over memory) the extra layers and their intermediate tensors
can cost more than the MACs saved — a plan with 4.7× fewer MACs measured *slower* than the original.
The executions here remove that overhead; which one is fastest depends on the device and the model, so
:func:`choose_execution` measures them side by side and picks one.

``eager``
    the model as it is (eval mode).
``fold``
    every ``Conv2d`` followed by a ``BatchNorm2d`` (in eval mode) merged into one conv with
    ``torch.fx.experimental.optimization.fuse`` (a copy; the model is not touched). A model that
    ``torch.fx`` cannot trace is run unfolded (the returned :class:`Prepared` says so).
``channels_last``
    ``fold`` with weights and inputs in ``torch.channels_last`` memory format (oneDNN's fast path on
    CPU; tensor cores on CUDA).
``compile``
    ``channels_last`` under ``torch.compile`` (inductor: pointwise ops fused into the convs' epilogues).
    Needs a C++ compiler on CPU; a failure falls back to ``channels_last`` and is reported, not raised.

Every execution computes the same function up to float rounding (tests check ≤ 1e-5 relative to the
output scale).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .errors import LrvizError

__all__ = ["EXECUTIONS", "Prepared", "fold_batchnorm", "fresh_compile_cache", "prepare", "to_channels_last"]

log = logging.getLogger(__name__)

#: The executions, from the plainest to the most optimised.
EXECUTIONS = ("eager", "fold", "channels_last", "compile")


class _ChannelsLast(nn.Module):
    """Runs ``inner`` on a channels-last copy of a 4-D input (other inputs unchanged)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)


@dataclass
class Prepared:
    """A model ready to time: ``module`` (a copy in eval mode), the execution asked for and what was
    actually applied (``applied`` ⊆ {"fold", "channels_last", "compile"}), with a note for any step that
    could not be applied."""

    module: nn.Module
    execution: str
    applied: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def __call__(self, x):
        return self.module(x)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every conv → BatchNorm pair merged into one conv.

    Uses ``torch.fx.experimental.optimization.fuse``: a conv whose output feeds only a BatchNorm gets
    ``W' = W·γ/√(var+ε)`` and ``b' = (b − μ)·γ/√(var+ε) + β``. Raises :class:`LrvizError` when the model
    cannot be traced symbolically by ``torch.fx``.
    """
    from torch.fx.experimental.optimization import fuse

    net = copy.deepcopy(model).eval()
    try:
        return fuse(net, inplace=True)
    except Exception as e:  # torch.fx cannot trace data-dependent control flow, for instance
        raise LrvizError(f"BatchNorm folding needs a model torch.fx can trace ({type(e).__name__})") from e


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` (not copied) with its 4-D weights in channels-last format, wrapped so that its input is
    converted too."""
    return _ChannelsLast(model.to(memory_format=torch.channels_last))


def fresh_compile_cache() -> None:
    """Forget every ``torch.compile`` graph (``torch._dynamo.reset()``).

    Dynamo keeps a few graphs per ``forward`` code object (``recompile_limit``, 8) and silently runs
    eager beyond that — every plan has new shapes, so a long session (the dashboard, the solver's
    rounds) would end up timing eager code labelled "compile". Each measurement starts from an empty
    cache instead.
    """
    try:
        torch._dynamo.reset()
    except Exception:  # pragma: no cover - dynamo unavailable on this build
        log.debug("torch._dynamo.reset failed", exc_info=True)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare(model: nn.Module, execution: str = "channels_last", example: torch.Tensor | None = None,
            device: str | torch.device | None = None) -> Prepared:
    """A copy of ``model`` set up for ``execution`` (one of :data:`EXECUTIONS`); ``model`` is untouched.

    ``compile`` runs ``example`` once (the compilation happens there); without an example, or when the
    compilation fails, the result is ``channels_last`` with a note. ``device``: where the copy runs
    (default: where ``model`` is).
    """
    dev = torch.device(device) if device is not None else _device_of(model)
    if execution not in EXECUTIONS:
        raise LrvizError(f"unknown execution {execution!r}; choose one of {', '.join(EXECUTIONS)}")
    notes: list[str] = []
    applied: list[str] = []
    if execution == "eager":
        return Prepared(copy.deepcopy(model).eval().to(dev), execution)
    try:
        net = fold_batchnorm(model)
        applied.append("fold")
    except LrvizError as e:
        notes.append(f"BatchNorm not folded: {e}")
        net = copy.deepcopy(model).eval()
    net = net.to(dev)
    if execution in ("channels_last", "compile"):
        net = to_channels_last(net)
        applied.append("channels_last")
    if execution == "compile":
        if example is None:
            notes.append("not compiled: no example input")
        else:
            try:
                compiled = torch.compile(net, dynamic=False)
                with torch.inference_mode():
                    compiled(example)
                net = compiled
                applied.append("compile")
            except Exception as e:  # no C++ compiler, an unsupported op, ...: run uncompiled
                log.debug("torch.compile failed", exc_info=True)
                notes.append(f"not compiled ({type(e).__name__}); run with channels_last")
                torch._dynamo.reset()
    return Prepared(net, execution, tuple(applied), notes)
