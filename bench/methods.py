"""The ``Method`` protocol and the registered methods (LoRITa at several N, pruning baselines).

The runner calls, in order: ``prepare(model)``; training for ``budget.train_epochs``;
``dense_reference(model)``; then for each target ``compress(model, target, calib)``
followed by the same ``budget.finetune_epochs`` of fine-tuning for every method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import lorita
from baselines import pruning
from bench.budget import Target
from bench.records.errors import NotApplicable
from bench.registry import METHODS


@dataclass(frozen=True, slots=True, kw_only=True)
class Calib:
    """What ``compress`` may look at: data from the *train* split only, and the head's name.

    ``example`` is one input sample (for tracing and counting); ``batch_x``/``batch_y`` a
    labelled calibration batch (for gradient-based importances such as Taylor or Hessian).
    """

    example: torch.Tensor
    batch_x: torch.Tensor
    batch_y: torch.Tensor
    num_classes: int
    head: str | None  # qualified name of the classifier layer, whose output width is never pruned


@dataclass(frozen=True, slots=True, kw_only=True)
class Compressed:
    model: nn.Module
    achieved_drop: float
    layers: dict[str, Any] = field(default_factory=dict)  # per-layer ranks or widths
    note: str = ""  # caveat the report must show (e.g. "sparse weights run on dense kernels")


class Method:
    """A registered compression method. Subclasses hold settings only, never run state."""

    name: str = ""
    family: str = ""  # "lorita", "pruning" or "dense"

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model to train (e.g. over-parameterized); may modify ``model`` in place."""
        return model

    def dense_reference(self, model: nn.Module) -> nn.Module:
        """The trained model in the original architecture: the baseline of every drop."""
        return model

    def regularizer(self, model: nn.Module, calib: Calib) -> Callable[[nn.Module], None] | None:
        """Called once before training; the returned function (if any) runs after every
        ``loss.backward()`` and before ``optimizer.step()`` (e.g. a sparsity regularizer's
        gradient term, as torch-pruning's ``pruner.regularize(model)``). Same steps either way."""
        return None

    def skip_reason(self, model: nn.Module) -> str | None:
        """Why this method cannot apply to ``model`` (``None`` when it can)."""
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        """The model as deployed, after fine-tuning (e.g. pruning masks made permanent)."""
        return model

    def deployed_params(self, model: nn.Module, counted: int) -> int:
        """Parameters the deployed model really keeps; ``counted`` is torch-pruning's count."""
        return counted

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        """The deployed model at ``target``; raises ``NotApplicable`` for a target it cannot meet."""
        raise NotImplementedError

    @property
    def n(self) -> int | None:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRITa(Method):
    """Train with N-factor compositions; merge; truncate the SVD at a global threshold."""

    factors: int
    family: str = "lorita"

    @property
    def name(self) -> str:
        return f"lorita-n{self.factors}"

    @property
    def n(self) -> int:
        return self.factors

    def prepare(self, model: nn.Module) -> nn.Module:
        return lorita.overparameterize(model, self.factors)

    def dense_reference(self, model: nn.Module) -> nn.Module:
        return lorita.merge(copy.deepcopy(model))

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        dense = self.dense_reference(model).eval()
        policy = (lorita.TargetParamsDrop(drop=target.drop) if target.kind == "params"
                  else lorita.TargetFlopsDrop(drop=target.drop))
        plan = lorita.truncate(dense, policy, calib.example)
        deployed = lorita.factorize(dense, plan)
        macs0, params0 = lorita.count_macs_params(dense, calib.example)
        macs1, params1 = lorita.count_macs_params(deployed, calib.example)
        got = 1 - (params1 / params0 if target.kind == "params" else macs1 / macs0)
        return Compressed(model=deployed, achieved_drop=got,
                          layers={lp.name: lp.rank for lp in plan.layers})


for _n in (1, 2, 3, 4):
    METHODS.add(f"lorita-n{_n}", LoRITa(factors=_n), family="lorita",
                description=(f"LoRITa with N={_n}: train as {_n}-factor compositions, merge, global SVD "
                             "truncation" if _n > 1 else
                             "LoRITa N=1: standard training + global SVD truncation (low-rank baseline)"),
                paper="Zhang, Alkhouri, Wang, TMLR (arXiv 2405.03089)")


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchPruning(Method):
    """Pre-train (with the baseline's sparsity regularizer, if any), prune once to the target, fine-tune."""

    name: str
    family: str = "pruning"

    @property
    def baseline(self) -> pruning.Baseline:
        return pruning.BASELINES[self.name]

    def skip_reason(self, model: nn.Module) -> str | None:
        if self.baseline.needs_batchnorm and not pruning.has_batchnorm(model):
            return f"{self.name} ranks channels by BatchNorm scales and this model has no BatchNorm"
        return None

    def regularizer(self, model: nn.Module, calib: Calib) -> Callable[[nn.Module], None] | None:
        return pruning.sparsity_regularizer(model, calib.example, self.baseline,
                                            ignored=[calib.head] if calib.head else [])

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        pruned, got = pruning.prune_to_target(
            model, calib.example, kind=target.kind, drop=target.drop, baseline=self.baseline,
            ignored=[calib.head] if calib.head else [], calib=(calib.batch_x, calib.batch_y))
        return Compressed(model=pruned, achieved_drop=got, layers=_widths(pruned))


_PRUNING = {
    "l1-filter": ("L1-norm filter/neuron pruning, same ratio in every layer",
                  "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"),
    "group-l2": ("DepGraph group L2-magnitude pruning, ranked globally across layers",
                 "Fang et al., DepGraph: Towards Any Structural Pruning, CVPR 2023"),
    "depgraph-sl": ("DepGraph with group-norm sparse learning during pre-training, then global group L2",
                    "Fang et al., DepGraph: Towards Any Structural Pruning, CVPR 2023"),
    "bn-slimming": ("network slimming: L1 on BN scales during pre-training, global BN-scale ranking",
                    "Liu et al., Learning Efficient Convolutional Networks through Network Slimming, ICCV 2017"),
    "taylor": ("first-order Taylor importance on a train-split calibration batch, global",
               "Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019"),
    "hessian": ("OBD diagonal-Hessian importance from per-sample train gradients, global",
                "LeCun et al., Optimal Brain Damage, NeurIPS 1989"),
    "lamp": ("layer-adaptive magnitude (LAMP) scores, global",
             "Lee et al., Layer-adaptive Sparsity for the Magnitude-based Pruning, ICLR 2021"),
    "fpgm": ("filter pruning via geometric median, per layer",
             "He et al., Filter Pruning via Geometric Median, CVPR 2019"),
    "random": ("random channels, same ratio in every layer: the control every method must beat",
               "Li et al., Revisiting Random Channel Pruning, CVPR 2022"),
}
for _name, (_desc, _paper) in _PRUNING.items():
    METHODS.add(_name, TorchPruning(name=_name), family="pruning", description=_desc + " (torch-pruning)",
                paper=_paper)


@dataclass(frozen=True, slots=True, kw_only=True)
class MagnitudeUnstructured(Method):
    """Global unstructured weight magnitude pruning; masks kept through fine-tuning."""

    name: str = "magnitude-unstructured"
    family: str = "pruning"
    note = ("unstructured: Params↓ counts zeroed weights as removed; FLOPs and latency are measured on the "
            "dense kernels it runs with, so no speed-up is claimed")

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        if target.kind != "params":
            raise NotApplicable("unstructured sparsity removes no FLOPs on dense kernels; use a params target")
        pruned, got = pruning.magnitude_unstructured(model, target.drop)
        return Compressed(model=pruned, achieved_drop=got, note=self.note)

    def finalize(self, model: nn.Module) -> nn.Module:
        return pruning.make_permanent(model)

    def deployed_params(self, model: nn.Module, counted: int) -> int:
        return pruning.nonzero_params(model)


METHODS.add("magnitude-unstructured", MagnitudeUnstructured(), family="pruning",
            description="global unstructured L1 weight magnitude (torch.nn.utils.prune); zeros counted as "
            "removed, FLOPs/latency on dense kernels",
            paper="Han et al., Learning both Weights and Connections, NeurIPS 2015")
