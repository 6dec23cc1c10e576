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
from collections.abc import Callable, Iterator
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
    wall_s: float  # the optimizer steps alone: no validation pass, no best-epoch copy (``_Window``)
    final_loss: float
    val_acc: float  # after the last epoch when progress was shown or keep_best, else NaN (not computed)
    best_val_acc: float = float("nan")  # with keep_best: the best validation accuracy of any epoch
    best_epoch: int = 0  # with keep_best: the epoch (1-based) that reached it
    # Peak memory of this training's steps in MiB: CUDA ``max_memory_allocated`` on a GPU, the
    # process's peak resident size (VmHWM, reset after each validation pass) on CPU, less what the
    # process grew by outside the steps (validation, the best epoch's copy); None where unreadable.
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
    # The validation passes (per epoch with keep_best or a progress bar, once for a progress line),
    # timed apart from ``wall_s``; 0 when none ran.
    val_wall_s: float = 0.0

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
    dy, dx, flip = (t.to(x.device) for t in _crop_flip_draws(len(x), gen, pad))
    return _crop_flip(x, dy, dx, flip, pad)


def _crop_flip_draws(n: int, gen: torch.Generator, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shifts and flips of ``n`` images, drawn from ``gen`` in one fixed order (dy, dx, flip)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return dy, dx, torch.rand(n, generator=gen) < 0.5


def _crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # n × h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # n × w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n × h × w × c
    return out.permute(0, 3, 1, 2).contiguous()


def _current_mb(device: torch.device) -> float | None:
    """Memory held now, in the unit ``peak_memory_mb`` reads its peak in (allocated on CUDA, resident on CPU)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), None)


class _Window:
    """Wall time and peak memory of the training steps alone: open while training runs, closed
    (``outside``) for anything else.

    What runs outside (the validation pass, the best epoch's copy, a progress bar) is in neither
    figure, so they mean the same with or without progress shown, ``keep_best`` or an executor.
    What the process grew by while the window was closed is taken off the peak of the later
    spans: it was allocated for something other than the steps.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.wall_s, self.peak_mb = device, 0.0, None
        self._outside_mb, self._closed_at, self._start = 0.0, None, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":  # the steps queued on the GPU belong to the span that queued them
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> _Window:
        self._sync()
        now = _current_mb(self.device)
        if self._closed_at is not None and now is not None:
            self._outside_mb += max(0.0, now - self._closed_at)
        _reset_peak_memory(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.wall_s += time.perf_counter() - self._start
        peak, self._closed_at = peak_memory_mb(self.device), _current_mb(self.device)
        if peak is not None:
            self.peak_mb = max(self.peak_mb or 0.0, peak - self._outside_mb)

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """The window closed for the block: it holds neither the block's time nor its memory."""
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


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
    never on test. ``wall_s`` and ``peak_mem_mb`` hold the optimizer steps only (``_Window``);
    validation passes are timed apart in ``val_wall_s``. Raises ``TrainingDiverged`` on a non-finite loss.
    """
    device = data.train_x.device
    nhwc = device.type == "cuda" and channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if nhwc:
        model.to(memory_format=torch.channels_last)
    per_epoch = steps_per_epoch(len(data.train_x), budget.batch_size)
    opt = _optimizer(model, budget, lr)
    loop = _Loop(model=model, forward=_forward(model, device, compile), data=data, budget=budget, opt=opt,
                 sched=_scheduler(opt, budget, lr, epochs, per_epoch), gen=torch.Generator().manual_seed(seed),
                 nhwc=nhwc, bf16=device.type == "cuda" and amp, after_backward=after_backward)
    window, log = _Window(device), _Log()
    bar = progress_out.bar(epochs, desc=desc, unit="ep", leave=False) if progress and epochs > 0 else None
    model.train()
    with window:
        for epoch in range(epochs):
            loss_sum, done, epoch_lrs = _epoch(loop)
            log.steps, log.lr_sum = log.steps + done, log.lr_sum + epoch_lrs
            log.losses.append(float(loss_sum) / max(1, per_epoch))
            # Every rank must stop together, or the others would wait forever in DDP's all-reduce.
            if not distributed.agree(math.isfinite(log.losses[-1]), device):
                raise TrainingDiverged(f"non-finite loss in epoch {epoch + 1} (by step {log.steps})",
                                       curve={"loss": log.losses, "val_acc": log.vals})
            if bar is not None or keep_best:
                with window.outside():
                    log.validate(model, data, epoch, keep_best=keep_best)
                    if bar is not None:
                        bar.set_postfix(loss=f"{log.losses[-1]:.3f}", val_acc=f"{log.val_acc:.3f}")
                        bar.update()
    if bar is not None:
        bar.close()
    elif progress and epochs > 0:  # outside a terminal: one line per training instead of a bar
        if not keep_best:
            log.validate(model, data, epochs - 1, keep_best=False, record=False)
        progress_out.line(f"{desc}: {epochs} ep, {log.steps} steps, loss {log.losses[-1]:.3f}, val_acc "
                          f"{log.val_acc:.3f}, {window.wall_s:.1f}s training, {log.val_wall_s:.1f}s validation")
    if nhwc:
        model.to(memory_format=torch.contiguous_format)
    return log.stats(window)


@dataclass(slots=True, kw_only=True)
class _Loop:
    """What every epoch of one training steps with: the model, its forward (DDP, compiled), the
    data, the budget, the optimizer and schedule, the shuffling and augmentation generator."""

    model: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    data: Splits
    budget: Budget
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    nhwc: bool
    bf16: bool
    after_backward: Callable[[nn.Module], None] | None


@dataclass(slots=True)
class _Log:
    """What a training has done so far: steps, Σ lr, the curves, the best epoch and its weights."""

    steps: int = 0
    lr_sum: float = 0.0
    losses: list[float] = field(default_factory=list)
    vals: list[float] = field(default_factory=list)
    val_acc: float = float("nan")
    val_wall_s: float = 0.0
    best_val_acc: float = float("nan")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def validate(self, model: nn.Module, data: Splits, epoch: int, *, keep_best: bool, record: bool = True) -> None:
        """Validation accuracy after ``epoch`` (0-based), timed apart; with ``keep_best`` a copy of a best epoch."""
        start = time.perf_counter()
        self.val_acc = accuracy(model, data.val_x, data.val_y)  # a host sync: its own clock stops after it
        if record:
            self.vals.append(self.val_acc)
        if keep_best and not self.val_acc <= self.best_val_acc:  # ties keep the earlier epoch; NaN best = none yet
            self.best_val_acc, self.best_epoch = self.val_acc, epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.val_wall_s += time.perf_counter() - start

    def stats(self, window: _Window) -> TrainStats:
        return TrainStats(steps=self.steps, wall_s=window.wall_s, final_loss=self.losses[-1] if self.losses else
                          float("nan"), val_acc=self.val_acc, best_val_acc=self.best_val_acc,
                          best_epoch=self.best_epoch, best_state=self.best_state, peak_mem_mb=window.peak_mb,
                          lr_sum=self.lr_sum, loss_curve=tuple(self.losses), val_curve=tuple(self.vals),
                          val_wall_s=self.val_wall_s)


def _forward(model: nn.Module, device: torch.device, compile: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module the training forward pass calls: DDP-wrapped under torchrun, compiled if asked."""
    forward = model
    if distributed.world() > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(forward) if compile else forward


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # From pinned memory the copy is queued, not waited for: no host sync inside an epoch.
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _epoch(loop: _Loop) -> tuple[torch.Tensor, int, float]:
    """One pass over a fresh permutation of ``data.train`` drawn from ``loop.gen``: (summed loss
    on the device, steps, Σ lr over its steps).

    The epoch's permutation and augmentation draws are taken up front, in the order the
    per-batch draws always had, and copied to the device once, so the step loop reads nothing
    back from the GPU and sends nothing to it: it only queues kernels.
    """
    data, budget, opt, bs = loop.data, loop.budget, loop.opt, loop.budget.batch_size
    n, device = len(data.train_x), data.train_x.device
    ranks, me = distributed.world(), distributed.rank()
    order = torch.randperm(n, generator=loop.gen)
    draws = None
    if data.augment == "crop-flip":  # the whole global batch: every rank draws the same
        parts = [_crop_flip_draws(min(bs, n - i), loop.gen, 4) for i in range(0, n, bs)]
        draws = [_on_device(torch.cat(d), device) for d in zip(*parts, strict=True)]
    order = _on_device(order, device)
    loss_sum, steps, lrs = torch.zeros((), device=device), 0, 0.0
    for i in range(0, n, bs):
        idx = order[i:i + bs]
        x, y = data.train_x[idx], data.train_y[idx]
        if draws is not None:
            x = _crop_flip(x, *(d[i:i + bs] for d in draws), 4)
        if ranks > 1:  # this rank's share of the global batch
            x, y = x[me::ranks], y[me::ranks]
        if loop.nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if loop.bf16 else contextlib.nullcontext():
            # Sum over this rank's samples / global batch size, times ranks: DDP's gradient
            # average then equals the one-process mean over the global batch, exactly.
            loss = F.cross_entropy(loop.forward(x), y, label_smoothing=budget.label_smoothing,
                                   reduction="sum") * (ranks / min(bs, n - i))
        # NaN/inf propagate through the sum, checked once per epoch: a per-step check
        # would synchronize the GPU every step.
        loss_sum += loss.detach()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if loop.after_backward is not None:
            loop.after_backward(loop.model)
        lrs += opt.param_groups[0]["lr"]
        opt.step()
        if loop.sched is not None:
            loop.sched.step()
        steps += 1
    return loss_sum, steps, lrs
