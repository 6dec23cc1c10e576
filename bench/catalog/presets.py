"""Presets: named, frozen run configurations, listed by ``lorita-bench list``.

A preset names datasets, models and methods, so it is validated against their tables: the
package ``bench.catalog`` imports this module last, after every table it refers to is filled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import lorita
from bench.catalog.budget import RECIPE_FIELDS, Budget, Target
from bench.catalog.models import DEFAULT_PROTECT, check_options, resolve
from bench.catalog.protocol import FAMILIES, Method
from bench.catalog.registry import DATASETS, METHODS, PRESETS
from bench.records.errors import UsageError
from bench.records.sources import config_hash

# LoRITa's rank allocations a preset may name: lorita's own, or "auto" (chosen on validation).
ALLOCATIONS = (*lorita.ALLOCATIONS, "auto")
# How latency is timed (bench.execution.measure.runner): "eager-fp32", the suite's original timing,
# kept so that old numbers stay comparable; "deploy", as the model ships on the device (CUDA: the
# training's dtype with CUDA graphs; CPU: float32 eager, the same as eager-fp32); "onnxruntime", an
# ONNX export run by ONNX Runtime's CPU execution provider (the ``onnx`` extra).
LATENCY_MODES = ("eager-fp32", "deploy", "onnxruntime")


# The fields of a Preset that are not part of its configuration's identity (``bench.records.sources.
# IDENTITY`` lists the others; a test checks that every field is in exactly one of the two): a folder
# holds several methods, targets, seeds and controls; channels_last changes how fast, not what is trained; the
# recipes are hashed, not how they were chosen.
NOT_IDENTITY = ("methods", "targets", "seeds", "controls", "control_targets", "channels_last", "recipe_source",
                "tune_grid")


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """Dataset, model, methods, targets, budget and seeds of one comparison."""

    dataset: str
    model: str
    model_options: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...]
    targets: tuple[Target, ...]
    budget: Budget
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    latency_rounds: int = 30
    throughput_batch: int = 256
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC conv nets on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the training forward pass
    # Each method's own recipe: per family ("lorita", "pruning") or method name (which wins), the
    # budget fields it changes (RECIPE_FIELDS: lr, weight decay, schedule, …); the steps never change.
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How the recipes were chosen: "preset" (given) or "tuned" (on the validation split, see
    # bench.execution.tune), with the grid every method searched.
    recipe_source: str = "preset"
    tune_grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # Layers no method may change, the same list for every method (``bench.catalog.models.
    # protected_layers``: glob patterns on layer names, "@head" for the classifier).
    protect: tuple[str, ...] = DEFAULT_PROTECT
    # LoRITa's rank allocation: one of ``lorita.ALLOCATIONS``, or "auto": at each target, the one
    # whose truncated model is most accurate on the validation split (never the test split).
    allocation: str = "auto"
    # A dense model at chance on validation is a collapsed training ("diverged", never ranked).
    # False only for plumbing runs on random-label data, where chance is all a model can reach;
    # a non-finite loss is a collapse either way.
    chance_check: bool = True
    # Deployed ranks (LoRITa) and pruned widths (every torch-pruning baseline, through its own
    # ``round_to``) are multiples of this; 1 leaves them as the target search puts them. Tensor
    # cores want multiples of 8.
    round_to: int = 1
    # Every mode is timed (A/B against the dense model) at batch 1, the throughput batch and each
    # batch of ``latency_sweep``; the first mode's numbers are the records' headline latency fields.
    latency_modes: tuple[str, ...] = ("eager-fp32",)
    latency_sweep: tuple[int, ...] = ()
    # Controls run beside the methods (``bench.catalog.controls``): registered control names such as
    # "scratch:group-l2", each of a method of ``methods``, at ``control_targets`` (empty: every target).
    # Not part of the configuration's identity: like a method, a control adds cells, not a new config.
    controls: tuple[str, ...] = ()
    control_targets: tuple[Target, ...] = ()

    def __post_init__(self) -> None:
        DATASETS.entry(self.dataset)
        resolve(self.model)  # registered names and timm:<arch>
        check_options(self.model, self.model_options)  # names and types; the builder checks ranges
        for m in self.methods:
            METHODS.entry(m)
        if not self.methods:
            raise UsageError("no methods given; accepted: " + ", ".join(METHODS.names()))
        if not self.targets:
            raise UsageError("no targets given; accepted: e.g. params:0.5,0.7,0.9")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise UsageError(f"bad seeds {self.seeds!r}; accepted: non-negative integers, e.g. 0,1,2")
        for what, values in (("seeds", self.seeds), ("methods", self.methods), ("targets", self.targets)):
            if len(set(values)) != len(values):  # each would be run, and recorded, twice
                twice = sorted({str(v) for v in values if values.count(v) > 1})
                raise UsageError(f"{what} given twice: {', '.join(twice)}; accepted: each at most once")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"bad rank allocation {self.allocation!r}; accepted: {', '.join(ALLOCATIONS)}")
        if not isinstance(self.protect, tuple) or not all(isinstance(p, str) and p.strip() for p in self.protect):
            raise UsageError(f"bad protected layers {self.protect!r}; accepted: a tuple of layer-name patterns "
                             "or @head (the classifier), possibly empty")
        self._check_latency()
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"bad device {self.device!r}; accepted: cpu, cuda, cuda:N")
        for key, fields in self.recipes.items():
            if key not in FAMILIES and key not in METHODS:
                raise UsageError(f"recipe for unknown family or method {key!r}; accepted: {', '.join(FAMILIES)} "
                                 "or a method name")
            bad = sorted(set(fields) - set(RECIPE_FIELDS))
            if bad:
                raise UsageError(f"recipe for {key} sets {', '.join(bad)}; accepted: {', '.join(RECIPE_FIELDS)} "
                                 "(epochs and batch size fix the steps, which every method shares)")
            replace(self.budget, **fields)  # the values, checked as the budget checks its own
        self._check_controls()

    def _check_controls(self) -> None:
        for name in self.controls:
            control = METHODS.get(name)
            if control.family != "control" or control.trains_as.name not in self.methods:
                raise UsageError(f"bad control {name!r}; accepted: a control of a method of this run, e.g. "
                                 + ", ".join(f"scratch:{m}" for m in self.methods[:3]))
        if len(set(self.controls)) != len(self.controls):
            raise UsageError(f"controls given twice: {', '.join(self.controls)}; accepted: each at most once")
        bad = [str(t) for t in self.control_targets if t not in self.targets]
        if bad:
            raise UsageError(f"control targets {', '.join(bad)} are not targets of this run; accepted: "
                             + ", ".join(str(t) for t in self.targets))

    def by_training(self, method: Method, targets: Iterable[Target]) -> dict[str, list[Target]]:
        """``targets`` grouped by the model ``method`` trains for each (``pretraining_of``), in order: one
        group unless its training depends on the target (``Method.for_target``), as lowrank-fixed's does."""
        out: dict[str, list[Target]] = {}
        for t in targets:
            out.setdefault(self.pretraining_of(method.for_target(t)), []).append(t)
        return out

    def targets_of(self, name: str) -> tuple[Target, ...]:
        """The targets the method or control ``name`` runs at: a control's ``control_targets`` where given."""
        return self.control_targets if name in self.controls and self.control_targets else self.targets

    def _check_latency(self) -> None:
        """``UsageError`` for a ``round_to``, latency mode or sweep batch the suite does not accept."""
        if not _positive_int(self.round_to):
            raise UsageError(f"bad round-to {self.round_to!r}; accepted: a positive integer (1: no rounding, 8: "
                             "tensor-core multiples)")
        bad = [m for m in self.latency_modes if m not in LATENCY_MODES]
        if bad or not self.latency_modes or len(set(self.latency_modes)) != len(self.latency_modes):
            raise UsageError(f"bad latency modes {','.join(map(str, self.latency_modes)) or 'none'}; accepted: one "
                             f"or more of {', '.join(LATENCY_MODES)}, each once")
        if not all(_positive_int(b) for b in self.latency_sweep):
            raise UsageError(f"bad latency sweep {self.latency_sweep!r}; accepted: positive batch sizes, e.g. "
                             "1,16,64,256,1024")

    def latency_batches(self) -> tuple[int, ...]:
        """Every batch size latency is timed at: 1, the throughput batch and the sweep's, ascending."""
        return tuple(sorted({1, self.throughput_batch, *self.latency_sweep}))

    def budget_for(self, method: Method) -> Budget:
        """The budget ``method`` trains under: the preset's, with its family's and then its own recipe."""
        method = method.trains_as  # a control trains on the recipe of the method whose cell it copies
        changes = {**self.recipes.get(method.family, {}), **self.recipes.get(method.name, {})}
        return replace(self.budget, **changes) if changes else self.budget

    def pretraining_budget(self, method: Method) -> Budget:
        """``budget_for(method)`` as far as it shapes the model before compression (the fine-tuning lr
        does not): methods of one pre-training share it, and the checkpoint cache is keyed on it."""
        return replace(self.budget_for(method), finetune_lr=self.budget.finetune_lr)

    def pretraining_of(self, method: Method) -> str:
        """What ``method`` trains, as ``Method.pretraining`` says, distinguished by its recipe where that
        changes the training before compression."""
        before = self.pretraining_budget(method)
        return method.pretraining() if before == self.budget else f"{method.pretraining()}@{before.digest()}"

    def recipe_of(self, method: Method) -> dict[str, Any]:
        """The optimizer settings ``method`` used, as records and reports show them: every field a
        recipe or a tuning grid may set (``RECIPE_FIELDS``), its source and the grid."""
        b = self.budget_for(method)
        method = method.trains_as
        fields = {f: list(v) if isinstance(v := getattr(b, f), tuple) else v for f in RECIPE_FIELDS}
        return {**fields, "source": self.recipe_source if (method.family in self.recipes or method.name in self.recipes)
                else "preset budget", "grid": {k: list(v) for k, v in self.tune_grid.items()} or None}

    def speed(self) -> dict[str, bool]:
        """The training loop's speed options (they change how fast, not what is trained)."""
        return {"amp": self.amp, "channels_last": self.channels_last, "compile": self.compile}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Hash of what determines a trained model and its numbers (not the method list or targets):
        ``bench.records.sources.config_hash`` of this preset's fields, the one definition."""
        return config_hash({**self.to_dict(), "config_hash": None})

    def override(self, **changes: Any) -> Preset:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# SGD with coupled L2 as in the paper. lr·wd·steps must be O(1) for weight decay to act
# within the budget at all; at wd=0.01 N=3 halves the effective rank of the FCN's hidden
# layers while every N in 1..4 still trains to ~95% (wd=0.03 already collapses N>=3).
QUICK_BUDGET = Budget(epochs=40, finetune_epochs=5, batch_size=64, optimizer="sgd", lr=0.02,
                      finetune_lr=0.002, momentum=0.9, nesterov=True, weight_decay=0.01, schedule="cosine")

PRESETS.add("quick", Preset(
    dataset="digits", model="fcn", model_options={"depth": 4, "width": 128},
    methods=("lorita-n1", "lorita-n2", "lorita-n3", "l1-filter", "group-l2", "taylor", "random",
             "magnitude-unstructured"),
    targets=(Target(kind="params", drop=0.5), Target(kind="params", drop=0.7),
             Target(kind="params", drop=0.9)),
    budget=QUICK_BUDGET), description="LoRITa N=1,2,3 vs L1-filter, group-L2, Taylor, random and "
    "unstructured magnitude pruning, FCN on digits, params drop 50/70/90%; CPU, about 30 s on 2 cores")

# CPU times in the descriptions: wall time of `lorita-bench run --preset NAME` from an empty cache
# with OMP_NUM_THREADS=1 on 2 shared AMD EPYC cores (load average ~7 from other jobs): quick 31 s,
# ci 16 s. The *-fcn hour is extrapolated from fashion-mnist-fcn with 3 methods at 3 epochs
# (142 s: 7-15 s per epoch plain, ~25 s at N=3), 8 methods × 40 epoch-equivalents.

# The regression gate's preset: small enough to run twice in CI on 2 CPU cores, with a LoRITa
# N=1 vs N=3 pair and a pruning baseline so that a broken method, counter or budget shows up.
# reference/ci.jsonl holds its committed results; regenerate it whenever this preset changes.
PRESETS.add("ci", Preset(
    dataset="digits", model="fcn", model_options={"depth": 4, "width": 128},
    methods=("lorita-n1", "lorita-n3", "l1-filter"),
    targets=(Target(kind="params", drop=0.5), Target(kind="params", drop=0.8)),
    budget=replace(QUICK_BUDGET, epochs=20, finetune_epochs=3), latency_rounds=20),
    description="regression gate: LoRITa N=1,3 vs L1 filter pruning, FCN on digits, params drop "
    "50/80%, 20 epochs; CPU, about 15 s on 2 cores; results committed as reference/ci.jsonl")

# The paper's workloads under the suite's identical-budget protocol. Data come from
# --data-dir (torchvision's layout) or --download; one modern GPU is assumed for the CIFAR
# ones. Budgets follow the official LoRITa recipe where it exists (SGD lr 0.01, momentum
# 0.9, coupled weight decay 1e-3, batch 128, label smoothing 0.1, crop+flip) with a
# cosine schedule over the suite's shorter total; every method gets the same budget.
# lowrank-fixed: the low-rank training LoRITa's abstract compares with (one training per target).
PAPER_METHODS = ("lorita-n1", "lorita-n2", "lorita-n3", "lowrank-fixed", "l1-filter", "group-l2", "depgraph-sl",
                 "taylor", "random")
CONV_METHODS = (*PAPER_METHODS, "bn-slimming")
PAPER_TARGETS = (Target(kind="params", drop=0.5), Target(kind="params", drop=0.7), Target(kind="params", drop=0.9),
                 Target(kind="flops", drop=0.5), Target(kind="flops", drop=0.7))
FCN_BUDGET = Budget(epochs=30, finetune_epochs=5, batch_size=128, optimizer="sgd", lr=0.01, finetune_lr=0.001,
                    weight_decay=1e-3, schedule="cosine", label_smoothing=0.0)
CIFAR_BUDGET = Budget(epochs=200, finetune_epochs=20, batch_size=128, optimizer="sgd", lr=0.01,
                      finetune_lr=0.001, weight_decay=1e-3, schedule="cosine", label_smoothing=0.1)
VIT_BUDGET = Budget(epochs=200, finetune_epochs=20, batch_size=128, optimizer="adamw", lr=1e-3,
                    finetune_lr=1e-4, weight_decay=0.05, schedule="cosine", label_smoothing=0.1)


def adamw_lorita_recipes(budget: Budget) -> dict[str, dict[str, Any]]:
    """LoRITa's own recipe under AdamW: lr/N and weight decay ×N for N factors (same lr·wd per step).

    Adam normalizes each parameter's step, so each of the N factors moves by a full-size step and
    their product by about N times as much as one matrix would: on the FCN (784-256×3-10, lr 1e-3)
    N=3's first step changes each layer's product by 22-66 % of its spectral norm against 4-26 % at
    N=1, its first layer's norm grows to ~110 (N=1: 4), and a spike that kills a ReLU layer leaves a
    constant output: 10.00 %, the collapse of issue 18 (which seed or thread count it hits is
    chance). lr/N puts the product's step back at N=1's (N=3 at lr 3e-4: 89.8 %, norm 12); the
    decoupled decay per step is lr·wd, so wd ×N keeps each method's decay budget. SGD needs none
    of this (N=3 at lr 0.01 trains to 89.6 %).
    """
    return {f"lorita-n{n}": {"lr": budget.lr / n, "weight_decay": budget.weight_decay * n} for n in (2, 3, 4)}


for _dataset in ("mnist", "fashion-mnist"):
    PRESETS.add(f"{_dataset}-fcn", Preset(
        dataset=_dataset, model="fcn", model_options={"depth": 4, "width": 512}, methods=PAPER_METHODS,
        targets=PAPER_TARGETS[:3], budget=FCN_BUDGET),
        description=f"paper workload: FCN (4×512) on {_dataset}, LoRITa N=1..3 vs low-rank training and pruning, "
        "params drop 50/70/90%; CPU, about 40 min on 2 cores, busy, for its 4 shared trainings (estimated from a "
        "measured run of 4 of its methods at 4 targets, 22 min), plus 3 for lowrank-fixed (one per target)")
for _dataset, _model in (("cifar10", "vgg16"), ("cifar10", "resnet20"), ("cifar100", "vgg16")):
    PRESETS.add(f"{_dataset}-{_model}", Preset(
        dataset=_dataset, model=_model, methods=CONV_METHODS, targets=PAPER_TARGETS, budget=CIFAR_BUDGET,
        device="cuda"),
        description=f"paper workload: {_model} on {_dataset}, LoRITa N=1..3 vs pruning incl. network "
        "slimming, params and FLOPs drops; GPU")
PRESETS.add("cifar10-vit", Preset(
    dataset="cifar10", model="vit", methods=PAPER_METHODS, targets=PAPER_TARGETS, budget=VIT_BUDGET,
    device="cuda", recipes=adamw_lorita_recipes(VIT_BUDGET)),
    description="paper workload: timm ViT (patch 4, 192 wide, 6 deep) on cifar10, LoRITa N=1..3 vs pruning "
    "(whole heads + widths); AdamW, LoRITa at lr/N and weight decay ×N (Adam steps every factor in full); GPU")

# The paper's conv nets and ViT on real data that needs no download: Fashion-MNIST padded to
# 32×32 (one channel; Debian's dataset-fashion-mnist or --data-dir). Sized for minutes on one
# modern GPU: 430 steps per epoch at batch 128, 15 epochs in all per method (12 before
# compression, 3 of fine-tuning at every target). On an H200 an epoch took 2.3-4.8 s (VGG-16),
# 3.6-10.4 s (ResNet-20), 4.4-7.0 s (ViT) from N=1 to N=3.
# A twentieth of the CIFAR recipe's steps at its lr and wd would leave weight decay a budget of
# 0.26 (conv) and 0.13 (ViT), where N cannot matter (bench.records.decay): the weight decay is
# scaled up, for every method alike, to keep the decay budget at 0.65 (the quick preset's ~0.6).
FMNIST_CONV_BUDGET = replace(CIFAR_BUDGET, epochs=15, finetune_epochs=3, weight_decay=2.5e-3)
FMNIST_VIT_BUDGET = replace(VIT_BUDGET, epochs=15, finetune_epochs=3, weight_decay=0.25)
for _model, _budget, _methods, _options in (
        ("vgg16", FMNIST_CONV_BUDGET, CONV_METHODS, {}),
        ("resnet20", FMNIST_CONV_BUDGET, CONV_METHODS, {}),
        ("vit", FMNIST_VIT_BUDGET, PAPER_METHODS, {})):
    PRESETS.add(f"fashion-mnist-{_model}", Preset(
        dataset="fashion-mnist-32", model=_model, model_options=_options, methods=_methods, targets=PAPER_TARGETS,
        budget=_budget, device="cuda",
        recipes=adamw_lorita_recipes(_budget) if _budget.optimizer == "adamw" else {}),
        description=f"{_model} on Fashion-MNIST padded to 32×32 (real data, no download), LoRITa N=1..3 vs "
        "pruning, params and FLOPs drops, 15 epochs, weight decay raised so that it can act (decay budget 0.65); "
        "GPU, about 15-20 min per seed on an H200 (estimated from its measured epoch times, docs/gpu-report)")

# The conv verdict anyone can reproduce on a laptop: a narrow VGG-16 (16-128 channels) on a fixed
# 10k of Fashion-MNIST's training images, LoRITa N=1..3 against four pruning baselines (random is
# the control), one params and one FLOPs target, 12 epochs (10 + 2 of fine-tuning). lr 0.05 and
# wd 2e-3 give weight decay a budget of 0.79 over the 1,570 pre-training steps (bench.records.decay).
CPU_CONV_BUDGET = Budget(epochs=12, finetune_epochs=2, batch_size=64, optimizer="sgd", lr=0.05, finetune_lr=0.005,
                         momentum=0.9, nesterov=True, weight_decay=2e-3, schedule="cosine")
PRESETS.add("fashion-mnist-cpu-vgg16", Preset(
    dataset="fashion-mnist-32-10k", model="vgg16", model_options={"width": 0.25},
    methods=("lorita-n1", "lorita-n2", "lorita-n3", "l1-filter", "group-l2", "taylor", "random"),
    targets=(Target(kind="params", drop=0.7), Target(kind="flops", drop=0.5)), budget=CPU_CONV_BUDGET,
    latency_rounds=10, throughput_batch=64),
    description="conv verdict on a CPU: VGG-16 at width 0.25 on 10k Fashion-MNIST images (32×32), LoRITa "
    "N=1..3 vs L1-filter, group-L2, Taylor and random pruning, params drop 70% and FLOPs drop 50%, decay "
    "budget 0.79; CPU, about 19 min on 2 cores (measured; docs/cpu-conv-report)")


# ---------------------------------------------------------------------------------------------
# Reproduction presets: the published protocols, with the published numbers in each preset's
# registration metadata (``PRESETS.entry(name).meta["published"]``) for a report to place beside
# the measured ones. docs/reproduce.md lists each with its command and what differs.


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """One published number for a preset's workload, comparable with one field of the suite's records.

    ``metric`` is the ``Record`` field it compares with: ``base_acc`` (the trained model before
    compression) or ``acc`` (compressed and fine-tuned, at ``target``); ``value`` is a fraction
    (0.9413 for 94.13 %). ``selection`` says how the publisher chose it: "best test epoch"
    numbers were chosen on the test set, which the suite never does, so they are an upper
    bound for the suite's last-epoch number. ``speed_up`` is the published MACs ratio.
    Raises ``UsageError`` for an unknown method or metric or a value outside (0, 1).
    """

    method: str
    metric: str
    value: float
    selection: str
    source: str
    target: Target | None = None
    speed_up: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        METHODS.entry(self.method)
        if self.metric not in ("base_acc", "acc"):
            raise UsageError(f"bad published metric {self.metric!r}; accepted: base_acc, acc")
        if not 0 < self.value < 1:
            raise UsageError(f"bad published value {self.value!r}; accepted: a fraction in (0, 1)")
        if (self.metric == "acc") != (self.target is not None):
            raise UsageError(f"published {self.metric} for {self.method} needs a target exactly when the metric is acc")


BEST_TEST_EPOCH = "best test epoch (chosen on the test set)"
LORITA_LOGS = "LoRITa official code, logs in Compress_Code/base/cifar10/<model>/ (github.com/XitongSystem/LoRITa)"
TP_TABLE = "Torch-Pruning benchmarks, ResNet-56 / CIFAR-10 table (github.com/VainF/Torch-Pruning, benchmarks/)"

# The official LoRITa recipe (Compress_Code/train_CNN.py with the logged arguments): SGD lr 0.01,
# momentum 0.9 without Nesterov, coupled weight decay 1e-3, batch 128, label smoothing 0.1,
# crop+flip, up to 300 epochs, no fine-tuning after truncation. Its lr schedule is
# ReduceLROnPlateau(×0.1, patience 15) on *train* accuracy with early stopping, which depends on
# the run; the suite needs a fixed step count (identical budgets), so it uses the closest fixed
# shape: ×0.1 at 50 % and 75 % of the 300 epochs (the logs decay at epochs 128/213/245 for
# VGG-16 N=2 and first at epoch 206 for ResNet-20 N=2). fp32 (no bf16 autocast) as published.
LORITA_REPRO_BUDGET = Budget(epochs=300, finetune_epochs=0, batch_size=128, optimizer="sgd", lr=0.01,
                             finetune_lr=0.001, momentum=0.9, nesterov=False, weight_decay=1e-3, schedule="step",
                             milestones=(0.5, 0.75), gamma=0.1, label_smoothing=0.1)
LORITA_PUBLISHED = {
    "vgg16": {"lorita-n2": 0.9413, "lorita-n3": 0.9361},
    "resnet20": {"lorita-n2": 0.9233, "lorita-n3": 0.9162},
}
for _model, _numbers in LORITA_PUBLISHED.items():
    PRESETS.add(f"repro-lorita-cifar10-{_model}", Preset(
        dataset="cifar10", model=_model, methods=("lorita-n1", "lorita-n2", "lorita-n3"), targets=PAPER_TARGETS,
        budget=LORITA_REPRO_BUDGET, device="cuda", amp=False),
        description=f"reproduce LoRITa's published {_model} on cifar10 (official recipe: SGD 0.01, wd 1e-3, batch "
        "128, label smoothing 0.1, crop+flip, 300 epochs, N=2,3; N=1 as the baseline); fixed ×0.1 steps at 50/75% "
        "instead of its plateau schedule; GPU",
        published=tuple(Published(method=m, metric="base_acc", value=v, selection=BEST_TEST_EPOCH,
                                  source=LORITA_LOGS) for m, v in _numbers.items()))

# Torch-Pruning's ResNet-56 protocol (benchmarks/main.py): pre-train 200 epochs at lr 0.1 with
# ×0.1 steps at epochs 120/150/180, prune to a 2.11× MACs speed-up, fine-tune 100 epochs at lr
# 0.01 with steps at 60/80; SGD momentum 0.9 (no Nesterov), weight decay 5e-4, batch 128. The
# suite's Budget has one list of milestones, as fractions of each phase: pre-training's
# 0.6/0.75/0.9 is exact, so fine-tuning steps at epochs 60/75/90 instead of 60/80 (closest
# that keeps the pre-training exact). A 2.11× speed-up is a FLOPs drop of 1 - 1/2.11.
TP_SPEED_UP = 2.11
TP_TARGET = Target(kind="flops", drop=1 - 1 / TP_SPEED_UP)
TP_REPRO_BUDGET = Budget(epochs=300, finetune_epochs=100, batch_size=128, optimizer="sgd", lr=0.1, finetune_lr=0.01,
                         momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="step",
                         milestones=(0.6, 0.75, 0.9), gamma=0.1, label_smoothing=0.0)
PRESETS.add("repro-tp-cifar10-resnet56", Preset(
    dataset="cifar10", model="resnet56", methods=("group-l2", "l1-filter", "depgraph-sl"), targets=(TP_TARGET,),
    budget=TP_REPRO_BUDGET, device="cuda", amp=False),
    description="reproduce Torch-Pruning's ResNet-56 on cifar10: pre-train 200 epochs lr 0.1 (steps 120/150/180), "
    "prune to 2.11× MACs speed-up, fine-tune 100 epochs lr 0.01 (steps at 60/75/90, published 60/80: one "
    "milestone list serves both phases); GPU",
    published=(
        Published(method="group-l2", metric="base_acc", value=0.9353, selection=BEST_TEST_EPOCH, source=TP_TABLE),
        Published(method="l1-filter", metric="base_acc", value=0.9353, selection=BEST_TEST_EPOCH, source=TP_TABLE),
        Published(method="group-l2", metric="acc", value=0.9346, target=TP_TARGET, speed_up=2.11,
                  selection=BEST_TEST_EPOCH, source=TP_TABLE, note="DepGraph without sparse learning"),
        Published(method="l1-filter", metric="acc", value=0.9293, target=TP_TARGET, speed_up=2.12,
                  selection=BEST_TEST_EPOCH, source=TP_TABLE,
                  note="Group-L1, ranked globally there; l1-filter prunes the same ratio in every layer"),
    ))

# The paper's workloads under the suite's identical-budget protocol: the same configurations as
# the presets above, under the names docs/reproduce.md uses. No single published number is
# placed beside them (the paper reports curves).
for _alias, _of in (("paper-mnist-fcn", "mnist-fcn"), ("paper-cifar10-vit", "cifar10-vit"),
                    ("paper-cifar100-vgg16", "cifar100-vgg16")):
    PRESETS.add(_alias, PRESETS.get(_of), description=f"alias of {_of}: the paper's workload under the suite's "
                "identical-budget protocol")
