"""The one training loop every method uses. Read it top to bottom: ``train``, then the
``_epoch`` it runs once per epoch.

The data set lives on the training device as tensors; augmentation is batched tensor ops
there (no per-image Python). Options that change speed, not the recipe, are arguments:
bf16 autocast and channels-last on CUDA, ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.catalog.budget import Budget
from bench.catalog.data import Splits
from bench.catalog.evaluate import accuracy
from bench.execution import distributed
from bench.execution import progress as progress_out
from bench.records.errors import TrainingDiverged


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainStats:
    steps: int
    wall_s: float
    final_loss: float
    val_acc: float  # after the last epoch when progress was shown or keep_best, else NaN (not computed)
    best_val_acc: float = float("nan")  # with keep_best: the best validation accuracy of any epoch
    best_epoch: int = 0  # with keep_best: the epoch (1-based) that reached it
    # Peak memory of this training in MiB: CUDA ``max_memory_allocated`` on a GPU, the process's
    # peak resident size (VmHWM, reset at the start) on CPU; None where neither can be read.
    peak_mem_mb: float | None = None
    # Σₜ lrₜ over the optimizer steps taken: with the budget's weight decay and momentum, the decay
    # budget (``bench.catalog.budget.decay_budget``) this training gave weight decay to act
    # (``planned_lr_sum`` predicts it).
    lr_sum: float = 0.0
    # Per epoch: the mean training loss, and the validation accuracy where it was computed (with
    # keep_best or progress shown; else empty). A collapsed training is judged on them.
    loss_curve: tuple[float, ...] = ()
    val_curve: tuple[float, ...] = ()
    # With keep_best: that epoch's weights (the validation-selected model); never cached in meta.
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def curve(self) -> dict[str, list[float]]:
        """The per-epoch curve as a record stores it: {"loss": […], "val_acc": […]}."""
        return {"loss": list(self.loss_curve), "val_acc": list(self.val_curve)}


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux resets the process's peak resident size (VmHWM) on writing 5 to clear_refs; where
    # that is refused (another OS, a sandbox), VmHWM is the process's peak so far.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory since ``_reset_peak_memory`` in MiB (see ``TrainStats.peak_mem_mb``); None if unreadable."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _optimizer(model: nn.Module, budget: Budget, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if budget.optimizer == "sgd":
        # Coupled L2 (the gradient of λ/2·‖W‖²), the penalty LoRITa's theory is stated for.
        return torch.optim.SGD(params, lr=lr, momentum=budget.momentum, nesterov=budget.nesterov and
                               budget.momentum > 0, weight_decay=budget.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=budget.weight_decay)


def planned_lr_sum(budget: Budget, *, lr: float, epochs: int, per_epoch: int) -> float:
    """Σₜ lrₜ over the ``epochs · per_epoch`` steps ``budget``'s schedule takes from ``lr``: what
    ``train`` records as ``TrainStats.lr_sum``, from the very scheduler it builds (``_scheduler``),
    stepped on a parameter that never moves."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = _scheduler(opt, budget, lr, epochs, per_epoch)
    opt.step()  # no gradient, so nothing moves; the scheduler only wants the optimizer to have stepped
    total = 0.0
    for _ in range(epochs * per_epoch):
        total += opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
    return total


def _scheduler(opt: torch.optim.Optimizer, budget: Budget, lr: float, epochs: int, per_epoch: int):
    total = max(1, epochs * per_epoch)
    if budget.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if budget.schedule == "step":
        # Milestones are fractions of this phase, so pre-training and fine-tuning both decay.
        steps = sorted({max(1, round(m * total)) for m in budget.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=budget.gamma)
    if budget.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    return None


def augment_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad`` zero padding and horizontal flip, for a whole batch at once.

    One random shift and flip per image, drawn on the CPU generator (reproducible on any
    device); the crop is a gather on ``x``'s device.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # n × h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # n × w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n × h × w × c
    return out.permute(0, 3, 1, 2).contiguous()


def train(model: nn.Module, data: Splits, budget: Budget, *, epochs: int, lr: float, seed: int,
          progress: bool = False, desc: str = "",
          after_backward: Callable[[nn.Module], None] | None = None,
          amp: bool = True, channels_last: bool = True, compile: bool = False,
          keep_best: bool = False) -> TrainStats:
    """Train ``model`` in place for ``epochs`` epochs of ``data.train`` under ``budget``.

    Every epoch is one pass over a fresh permutation (seeded by ``seed``), in
    ``ceil(n / batch_size)`` optimizer steps; the schedule runs over all of them. The data
    already lives on the model's device. ``after_backward(model)`` runs between
    ``backward()`` and ``step()`` (sparsity regularizers of pruning methods). On CUDA,
    ``amp`` trains under bf16 autocast and ``channels_last`` stores conv nets NHWC; both
    are ignored on CPU. ``compile`` wraps the forward pass in ``torch.compile``. Under
    ``torchrun`` each rank trains on its share of every batch through DDP (``bench.execution.distributed``).
    ``keep_best`` evaluates the validation split after every epoch and returns the weights
    of the best epoch beside the last ones: the honest "best epoch", chosen on validation,
    never on test. Raises ``TrainingDiverged`` on a non-finite loss.
    """
    n = len(data.train_x)
    device = data.train_x.device
    cuda = device.type == "cuda"
    per_epoch = steps_per_epoch(n, budget.batch_size)
    opt = _optimizer(model, budget, lr)
    sched = _scheduler(opt, budget, lr, epochs, per_epoch)
    gen = torch.Generator().manual_seed(seed)
    nhwc = cuda and channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if nhwc:
        model.to(memory_format=torch.channels_last)
    forward = _forward(model, device, compile)
    _reset_peak_memory(device)
    start, steps, loss_value, val_acc, lrs = time.perf_counter(), 0, float("nan"), float("nan"), 0.0
    losses: list[float] = []
    vals: list[float] = []
    best_val_acc, best_epoch, best_state = float("nan"), 0, None
    show = progress and epochs > 0
    bar = progress_out.bar(epochs, desc=desc, unit="ep", leave=False) if show else None
    model.train()
    for epoch in range(epochs):
        loss_sum, done, epoch_lrs = _epoch(model, forward, data, budget, opt, sched, gen, nhwc=nhwc,
                                           bf16=cuda and amp, after_backward=after_backward)
        steps += done
        lrs += epoch_lrs
        loss_value = float(loss_sum) / max(1, per_epoch)
        losses.append(loss_value)
        # Every rank must stop together, or the others would wait forever in DDP's all-reduce.
        if not distributed.agree(math.isfinite(loss_value), device):
            raise TrainingDiverged(f"non-finite loss in epoch {epoch + 1} (by step {steps})",
                                   curve={"loss": losses, "val_acc": vals})
        if bar is not None or keep_best:
            val_acc = accuracy(model, data.val_x, data.val_y)
            vals.append(val_acc)
        if keep_best and not val_acc <= best_val_acc:  # ties keep the earlier epoch; NaN best = none yet
            best_val_acc, best_epoch = val_acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", val_acc=f"{val_acc:.3f}")
            bar.update()
    if bar is not None:
        bar.close()
    elif show:  # outside a terminal: one line per training instead of a bar
        if not keep_best:
            val_acc = accuracy(model, data.val_x, data.val_y)
        progress_out.line(f"{desc}: {epochs} ep, {steps} steps, loss {loss_value:.3f}, val_acc {val_acc:.3f}, "
                          f"{time.perf_counter() - start:.1f}s")
    if nhwc:
        model.to(memory_format=torch.contiguous_format)
    return TrainStats(steps=steps, wall_s=time.perf_counter() - start, final_loss=loss_value, val_acc=val_acc,
                      best_val_acc=best_val_acc, best_epoch=best_epoch, best_state=best_state,
                      peak_mem_mb=peak_memory_mb(device), lr_sum=lrs, loss_curve=tuple(losses),
                      val_curve=tuple(vals))


def _forward(model: nn.Module, device: torch.device, compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module the training forward pass calls: DDP-wrapped under torchrun, compiled if asked."""
    forward = model
    if distributed.world() > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(forward) if compile else forward


def _epoch(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], data: Splits, budget: Budget,
           opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, *, nhwc: bool, bf16: bool,
           after_backward: Callable[[nn.Module], None] | None) -> tuple[torch.Tensor, int, float]:
    """One pass over a fresh permutation of ``data.train`` drawn from ``gen``: (summed loss, steps,
    Σ lr over its steps)."""
    n, device = len(data.train_x), data.train_x.device
    ranks, me = distributed.world(), distributed.rank()
    loss_sum, steps, lrs = torch.zeros((), device=device), 0, 0.0
    order = torch.randperm(n, generator=gen).to(device)
    for i in range(0, n, budget.batch_size):
        idx = order[i:i + budget.batch_size]
        x = data.train_x[idx]
        if data.augment == "crop-flip":
            x = augment_crop_flip(x, gen)  # the whole global batch: every rank draws the same
        y = data.train_y[idx]
        if ranks > 1:  # this rank's share of the global batch
            x, y = x[me::ranks], y[me::ranks]
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            # Sum over this rank's samples / global batch size, times ranks: DDP's gradient
            # average then equals the one-process mean over the global batch, exactly.
            loss = F.cross_entropy(forward(x), y, label_smoothing=budget.label_smoothing,
                                   reduction="sum") * (ranks / len(idx))
        # NaN/inf propagate through the sum, checked once per epoch: a per-step check
        # would synchronize the GPU every step.
        loss_sum += loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        lrs += opt.param_groups[0]["lr"]
        opt.step()
        if sched is not None:
            sched.step()
        steps += 1
    return loss_sum, steps, lrs
