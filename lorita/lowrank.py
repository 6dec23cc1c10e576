"""Low-rank training with ranks fixed before training (Khodak, Tenenholtz, Mackey, Fusi, *Initialization and
Regularization of Factorized Neural Layers*, ICLR 2021): the baseline LoRITa's abstract compares against.

Every compressible layer is trained as two thin factors from the start, at a rank chosen before any
training (``UniformRankRatio``: one rank ratio for every layer, the one whose deployed model meets a
params or FLOPs target). ``lorita.factorize`` applied to a freshly initialized model is their
*spectral initialization* (the truncated SVD of a standard init, √σ in each factor);
``frobenius_decay`` is their *Frobenius decay*, a penalty on ‖UVᵀ‖²_F in place of weight decay on
U and V; ``densify`` multiplies the factors out into the original layer type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lorita.compose import _replace
from lorita.compress import _factor
from lorita.layers import LowRankConv2d, LowRankLinear, walk
from lorita.policies import LayerInfo, RankPolicy, Totals, _check_fraction

__all__ = ["UniformRankRatio", "densify", "frobenius_decay", "spectral_init_"]
KINDS = ("params", "flops")


@dataclass(frozen=True, slots=True, kw_only=True)
class UniformRankRatio(RankPolicy):
    """One rank ratio ρ for every layer (rank ``ceil(ρ·full_rank)``, give or take one where layers of one
    shape step together), the one whose deployed model drops closest to ``drop`` of the dense model's
    parameters (``kind="params"``) or MACs (``"flops"``).

    Unlike the target policies it never looks at a spectrum: the ranks depend on the layers' shapes only,
    so they can be chosen before training. A layer whose rank saves nothing stays dense at full rank
    (``LayerInfo.deployed_rank``), and is counted so. Raises ``ValueError`` for a drop outside (0, 1) or
    an unknown kind; FLOPs need the layers' positions (``truncate`` with example inputs).
    """

    drop: float
    kind: str = "params"

    def __post_init__(self) -> None:
        _check_fraction("drop", self.drop, high_open=True)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def ranks(self, layers: Sequence[LayerInfo], totals: Totals) -> dict[str, int]:
        if self.kind == "flops" and (totals.macs is None or any(li.positions is None for li in layers)):
            raise ValueError("a FLOPs target needs example_inputs to count MACs")
        cost = LayerInfo.weight_params if self.kind == "params" else LayerInfo.weight_macs
        total = totals.params if self.kind == "params" else totals.macs
        ranks = {li.name: li.full_rank for li in layers}
        # Lowering ρ, layer li steps down to rank k as ρ passes k/full_rank. Layers of one shape step at the
        # same ρ, which on a small model jumps over the target; they step one at a time (in model order),
        # so every rank stays within one of ceil(ρ·full_rank) and the drop moves by one layer's step.
        steps = sorted(((k / li.full_rank, i, li, k) for i, li in enumerate(layers)
                        for k in range(li.full_rank - 1, 0, -1)), key=lambda e: (-e[0], e[1]))
        saved, best, best_gap = 0.0, dict(ranks), abs(self.drop)
        for _, _, li, k in steps:
            saved += cost(li, ranks[li.name]) - cost(li, k)
            ranks[li.name] = k
            gap = abs(saved / total - self.drop)
            if gap < best_gap:  # strictly closer: a tie keeps the less compressed ranks found first
                best, best_gap = dict(ranks), gap
        return best


def spectral_init_(pair: LowRankLinear | LowRankConv2d, weight: torch.Tensor) -> None:
    """Set the two factors of ``pair`` to the rank-r truncated SVD of ``weight`` (the dense layer's
    shape: out×in or out×in×kh×kw), √σ in each factor: Khodak et al.'s spectral initialization of a
    standard init. In place, without gradient."""
    first_w, second_w = _factor(weight.detach(), pair.rank)
    with torch.no_grad():
        pair[0].weight.copy_(first_w.reshape(pair[0].weight.shape))
        pair[1].weight.copy_(second_w.reshape(pair[1].weight.shape))


def frobenius_decay(model: nn.Module, weight_decay: float, *, coupled: bool) -> Callable[[nn.Module], None]:
    """The gradient of (λ/2)·‖UVᵀ‖²_F for every factor pair of ``model`` (Khodak et al.'s Frobenius decay),
    as a function to run after ``loss.backward()`` and before the optimizer's step.

    With ``coupled`` (SGD's L2 weight decay, which adds λ·p to every gradient) it also subtracts λ·p from
    the factors' gradients, so that the factors are penalized through their product *instead of* their own
    norms; every other parameter keeps the optimizer's decay. Without it (AdamW, whose decoupled decay
    acts on the weights, not the gradients) the term is added and the optimizer's decay still acts on the
    factors too.
    """
    pairs = [m for _, m in walk(model) if isinstance(m, LowRankLinear | LowRankConv2d)]

    def regularize(_: nn.Module) -> None:
        with torch.no_grad():
            for pair in pairs:
                first, second = pair[0].weight, pair[1].weight
                if first.grad is None or second.grad is None:
                    continue
                f, s = first.reshape(first.shape[0], -1), second.reshape(second.shape[0], -1)
                w = s @ f
                grad_s, grad_f = weight_decay * (w @ f.T), weight_decay * (s.T @ w)
                if coupled:
                    grad_s -= weight_decay * s
                    grad_f -= weight_decay * f
                second.grad.add_(grad_s.reshape(second.shape))
                first.grad.add_(grad_f.reshape(first.shape))
    return regularize


def _dense_layer(pair: LowRankLinear | LowRankConv2d) -> nn.Module:
    first, second = pair[0], pair[1]
    dd = {"device": second.weight.device, "dtype": second.weight.dtype}
    bias = second.bias is not None
    if isinstance(pair, LowRankLinear):
        layer = nn.Linear(pair.in_features, pair.out_features, bias=bias, **dd)
    else:
        layer = nn.Conv2d(pair.in_channels, pair.out_channels, first.kernel_size, stride=first.stride,
                          padding=first.padding, dilation=first.dilation, bias=bias, padding_mode=first.padding_mode,
                          **dd)
    with torch.no_grad():
        layer.weight.copy_(pair.dense_weight().to(**dd))
        if bias:
            layer.bias.copy_(second.bias)
    return layer


def densify(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every factor pair multiplied out into one layer of the original type and
    shape (the same function): the dense model every drop of a low-rank trained model is counted from."""
    dense = copy.deepcopy(model)
    for name, m in [(n, m) for n, m in walk(dense) if isinstance(m, LowRankLinear | LowRankConv2d)]:
        dense = _replace(dense, name, _dense_layer(m))
    return dense
