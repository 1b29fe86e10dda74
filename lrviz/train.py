"""Training and fine-tuning.

:func:`finetune` recovers the accuracy of a decomposed model: SGD with Nesterov momentum, a small
learning rate with cosine decay, optional knowledge distillation from the uncompressed model
(Hinton et al. 2015), validation after every epoch, early stopping, best weights kept.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import make_loader, subset
from .errors import LrvizError
from .evaluate import evaluate

__all__ = ["EpochLog", "FinetuneResult", "finetune", "distillation_loss"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_top1: float | None
    lr: float
    seconds: float


@dataclass(frozen=True, eq=False)
class FinetuneResult:
    """Fine-tuned model (best validation epoch) and the per-epoch history."""

    model: nn.Module
    history: tuple[EpochLog, ...]
    best_epoch: int
    best_val_top1: float | None
    stopped_early: bool = False
    cancelled: bool = False


def distillation_loss(student_logits, teacher_logits, targets, alpha: float, temperature: float) -> torch.Tensor:
    """``(1−α)·CE(student, y) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``."""
    ce = F.cross_entropy(student_logits, targets)
    if alpha <= 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def finetune(
    model: nn.Module,
    train_set,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    val_set=None,
    val_limit: int | None = 2000,
    patience: int = 2,
    teacher: nn.Module | None = None,
    distill_alpha: float = 0.5,
    temperature: float = 4.0,
    train_limit: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Fine-tune a (decomposed) model; returns a new model, ``model`` is not modified.

    Parameters
    ----------
    model : nn.Module
    train_set : Dataset
        Training data (with augmentation if wanted).
    epochs : int
        Maximum number of epochs (0 returns a copy).
    lr : float
        Peak learning rate (cosine-decayed per step to 0 over all epochs).
    val_set : Dataset, optional
        Evaluated on ``val_limit`` images after each epoch; the best epoch's weights are returned and
        training stops after ``patience`` epochs without improvement.
    teacher : nn.Module, optional
        Uncompressed model for distillation (weight ``distill_alpha``, temperature ``temperature``).
    progress : callable, optional
        Called with a dict: ``{"event": "step", "epoch", "step", "steps", "loss"}`` every few steps
        and ``{"event": "epoch", "epoch", "train_loss", "val_top1", "lr", "seconds"}`` per epoch.
    should_stop : callable, optional
        Polled every step; returning True cancels (the best weights so far are returned).
    """
    if epochs < 0:
        raise LrvizError(f"epochs must be ≥ 0; got {epochs}")
    if lr <= 0:
        raise LrvizError(f"learning rate must be > 0; got {lr}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = copy.deepcopy(model).to(device)
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).eval()
    data = subset(train_set, train_limit, seed=seed) if train_limit else train_set
    loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=seed)
    steps_per_epoch = max(1, len(loader))
    total_steps = max(1, epochs * steps_per_epoch)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))

    history: list[EpochLog] = []
    best_state = copy.deepcopy(net.state_dict())
    best_top1: float | None = None
    best_epoch = 0
    if val_set is not None:
        best_top1 = evaluate(net, val_set, limit=val_limit, device=device).top1
    bad_epochs = 0
    cancelled = stopped_early = False
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        run_loss, seen = 0.0, 0
        for step, (x, y) in enumerate(loader, 1):
            if should_stop is not None and should_stop():
                cancelled = True
                break
            x, y = x.to(device), y.to(device)
            out = net(x)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = distillation_loss(out, t_out, y, distill_alpha, temperature)
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += float(loss) * len(y)
            seen += len(y)
            if progress is not None and (step % 10 == 0 or step == steps_per_epoch):
                progress({"event": "step", "epoch": epoch, "step": step, "steps": steps_per_epoch, "loss": float(loss)})
        if cancelled and seen == 0:
            break
        val = evaluate(net, val_set, limit=val_limit, device=device).top1 if val_set is not None else None
        rec = EpochLog(epoch, run_loss / max(seen, 1), val, opt.param_groups[0]["lr"], time.perf_counter() - t0)
        history.append(rec)
        log.info("epoch %d: train loss %.4f, val top-1 %s", epoch, rec.train_loss, val)
        if progress is not None:
            progress({"event": "epoch", **rec.__dict__})
        if val is None or best_top1 is None or val > best_top1:
            best_state, best_top1, best_epoch, bad_epochs = copy.deepcopy(net.state_dict()), val, epoch, 0
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                stopped_early = True
                break
        if cancelled:
            break
    net.load_state_dict(best_state)
    net.eval()
    return FinetuneResult(net, tuple(history), best_epoch, best_top1, stopped_early, cancelled)
