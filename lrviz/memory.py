"""How much memory the heavy steps need, checked against what is available before they start.

Each estimate is of the *additional* bytes a step allocates at its peak, on top of what is already
resident (the loaded model), computed from layer shapes (and, for an evaluation, the batch size and
one probing forward pass at batch 1):

* **analysis** (:func:`lrviz.analyze`) — one layer at a time: the float64 Gram matrix of an
  unfolding on its smaller side (``small² · 8`` bytes per group), the copy LAPACK's eigenvalue
  routine makes of it, one block of :data:`lrviz.spectra.GRAM_BLOCK_BYTES`, and the mode-1 unfolding
  (a transposed copy of the kernel). The largest layer counts.
* **decomposition** (:func:`lrviz.compress`) — followed layer by layer: the new model (a copy of every
  parameter and buffer, less the dense layers replaced so far), what the :class:`lrviz.FactorCache`
  keeps for every layer it factorises (a private copy of the layer and its float64 bases, ``C² · 8``
  bytes per mode), and the layer's temporaries: the Gram matrix and its eigenvector decomposition
  (≈ 4 × ``C² · 8``), or the float64 contraction of the kernel. (vgg16, ``ratio:3``: estimate
  1.6 GiB, measured 1.5–1.6 GiB; its spectra: 288 against 279–290 MiB.)
* **evaluation** (:func:`lrviz.evaluate.evaluate`) — per image: three times the largest tensor any
  operation produces (its input, its output and one more alive: a residual branch, a convolution's
  workspace), measured at batch 1 with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`
  (thread-local; the model is left untouched), plus the input twice (the collated batch and its copy
  on the device); times the batch size. (Measured on the 2-core CPU: resnet50 at batch 64, 727 MiB
  against an estimate of 662 MiB; vgg16 at batch 32, 1189 against 1213 MiB.)

:func:`check_memory` compares an estimate with :func:`available_memory` (``MemAvailable`` of
``/proc/meminfo``, or ``sysconf`` free pages, capped by a cgroup v2 limit; for CUDA
``torch.cuda.mem_get_info``) and raises :class:`~lrviz.errors.LrvizError` with what the step needs,
what is available and how to make it fit. ``LRVIZ_MEMORY_CHECK=0`` turns the check off. The
estimates are deliberately on the low side (a step may need a little more), so the check refuses
only work that clearly does not fit.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import LrvizError
from .layers import TUCKER2, LayerInfo, find_layers
from .spectra import GRAM_BLOCK_BYTES, GRAM_FP64_MAX_WORK

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "resident_memory",
    "model_bytes",
    "estimate_analysis",
    "estimate_compress",
    "estimate_evaluation",
    "check_memory",
]

log = logging.getLogger(__name__)

#: Set to ``0`` to skip :func:`check_memory`.
CHECK_ENV = "LRVIZ_MEMORY_CHECK"
#: An estimate must fit in this share of the available memory.
HEADROOM = 0.9
#: Live tensors per image in an inference pass, in units of the largest one (see the module docstring).
ACTIVATION_FACTOR = 3
F64 = 8


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak additional memory of one step.

    Attributes
    ----------
    task : str
        What the step is (``"analysis"``, ``"decomposition"``, ``"evaluation"``), for messages.
    bytes : int
        Estimated peak, on top of what is resident.
    parts : tuple of (str, int)
        What makes it up, largest first (for the message).
    fix : str
        How to make the step smaller.
    device : str
        Where the memory is needed (``"cpu"`` or a CUDA device).
    """

    task: str
    bytes: int
    parts: tuple[tuple[str, int], ...] = ()
    fix: str = ""
    device: str = "cpu"

    def describe(self) -> str:
        """``"about 1.2 GiB (new model 530 MiB, ...)"``."""
        parts = ", ".join(f"{label} {_fmt(b)}" for label, b in self.parts if b > 0)
        return f"about {_fmt(self.bytes)}" + (f" ({parts})" if parts else "")


def _fmt(n: float) -> str:
    n = float(n)
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# what is there
# ----------------------------------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (None when there is no limit)."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.strip().split("::", 1)[1] for line in f if line.startswith("0::")), None)
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            used = int(f.read().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError, StopIteration):
        return None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``, or None when unknown.

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (else ``sysconf`` available pages), capped by the
    room left under a cgroup v2 memory limit. CUDA: free bytes from ``torch.cuda.mem_get_info``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except Exception:  # no driver, a mocked device...
            return None
    if dev.type != "cpu":
        return None
    avail = _meminfo_available()
    room = _cgroup_room()
    if avail is None:
        return room
    return avail if room is None else min(avail, room)


def resident_memory() -> int | None:
    """This process's resident set size now (bytes; Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (each storage once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_meta:
            continue
        key = (t.device, t.untyped_storage().data_ptr()) if t.numel() else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# ----------------------------------------------------------------------------------------------
# estimates from shapes
# ----------------------------------------------------------------------------------------------


def _groups(l: LayerInfo) -> int:
    return int(getattr(l, "groups", 1) or 1)


def _group_shape(l: LayerInfo) -> tuple[int, ...]:
    return tuple(getattr(l, "group_shape", l.weight_shape))


def _unfoldings(l: LayerInfo) -> list[tuple[str, int, int, bool]]:
    """``(mode, rows, cols, copied)`` of one group's unfoldings (copied: the unfolding is a new tensor)."""
    shape = _group_shape(l)
    o, i = int(shape[0]), int(shape[1])
    k = math.prod(int(v) for v in shape[2:]) if len(shape) > 2 else 1
    if l.kind == TUCKER2:
        return [("mode-0", o, i * k, False), ("mode-1", i, o * k, True)]
    return [("matrix", o, i * k, False)]


def _numel(l: LayerInfo) -> int:
    return math.prod(int(v) for v in l.weight_shape)


def _spectra_peak(l: LayerInfo, elem: int = 4) -> int:
    """Peak bytes of one layer's spectra (:func:`lrviz.spectra.singular_values` of every mode)."""
    g = _groups(l)
    peak = 0
    for _, rows, cols, copied in _unfoldings(l):
        small, big = sorted((rows, cols))
        exact = g * small * small * big <= GRAM_FP64_MAX_WORK
        block = min(GRAM_BLOCK_BYTES, g * small * big * F64) if exact else min(GRAM_BLOCK_BYTES, g * small * small * 4)
        peak = max(peak, 2 * g * small * small * F64 + block + (g * rows * cols * elem if copied else 0))
    return peak


def estimate_analysis(model: nn.Module, layers: Sequence[LayerInfo] | None = None) -> MemoryEstimate:
    """Peak additional memory of the spectra of :func:`lrviz.analyze` (the largest layer's).

    Parameters
    ----------
    model : nn.Module
    layers : sequence of LayerInfo, optional
        Default: every decomposable layer (:func:`lrviz.find_layers`).
    """
    layers = list(find_layers(model)[0] if layers is None else layers)
    elem = _elem(model)
    worst = max(layers, key=lambda l: _spectra_peak(l, elem), default=None)
    if worst is None:
        return MemoryEstimate("analysis", 0)
    peak = _spectra_peak(worst, elem)
    return MemoryEstimate(
        "analysis", peak, ((f"spectra of {worst.name} ({'×'.join(map(str, worst.weight_shape))})", peak),),
        fix="run a cost-only analysis (spectra=False), which needs no spectra",
        device=_device_of(model),
    )


def _factor_kept(l: LayerInfo, elem: int) -> int:
    """What a FactorCache keeps for a layer: the private copy (weight + bias) and the float64 bases."""
    g = _groups(l)
    o, i = (int(v) for v in _group_shape(l)[:2])
    bases = g * (o * o + i * i) if l.kind == TUCKER2 else g * min(o, i) ** 2
    return _numel(l) * elem + (l.out_channels if getattr(l, "bias", False) else 0) * F64 + bases * F64


def _factorize_transient(l: LayerInfo) -> int:
    """Temporaries of factorising one layer: the float64 Gram matrix and its eigenvector
    decomposition (a copy, the vectors and LAPACK's workspace: ≈ 4 × C² · 8 in all), one block."""
    g = _groups(l)
    o, i = (int(v) for v in _group_shape(l)[:2])
    n = max(o, i) if l.kind == TUCKER2 else min(o, i)
    return 4 * g * n * n * F64 + GRAM_BLOCK_BYTES


def _build_transient(l: LayerInfo, ranks: Sequence[int] | None, elem: int) -> int:
    """Temporaries of building one decomposed layer: Tucker-2, the float64 kernel and its contraction
    (≈ 2 × its size · 8); SVD, the float64 product ``r × max(m, n)`` and the new parameters."""
    if l.kind == TUCKER2:
        return 2 * _numel(l) * F64
    g = _groups(l)
    o, i = (int(v) for v in _group_shape(l)[:2])
    r = int(ranks[0]) if ranks else min(o, i)
    return g * r * max(o, i) * F64 + g * r * (o + i) * elem


def estimate_compress(model: nn.Module, layers: Iterable[LayerInfo] | None = None, factors=None,
                      ranks: dict[str, Sequence[int]] | None = None) -> MemoryEstimate:
    """Peak additional memory of :func:`lrviz.compress` decomposing ``layers`` (in that order).

    The new model starts as a copy of every parameter and buffer; layer by layer, the factors of a
    layer not in ``factors`` are computed and kept (a private copy of the layer and its float64
    bases) and the decomposed layer is built, replacing the dense one in the copy. The peak is the
    largest of those moments.

    Parameters
    ----------
    model : nn.Module
    layers : iterable of LayerInfo, optional
        The layers the plan decomposes, in plan order (default: every decomposable layer).
    factors : FactorCache, optional
        Layers already factorised there cost nothing more.
    ranks : dict, optional
        Planned ranks per layer name (default: full ranks, the largest temporaries).
    """
    layers = list(find_layers(model)[0] if layers is None else layers)
    elem = _elem(model)
    new = model_bytes(model)
    dev = _device_of(model)
    if dev != "cpu":  # the new model lives on the device, the factors on the CPU: check the device part
        return MemoryEstimate("decomposition", new, (("new model", new),), device=dev)
    ranks = ranks or {}
    kept = replaced = 0
    peak, at = new, (new, 0, 0, None)
    for l in layers:
        todo = factors is None or l.name not in factors
        keep = _factor_kept(l, elem) if todo else 0
        temp = max(_factorize_transient(l) if todo else 0, _build_transient(l, ranks.get(l.name), elem))
        now = new - replaced + kept + keep + temp
        if now > peak:
            peak, at = now, (new - replaced, kept + keep, temp, l)
        kept += keep
        replaced += _numel(l) * elem  # the dense layer leaves the new model
    model_part, factor_part, temp_part, worst = at
    parts = sorted([("new model", model_part), ("factors", factor_part),
                    (f"temporaries of {worst.name}" if worst is not None else "temporaries", temp_part)], key=lambda p: -p[1])
    return MemoryEstimate("decomposition", peak, tuple(parts),
                          fix="decompose fewer layers (keep the largest ones dense, e.g. --exclude 'classifier.*')")


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation returns (thread-local; nothing is changed)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def activation_bytes(model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None) -> int | None:
    """Largest tensor produced by any operation of a forward pass of one sample (bytes), or None
    when the model cannot run at batch 1.

    Runs one forward pass on zeros under :func:`torch.inference_mode` (the caller puts the model in
    eval mode; no hooks are added, so a model shared with other threads is not touched).
    """
    dev = torch.device(device) if device is not None else torch.device(_device_of(model))
    probe = _LargestOutput()
    try:
        x = torch.zeros((1, *(int(v) for v in input_shape)), device=dev)
        with torch.inference_mode(), probe:
            model(x)
    except Exception as exc:  # static batch sizes, odd inputs: no estimate
        log.debug("no activation estimate: %s", exc)
        return None
    return probe.largest


def estimate_evaluation(model: nn.Module, input_shape: Sequence[int], batch_size: int,
                        device: str | torch.device | None = None, per_image: int | None = None) -> MemoryEstimate:
    """Peak additional memory of evaluating ``model`` on batches of ``batch_size`` images.

    Parameters
    ----------
    model : nn.Module
        In eval mode.
    input_shape : sequence of int
        One image, ``(C, H, W)``.
    batch_size : int
    device : optional
        Where the model runs (default: where its parameters are).
    per_image : int, optional
        Activation bytes of one image (default: measured, :func:`activation_bytes`).
    """
    dev = str(torch.device(device) if device is not None else _device_of(model))
    act = activation_bytes(model, input_shape, dev) if per_image is None else int(per_image)
    inp = math.prod(int(v) for v in input_shape) * 4
    each = ACTIVATION_FACTOR * (act or 0) + 2 * inp
    b = int(batch_size)
    return MemoryEstimate("evaluation", b * each, ((f"activations of {b} images", b * ACTIVATION_FACTOR * (act or 0)),
                                                   (f"{b} input images", b * 2 * inp)),
                          fix=f"use a smaller batch size (each image needs about {_fmt(each)})", device=dev)


def check_memory(estimate: MemoryEstimate, available: int | None = None) -> None:
    """Raise when ``estimate`` does not fit in the available memory (see the module docstring).

    Parameters
    ----------
    estimate : MemoryEstimate
    available : int, optional
        Bytes available (default :func:`available_memory` of the estimate's device). Unknown: no check.

    Raises
    ------
    LrvizError
        ``"the decomposition needs about 5.1 GiB (...) but 3.2 GiB is available; ..."``.
    """
    if os.environ.get(CHECK_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    avail = available_memory(estimate.device) if available is None else int(available)
    if avail is None or estimate.bytes <= HEADROOM * avail:
        return
    where = "" if estimate.device == "cpu" else f" on {estimate.device}"
    fix = f"{estimate.fix}, " if estimate.fix else ""
    raise LrvizError(
        f"the {estimate.task} needs {estimate.describe()} of memory{where}, but only {_fmt(avail)} is available; "
        f"{fix}close other programs or use a machine with more memory "
        f"(set {CHECK_ENV}=0 to start anyway)"
    )


def _elem(model: nn.Module) -> int:
    p = next(iter(model.parameters()), None)
    return p.element_size() if p is not None else 4


def _device_of(model: nn.Module) -> str:
    """Where the model's parameters are (``"meta"``: nowhere — nothing to check)."""
    p = next(iter(model.parameters()), None)
    return "cpu" if p is None else str(p.device)
