"""Where lrviz runs: ``auto`` / ``cpu`` / ``cuda[:N]`` resolved against the machine, mixed precision on
CUDA, and batch sizes that adapt to the memory there is.

* :func:`resolve_device` — ``"auto"`` (or None) is CUDA when torch sees a GPU, else the CPU; ``cuda``
  without one, or a ``cuda:N`` beyond the machine's GPUs, is an :class:`~lrviz.errors.LrvizError` that
  says so (never torch's traceback).
* :func:`device_label` — ``"CUDA:0 (NVIDIA H200, 139.8 GiB)"`` / ``"CPU (2 threads)"``: what the CLI
  and the dashboard show.
* :func:`amp_context` — ``torch.autocast`` in bfloat16 (float16 where the GPU has no bfloat16) for
  evaluation and fine-tuning on CUDA; asked for on the CPU it is an error, not a silent no-op.
* :func:`fitting_batch` / :func:`is_out_of_memory` — the largest batch (halving from the one asked
  for) whose memory estimate (:mod:`lrviz.memory`) fits, and the test for a CUDA out-of-memory error
  after which callers halve the batch and retry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

from .errors import LrvizError

__all__ = ["DEVICE_CHOICES", "resolve_device", "device_label", "amp_dtype", "amp_context", "is_out_of_memory", "fitting_batch"]

log = logging.getLogger(__name__)

#: What ``--device`` accepts (``cuda:N`` too).
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` means on this machine (``auto``/None: CUDA when available, else CPU)."""
    if isinstance(name, torch.device):
        name = str(name)
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise LrvizError(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU found'}); use --device cpu or auto")
        idx = int(text[5:]) if ":" in text else torch.cuda.current_device()
        if idx >= torch.cuda.device_count():
            raise LrvizError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
        return torch.device("cuda", idx)
    raise LrvizError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def device_label(device: str | torch.device | None = "auto") -> str:
    """``"CUDA:0 (NVIDIA H200, 139.8 GiB)"`` or ``"CPU (2 threads)"``."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        return f"CUDA:{dev.index} ({p.name}, {p.total_memory / 2**30:.1f} GiB)"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'s' if n != 1 else ''})"


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type on ``device``: bfloat16 where the GPU supports it, else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def amp_context(device: torch.device, amp: bool) -> Iterator[None]:
    """``torch.autocast`` on CUDA when ``amp`` (:func:`amp_dtype`), else nothing; ``amp`` on the CPU is an error."""
    if not amp:
        yield
        return
    if device.type != "cuda":
        raise LrvizError("mixed precision (--amp) runs on CUDA only; drop --amp or use --device cuda")
    with torch.autocast("cuda", dtype=amp_dtype(device)):
        yield


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (after which a smaller batch may fit)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def fitting_batch(fits: Callable[[int], bool], batch: int, what: str = "batch") -> int:
    """The largest of ``batch``, ``batch // 2``, … ``1`` for which ``fits(b)`` holds (``fits`` raises or
    returns False when a batch does not fit); ``1`` is returned as is (its own check then says why)."""
    b = max(1, int(batch))
    while b > 1 and not fits(b):
        b //= 2
    if b != batch:
        log.warning("%s of %d does not fit in memory; using %d", what, batch, b)
    return b
