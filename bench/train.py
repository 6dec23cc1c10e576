"""The one training loop every method uses. Read it top to bottom."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.budget import Budget
from bench.data import Splits
from bench.errors import TrainingDiverged


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainStats:
    steps: int
    wall_s: float
    final_loss: float
    val_acc: float


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def _optimizer(model: nn.Module, budget: Budget, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if budget.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=budget.momentum, nesterov=budget.nesterov and
                               budget.momentum > 0, weight_decay=budget.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=budget.weight_decay)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, k: int = 1) -> float:
    """Top-k accuracy (a fraction) of ``model`` in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct += int((topk == y[i:i + batch_size, None]).any(dim=1).sum())
    model.train(was_training)
    return correct / max(1, len(x))


def train(model: nn.Module, data: Splits, budget: Budget, *, epochs: int, lr: float, seed: int,
          progress: bool = False, desc: str = "",
          after_backward: Callable[[nn.Module], None] | None = None) -> TrainStats:
    """Train ``model`` in place for ``epochs`` epochs of ``data.train`` under ``budget``.

    Every epoch is one pass over a fresh permutation (seeded by ``seed`` and the epoch),
    in ``ceil(n / batch_size)`` optimizer steps; the schedule runs over all of them. The
    data already lives on the model's device. ``after_backward(model)`` runs between
    ``backward()`` and ``step()`` (sparsity regularizers of pruning methods).
    Raises ``TrainingDiverged`` on a non-finite loss.
    """
    n = len(data.train_x)
    per_epoch = steps_per_epoch(n, budget.batch_size)
    total = epochs * per_epoch
    opt = _optimizer(model, budget, lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
             if budget.schedule == "cosine" else None)
    gen = torch.Generator().manual_seed(seed)
    start, steps, loss_value, val_acc = time.perf_counter(), 0, float("nan"), float("nan")
    bar = None
    if progress and epochs > 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, desc=desc, unit="ep", leave=False)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(data.train_x.device)
        for i in range(0, n, budget.batch_size):
            idx = order[i:i + budget.batch_size]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx],
                                   label_smoothing=budget.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"non-finite loss {loss.item()} at epoch {epoch + 1}, step {steps + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            opt.step()
            if sched is not None:
                sched.step()
            steps += 1
        loss_value = float(loss.detach())
        if bar is not None:
            val_acc = accuracy(model, data.val_x, data.val_y)
            bar.set_postfix(loss=f"{loss_value:.3f}", val_acc=f"{val_acc:.3f}")
            bar.update()
    if bar is not None:
        bar.close()
    if math.isnan(val_acc) and epochs > 0:
        val_acc = accuracy(model, data.val_x, data.val_y)
    return TrainStats(steps=steps, wall_s=time.perf_counter() - start, final_loss=loss_value, val_acc=val_acc)
