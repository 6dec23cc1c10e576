"""Accuracy of a model on a split: what the job measures and what a method may use to choose on
validation data (LoRITa's "auto" rank allocation), one definition for both."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["accuracy"]


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
