"""Structured and unstructured pruning baselines as thin adapters over torch-pruning.

A baseline is a pairing (importance criterion, global or layer-local ranking, optional
sparsity regularizer during pre-training): torch-pruning owns the criteria, the regularizers
and the dependency graph; this module only searches the pruning ratio so that the
*measured* drop of the pruned model lands on the target, and keeps timm ViTs consistent
after head pruning.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from lorita.counting import count_macs_params, timm_attention

__all__ = ["BASELINES", "Baseline", "has_batchnorm", "l1_filter_importance", "magnitude_unstructured",
           "prune_to_target", "sparsity_regularizer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """One pruning method: which importance, ranked globally or per layer, with which regularizer.

    ``description`` (one line) and ``paper`` (the citation) are what ``lorita-bench list`` and the
    report show; the harness registers one method per entry of ``BASELINES`` from them.
    """

    importance: Callable[[], tp.importance.Importance]
    global_pruning: bool
    regularizer: str | None = None  # "group-norm" (DepGraph SL) or "bn-l1" (network slimming)
    reg: float = 0.0
    gradients: str | None = None  # "taylor" (one batch gradient) or "hessian" (per-sample, OBD)
    needs_batchnorm: bool = False
    description: str = ""  # one line; every entry of BASELINES has one (an ad-hoc Baseline need not)
    paper: str = ""  # the citation


def l1_filter_importance() -> tp.importance.Importance:
    """Li et al. (2017): L1 norm of each filter/neuron of the layer itself (no group reduction)."""
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None)


BASELINES: dict[str, Baseline] = {
    "l1-filter": Baseline(importance=l1_filter_importance, global_pruning=False,
                          description="L1-norm filter/neuron pruning, same ratio in every layer",
                          paper="Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"),
    "group-l2": Baseline(importance=lambda: tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
                         description="DepGraph group L2-magnitude pruning, ranked globally across layers",
                         paper="Fang et al., DepGraph: Towards Any Structural Pruning, CVPR 2023"),
    # DepGraph's sparse learning: group-norm regularizer during pre-training (Fang et al. use 5e-4).
    "depgraph-sl": Baseline(importance=lambda: tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True,
                            regularizer="group-norm", reg=5e-4,
                            description="DepGraph with group-norm sparse learning during pre-training, then global "
                            "group L2",
                            paper="Fang et al., DepGraph: Towards Any Structural Pruning, CVPR 2023"),
    # Network slimming: L1 on BN scales during pre-training (Liu et al. use 1e-4), global BN ranking.
    "bn-slimming": Baseline(importance=lambda: tp.importance.BNScaleImportance(), global_pruning=True,
                            regularizer="bn-l1", reg=1e-4, needs_batchnorm=True,
                            description="network slimming: L1 on BN scales during pre-training, global BN-scale "
                            "ranking",
                            paper="Liu et al., Learning Efficient Convolutional Networks through Network Slimming, "
                            "ICCV 2017"),
    "taylor": Baseline(importance=lambda: tp.importance.GroupTaylorImportance(), global_pruning=True,
                       gradients="taylor",
                       description="first-order Taylor importance on a train-split calibration batch, global",
                       paper="Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019"),
    "hessian": Baseline(importance=lambda: tp.importance.GroupHessianImportance(), global_pruning=True,
                        gradients="hessian",
                        description="OBD diagonal-Hessian importance from per-sample train gradients, global",
                        paper="LeCun et al., Optimal Brain Damage, NeurIPS 1989"),
    "lamp": Baseline(importance=lambda: tp.importance.LAMPImportance(p=2), global_pruning=True,
                     description="layer-adaptive magnitude (LAMP) scores, global",
                     paper="Lee et al., Layer-adaptive Sparsity for the Magnitude-based Pruning, ICLR 2021"),
    "fpgm": Baseline(importance=lambda: tp.importance.FPGMImportance(p=2), global_pruning=False,
                     description="filter pruning via geometric median, per layer",
                     paper="He et al., Filter Pruning via Geometric Median, CVPR 2019"),
    "random": Baseline(importance=lambda: tp.importance.RandomImportance(), global_pruning=False,
                       description="random channels, same ratio in every layer: the control every method must beat",
                       paper="Li et al., Revisiting Random Channel Pruning, CVPR 2022"),
}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    attention = timm_attention(model)  # ImportError for a timm too old to prune heads in
    return [] if attention is None else [m for m in model.modules() if isinstance(m, attention)]


def head_ratio_for(model: nn.Module, drop: float) -> float:
    """Fraction of heads to remove for a ``drop`` target: whole heads, never all of them.

    Heads come in a handful per block, so a ratio search that also moved the head count
    would jump past the target; the head fraction is fixed to ``floor(drop·H)/H`` and the
    search moves only the channel widths (embedding, MLP hidden) to land on the target.
    """
    heads = [m.num_heads for m in _attention_modules(model)]
    if not heads:
        return 0.0
    h = min(heads)
    return min(h - 1, math.floor(drop * h + 1e-9)) / h


def _pruner_kwargs(model: nn.Module, ratio: float) -> dict:
    """Extra pruner arguments so timm attention loses whole heads (``ratio`` of them) in q, k and v."""
    # BasePruner's defaults for these are dicts it writes into (qkv and grouped layers), shared by
    # every pruner ever built: each bisection step would leave its copy's layers there for good.
    fresh = {"in_channel_groups": {}, "out_channel_groups": {}}
    attns = _attention_modules(model)
    if not attns:
        return fresh
    # timm's token/position embeddings are bare Parameters whose last dim is the embedding
    # width; naming them tells torch-pruning (and its warning) that this is intended.
    unwrapped = [(p, p.dim() - 1) for n in ("cls_token", "reg_token", "dist_token", "pos_embed")
                 if isinstance(p := getattr(model, n, None), nn.Parameter)]
    # torch-pruning turns the ratio into a head count with int() (global) or ceil() (local), and
    # k/H in floating point can land an ulp past k heads (k=4, H=5): ask for a hair less.
    return {**fresh, "num_heads": {m.qkv: m.num_heads for m in attns}, "prune_num_heads": True,
            "prune_head_dims": False, "head_pruning_ratio": max(0.0, ratio - 1e-6),
            "unwrapped_parameters": unwrapped}


def _fix_attention(model: nn.Module, pruner: tp.pruner.BasePruner) -> None:
    # timm 1.0 reads num_heads, head_dim and attn_dim in forward; torch-pruning only shrinks
    # the Linear layers, so the attributes must follow the pruned qkv.
    for m in _attention_modules(model):
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        m.attn_dim = m.num_heads * m.head_dim


def _gradients(model: nn.Module, importance: tp.importance.Importance, kind: str | None,
               x: torch.Tensor, y: torch.Tensor) -> None:
    if kind is None:
        return
    model.zero_grad(set_to_none=True)
    if kind == "taylor":
        F.cross_entropy(model(x), y).backward()
    else:
        importance.zero_grad()  # with nothing accumulated, the Hessian criterion reads each .grad
        # Every calibration sample, as Taylor uses them all: one backward pass per sample.
        _mean_squared_gradients(model, x, y)


def _mean_squared_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Leave in every parameter's ``.grad`` the mean over samples of its squared per-sample gradient.

    The OBD diagonal Hessian (empirical Fisher) that ``GroupHessianImportance`` scores with.
    Its own ``accumulate_grad`` cannot be used: torch-pruning 1.6 checks for a parameter's
    *name* in dicts keyed by the parameter, so every sample overwrites the last and the
    estimate rests on one sample.
    """
    squares: dict[nn.Parameter, torch.Tensor] = {}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for p in model.parameters():
            if p.grad is not None:
                squares[p] = squares[p] + p.grad.pow(2) if p in squares else p.grad.pow(2)
    for p in model.parameters():
        p.grad = squares[p] / len(x) if p in squares else None


class TieBroken(tp.importance.Importance):
    """A criterion whose exact ties are broken by group L2 magnitude.

    Gradient criteria give exactly zero to every dead channel (a ReLU that never fires), so
    a ratio that crosses that tie prunes all of them at once and the achieved drop jumps
    past the target. The magnitude term is scaled to 1e-6 of the criterion's range: it
    reorders only channels the criterion cannot tell apart.
    """

    def __init__(self, base: tp.importance.Importance) -> None:
        self.base = base
        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2)

    def __getattr__(self, name: str):
        # zero_grad of the Hessian criterion, and anything else it offers
        return getattr(self.base, name)

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        imp = self.base(group, **kwargs)
        if imp is None:
            return imp
        mag = self.magnitude(group)
        if mag is None or mag.shape != imp.shape:
            return imp
        span = float(imp.max() - imp.min()) or 1.0
        return imp + 1e-6 * span * mag / (float(mag.max()) + 1e-12)


class KeepOneHead(tp.importance.Importance):
    """A criterion under which each attention block's most important head is never pruned.

    With global pruning, torch-pruning ranks heads across all blocks against one threshold
    and has no per-block floor (``max_pruning_ratio`` is only checked between iterative
    steps), so at a head ratio of 2/3 a block can lose all of its heads. Scoring each
    block's best head (as torch-pruning scores heads: the mean over its channels) as
    infinitely important keeps it out of that ranking; every other head is ranked as before.
    ``num_heads`` maps each ``qkv`` Linear to its head count.
    """

    def __init__(self, base: tp.importance.Importance, num_heads: dict[nn.Module, int]) -> None:
        self.base = base
        self.num_heads = dict(num_heads)  # the pruner updates its own dict as heads go

    @torch.no_grad()
    def __call__(self, group, **kwargs):
        imp = self.base(group, **kwargs)
        heads = next((self.num_heads[dep.target.module] for dep, _ in group
                      if dep.target.module in self.num_heads
                      and dep.handler == tp.pruner.function.prune_linear_out_channels), None)
        if imp is None or heads is None:
            return imp
        per_head = imp.clone().view(heads, -1)  # the layout torch-pruning averages heads over
        per_head[per_head.mean(1).argmax()] = math.inf
        return per_head.view(-1)


def _prune(model: nn.Module, example: torch.Tensor, baseline: Baseline, ratio: float,
           ignored: Sequence[str], calib: tuple[torch.Tensor, torch.Tensor] | None,
           head_ratio: float = 0.0, round_to: int = 1, layer_ratios: dict[str, float] | None = None) -> nn.Module:
    pruned = copy.deepcopy(model)
    importance = TieBroken(baseline.importance())
    if baseline.gradients is not None:
        if calib is None:
            raise ValueError(f"{baseline.gradients} importance needs a labelled calibration batch")
        _gradients(pruned, importance, baseline.gradients, *calib)
    kwargs = _pruner_kwargs(pruned, head_ratio)
    if head_ratio > 0:
        importance = KeepOneHead(importance, kwargs["num_heads"])
    pruner = tp.pruner.BasePruner(
        pruned, example, importance=importance, pruning_ratio=ratio, global_pruning=baseline.global_pruning,
        ignored_layers=[pruned.get_submodule(n) for n in ignored], round_to=round_to if round_to > 1 else None,
        pruning_ratio_dict={pruned.get_submodule(n): r for n, r in (layer_ratios or {}).items()}, **kwargs)
    pruner.step()
    _fix_attention(pruned, pruner)
    pruned.zero_grad(set_to_none=True)
    return pruned


def prune_to_target(model: nn.Module, example: torch.Tensor, *, kind: str, drop: float,
                    baseline: Baseline | None = None,
                    importance_factory: Callable[[], tp.importance.Importance] | None = None,
                    ignored: Sequence[nn.Module | str] = (), global_pruning: bool = False,
                    calib: tuple[torch.Tensor, torch.Tensor] | None = None,
                    tolerance: float = 0.005, max_iter: int = 20, round_to: int = 1) -> tuple[nn.Module, float]:
    """A pruned copy of ``model`` whose measured ``kind`` ("params"/"flops") drop is near ``drop``.

    Either ``baseline`` or ``importance_factory`` (+ ``global_pruning``) names the criterion.
    Bisection on torch-pruning's ``pruning_ratio`` (the measured drop grows with it) until
    within ``tolerance`` of the target, else the closest of ``max_iter`` tries; returns the
    pruned model and its achieved drop. ``ignored`` layers (modules or qualified names, e.g.
    the classifier) keep their output width. ``calib`` = (inputs, labels) from the train split
    for gradient-based importances. ``round_to`` > 1 is torch-pruning's own ``round_to``: every
    pruned layer keeps a multiple of it (its channel count rounded down to one). ``model`` is not
    modified.
    """
    if baseline is None:
        if importance_factory is None:
            raise TypeError("pass a baseline or an importance_factory")
        baseline = Baseline(importance=importance_factory, global_pruning=global_pruning)
    names = {m: n for n, m in model.named_modules()}
    ignored_names = [n if isinstance(n, str) else names[n] for n in ignored]
    was_training = model.training
    model.eval()
    macs0, params0 = count_macs_params(model, example)

    def achieved(m: nn.Module) -> float:
        macs, params = count_macs_params(m, example)
        return 1 - (params / params0 if kind == "params" else macs / macs0)

    head_ratio = head_ratio_for(model, drop)  # fixed for the whole search
    lo, hi = 0.0, 1.0
    best: tuple[float, nn.Module | None, float] = (float("inf"), None, 0.0)
    for _ in range(max_iter):
        ratio = (lo + hi) / 2
        pruned = _prune(model, example, baseline, ratio, ignored_names, calib, head_ratio, round_to)
        got = achieved(pruned)
        if abs(got - drop) < best[0]:
            best = (abs(got - drop), pruned, got)
        if abs(got - drop) <= tolerance:
            break
        lo, hi = (ratio, hi) if got < drop else (lo, ratio)
    if best[0] > tolerance and round_to > 1 and not baseline.global_pruning:
        def prune_at(ratios: dict[str, float]) -> tuple[nn.Module, float]:
            m = _prune(model, example, baseline, lo, ignored_names, calib, head_ratio, round_to, ratios)
            return m, achieved(m)
        best = min(best, _mixed(model, ignored_names, lo, hi, drop, tolerance, prune_at), key=lambda b: b[0])
    model.train(was_training)
    _, pruned, got = best
    pruned.train(was_training)
    return pruned, got


def _mixed(model: nn.Module, ignored: Sequence[str], low: float, high: float, drop: float, tolerance: float,
           prune_at: Callable[[dict[str, float]], tuple[nn.Module, float]]) -> tuple[float, nn.Module, float]:
    """The layer-local ratio search's last step under ``round_to``: each layer at ``low`` or ``high``.

    With widths rounded to K, one ratio for every layer moves every layer's width by K at once
    (on an FCN of equal widths a step of several per cent), so no ratio may land on the target.
    Starting with every layer at the bracket's lower ratio, the one layer whose move to the upper
    ratio brings the drop nearest is moved, again and again, until within ``tolerance`` or no
    move helps: each layer's width stays the one ratio's width rounded up or down to K.
    Returns (distance to ``drop``, pruned model, achieved drop).
    """
    todo = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and n not in ignored]
    ratios = dict.fromkeys(todo, low)
    pruned, got = prune_at(ratios)
    while todo and abs(got - drop) > tolerance:
        tries = {name: prune_at({**ratios, name: high}) for name in todo}
        name = min(tries, key=lambda n: abs(tries[n][1] - drop))
        if abs(tries[name][1] - drop) >= abs(got - drop):
            break
        ratios[name] = high
        pruned, got = tries[name]
        todo.remove(name)
    return abs(got - drop), pruned, got


def sparsity_regularizer(model: nn.Module, example: torch.Tensor, baseline: Baseline,
                         ignored: Sequence[str] = ()) -> Callable[[nn.Module], None] | None:
    """The after-backward gradient term of the baseline's sparse pre-training, or ``None``.

    DepGraph SL: ``GroupNormPruner.regularize``; network slimming: ``BNScalePruner.regularize``
    (L1 sub-gradient on BN scales). Both are torch-pruning's own implementations.
    """
    if baseline.regularizer is None:
        return None
    cls = tp.pruner.GroupNormPruner if baseline.regularizer == "group-norm" else tp.pruner.BNScalePruner
    pruner = cls(model, example, importance=baseline.importance(), reg=baseline.reg,
                 global_pruning=baseline.global_pruning,
                 ignored_layers=[model.get_submodule(n) for n in ignored], **_pruner_kwargs(model, 0.0))

    def regularize(m: nn.Module) -> None:
        pruner.regularize(m)
    return regularize


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def magnitude_unstructured(model: nn.Module, drop: float) -> tuple[nn.Module, float]:
    """Global unstructured L1 magnitude pruning (``torch.nn.utils.prune``) of ``drop`` of all parameters.

    Masks stay attached (so fine-tuning keeps pruned weights at zero); call
    ``make_permanent`` afterwards. The achieved drop counts zeroed weights as removed;
    it falls short of ``drop`` only when the Linear/Conv weights are fewer than that.
    """
    pruned = copy.deepcopy(model)
    total = sum(p.numel() for p in pruned.parameters())
    params = _prunable(pruned)
    prunable = sum(getattr(m, n).numel() for m, n in params)
    amount = min(prunable, round(drop * total))
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return pruned, amount / total


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold ``torch.nn.utils.prune`` masks into the weights (zeros stay zeros); in place."""
    for m in model.modules():
        if torch_prune.is_pruned(m) and hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")
    return model


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero: what unstructured pruning keeps."""
    return int(sum(int((p != 0).sum()) for p in model.parameters()))
