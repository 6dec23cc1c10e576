"""Prune a trained model to a params/FLOPs drop with torch-pruning's ``BasePruner``.

A baseline is a pairing (importance, global or layer-local): torch-pruning owns the
criterion and the dependency graph; this module only searches the pruning ratio so
that the *measured* drop of the pruned model lands on the target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from lorita.counting import count_macs_params

__all__ = ["l1_filter_importance", "prune_to_target"]


def l1_filter_importance() -> tp.importance.Importance:
    """Li et al. (2017): L1 norm of each filter/neuron of the layer itself (no group reduction)."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)


def _prune(model: nn.Module, example: torch.Tensor, importance: tp.importance.Importance, ratio: float,
           ignored: Sequence[nn.Module], global_pruning: bool) -> nn.Module:
    pruned = copy.deepcopy(model)
    mapping = dict(zip(model.modules(), pruned.modules(), strict=True))
    pruner = tp.pruner.BasePruner(
        pruned, example, importance=importance, pruning_ratio=ratio,
        global_pruning=global_pruning, ignored_layers=[mapping[m] for m in ignored])
    pruner.step()
    return pruned


def prune_to_target(model: nn.Module, example: torch.Tensor, *, kind: str, drop: float,
                    importance_factory: Callable[[], tp.importance.Importance],
                    ignored: Sequence[nn.Module] = (), global_pruning: bool = False,
                    tolerance: float = 0.005, max_iter: int = 20) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` whose measured ``kind`` ("params"/"flops") drop is near ``drop``.

    Bisection on torch-pruning's ``pruning_ratio`` (the measured drop grows with it);
    stops within ``tolerance`` of the target or after ``max_iter`` tries and returns the
    closest pruned model and its achieved drop. ``ignored`` layers keep their output width.
    """
    was_training = model.training
    model.eval()
    macs0, params0 = count_macs_params(model, example)

    def achieved(m: nn.Module) -> float:
        macs, params = count_macs_params(m, example)
        return 1 - (params / params0 if kind == "params" else macs / macs0)

    lo, hi = 0.0, 1.0
    best: tuple[float, nn.Module | None, float] = (float("inf"), None, 0.0)
    for _ in range(max_iter):
        ratio = (lo + hi) / 2
        pruned = _prune(model, example, importance_factory(), ratio, ignored, global_pruning)
        got = achieved(pruned)
        if abs(got - drop) < best[0]:
            best = (abs(got - drop), pruned, got)
        if abs(got - drop) <= tolerance:
            break
        lo, hi = (ratio, hi) if got < drop else (lo, ratio)
    model.train(was_training)
    _, pruned, got = best
    pruned.train(was_training)
    return pruned, got
