"""The training step a control adds to a job (``bench.catalog.controls``): the deployed architecture,
re-initialized and trained from scratch for the pre-training steps, before the fine-tuning every method
gets.

So a ``scratch:<method>`` cell trains for the method's pre-training steps on its pre-training recipe and
schedule, then fine-tunes for its fine-tuning steps on its fine-tuning recipe: the same total steps, the
same recipe, only the starting weights differ (Liu et al., ICLR 2019, "Scratch-B" at equal steps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.catalog.budget import decay_budget
from bench.catalog.data import Splits
from bench.catalog.models import reinitialize
from bench.catalog.presets import Preset
from bench.catalog.protocol import Method
from bench.execution.train import TrainStats, train


def pretrain(preset: Preset, method: Method, deployed: nn.Module, data: Splits, seed: int, *,
             progress: bool = False) -> TrainStats | None:
    """For a control (``method.retrains``): re-initialize ``deployed`` in place (``models.reinitialize``, at
    ``seed``) and train it for the budget's pre-training epochs at the pre-training lr, on the recipe of the
    method it copies; its training statistics. ``None`` (and ``deployed`` untouched) for any other method."""
    if not method.retrains:
        return None
    torch.manual_seed(seed)  # the same fresh weights for this cell whatever ran before it
    reinitialize(preset.model, deployed)
    budget = preset.budget_for(method)
    return train(deployed, data, budget, epochs=budget.train_epochs, lr=budget.lr, seed=seed, progress=progress,
                 desc=f"{method.name} from scratch", **preset.speed())


def pretrain_fields(preset: Preset, method: Method, stats: TrainStats | None) -> dict[str, Any]:
    """The record's pre-training fields for a control's own training from scratch (empty without one):
    they replace those of the model its architecture came from."""
    if stats is None:
        return {}
    return {"pretrain_steps": stats.steps, "pretrain_wall_s": stats.wall_s, "pretrain_cached": False,
            "pretrain_curve": stats.curve(),
            "pretrain_decay_budget": decay_budget(preset.budget_for(method), stats.lr_sum)}
