"""Training and fine-tuning.

:func:`finetune` recovers the accuracy of a decomposed model: SGD with Nesterov momentum, a small
learning rate with cosine decay, optional knowledge distillation from the uncompressed model
(Hinton et al. 2015), validation after every epoch, early stopping, best weights kept.

:func:`train_model` trains a network from scratch under one of the :data:`REGIMES` of He, Jiang & Wu
(2024) — ``plain``, ``ortho`` (soft orthogonality, :func:`soft_orthogonality`) or ``overparam``
(full-rank Tucker-2 form, :class:`OverparamConv2d`, folded back by :func:`fold`) — with a checkpoint
after every epoch that ``resume`` continues.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import make_loader, subset
from .errors import LrvizError
from .evaluate import evaluate

__all__ = [
    "EpochLog", "FinetuneResult", "finetune", "distillation_loss", "soft_orthogonality", "srip",
    "OverparamConv2d", "overparameterize", "fold", "regularizer", "TrainConfig", "train_model", "REGIMES",
]

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
    max_grad_norm: float = 5.0,
    keep: str = "best",
    amp: bool = False,
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
        training stops after ``patience`` epochs without improvement. It selects, so no accuracy may
        be reported on it, nor on ``train_set``: :func:`lrviz.data.finetune_splits` cuts train /
        validation / evaluation parts that share no image (what the CLI and the dashboard use).
    teacher : nn.Module, optional
        Uncompressed model for distillation (weight ``distill_alpha``, temperature ``temperature``).
    progress : callable, optional
        Called with a dict: ``{"event": "step", "epoch", "step", "steps", "loss"}`` every few steps
        and ``{"event": "epoch", "epoch", "train_loss", "val_top1", "lr", "seconds"}`` per epoch.
    should_stop : callable, optional
        Polled every step; returning True cancels (the best weights so far are returned).
    keep : {"best", "last"}
        Return the best validation epoch's weights (default) or the last epoch's.
    device : str, optional
        ``"auto"`` / None: CUDA when available, else the CPU.
    amp : bool
        Mixed precision on CUDA (:func:`lrviz.devices.amp_context`: bfloat16, or float16 with a gradient
        scaler); validation runs under it too.
    """
    from .devices import amp_context, amp_dtype

    _check_finetune_args(keep, epochs, lr)
    device = _device(device)
    with amp_context(device, amp):  # refuses --amp off CUDA before any work
        pass
    scaler = torch.amp.GradScaler("cuda", enabled=bool(amp) and amp_dtype(device) == torch.float16)
    net = copy.deepcopy(model).to(device)
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).eval()
    loader = _shuffled_loader(train_set, train_limit, batch_size, seed)
    steps_per_epoch = max(1, len(loader))
    total_steps = max(1, epochs * steps_per_epoch)
    opt = _sgd(net, lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total_steps))
    best = _BestWeights(net, _validate(net, val_set, val_limit, device, amp))
    loss_fn = _distilled(teacher, distill_alpha, temperature)
    history: list[EpochLog] = []
    cancelled = stopped_early = False
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss_sum, seen, cancelled = _finetune_epoch(net, loader, opt, sched, loss_fn, epoch, device, max_grad_norm,
                                                    progress, should_stop, amp, scaler)
        if cancelled and seen == 0:
            break
        vres = _validate(net, val_set, val_limit, device, amp)
        history.append(_epoch_log(epoch, loss_sum / max(seen, 1), vres, opt, t0, progress))
        stopped_early = not best.offer(net, epoch, vres) and best.bad_epochs >= patience
        if stopped_early or cancelled:
            break
    if keep == "best":
        net.load_state_dict(best.state)
    net.eval()
    best_epoch = best.epoch if keep == "best" else len(history)
    return FinetuneResult(net, tuple(history), best_epoch, best.top1, stopped_early, cancelled)


def _check_finetune_args(keep: str, epochs: int, lr: float) -> None:
    if keep not in ("best", "last"):
        raise LrvizError(f"keep must be 'best' or 'last'; got {keep!r}")
    if epochs < 0:
        raise LrvizError(f"epochs must be ≥ 0; got {epochs}")
    if lr <= 0:
        raise LrvizError(f"learning rate must be > 0; got {lr}")


def _device(device: str | None) -> torch.device:
    from .devices import resolve_device

    return resolve_device(device)


def _shuffled_loader(train_set, limit: int | None, batch_size: int, seed: int):
    """Training batches, reshuffled each epoch by a generator seeded with ``seed`` (a subset first
    when ``limit`` is given)."""
    data = subset(train_set, limit, seed=seed) if limit else train_set
    return make_loader(data, batch_size=batch_size, shuffle=True, seed=seed)


def _sgd(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _cosine(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over ``total`` steps (the learning rate's, and the regularisers' λ)."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def _validate(net: nn.Module, val_set, val_limit: int | None, device, amp: bool = False):
    return evaluate(net, val_set, limit=val_limit, device=device, amp=amp) if val_set is not None else None


class _BestWeights:
    """The best validation epoch so far — highest top-1, then lowest loss — and a copy of its weights.

    Epoch 0 is the model before fine-tuning. Without validation every epoch counts as the best.
    """

    def __init__(self, net: nn.Module, vres) -> None:
        self.state = copy.deepcopy(net.state_dict())
        self.epoch = 0
        self.top1 = vres.top1 if vres is not None else None
        self.key = (vres.top1, -vres.loss) if vres is not None else None
        self.bad_epochs = 0  # epochs since the best one, for early stopping

    def offer(self, net: nn.Module, epoch: int, vres) -> bool:
        """Keep ``net``'s weights when ``epoch`` validated better (returns True); else count one more
        bad epoch (returns False)."""
        key = (vres.top1, -vres.loss) if vres is not None else None
        if key is None or self.key is None or key > self.key:
            self.state, self.key, self.epoch = copy.deepcopy(net.state_dict()), key, epoch
            self.top1 = vres.top1 if vres is not None else None
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False


def _epoch_log(epoch: int, train_loss: float, vres, opt, t0: float, progress) -> EpochLog:
    """Record an epoch: logged, and reported as an ``"epoch"`` event."""
    rec = EpochLog(epoch, train_loss, vres.top1 if vres is not None else None, opt.param_groups[0]["lr"],
                   time.perf_counter() - t0)
    log.info("epoch %d: train loss %.4f, val top-1 %s", epoch, rec.train_loss, rec.val_top1)
    if progress is not None:
        progress({"event": "epoch", **rec.__dict__})
    return rec


def _distilled(teacher: nn.Module | None, alpha: float, temperature: float):
    """The fine-tuning loss ``loss(x, out, y)``: cross-entropy, or :func:`distillation_loss` against
    ``teacher``'s logits."""
    if teacher is None:
        return lambda x, out, y: F.cross_entropy(out, y)

    def loss(x, out, y):
        with torch.no_grad():
            t_out = teacher(x)
        return distillation_loss(out, t_out, y, alpha, temperature)

    return loss


def _finetune_epoch(net, loader, opt, sched, loss_fn, epoch: int, device, max_grad_norm: float, progress, should_stop,
                    amp: bool = False, scaler=None):
    """One epoch of clipped SGD steps (forward under autocast with ``amp``; float16 gradients scaled by
    ``scaler``); returns ``(summed loss, images seen, cancelled)``."""
    from .devices import amp_context

    net.train()
    run_loss, seen = 0.0, 0
    steps = max(1, len(loader))
    for step, (x, y) in enumerate(loader, 1):
        if should_stop is not None and should_stop():
            return run_loss, seen, True
        x, y = x.to(device), y.to(device)
        with amp_context(device, amp):
            loss = loss_fn(x, net(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            # a freshly truncated net can have large gradients: clip so a small lr stays small
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
            opt.step()
        sched.step()
        run_loss += float(loss.detach()) * len(y)
        seen += len(y)
        if progress is not None and (step % 10 == 0 or step == steps):
            progress({"event": "step", "epoch": epoch, "step": step, "steps": steps, "loss": float(loss.detach())})
    return run_loss, seen, False


# ================================================================================================
# Low-rank-friendly training (He, Jiang & Wu 2024): orthogonal regularisation, over-parameterisation
# ================================================================================================

REGIMES = ("plain", "ortho", "overparam")


def _unfold0(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)


def soft_orthogonality(w: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality penalty ``‖G − I‖²_F`` (Bansal et al. 2018).

    ``w`` is reshaped to ``(C_out, C_in·kh·kw)`` and ``G`` is the Gram matrix of the smaller side
    (``W·Wᵀ`` when ``C_out ≤ C_in·kh·kw``, else ``Wᵀ·W``), so the penalty is 0 exactly when the rows
    (or the columns) are orthonormal. Gradient: ``4·(W·Wᵀ − I)·W`` for the row case.
    """
    m = _unfold0(w)
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    eye = torch.eye(g.shape[0], device=g.device, dtype=g.dtype)
    return (g - eye).pow(2).sum()


def srip(w: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """SRIP penalty ``σ_max(G − I)`` (spectral restricted isometry, Bansal et al. 2018).

    Estimated by ``iters`` power iterations started from a fixed vector (deterministic); the
    returned value is differentiable through the last iteration.
    """
    m = _unfold0(w)
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    a = g - torch.eye(g.shape[0], device=g.device, dtype=g.dtype)
    v = torch.ones(a.shape[0], 1, device=a.device, dtype=a.dtype) / math.sqrt(a.shape[0])
    with torch.no_grad():
        for _ in range(max(iters - 1, 0)):
            v = a @ v
            v = v / v.norm().clamp_min(1e-12)
    u = a @ v
    return u.norm()


class OverparamConv2d(nn.Module):
    """A k×k conv trained in full-rank Tucker-2 form ``W = core ×₀ U ×₁ V`` (over-parameterised).

    ``V`` ``(C_in, C_in)`` and ``U`` ``(C_out, C_out)`` start orthogonal and are kept near-orthogonal
    by :func:`soft_orthogonality`; the ``core`` ``(C_out, C_in, kh, kw)`` carries the spectrum. The
    forward pass convolves with the folded kernel, so it costs one conv; :meth:`fold` returns the
    equivalent plain ``nn.Conv2d`` exactly (the map is linear).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1:
            raise LrvizError("only groups=1 convolutions can be over-parameterised")
        c_out, c_in = conv.out_channels, conv.in_channels
        g = torch.Generator().manual_seed(c_out * 1000 + c_in)
        u = torch.linalg.qr(torch.randn(c_out, c_out, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(c_in, c_in, generator=g, dtype=torch.float64))[0]
        w = conv.weight.detach().double()
        core = torch.einsum("oikl,or,is->rskl", w, u, v)  # W = core ×0 U ×1 V exactly
        dt = conv.weight.dtype
        self.U = nn.Parameter(u.to(dt))
        self.V = nn.Parameter(v.to(dt))
        self.core = nn.Parameter(core.to(dt))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self._shape = (c_out, c_in, *conv.kernel_size)

    def weight(self) -> torch.Tensor:
        return torch.einsum("rskl,or,is->oikl", self.core, self.U, self.V)

    def forward(self, x):
        if self.padding_mode != "zeros":
            conv = nn.Conv2d(self._shape[1], self._shape[0], self._shape[2:], stride=self.stride, padding=self.padding,
                             dilation=self.dilation, bias=False, padding_mode=self.padding_mode)
            return conv._conv_forward(x, self.weight(), self.bias)
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def fold(self) -> nn.Conv2d:
        """The equivalent plain conv (computed in float64, then cast)."""
        c_out, c_in, kh, kw = self._shape
        conv = nn.Conv2d(c_in, c_out, (kh, kw), stride=self.stride, padding=self.padding, dilation=self.dilation,
                         bias=self.bias is not None, padding_mode=self.padding_mode)
        with torch.no_grad():
            w = torch.einsum("rskl,or,is->oikl", self.core.double(), self.U.double(), self.V.double())
            conv.weight.copy_(w.to(conv.weight.dtype))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.to(self.core.device)


def overparameterize(model: nn.Module, min_channels: int = 8) -> nn.Module:
    """A copy of ``model`` with every k×k (k>1), groups=1 conv with ≥ ``min_channels`` input channels
    replaced by :class:`OverparamConv2d` (the stem on 1–3 channels stays plain)."""
    from .layers import set_module

    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1 and m.in_channels >= min_channels:
            set_module(net, name, OverparamConv2d(m))
    return net


def fold(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`OverparamConv2d` folded back into a plain conv."""
    from .layers import set_module

    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        if isinstance(m, OverparamConv2d):
            set_module(net, name, m.fold())
    return net


def regularizer(model: nn.Module, regime: str, lam_ortho: float, lam_group: float) -> torch.Tensor:
    """The regime's penalty (0 for ``plain``).

    * ``ortho``: ``λ_o · Σ soft_orthogonality(W)`` over k×k / 1×1 convs (groups=1), i.e. on the mode-0
      unfolding of each kernel.
    * ``overparam``: ``λ_o · Σ (‖UᵀU − I‖² + ‖VᵀV − I‖²)`` keeps the factors near rotations, plus
      ``λ_g · Σ (Σ_i ‖core[i]‖ + Σ_j ‖core[:, j]‖)`` — a group-lasso on the core's output and input
      channel slices, which (with orthogonal U, V) pushes each kernel towards low multilinear rank.
    """
    total = None
    for m in model.modules():
        pen = None
        if regime == "ortho" and isinstance(m, nn.Conv2d) and m.groups == 1:
            pen = lam_ortho * soft_orthogonality(m.weight)
        elif regime == "overparam" and isinstance(m, OverparamConv2d):
            c = m.core
            pen = lam_ortho * (soft_orthogonality(m.U) + soft_orthogonality(m.V))
            pen = pen + lam_group * (c.flatten(1).norm(dim=1).sum() + c.transpose(0, 1).flatten(1).norm(dim=1).sum())
        if pen is not None:
            total = pen if total is None else total + pen
    if total is None:
        p = next(model.parameters())
        return torch.zeros((), device=p.device)
    return total


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in checkpoints and model cards)."""

    regime: str = "plain"
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    lam_ortho: float = 1e-3
    lam_group: float = 2e-4
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.5
    seed: int = 0
    train_limit: int | None = None

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise LrvizError(f"unknown training regime {self.regime!r}; available: {list(REGIMES)}")
        if self.epochs < 1:
            raise LrvizError(f"epochs must be ≥ 1; got {self.epochs}")


def train_model(
    model: nn.Module,
    train_set,
    config: TrainConfig,
    *,
    val_set=None,
    val_limit: int | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` (a copy) under a regime; returns the plain (folded) model and the epoch log.

    SGD with Nesterov momentum, linear warm-up then cosine decay per step. ``overparam`` trains the
    over-parameterised copy and folds it back at the end. With ``checkpoint`` the state after every
    epoch is written there (``torch.save`` of tensors and numbers only — loadable with
    ``weights_only=True``), and ``resume=True`` continues from it.
    """
    device = _device(device)
    torch.manual_seed(config.seed)
    net = overparameterize(model) if config.regime == "overparam" else copy.deepcopy(model)
    net = net.to(device)
    loader = _shuffled_loader(train_set, config.train_limit, config.batch_size, config.seed)
    steps = len(loader)
    total = steps * config.epochs
    warm = max(1, int(config.warmup_epochs * steps))
    opt = _sgd(net, config.lr, config.weight_decay)
    # linear warm-up, then cosine decay
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else _cosine(s - warm, max(1, total - warm)))
    history: list[dict] = []
    start_epoch = 1
    if resume and checkpoint and Path(checkpoint).exists():
        history, start_epoch = _resume(checkpoint, config, net, opt, sched, device)
    # the shuffling generator must also continue where it stopped
    loader.generator.manual_seed(config.seed + start_epoch)
    step = (start_epoch - 1) * steps
    for epoch in range(start_epoch, config.epochs + 1):
        loader.generator.manual_seed(config.seed + epoch)
        t0 = time.perf_counter()
        sum_loss, sum_reg, n, step = _train_epoch(net, loader, opt, sched, config, step, total, epoch, device,
                                                  progress, should_stop)
        rec = {"epoch": epoch, "train_loss": sum_loss / n, "reg": sum_reg / n, "lr": opt.param_groups[0]["lr"],
               "seconds": time.perf_counter() - t0, "val_top1": float("nan")}
        if val_set is not None:
            eval_net = fold(net) if config.regime == "overparam" else net
            rec["val_top1"] = evaluate(eval_net, val_set, limit=val_limit, device=device).top1
        history.append(rec)
        log.info("epoch %d/%d: loss %.4f reg %.4f val %.4f (%.0fs)", epoch, config.epochs, rec["train_loss"], rec["reg"], rec["val_top1"], rec["seconds"])
        if progress is not None:
            progress({"event": "epoch", **rec})
        if checkpoint:
            _save_checkpoint(checkpoint, config, epoch, net, opt, sched, history)
    out = fold(net) if config.regime == "overparam" else net
    return out.eval(), history


def _train_epoch(net, loader, opt, sched, config: TrainConfig, step: int, total: int, epoch: int, device, progress, should_stop):
    """One epoch of SGD on cross-entropy + the regime's penalty (its λ cosine-decayed over all steps);
    returns the summed loss and penalty, the images seen and the global step reached."""
    net.train()
    sum_loss = sum_reg = 0.0
    n = 0
    steps = len(loader)
    for i, (x, y) in enumerate(loader, 1):
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt("training cancelled")
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(net(x), y, label_smoothing=config.label_smoothing)
        s = _cosine(step, total)
        reg = regularizer(net, config.regime, config.lam_ortho * s, config.lam_group * s)
        opt.zero_grad(set_to_none=True)
        (loss + reg).backward()
        opt.step()
        sched.step()
        step += 1
        sum_loss += float(loss.detach()) * len(y)
        sum_reg += float(reg.detach()) * len(y)
        n += len(y)
        if progress is not None and (i % 20 == 0 or i == steps):
            progress({"event": "step", "epoch": epoch, "step": i, "steps": steps, "loss": float(loss.detach()), "reg": float(reg.detach())})
    return sum_loss, sum_reg, n, step


def _save_checkpoint(path: str, config: TrainConfig, epoch: int, net, opt, sched, history: list[dict]) -> None:
    """The state after ``epoch``: tensors and numbers only, so it loads with ``weights_only=True``."""
    keys = list(history[0])
    torch.save({"config": asdict(config), "epoch": epoch, "model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "history_keys": keys,
                "history": torch.tensor([[float(h[k]) for k in keys] for h in history], dtype=torch.float64)}, path)


def _resume(path: str, config: TrainConfig, net, opt, sched, device) -> tuple[list[dict], int]:
    """Restore a checkpoint written by :func:`_save_checkpoint` (same configuration only); returns the
    history so far and the next epoch."""
    ck = torch.load(path, map_location=device, weights_only=True)
    if ck.get("config") != asdict(config):
        raise LrvizError(f"checkpoint {path} was written with another configuration: {ck.get('config')}")
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"])
    history = [dict(zip(ck["history_keys"], row)) for row in ck["history"].tolist()]
    start_epoch = int(ck["epoch"]) + 1
    log.info("resumed from %s at epoch %d", path, start_epoch)
    return history, start_epoch
