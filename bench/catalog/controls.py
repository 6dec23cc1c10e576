"""Controls: cells that say whether a method's compression bought anything, registered as methods of
family "control" and never ranked among the methods.

``scratch:<method>`` (Liu et al., *Rethinking the Value of Network Pruning*, ICLR 2019): the deployed
architecture ``<method>`` produced at a target (pruned widths; LoRITa's factorized layers at their
ranks), re-initialized and trained from scratch with as many optimizer steps as the method's
pre-training plus fine-tuning, on the method's own recipe (``bench.execution.controls`` trains it).
It shares the method's trained model (the same ``pretraining``), whose compression gives the
architecture; when that model comes from the cache the control costs one training per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import nn

from bench.catalog.budget import Target
from bench.catalog.protocol import Calib, Compressed, Method
from bench.catalog.registry import METHODS
from bench.records.errors import UsageError

KINDS = ("scratch",)
SCRATCH_PAPER = "Liu, Sun, Zhou, Huang, Darrell, Rethinking the Value of Network Pruning, ICLR 2019"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scratch(Method):
    """The deployed architecture of ``of`` at a target, trained again from a fresh initialization.

    Trains (before compression) exactly as ``of`` does, since its architecture comes from compressing
    that model; ``compress`` hands over ``of``'s deployed model, whose weights the job then discards.
    """

    family: str = "control"
    of: Method
    retrains: ClassVar[bool] = True

    @property
    def trains_as(self) -> Method:
        return self.of

    def for_target(self, target: Target) -> Method:
        return replace(self, of=self.of.for_target(target))

    def skip_reason(self, model: nn.Module) -> str | None:
        if not shrinks(self.of):
            return f"{self.of.name} keeps the dense architecture (masked weights): nothing to train from scratch"
        return self.of.skip_reason(model)

    def prepare(self, model: nn.Module, calib: Calib | None = None) -> nn.Module:
        return self.of.prepare(model, calib)

    def pretraining(self) -> str:
        return self.of.pretraining()

    def regularizer(self, model: nn.Module, calib: Calib) -> Callable[[nn.Module], None] | None:
        return self.of.regularizer(model, calib)

    def dense_reference(self, model: nn.Module) -> nn.Module:
        return self.of.dense_reference(model)

    def deployed_params(self, model: nn.Module, counted: int) -> int:
        return self.of.deployed_params(model, counted)

    def record_fields(self) -> dict[str, Any]:
        return {"control_of": self.of.name}

    def compress(self, model: nn.Module, target: Target, calib: Calib) -> Compressed:
        out = self.of.compress(model, target, calib)
        note = (f"control: {self.of.name}'s deployed architecture trained from scratch (same steps and recipe); "
                "zero-shot is its accuracy before the fine-tuning steps")
        return replace(out, note=f"{out.note}; {note}" if out.note else note)


def shrinks(method: Method) -> bool:
    """Whether ``method`` deploys a smaller architecture: one that makes masks permanent after fine-tuning
    (unstructured sparsity) keeps the dense shape, so there is nothing to train from scratch."""
    return type(method).finalize is Method.finalize


def _register_scratch() -> None:
    for entry in list(METHODS):
        method = entry.obj
        if method.family in ("control", "dense"):
            continue
        control = Scratch(name=f"scratch:{method.name}", of=method, n=method.n)
        METHODS.add(control.name, control, family=control.family, paper=SCRATCH_PAPER,
                    description=f"control: {method.name}'s deployed architecture re-initialized and trained from "
                    "scratch with the same steps and recipe")


_register_scratch()


def parse_controls(text: str, methods: tuple[str, ...]) -> tuple[str, ...]:
    """``--controls``: "scratch" (a scratch control of every method of the run that has one) or a comma list
    of control names ("scratch:group-l2,scratch:lorita-n2"). Raises ``UsageError`` for anything else."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in KINDS:
            out += [f"{part}:{m}" for m in methods if f"{part}:{m}" in METHODS and shrinks(METHODS.get(m))]
        elif part.partition(":")[0] in KINDS and part in METHODS and part.partition(":")[2] in methods:
            out.append(part)
        else:
            raise UsageError(f"bad control {part!r}; accepted: {', '.join(KINDS)} (every method of the run) or "
                             "KIND:METHOD with METHOD one of the run's: "
                             + ", ".join(f"scratch:{m}" for m in methods))
    if not out:
        raise UsageError(f"no control in {text!r}; accepted: scratch, or scratch:METHOD for a method of the run")
    return tuple(dict.fromkeys(out))
