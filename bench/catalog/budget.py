"""The one training budget every method in a run shares, and the compression targets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from bench.records import decay
from bench.records.errors import UsageError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "constant")
TARGET_KINDS = ("params", "flops")
# What a method's own recipe may change. Never epochs, fine-tuning epochs or batch size: they fix
# the number of optimizer steps, which is the same for every method.
RECIPE_FIELDS = ("optimizer", "lr", "finetune_lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
                 "gamma", "label_smoothing")


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Optimizer, schedule and epochs, identical for every method of a run.

    ``epochs`` is the total: every method trains ``epochs - finetune_epochs`` before it
    compresses and ``finetune_epochs`` after, on the same batches per epoch, so all use
    the same number of optimizer steps. ``weight_decay`` with SGD is the coupled L2
    penalty (λ/2·Σ‖W_i‖² on every factor), the regularizer under which LoRITa's
    Schatten-(2/N) equivalence holds; with AdamW it is decoupled decay.
    """

    epochs: int = 30
    finetune_epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    finetune_lr: float = 0.005
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # "step": fractions of each phase's steps
    gamma: float = 0.1  # "step": lr factor at each milestone
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str, value: object, accepted: str) -> None:
            if not ok:
                raise UsageError(f"bad budget: {what}={value!r}; accepted: {accepted}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        need(isinstance(self.finetune_epochs, int) and 0 <= self.finetune_epochs < self.epochs,
             "finetune_epochs", self.finetune_epochs, f"an integer in [0, epochs={self.epochs})")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", self.batch_size,
             "an integer >= 1")
        need(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, ", ".join(OPTIMIZERS))
        need(self.schedule in SCHEDULES, "schedule", self.schedule, ", ".join(SCHEDULES))
        need(self.lr > 0, "lr", self.lr, "a number > 0")
        need(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "a number > 0")
        need(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        need(isinstance(self.nesterov, bool), "nesterov", self.nesterov, "True or False")
        need(isinstance(self.milestones, tuple) and all(isinstance(m, int | float) and not isinstance(m, bool)
                                                       and 0 < m < 1 for m in self.milestones),
             "milestones", self.milestones, "a tuple of fractions in (0, 1)")
        need(0 < self.gamma <= 1, "gamma", self.gamma, "a number in (0, 1]")
        need(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "a number in [0, 1)")

    @property
    def train_epochs(self) -> int:
        """Epochs before compression (pre-training for pruning, LoRITa's training)."""
        return self.epochs - self.finetune_epochs

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def decay_budget(budget: Budget, lr_sum: float) -> float:
    """How far weight decay could act in a training of ``budget`` whose learning rates summed to
    ``lr_sum`` (``bench.records.decay.decay_budget``)."""
    return decay.decay_budget(optimizer=budget.optimizer, weight_decay=budget.weight_decay,
                              momentum=budget.momentum, lr_sum=lr_sum)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A compression target: drop this fraction of the dense model's params or FLOPs."""

    kind: str
    drop: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise UsageError(f"bad target kind {self.kind!r}; accepted: {', '.join(TARGET_KINDS)}")
        if not isinstance(self.drop, float | int) or not 0 < self.drop < 1:
            raise UsageError(f"bad target drop {self.drop!r}; accepted: a fraction in (0, 1), e.g. 0.7")

    def __str__(self) -> str:
        return f"{self.kind}:{self.drop:g}"


def parse_targets(text: str) -> tuple[Target, ...]:
    """``"params:0.5,0.7,0.9"`` or ``"flops:0.5"`` (kinds may be mixed: ``params:0.5,flops:0.7``)."""
    targets, kind = [], None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if ":" in part:
            kind, _, part = part.partition(":")
        if kind is None:
            raise UsageError(f"bad targets {text!r}; accepted: KIND:DROP[,DROP…] with KIND in "
                             f"{', '.join(TARGET_KINDS)}, e.g. params:0.5,0.7,0.9")
        try:
            drop = float(part)
        except ValueError:
            raise UsageError(f"bad target drop {part!r} in {text!r}; accepted: a fraction in (0, 1)") from None
        targets.append(Target(kind=kind.strip(), drop=drop))
    if not targets:
        raise UsageError(f"no targets in {text!r}; accepted: e.g. params:0.5,0.7,0.9")
    return tuple(targets)
