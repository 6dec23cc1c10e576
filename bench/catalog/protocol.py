"""The ``Method`` protocol every registered method follows, and what its steps take and give.

A method also names its ``pretraining``: methods that name the same one train the very same model
(same preparation, same regularizer), so a run trains it once per seed and every such method
compresses that one model (and the cache keys it by that name, not by the method).

A job (``bench.execution.job``) calls, in order: ``skip_reason(model)``; ``prepare(model)``;
``regularizer(model, calib)`` once, then training for ``budget.train_epochs``;
``dense_reference(model)``; then for each target ``compress(model, target, calib)``, the same
``budget.finetune_epochs`` of fine-tuning for every method, ``finalize`` and
``deployed_params``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.catalog.budget import Target
from bench.records.results import REFERENCE_PRETRAINING

# Standard training: N=1 LoRITa and every pruning method without a training-time regularizer
# start from this one model, which is also the reference every ΔAcc is taken against.
PLAIN = REFERENCE_PRETRAINING  # "plain", spelled once in bench.records.results
# "lowrank": low-rank training at ranks fixed before training; "control": a control of another
# method's cell (its deployed architecture trained from scratch), never ranked among the methods.
FAMILIES = ("lorita", "pruning", "dense", "lowrank", "control")


@dataclass(frozen=True, slots=True, kw_only=True)
class Calib:
    """What ``compress`` may look at: data from the *train* split only (validation is carved from
    it; the test split never reaches a method), the head's name and the protocol's choices.

    ``example`` is one input sample (for tracing and counting); ``batch_x``/``batch_y`` a
    labelled calibration batch (for gradient-based importances such as Taylor or Hessian);
    ``val_x``/``val_y`` the validation split, for choices made on held-out data (LoRITa's
    "auto" rank allocation). ``protected`` names the layers no method may change (the same list
    for every method); ``allocation`` is LoRITa's rank allocation (``Preset.allocation``);
    ``round_to`` the multiple every deployed rank or pruned width is rounded to.
    """

    example: torch.Tensor
    batch_x: torch.Tensor
    batch_y: torch.Tensor
    num_classes: int
    head: str | None  # qualified name of the classifier layer, whose output width is never pruned
    protected: tuple[str, ...] = ()
    allocation: str = "global"
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    round_to: int = 1  # deployed ranks and pruned widths are multiples of this (``Preset.round_to``)
    # The optimizer and weight decay the model trains under, for a regularizer that replaces the decay
    # on some parameters (Frobenius decay on low-rank factors).
    optimizer: str = "sgd"
    weight_decay: float = 0.0

    @property
    def ignored(self) -> list[str]:
        """What pruning passes as ignored layers: the protected ones and the head (its outputs are
        the classes, which no method removes)."""
        return list(dict.fromkeys([*self.protected, *([self.head] if self.head else [])]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Compressed:
    model: nn.Module
    achieved_drop: float
    layers: dict[str, Any] = field(default_factory=dict)  # per-layer ranks or widths
    note: str = ""  # caveat the report must show (e.g. "sparse weights run on dense kernels")
    # Per layer, the full size the kept number is a fraction of (full rank; channels of the dense
    # model), so that layers of different shapes compare in the kept-per-layer figure.
    full: dict[str, int] = field(default_factory=dict)
    allocation: str | None = None  # LoRITa: the rank allocation used (lorita.ALLOCATIONS)
    allocation_val_acc: dict[str, float] = field(default_factory=dict)  # "auto": each candidate's val acc


@dataclass(frozen=True, slots=True, kw_only=True)
class Method:
    """A registered compression method. Subclasses hold settings only, never run state.

    ``name`` is the registered name, ``family`` one of "lorita", "pruning" or "dense", and
    ``n`` LoRITa's number of factors N (``None`` for every other family): plain fields,
    copied into every record.
    """

    name: str
    family: str
    n: int | None = None
    # A control trains the deployed architecture again, from a fresh initialization, for the budget's
    # pre-training steps before its fine-tuning (bench.execution.controls).
    retrains: ClassVar[bool] = False

    def prepare(self, model: nn.Module, calib: Calib | None = None) -> nn.Module:
        """The model to train (e.g. over-parameterized); may modify ``model`` in place. ``calib`` carries
        the protected layers and an example input, for a preparation that counts or skips layers."""
        return model

    def for_target(self, target: Target) -> Method:
        """This method as it trains for ``target``: itself, unless what it trains depends on the target
        (ranks fixed before training); then one training per target, each with its own ``pretraining``."""
        return self

    @property
    def trains_as(self) -> Method:
        """The method whose recipe (``Preset.budget_for``) this one trains with: itself, or for a control
        the method whose cell it copies."""
        return self

    def record_fields(self) -> dict[str, Any]:
        """Record fields this method sets on every record it makes (a control's link to its cell)."""
        return {}

    def pretraining(self) -> str:
        """The identity of the model this method compresses: ``PLAIN`` for standard training;
        another name where ``prepare`` or ``regularizer`` changes what is trained."""
        return PLAIN

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
