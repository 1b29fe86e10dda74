"""Accuracy (with confidence intervals) and latency of image classifiers.

:func:`evaluate` measures top-1 / top-5 accuracy and mean cross-entropy of a model on a dataset;
:func:`measure_latency` and :func:`compare_latency` time forward passes with
:class:`torch.utils.benchmark.Timer`. Models are ``torch.nn.Module`` objects or
``torch.export.ExportedProgram`` objects. The caller's model is never left modified: its training
flags are restored and it is never moved to another device (a copy is used instead).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrviz.data import make_loader, subset
from lrviz.errors import LrvizError, is_int
from lrviz.pt2 import user_input_shape

logger = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "LatencyResult",
    "compare_latency",
    "evaluate",
    "measure_latency",
    "wilson_interval",
]

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score confidence interval for a binomial proportion ``k / n``.

    Parameters
    ----------
    k : int
        Number of successes, ``0 <= k <= n``.
    n : int
        Number of trials, ``n >= 0``.
    z : float
        Standard-normal quantile; the default gives a 95 % interval.

    Returns
    -------
    (float, float)
        Lower and upper bound, within ``[0, 1]``. For ``n == 0`` returns ``(0.0, 1.0)``.

    Raises
    ------
    LrvizError
        If ``n < 0``, ``k`` is outside ``[0, n]`` or ``z`` is not positive.
    """
    if n < 0 or k < 0 or k > n:
        raise LrvizError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}.")
    if not z > 0:
        raise LrvizError(f"wilson_interval needs z > 0, got z={z}.")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return float(lo), float(hi)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of a model on a dataset.

    Attributes
    ----------
    top1 : float
        Top-1 accuracy, a fraction in ``[0, 1]``.
    top1_ci : (float, float)
        95 % Wilson confidence interval of ``top1``.
    top5 : float or None
        Top-5 accuracy; None when the model has 5 classes or fewer.
    loss : float
        Mean cross-entropy (natural log).
    n : int
        Number of images evaluated.
    seconds : float
        Wall-clock time of the evaluation.
    correct : int
        Number of top-1 correct images.
    """

    top1: float
    top1_ci: tuple[float, float]
    top5: float | None
    loss: float
    n: int
    seconds: float
    correct: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary.

        Returns
        -------
        dict
            ``{"top1", "top1_ci": [lo, hi], "top5", "loss", "n"}`` with plain Python numbers.
        """
        return {
            "top1": float(self.top1),
            "top1_ci": [float(self.top1_ci[0]), float(self.top1_ci[1])],
            "top5": None if self.top5 is None else float(self.top5),
            "loss": float(self.loss),
            "n": int(self.n),
        }


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one forward pass.

    Attributes
    ----------
    median_ms : float
        Median time of one forward pass of a batch, in milliseconds.
    iqr_ms : float
        Interquartile range of the measured times, in milliseconds.
    batch_size : int
        Images per forward pass.
    device : str
        Device the model ran on.
    n_runs : int
        Number of timed measurements (each averages ``number_per_run`` calls).
    threads : int
        Number of intra-op CPU threads used.
    number_per_run : int
        Forward passes averaged in each measurement.
    times_ms : tuple of float
        The individual measurements, in milliseconds.
    """

    median_ms: float
    iqr_ms: float
    batch_size: int
    device: str
    n_runs: int
    threads: int = 1
    number_per_run: int = 1
    times_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def per_image_ms(self) -> float:
        """Median milliseconds per image (``median_ms / batch_size``)."""
        return self.median_ms / self.batch_size

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return 1000.0 * self.batch_size / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (without the individual times).

        Returns
        -------
        dict
            ``median_ms``, ``iqr_ms``, ``batch_size``, ``device``, ``n_runs``, ``threads``,
            ``number_per_run``.
        """
        return {
            "median_ms": float(self.median_ms),
            "iqr_ms": float(self.iqr_ms),
            "batch_size": int(self.batch_size),
            "device": str(self.device),
            "n_runs": int(self.n_runs),
            "threads": int(self.threads),
            "number_per_run": int(self.number_per_run),
        }


# ----------------------------------------------------------------------------------------------
# model preparation
# ----------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LrvizError(
            f"Unknown device {device!r}. Use 'cpu', 'cuda' or 'cuda:N'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LrvizError(
            f"Device {device!r} was requested but CUDA is not available on this machine. "
            "Use device='cpu'."
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _is_exported(model: Any) -> bool:
    return isinstance(model, torch.export.ExportedProgram)


def _static_batch_size(program: torch.export.ExportedProgram) -> int | None:
    """The batch size an exported program was specialised to, or None if it is dynamic."""
    shape = user_input_shape(program)
    return int(shape[0]) if shape and isinstance(shape[0], int) else None


@contextlib.contextmanager
def _prepared(model: Any, device: torch.device) -> Iterator[tuple[nn.Module, int | None]]:
    """Yield ``(module, static_batch)`` ready for inference on ``device``.

    The caller's module is put in eval mode and its training flags are restored on exit; if it
    lives on another device a deep copy is used, so the caller's module is never moved.
    """
    static_batch: int | None = None
    if _is_exported(model):
        static_batch = _static_batch_size(model)
        program = model
        if _program_device(model) != device:
            from torch.export.passes import move_to_device_pass

            # move_to_device_pass works in place: move a copy, never the caller's program.
            program = move_to_device_pass(copy.deepcopy(model), device)
        module = program.module()  # a fresh module each call: nothing to restore
        _try_eval(module)
        yield module, static_batch
        return
    if not isinstance(model, nn.Module):
        raise LrvizError(
            f"Expected a torch.nn.Module or torch.export.ExportedProgram, got "
            f"{type(model).__name__}. Load the model first (e.g. with torch.load or "
            "torch.export.load)."
        )
    if _module_device(model) != device:
        module = copy.deepcopy(model).to(device)
        _try_eval(module)
        yield module, None
        return
    flags = [(m, m.training) for m in model.modules()]
    try:
        _try_eval(model)
        yield model, None
    finally:
        for m, flag in flags:
            m.training = flag


def _batch_fits(module: nn.Module, data, batch: int, device: torch.device) -> bool:
    """Whether a batch of ``batch`` images fits in memory (:mod:`lrviz.memory`'s estimate)."""
    try:
        _check_batch_memory(module, data, batch, device, None)
    except LrvizError:
        return False
    return True


def _check_batch_memory(module: nn.Module, data, batch: int, device: torch.device, static_batch: int | None) -> None:
    """Before the first batch: a clear message when a batch cannot fit in memory (:mod:`lrviz.memory`;
    one probing forward pass of one image)."""
    if static_batch is not None:  # an exported program with a fixed batch: no batch-1 probe
        return
    from .memory import check_memory, estimate_evaluation

    shape = tuple(torch.as_tensor(data[0][0]).shape)
    check_memory(estimate_evaluation(module, shape, batch, device=device))


def _program_device(program: torch.export.ExportedProgram) -> torch.device:
    for tensor in program.state_dict.values():
        return tensor.device
    return torch.device("cpu")


def _try_eval(module: nn.Module) -> None:
    try:
        module.eval()
    except NotImplementedError:
        # Modules from torch.export ("Calling eval() is not supported yet") are already fixed.
        pass


def _forward(module: nn.Module, x: torch.Tensor, static_batch: int | None) -> torch.Tensor:
    """Run ``module`` on ``x``, padding the batch for exported programs with a fixed batch size."""
    if static_batch is None or x.shape[0] == static_batch:
        return _call(module, x)
    outs = []
    for start in range(0, x.shape[0], static_batch):
        chunk = x[start : start + static_batch]
        real = chunk.shape[0]
        if real < static_batch:
            pad = chunk.new_zeros((static_batch - real, *chunk.shape[1:]))
            chunk = torch.cat([chunk, pad])
        outs.append(_call(module, chunk)[:real])
    return torch.cat(outs)


def _call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = module(x)
    except (RuntimeError, AssertionError, ValueError, TypeError) as exc:
        if isinstance(exc, LrvizError):
            raise
        raise LrvizError(
            f"The model failed on a batch of shape {tuple(x.shape)}: {type(exc).__name__}: "
            f"{exc}. Check that the model's expected input (channels, image size) matches the "
            "dataset (e.g. --resize or --grayscale)."
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise LrvizError(
            f"The model returned a {type(out).__name__}, expected a tensor of logits of shape "
            "N x num_classes. Wrap the model so that forward() returns only the logits."
        )
    return out


# ----------------------------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module | torch.export.ExportedProgram,
    dataset: torch.utils.data.Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Measure top-1 / top-5 accuracy and mean cross-entropy of a classifier.

    Parameters
    ----------
    model : torch.nn.Module or torch.export.ExportedProgram
        The classifier; it must return logits of shape ``N x num_classes``. It runs in eval mode
        under :func:`torch.inference_mode`; its training flags are restored afterwards, and if it
        lives on another device than ``device`` a copy is used.
    dataset : torch.utils.data.Dataset
        Items ``(image, label)``, e.g. from :func:`lrviz.data.get_dataset`.
    limit : int, optional
        Evaluate on a deterministic subset of this many images (see :func:`lrviz.data.subset`).
    batch_size : int
        Images per forward pass, at most: the batch is halved until its memory estimate fits
        (:func:`lrviz.devices.fitting_batch`), and on CUDA halved again after an out-of-memory error
        (the evaluation then restarts; the result does not depend on the batch).
    device : str or torch.device, optional
        ``"auto"`` / None (default): ``"cuda"`` when available, else ``"cpu"``.
    amp : bool
        Mixed precision (``torch.autocast``, bfloat16 where supported) — CUDA only.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch.

    Returns
    -------
    EvalResult
        Accuracy, its 95 % Wilson interval, top-5 accuracy, loss, count and wall time.

    Raises
    ------
    LrvizError
        For an empty dataset, a model whose output is not ``N x num_classes``, labels out of
        range, a model that fails on the data, or bad arguments.
    """
    from .devices import amp_context, fitting_batch, is_out_of_memory

    dev = _resolve_device(device)
    data = subset(dataset, limit)
    total = len(data)
    if total == 0:
        raise LrvizError("The dataset is empty; there is nothing to evaluate. Check the data path.")
    num_classes = getattr(dataset, "num_classes", None)
    start = time.perf_counter()
    with _prepared(model, dev) as (module, static_batch), torch.inference_mode(), amp_context(dev, amp):
        batch = min(batch_size, total)
        if static_batch is None:
            batch = fitting_batch(lambda b: _batch_fits(module, data, b, dev), batch, "an evaluation batch")
        _check_batch_memory(module, data, batch, dev, static_batch)
        while True:
            tally = _Tally()
            try:
                for x, y in make_loader(data, batch_size=batch):
                    x = x.to(dev, non_blocking=True)
                    y = torch.as_tensor(y).to(dev, non_blocking=True).long()
                    out = _forward(module, x, static_batch)
                    _check_output(out, x, y, num_classes)
                    tally.add(out, y)
                    if progress is not None:
                        progress(tally.done, total)
                break
            except Exception as exc:  # noqa: BLE001 - only a CUDA out-of-memory error is retried
                if not (dev.type == "cuda" and is_out_of_memory(exc) and batch > 1 and static_batch is None):
                    raise
                torch.cuda.empty_cache()
                batch //= 2
                logger.warning("CUDA ran out of memory; evaluating again with batches of %d", batch)
    result = tally.result(time.perf_counter() - start)
    logger.info(
        "Evaluated %d images on %s in %.2fs: top1=%.4f loss=%.4f", result.n, dev, result.seconds,
        result.top1, result.loss,
    )
    return result


def _check_output(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, num_classes: int | None) -> None:
    """One logit per class for every image, and labels the model can output."""
    if out.ndim != 2 or out.shape[0] != x.shape[0] or (num_classes is not None and out.shape[1] != num_classes):
        expected = f"{x.shape[0]} x {num_classes if num_classes is not None else 'C'}"
        raise LrvizError(
            f"The model returned output of shape {tuple(out.shape)} for a batch of "
            f"{x.shape[0]} images; expected {expected} (one logit per class). Make sure "
            "the model's last layer has one output per dataset class."
        )
    classes = out.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise LrvizError(
            f"Dataset labels range {int(y.min())}..{int(y.max())} but the model has "
            f"{classes} outputs. Use a model trained for this dataset."
        )


class _Tally:
    """Running counts of one evaluation: images, top-1 and top-5 hits, summed cross-entropy."""

    def __init__(self) -> None:
        self.done = self.correct = self.correct5 = 0
        self.loss_sum = 0.0
        self.has_top5: bool | None = None  # decided by the first batch: more than 5 classes

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        logits = out.float()
        self.loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        self.correct += int((logits.argmax(dim=1) == y).sum())
        if self.has_top5 is None:
            self.has_top5 = out.shape[1] > 5
        if self.has_top5:
            top5 = logits.topk(5, dim=1).indices
            self.correct5 += int((top5 == y[:, None]).any(dim=1).sum())
        self.done += int(out.shape[0])

    def result(self, seconds: float) -> EvalResult:
        return EvalResult(
            top1=self.correct / self.done,
            top1_ci=wilson_interval(self.correct, self.done),
            top5=(self.correct5 / self.done) if self.has_top5 else None,
            loss=self.loss_sum / self.done,
            n=self.done,
            seconds=seconds,
            correct=self.correct,
        )


# ----------------------------------------------------------------------------------------------
# latency
# ----------------------------------------------------------------------------------------------


def _check_latency_args(
    input_size: Any, batch_size: Any, min_run_time: Any, threads: Any
) -> tuple[tuple[int, int, int], int]:
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise LrvizError(
            f"input_size must be (channels, height, width) of positive ints, got {input_size!r}. "
            "Use e.g. (1, 28, 28)."
        )
    if not is_int(batch_size) or batch_size < 1:
        raise LrvizError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not (isinstance(min_run_time, (int, float)) and min_run_time > 0):
        raise LrvizError(
            f"min_run_time must be a positive number of seconds, got {min_run_time!r}."
        )
    if threads is not None and (not is_int(threads) or threads < 1):
        raise LrvizError(f"threads must be a positive integer or None, got {threads!r}.")
    n_threads = int(threads) if threads is not None else torch.get_num_threads()
    return size, n_threads  # type: ignore[return-value]


def _make_timer(module: nn.Module, x: torch.Tensor, static_batch: int | None, threads: int):
    from torch.utils.benchmark import Timer

    if static_batch is not None and x.shape[0] != static_batch:
        raise LrvizError(
            f"The exported program was exported with a fixed batch size of {static_batch}, "
            f"but batch_size={x.shape[0]} was requested. Use batch_size={static_batch}, or "
            "export with a dynamic batch dimension."
        )
    _call(module, x)  # validate once, with a friendly error
    return Timer(stmt="module(x)", globals={"module": module, "x": x}, num_threads=threads)


def _example_input(
    size: tuple[int, int, int], batch_size: int, device: torch.device
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, *size, generator=gen).to(device)


def _summarise(times_s: list[float], batch_size: int, device: torch.device, threads: int,
               number_per_run: int) -> LatencyResult:
    times_ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    q1, median, q3 = np.percentile(times_ms, [25, 50, 75])
    return LatencyResult(
        median_ms=float(median),
        iqr_ms=float(q3 - q1),
        batch_size=int(batch_size),
        device=str(device),
        n_runs=int(times_ms.size),
        threads=int(threads),
        number_per_run=int(number_per_run),
        times_ms=tuple(float(t) for t in times_ms),
    )


def measure_latency(
    model: nn.Module | torch.export.ExportedProgram,
    input_size: tuple[int, int, int],
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.5,
    threads: int | None = None,
) -> LatencyResult:
    """Time one forward pass with :class:`torch.utils.benchmark.Timer`.

    Parameters
    ----------
    model : torch.nn.Module or torch.export.ExportedProgram
        The model (not modified; see :func:`evaluate`).
    input_size : (int, int, int)
        ``(C, H, W)`` of one image; random inputs of this size are used.
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        Where to run.
    min_run_time : float
        Seconds of measurement (``blocked_autorange(min_run_time=...)``).
    threads : int, optional
        CPU intra-op threads during timing; default the current ``torch.get_num_threads()``.

    Returns
    -------
    LatencyResult
        Median and IQR of the per-call time, in milliseconds.

    Raises
    ------
    LrvizError
        For bad arguments or a model that fails on the input.
    """
    size, n_threads = _check_latency_args(input_size, batch_size, min_run_time, threads)
    dev = _resolve_device(device)
    x = _example_input(size, int(batch_size), dev)
    with _prepared(model, dev) as (module, static_batch), torch.inference_mode():
        timer = _make_timer(module, x, static_batch, n_threads)
        measurement = timer.blocked_autorange(min_run_time=float(min_run_time))
    return _summarise(list(measurement.times), int(batch_size), dev, n_threads,
                      int(measurement.number_per_run))


def compare_latency(
    models: Mapping[str, nn.Module | torch.export.ExportedProgram],
    input_size: tuple[int, int, int],
    *,
    rounds: int = 5,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    min_run_time: float = 0.2,
    threads: int | None = None,
) -> dict[str, LatencyResult]:
    """Time several models side by side, interleaved round-robin.

    In each of ``rounds`` rounds every model is timed for ``min_run_time`` seconds (the order
    alternates between rounds), so slow drifts of machine load affect all models alike. The
    measurements of all rounds are pooled into one median / IQR per model.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module or torch.export.ExportedProgram
        The models to compare, e.g. ``{"baseline": m0, "compressed": m1}``.
    input_size : (int, int, int)
        ``(C, H, W)`` of one image.
    rounds : int
        Number of round-robin rounds.
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        Where to run.
    min_run_time : float
        Seconds of measurement per model and round.
    threads : int, optional
        CPU intra-op threads during timing.

    Returns
    -------
    dict of str to LatencyResult
        One result per model, in the order of ``models``.

    Raises
    ------
    LrvizError
        For no models, bad arguments or a model that fails on the input.
    """
    if not models:
        raise LrvizError("compare_latency needs at least one model, got none.")
    if not is_int(rounds) or rounds < 1:
        raise LrvizError(f"rounds must be a positive integer, got {rounds!r}.")
    size, n_threads = _check_latency_args(input_size, batch_size, min_run_time, threads)
    dev = _resolve_device(device)
    x = _example_input(size, int(batch_size), dev)
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    per_run: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        timers = {}
        for name in names:
            module, static_batch = stack.enter_context(_prepared(models[name], dev))
            with torch.inference_mode():
                timers[name] = _make_timer(module, x, static_batch, n_threads)
        stack.enter_context(torch.inference_mode())
        for r in range(int(rounds)):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                m = timers[name].blocked_autorange(min_run_time=float(min_run_time))
                times[name].extend(m.times)
                per_run[name] = int(m.number_per_run)
    results = {
        name: _summarise(times[name], int(batch_size), dev, n_threads, per_run[name])
        for name in names
    }
    logger.info(
        "Latency (%s, batch %d): %s", dev, batch_size,
        ", ".join(f"{n}={r.median_ms:.3f}ms" for n, r in results.items()),
    )
    return results
