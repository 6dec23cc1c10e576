"""Spectra, rank plans and deployment of a trained (merged) model as thin factors."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lorita.compose import _replace, _selected, merge
from lorita.counting import count_macs_params
from lorita.layers import (
    ConvComposition,
    LinearComposition,
    LowRankConv2d,
    LowRankLinear,
    compressible_layers,
    layer_weight,
)
from lorita.policies import LayerInfo, RankPolicy, Totals

__all__ = ["LayerPlan", "Plan", "compress", "factorize", "spectra", "truncate"]


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    # Conv weights act as out × (in·kh·kw) matrices on unfolded patches.
    return weight.flatten(1) if weight.dim() > 2 else weight


def _layer_matrix(layer: nn.Module) -> torch.Tensor:
    """The float64 CPU matrix a compressible layer computes with (compositions merged)."""
    return _matrix(layer_weight(layer)).cpu()


def spectra(model: nn.Module) -> dict[str, torch.Tensor]:
    """Singular values (descending, float64, CPU) of every compressible weight, by layer name.

    Compositions are merged and low-rank pairs multiplied out before the SVD; conv weights
    are reshaped to out×(in·kh·kw). The model is not modified.
    """
    return {name: torch.linalg.svdvals(_layer_matrix(m)) for name, m in compressible_layers(model).items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerPlan:
    """The rank one layer is deployed at and whether it is deployed as two factors.

    A layer that is not factored keeps its full rank (``rank == full_rank``): kept dense,
    it would cost the same at any rank. Raises ``ValueError`` for a rank outside
    [1, full_rank] or a truncated layer that is not factored.
    """

    name: str
    full_rank: int
    rank: int
    factored: bool

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= self.full_rank:
            raise ValueError(f"layer {self.name!r}: rank must be in [1, {self.full_rank}], got {self.rank}")
        if not self.factored and self.rank != self.full_rank:
            raise ValueError(f"layer {self.name!r}: a layer kept dense keeps its full rank {self.full_rank}, "
                             f"got rank {self.rank}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Per-layer ranks chosen by a policy for one model; the input of ``factorize``."""

    layers: tuple[LayerPlan, ...]
    policy: RankPolicy | None = None
    protected: tuple[str, ...] = ()  # layers ``exclude`` kept out of the policy's reach (dense, full rank)

    @property
    def ranks(self) -> dict[str, int]:
        return {lp.name: lp.rank for lp in self.layers}


def _positions(model: nn.Module, layers: Mapping[str, nn.Module],
               example_inputs: torch.Tensor | tuple) -> dict[str, int]:
    seen: dict[str, int] = {}
    hooks = []
    for name, m in layers.items():
        out_dim = m.out_features if hasattr(m, "out_features") else m.out_channels

        def hook(_m, _inp, out, name=name, out_dim=out_dim):
            seen[name] = out.numel() // (out.shape[0] * out_dim)
        hooks.append(m.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            args = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
            model(*args)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return seen


def truncate(model: nn.Module, policy: RankPolicy, example_inputs=None, *,
             exclude: Iterable[str] | None = None) -> Plan:
    """Choose the rank of every compressible layer of ``model`` with ``policy``.

    ``exclude`` holds glob patterns on qualified layer names (as ``overparameterize`` takes):
    a matching layer is protected, never shown to the policy, and kept dense at full rank; the
    drops a target policy aims at are still fractions of the whole model, protected layers
    included.
    A layer is factored where the policy's rank saves parameters (r·(in+out) < in·out, with
    in = in_channels·kh·kw for a conv); every other layer keeps its full rank, and the plan
    says so. ``model`` may still hold compositions (their merged product is what is ranked).
    ``example_inputs`` (a batch, or a tuple of forward arguments) lets policies count
    MACs: positions per layer come from forward hooks, the dense total from
    torch-pruning's counter. Raises ``ValueError`` when the policy needs inputs it lacks,
    ``TypeError`` for a policy that is not a ``RankPolicy``.
    """
    if not isinstance(policy, RankPolicy):
        raise TypeError(f"policy must be a lorita RankPolicy, got {type(policy).__name__}")
    layers = compressible_layers(model)
    positions = _positions(model, layers, example_inputs) if example_inputs is not None else {}
    infos, kept = [], []
    for name, m in layers.items():
        w = _layer_matrix(m)  # merged once per layer, for its spectrum and its shape
        if not _selected(name, None, exclude):
            kept.append(LayerPlan(name=name, full_rank=min(w.shape), rank=min(w.shape), factored=False))
            continue
        infos.append(LayerInfo(name=name, sigma=torch.linalg.svdvals(w), fan_in=w.shape[1], fan_out=w.shape[0],
                               positions=positions.get(name)))
    merged = merge(copy.deepcopy(model))
    totals = Totals(params=sum(p.numel() for p in merged.parameters()),
                    macs=count_macs_params(merged, example_inputs)[0] if example_inputs is not None else None)
    ranks = policy.ranks(infos, totals)
    planned = {li.name: LayerPlan(name=li.name, full_rank=li.full_rank, rank=li.deployed_rank(ranks[li.name]),
                                  factored=li.factored(ranks[li.name])) for li in infos}
    planned.update({lp.name: lp for lp in kept})
    return Plan(layers=tuple(planned[name] for name in layers), policy=policy, protected=tuple(lp.name for lp in kept))


def _factor(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Balanced split of the truncated SVD: second @ first = U_r diag(σ_r) V_rᵀ.
    u, s, vh = torch.linalg.svd(_matrix(weight.double()), full_matrices=False)
    root = s[:rank].sqrt()
    return vh[:rank] * root[:, None], u[:, :rank] * root[None, :]


def _deploy(layer: nn.Module, lp: LayerPlan) -> nn.Module:
    if isinstance(layer, LinearComposition | ConvComposition):
        layer = layer.merged()
    if isinstance(layer, LowRankLinear | LowRankConv2d):
        raise ValueError(f"layer {lp.name!r} is already factorized; compress the dense model")
    if not lp.factored:
        return layer  # full rank: a layer kept dense saves nothing by truncation
    w, bias = layer.weight, layer.bias
    dd = {"device": w.device, "dtype": w.dtype}
    first_w, second_w = _factor(w.detach(), lp.rank)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, lp.rank, bias=False, **dd)
        second = nn.Linear(lp.rank, layer.out_features, bias=bias is not None, **dd)
        pair = LowRankLinear(first, second)
        first_shape = first.weight.shape
    else:
        first = nn.Conv2d(layer.in_channels, lp.rank, layer.kernel_size, stride=layer.stride,
                          padding=layer.padding, dilation=layer.dilation, bias=False,
                          padding_mode=layer.padding_mode, **dd)
        second = nn.Conv2d(lp.rank, layer.out_channels, 1, bias=bias is not None, **dd)
        pair = LowRankConv2d(first, second)
        first_shape = first.weight.shape
    with torch.no_grad():
        first.weight.copy_(first_w.view(first_shape))
        second.weight.copy_(second_w.view_as(second.weight))
        if bias is not None:
            second.bias.copy_(bias)
    return pair


def factorize(model: nn.Module, plan: Plan) -> nn.Module:
    """A new model in which every layer of ``plan`` keeps its planned rank.

    Factored layers become ``LowRankLinear``/``LowRankConv2d`` (two thin factors, the
    singular values split evenly between them); the others keep their weight unchanged
    (merged, for a composition). ``model`` is not modified. Raises ``KeyError`` for a
    plan made for another model.
    """
    deployed = copy.deepcopy(model)
    layers = compressible_layers(deployed)
    for lp in plan.layers:
        if lp.name not in layers:
            raise KeyError(f"plan names layer {lp.name!r}, which this model does not have")
        deployed = _replace(deployed, lp.name, _deploy(layers[lp.name], lp))
    return merge(deployed)


def compress(model: nn.Module, policy: RankPolicy, example_inputs=None, *,
             exclude: Iterable[str] | None = None) -> nn.Module:
    """Truncate the SVD of every compressible weight with ``policy`` and deploy the result.

    Equivalent to ``factorize(model, truncate(model, policy, example_inputs, exclude=exclude))``:
    a runnable model whose output equals the rank-truncated merged model's, with the layers
    ``exclude`` names left dense. ``example_inputs`` is required for ``TargetFlopsDrop``.
    """
    return factorize(model, truncate(model, policy, example_inputs, exclude=exclude))
