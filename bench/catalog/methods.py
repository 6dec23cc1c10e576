"""The registered methods: LoRITa at N = 1..4, every pruning baseline of ``baselines.pruning.BASELINES``
(registered from that one table, with its description and paper), unstructured magnitude pruning, and
low-rank training at ranks fixed before training (``lowrank-fixed``, Khodak et al.).

Each is a ``bench.catalog.protocol.Method``: settings only, registered under its ``name``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

import lorita
from baselines import pruning
from bench.catalog.budget import Target
from bench.catalog.evaluate import accuracy
from bench.catalog.protocol import PLAIN, Calib, Compressed, Method
from bench.catalog.registry import METHODS
from bench.records.errors import NotApplicable
from bench.records.results import TARGET_TOLERANCE
from lorita import lowrank


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRITa(Method):
    """Train with N-factor compositions; merge; truncate the SVD at a global threshold, over the
    layers the rank allocation spends on, never over the protected ones."""

    family: str = "lorita"
    n: int

    def prepare(self, model: nn.Module, calib: Calib | None = None) -> nn.Module:
        return lorita.overparameterize(model, self.n)

    def pretraining(self) -> str:
        # N=1 is standard training: overparameterize(model, 1) returns the model unchanged.
        return PLAIN if self.n == 1 else f"lorita-n{self.n}"

    def dense_reference(self, model: nn.Module) -> nn.Module:
        return lorita.merge(copy.deepcopy(model))

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        dense = self.dense_reference(model).eval()
        policy = lorita.TargetParamsDrop if target.kind == "params" else lorita.TargetFlopsDrop
        candidates = lorita.ALLOCATIONS if calib.allocation == "auto" else (calib.allocation,)
        macs0, params0 = lorita.count_macs_params(dense, calib.example)
        built = {}
        for allocation in candidates:
            plan = lorita.truncate(dense, policy(drop=target.drop, allocation=allocation, round_to=calib.round_to),
                                   calib.example, exclude=calib.protected)
            deployed = lorita.factorize(dense, plan)
            macs1, params1 = lorita.count_macs_params(deployed, calib.example)
            built[allocation] = plan, deployed, 1 - (params1 / params0 if target.kind == "params" else macs1 / macs0)
        # Only candidates that land on the target compete: a less compressed model is more accurate,
        # and must not win for it. With none landing, the closest one is deployed (its record says so).
        landed = [a for a, (_, _, got) in built.items() if abs(got - target.drop) <= TARGET_TOLERANCE + 1e-12]
        pool = landed or [min(built, key=lambda a: abs(built[a][2] - target.drop))]
        scores = {}
        if len(candidates) > 1:
            if calib.val_x is None or calib.val_y is None:
                raise ValueError("the auto rank allocation chooses on the validation split: pass val_x/val_y")
            # Chosen on validation, never on test; a tie keeps the paper's global rule (listed first).
            scores = {a: accuracy(built[a][1], calib.val_x, calib.val_y) for a in pool}
        chosen = max(pool, key=lambda a: scores.get(a, 0.0))
        plan, deployed, got = built[chosen]
        return Compressed(model=deployed, achieved_drop=got, layers={lp.name: lp.rank for lp in plan.layers},
                          full={lp.name: lp.full_rank for lp in plan.layers}, allocation=chosen,
                          allocation_val_acc=scores)


def _register(method: Method, *, description: str, paper: str) -> None:
    METHODS.add(method.name, method, family=method.family, description=description, paper=paper)


for _n in (1, 2, 3, 4):
    _register(LoRITa(name=f"lorita-n{_n}", n=_n),
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

    family: str = "pruning"
    baseline: pruning.Baseline

    def skip_reason(self, model: nn.Module) -> str | None:
        if self.baseline.needs_batchnorm and not pruning.has_batchnorm(model):
            return f"{self.name} ranks channels by BatchNorm scales and this model has no BatchNorm"
        return None

    def pretraining(self) -> str:
        b = self.baseline
        # The regularizer's pruner is built from the baseline's own settings: name it by method.
        return PLAIN if b.regularizer is None else f"{self.name}:{b.regularizer}(reg={b.reg:g})"

    def regularizer(self, model: nn.Module, calib: Calib) -> Callable[[nn.Module], None] | None:
        return pruning.sparsity_regularizer(model, calib.example, self.baseline, ignored=calib.ignored)

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        full = _widths(model)
        pruned, got = pruning.prune_to_target(
            model, calib.example, kind=target.kind, drop=target.drop, baseline=self.baseline,
            ignored=calib.ignored, calib=(calib.batch_x, calib.batch_y), round_to=calib.round_to)
        return Compressed(model=pruned, achieved_drop=got, layers=_widths(pruned), full=full)


for _name, _baseline in pruning.BASELINES.items():
    _register(TorchPruning(name=_name, baseline=_baseline), description=_baseline.description + " (torch-pruning)",
              paper=_baseline.paper)


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


_register(MagnitudeUnstructured(),
          description="global unstructured L1 weight magnitude (torch.nn.utils.prune); zeros counted as "
          "removed, FLOPs/latency on dense kernels",
          paper="Han et al., Learning both Weights and Connections, NeurIPS 2015")


@dataclass(frozen=True, slots=True, kw_only=True)
class LowRankFixed(Method):
    """Low-rank training (Khodak et al., ICLR 2021): every compressible layer but the protected ones trained
    as two thin factors at a rank fixed before training by one rank ratio that meets the target, spectrally
    initialized, under Frobenius decay; "compressing" it deploys the trained factors as they are.

    Its training depends on the target, so ``for_target`` binds one (``target``) and each target is its own
    pre-training (``pretraining`` names it), trained for the full pre-training budget.
    """

    name: str = "lowrank-fixed"
    family: str = "lowrank"
    target: Target | None = None

    def for_target(self, target: Target) -> Method:
        return replace(self, target=target)

    def pretraining(self) -> str:
        if self.target is None:
            raise ValueError(f"{self.name} trains one model per target: bind one with for_target first")
        return f"{self.name}:{self.target}"

    def prepare(self, model: nn.Module, calib: Calib | None = None) -> nn.Module:
        if self.target is None or calib is None:
            raise ValueError(f"{self.name} fixes its ranks from the target and the protected layers: pass both")
        policy = lowrank.UniformRankRatio(drop=self.target.drop, kind=self.target.kind)
        # factorize on the untrained model is the spectral initialization: √σ of the standard init's SVD.
        return lorita.factorize(model, lorita.truncate(model, policy, calib.example, exclude=calib.protected))

    def regularizer(self, model: nn.Module, calib: Calib) -> Callable[[nn.Module], None] | None:
        return lowrank.frobenius_decay(model, calib.weight_decay, coupled=calib.optimizer == "sgd")

    def dense_reference(self, model: nn.Module) -> nn.Module:
        return lowrank.densify(model)

    def record_fields(self) -> dict[str, Any]:
        return {"ranks_fixed_before_training": True}

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        if target != self.target:
            raise ValueError(f"{self.name} was trained for {self.target}, asked for {target}")
        dense = self.dense_reference(model).eval()
        macs0, params0 = lorita.count_macs_params(dense, calib.example)
        macs1, params1 = lorita.count_macs_params(model, calib.example)
        got = 1 - (params1 / params0 if target.kind == "params" else macs1 / macs0)
        layers = lorita.compressible_layers(model)
        ranks = {name: (m.rank if isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d) else
                        min(m.weight.shape[0], m.weight[0].numel())) for name, m in layers.items()}
        full = {name: min(m.weight.shape[0], m.weight[0].numel()) for name, m in
                lorita.compressible_layers(dense).items()}
        note = ("ranks fixed before training" + ("" if calib.optimizer == "sgd" else
                "; AdamW: Frobenius decay enters the gradient and the decoupled decay still acts on the factors"))
        return Compressed(model=model, achieved_drop=got, layers=ranks, full=full, note=note)


_register(LowRankFixed(),
          description="low-rank training: every layer as two factors at ranks fixed before training (one rank "
          "ratio meeting the target), spectral initialization, Frobenius decay; one training per target",
          paper="Khodak, Tenenholtz, Mackey, Fusi, Initialization and Regularization of Factorized Neural "
          "Layers, ICLR 2021")
