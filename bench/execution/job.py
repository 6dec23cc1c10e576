"""One job: one trained model — one pre-training at one seed, trained or loaded from the cache —
then, for every method that compresses that model, compressed, fine-tuned and measured at each
of its targets.

Methods that name the same ``pretraining`` (standard training for N=1 LoRITa and every pruning
method without a regularizer) share one job, so they compress the very same trained model and
the run trains it once. A job knows nothing of executors or of the runner that planned it.
``run_job`` is what an executor runs (submitit pickles it by reference, so it loads the data set
itself and returns a picklable ``JobResult``); ``run_group`` is the job on data already loaded,
in its natural steps: ``trained_model`` (train or load), ``measure_dense`` (the dense model,
measured once) and ``one_target`` (compress, measure zero-shot, fine-tune, finalize, measure).
It returns what it built — the records and, when asked, the dense and deployed models they
describe — so the benchmark suite times exactly those models.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.catalog.budget import Target, decay_budget
from bench.catalog.data import Splits, load
from bench.catalog.models import build, head_of, protected_layers
from bench.catalog.presets import Preset
from bench.catalog.protocol import Calib, Compressed, Method
from bench.catalog.registry import METHODS
from bench.execution import cache, controls, distributed, measure
from bench.execution.provenance import versions
from bench.execution.train import TrainStats, accuracy, steps_per_epoch, train
from bench.records.errors import NotApplicable, TrainingDiverged
from bench.records.results import Record, landing

log = logging.getLogger(__name__)
CALIB_BATCH = 128  # labelled train samples a gradient-based importance may look at
# A training whose dense model ends at most this many times chance accuracy on validation (and at
# most chance + CHANCE_PP) collapsed: its records are "diverged", never ranked. A model at chance
# predicts one class; the margin keeps a model that barely left it out of the rankings too. On
# fewer than COLLAPSE_MIN_VAL validation images the margin is inside the sampling noise of an
# accuracy (±7 pp at 20 images), so there only a non-finite loss marks a collapse.
CHANCE_FACTOR, CHANCE_PP, COLLAPSE_MIN_VAL = 1.5, 0.02, 200
# The method a reference-only job trains as: standard training, the dense model kept as it is.
REFERENCE = Method(name="reference", family="dense")  # pretraining(): PLAIN


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainJob:
    """One trained model (``pretraining`` at ``seed``) and, per method that compresses it, the
    targets still to measure; pickled to the worker as it is.

    ``work`` holds (method name, targets) pairs; empty, the job only trains (or loads) the model
    and measures its dense accuracy: the reference of a seed whose run has no method that
    trains plainly, or whose plain methods are all done. Holds names and paths only, never
    tensors: the worker loads the data set itself and shares ``cache_dir`` (which must be
    reachable from the worker) with every other job.
    """

    preset: Preset
    pretraining: str
    seed: int
    work: tuple[tuple[str, tuple[Target, ...]], ...]
    cache_dir: str
    data_dir: str | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.work)

    @property
    def label(self) -> str:
        return f"{self.pretraining} seed {self.seed} ({', '.join(self.methods) or 'reference only'})"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    """What a job hands back across processes: its records, in ``work`` order, and the test and
    validation accuracy of its trained model's dense form (``None`` when it trained nothing)."""

    records: tuple[Record, ...]
    dense_acc: float | None = None
    dense_val_acc: float | None = None
    # The trained model's cost: {"steps", "wall_s", "cached"} (empty when it trained nothing); the
    # reference line keeps it, so a report counts a reference-only training too.
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    """What one (method, seed) built: a record per target, in the targets' order, and — when
    ``run_group`` was asked to keep them — the dense reference and each ok target's deployed
    model (fine-tuned and finalized: exactly the model its record counts and times), with the
    dense model's spectra ({layer: σᵢ/σ₁ descending}, empty when the method was skipped)."""

    records: tuple[Record, ...]
    dense: nn.Module | None = None
    deployed: dict[Target, nn.Module] = field(default_factory=dict)
    spectra: dict[str, list[float]] = field(default_factory=dict)

    def record(self, target: Target) -> Record:
        """The record of ``target``; ``KeyError`` if the job had no such target."""
        return {(r.target_kind, r.target_drop): r for r in self.records}[target.kind, target.drop]


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """What one job built: per method name, its ``Built``; and its dense model's accuracies."""

    built: dict[str, Built]
    dense_acc: float | None = None
    dense_val_acc: float | None = None
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trained:
    """The trained model as prepared (e.g. over-parameterized), its training stats, the test
    accuracy of the validation-selected epoch's dense model (``None`` when there is none), and
    whether it came from the checkpoint cache."""

    model: nn.Module
    stats: TrainStats
    best_acc: float | None
    cached: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Dense:
    """The dense reference of a trained model and the record fields measured on it once."""

    model: nn.Module
    spectra: dict[str, list[float]]
    fields: dict[str, Any]


def record_base(preset: Preset, method: Method, target: Target, seed: int) -> dict[str, Any]:
    """The fields that identify a record (and carry its provenance), whatever its status."""
    return {"dataset": preset.dataset, "model": preset.model, "method": method.name, "family": method.family,
            "n": method.n, "target_kind": target.kind, "target_drop": target.drop, "seed": seed,
            "config_hash": preset.config_hash(), "versions": versions(), "pretrain_id": preset.pretraining_of(method),
            "recipe": preset.recipe_of(method), **method.record_fields()}


def collapsed(val_acc: float, num_classes: int, n_val: int) -> bool:
    """Whether a validation accuracy over ``n_val`` images is at or near chance (see ``CHANCE_FACTOR``);
    NaN counts, and with fewer than ``COLLAPSE_MIN_VAL`` images only NaN does."""
    if math.isnan(val_acc):
        return True
    chance = 1 / num_classes
    return n_val >= COLLAPSE_MIN_VAL and val_acc <= max(CHANCE_FACTOR * chance, chance + CHANCE_PP)


def failed_records(job: TrainJob, reason: str) -> tuple[Record, ...]:
    """A failed record for each target of ``job``, which raised (or was lost) with ``reason``."""
    return tuple(Record(**record_base(job.preset, METHODS.get(name).for_target(t), t, job.seed), status="failed",
                        reason=reason)
                 for name, targets in job.work for t in targets)


def run_job(job: TrainJob, data: Splits | None = None, *, progress: bool = False) -> JobResult:
    """Run ``job`` where it lands and return its records and dense accuracies (the models stay here).

    This is the function submitit pickles (by reference, so the worker must be able to import
    ``bench``); without ``data`` it loads the job's data set here. A failure of one target is a
    failed record inside the result; a failure of the job itself (data missing, no CUDA on the
    node, training diverged) is raised, and the runner records it for each of the job's targets.
    """
    preset = job.preset
    if data is None:
        data_dir = Path(job.data_dir) if job.data_dir is not None else None
        data = load(preset.dataset, data_dir=data_dir, download=False).to(preset.device)
    work = [(METHODS.get(name), list(targets)) for name, targets in job.work]
    group = run_group(preset, work, data, job.seed, progress=progress, cache_dir=Path(job.cache_dir))
    return JobResult(records=tuple(r for b in group.built.values() for r in b.records), dense_acc=group.dense_acc,
                     dense_val_acc=group.dense_val_acc, training=group.training)


def run_method(preset: Preset, method: Method, data: Splits, targets: list[Target], seed: int, *,
               progress: bool = False, cache_dir: Path | None = None, keep_models: bool = False) -> Built:
    """Every record of one (method, seed): ``run_group`` for that method alone, once per training where
    what it trains depends on the target (``Method.for_target``), the records in ``targets``' order."""
    parts = [run_group(preset, [(method, ts)], data, seed, progress=progress, cache_dir=cache_dir,
                       keep_models=keep_models).built[method.name]
             for ts in preset.by_training(method, targets).values()]
    if len(parts) == 1:
        return parts[0]
    records = {(r.target_kind, r.target_drop): r for b in parts for r in b.records}
    return Built(records=tuple(records[t.kind, t.drop] for t in targets), dense=parts[0].dense,
                 deployed={t: m for b in parts for t, m in b.deployed.items()}, spectra=parts[0].spectra)


def run_group(preset: Preset, work: list[tuple[Method, list[Target]]], data: Splits, seed: int, *,
              progress: bool = False, cache_dir: Path | None = None, keep_models: bool = False) -> Group:
    """One training (or a cached one) shared by every method of ``work``, then each method's targets.

    Every method of ``work`` must name the same ``pretraining`` (``ValueError`` otherwise); with
    ``work`` empty the plain model is trained (or loaded) and only its dense accuracy measured.
    A method that does not apply gets skipped records; a target whose compression or
    fine-tuning fails becomes a failed record; the others go on. With ``cache_dir``, the
    trained model is loaded from / saved to a checkpoint there. With ``keep_models``, each
    ``Built`` also holds the dense and deployed models (else they are freed as the job goes).
    """
    if len(ids := {preset.pretraining_of(m.for_target(t)) for m, ts in work for t in ts}) > 1:
        raise ValueError(f"one job trains one model; got pretrainings {sorted(ids)}")
    work = [(m.for_target(ts[0]) if ts else m, ts) for m, ts in work]  # a training that depends on its target
    torch.manual_seed(seed)  # the same initial weights for every method at this seed
    model = build(preset.model, data.num_classes, data.input_shape, preset.model_options).to(preset.device)
    built, active = {}, []
    for method, targets in work:
        reason = method.skip_reason(model)
        if reason:
            built[method.name] = Built(records=tuple(Record(**record_base(preset, method, t, seed), status="skipped",
                                                            reason=reason) for t in targets))
        else:
            active.append((method, targets))
    if work and not active:
        return Group(built=built)
    lead = active[0][0] if active else REFERENCE  # every method of the group prepares and trains the same way
    calib = _calib(preset, lead, model, data)
    model = lead.prepare(model, calib).to(preset.device)
    try:
        trained = trained_model(preset, lead, model, data, calib, seed, progress=progress, cache_dir=cache_dir)
        dense = measure_dense(preset, lead, trained, data)
        if preset.chance_check and collapsed(dense.fields["base_val_acc"], data.num_classes, len(data.val_y)):
            raise TrainingDiverged(f"training collapsed: validation accuracy {dense.fields['base_val_acc']:.2%} is at "
                                   f"chance ({1 / data.num_classes:.0%}) after {trained.stats.steps} steps",
                                   curve=trained.stats.curve())
    except TrainingDiverged as why:
        log.warning("%s seed %d: %s", lead.name, seed, why)
        for method, targets in active:
            built[method.name] = Built(records=tuple(
                Record(**record_base(preset, method, t, seed), status="diverged", reason=str(why),
                       pretrain_curve=why.curve, protected=list(calib.protected)) for t in targets))
        return Group(built={m.name: built[m.name] for m, _ in work})
    for method, targets in active:
        records, deployed = [], {}
        for target in targets:
            record, model_at = one_target(preset, method, trained, dense, data, calib, target, seed,
                                          progress=progress)
            records.append(record)
            if keep_models and model_at is not None:
                deployed[target] = model_at
        built[method.name] = Built(records=tuple(records), dense=dense.model if keep_models else None,
                                   deployed=deployed, spectra=dense.spectra)
    return Group(built={m.name: built[m.name] for m, _ in work}, dense_acc=dense.fields["base_acc"],
                 dense_val_acc=dense.fields["base_val_acc"],
                 training={"steps": trained.stats.steps, "wall_s": trained.stats.wall_s, "cached": trained.cached})



def _calib(preset: Preset, lead: Method, model: nn.Module, data: Splits) -> Calib:
    """What ``lead``'s compression may look at, for ``model`` as built (not yet prepared): layers are
    named in the original architecture."""
    budget = preset.budget_for(lead)
    return Calib(example=data.train_x[:1], batch_x=data.train_x[:CALIB_BATCH], batch_y=data.train_y[:CALIB_BATCH],
                 num_classes=data.num_classes, head=head_of(model, data.num_classes),
                 protected=protected_layers(model, data.num_classes, preset.protect), allocation=preset.allocation,
                 val_x=data.val_x, val_y=data.val_y, round_to=preset.round_to, optimizer=budget.optimizer,
                 weight_decay=budget.weight_decay)

def trained_model(preset: Preset, method: Method, model: nn.Module, data: Splits, calib: Calib, seed: int, *,
                  progress: bool = False, cache_dir: Path | None = None) -> Trained:
    """``model`` (prepared, untrained) trained in place under the preset's budget, or loaded from
    ``cache_dir`` when a checkpoint of the same key is there (and saved there when not)."""
    budget = preset.budget_for(method)  # every method of the group trains under the same one
    key = cache.checkpoint_key(preset, method, seed)
    steps = steps_per_epoch(len(data.train_x), budget.batch_size) * budget.train_epochs
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    # Loaded into a copy first: under torchrun the ranks agree before any of them takes it, so a
    # rank whose copy failed never trains from weights another rank loaded.
    probe = copy.deepcopy(model) if path is not None and path.exists() else None  # no file: nothing to copy into
    meta = cache.load(path, probe, key=key, steps=steps) if probe is not None else None
    if not distributed.agree(meta is not None, preset.device):  # all ranks load, or all train
        meta = None
    if meta is not None:
        model.load_state_dict(probe.state_dict())
    del probe
    # The validation-selected epoch's weights ride along in a second checkpoint: the protocol
    # compresses the last epoch's model, the report also shows the best-on-validation one.
    best_path = path.with_suffix(".best.pt") if path is not None else None
    if meta is not None:
        stats = TrainStats(**meta["stats"])
        best = copy.deepcopy(model)
        has_best = cache.load(best_path, best, key=key, steps=steps) is not None
        log.info("%s seed %d: trained model from cache %s", method.name, seed, path)
    else:
        stats = train(model, data, budget, epochs=budget.train_epochs, lr=budget.lr, seed=seed,
                      progress=progress, desc=f"{method.name} s{seed} train",
                      after_backward=method.regularizer(model, calib), keep_best=True, **preset.speed())
        best = copy.deepcopy(model)  # only now: a copy alive during training would count in its peak memory
        has_best = stats.best_state is not None
        if has_best:
            best.load_state_dict(stats.best_state)
        if path is not None and distributed.is_main():
            if has_best:
                cache.save(best_path, best, {"best_epoch": stats.best_epoch}, key=key, steps=stats.steps)
            cache.save(path, model, {"stats": asdict(replace(stats, best_state=None))}, key=key, steps=stats.steps)
    best_acc = accuracy(method.dense_reference(best).eval(), data.test_x, data.test_y) if has_best else None
    return Trained(model=model, stats=stats, best_acc=best_acc, cached=meta is not None)


def _accs(model: nn.Module, data: Splits) -> tuple[float, float | None, float]:
    top5 = accuracy(model, data.test_x, data.test_y, k=5) if data.num_classes > 10 else None
    return accuracy(model, data.test_x, data.test_y), top5, accuracy(model, data.val_x, data.val_y)


def _latencies(preset: Preset, dense: nn.Module, deployed: nn.Module, data: Splits) -> list[measure.SweepEntry]:
    """A/B latency of ``deployed`` against ``dense`` in each of the preset's modes at each of its batches."""
    return measure.latency_sweep(dense, deployed, data.input_shape, modes=preset.latency_modes,
                                 batches=preset.latency_batches(), device=preset.device, rounds=preset.latency_rounds,
                                 amp=preset.amp, channels_last=preset.channels_last)


def measure_dense(preset: Preset, method: Method, trained: Trained, data: Splits) -> Dense:
    """The dense reference of ``trained`` and what every target's record says about it."""
    dense = method.dense_reference(trained.model).eval()
    spectra = measure.spectra_of(dense)
    acc, top5, val = _accs(dense, data)
    macs, params = measure.counts(dense, data.input_shape, preset.device)
    stats = trained.stats
    return Dense(model=dense, spectra=spectra, fields={
        "base_acc": acc, "base_acc_top5": top5, "base_val_acc": val, "base_acc_val_selected": trained.best_acc,
        "best_val_epoch": stats.best_epoch or None, "dense_params": params, "dense_macs": macs,
        "spectra": spectra, "pretrain_steps": stats.steps, "pretrain_wall_s": stats.wall_s,
        "pretrain_val_wall_s": stats.val_wall_s,
        "pretrain_cached": trained.cached, "pretrain_curve": stats.curve(),
        "pretrain_decay_budget": decay_budget(preset.budget_for(method), stats.lr_sum)})


def one_target(preset: Preset, method: Method, trained: Trained, dense: Dense, data: Splits, calib: Calib,
               target: Target, seed: int, *, progress: bool = False) -> tuple[Record, nn.Module | None]:
    """The record of ``target`` and the deployed model it describes (``None`` unless the record is ok).

    Compresses a copy of the trained model, measures its accuracy before fine-tuning
    (zero-shot: what truncation or pruning alone costs), fine-tunes it with the budget's
    fine-tuning steps, finalizes and measures it. A target the method cannot meet is a skipped
    record, any other failure a failed one: one failing target must not sink the others.
    """
    base = record_base(preset, method, target, seed)
    # Re-seeded per target: a random criterion draws the same at this (method, target, seed)
    # whether the model was just trained, shared with other methods or loaded from the cache.
    torch.manual_seed(seed)
    try:
        out = method.compress(copy.deepcopy(trained.model), target, calib)
        deployed = out.model.to(preset.device)
        scratch = controls.pretrain(preset, method, deployed, data, seed, progress=progress)  # a control only
        if scratch is not None and preset.chance_check and collapsed(
                accuracy(deployed, data.val_x, data.val_y), data.num_classes, len(data.val_y)):
            raise TrainingDiverged(f"training from scratch collapsed to chance after {scratch.steps} steps",
                                   curve=scratch.curve())
        zero_shot = {"acc_zero_shot": accuracy(deployed, data.test_x, data.test_y),
                     "val_acc_zero_shot": accuracy(deployed, data.val_x, data.val_y)}
        budget = preset.budget_for(method)
        ft = train(deployed, data, budget, epochs=budget.finetune_epochs, lr=budget.finetune_lr, seed=seed + 1,
                   progress=progress, desc=f"{method.name} {target} fine-tune", **preset.speed())
        deployed = method.finalize(deployed).eval()
        r = Record(**base, **{**dense.fields, **controls.pretrain_fields(preset, method, scratch)}, **zero_shot,
                   protected=list(calib.protected), **_deployed_fields(preset, method, deployed, out, data, dense),
                   **_training_fields(preset, scratch or trained.stats, ft),
                   finetune_decay_budget=decay_budget(budget, ft.lr_sum))
        return replace(r, **landing(target.kind, target.drop, r.params_drop, r.flops_drop, r.note)), deployed
    except NotApplicable as why:
        return Record(**base, status="skipped", reason=str(why)), None
    except TrainingDiverged as why:  # a control's own training: never ranked, listed with its curve
        return Record(**base, status="diverged", reason=str(why), pretrain_curve=why.curve), None
    except Exception as err:
        log.exception("%s at %s failed", method.name, target)
        return Record(**base, status="failed", reason=f"{type(err).__name__}: {err}"), None


def _deployed_fields(preset: Preset, method: Method, deployed: nn.Module, out: Compressed, data: Splits,
                     dense: Dense) -> dict[str, Any]:
    """Accuracy, counts, drops and latency of the deployed model, against the dense reference."""
    acc, top5, val = _accs(deployed, data)
    macs, params = measure.counts(deployed, data.input_shape, preset.device)
    params = method.deployed_params(deployed, params)
    sweep = _latencies(preset, dense.model, deployed, data)
    d = dense.fields
    # No delta_acc here: it is taken against the seed's reference (the plainly trained model),
    # which the runner fills in (``bench.records.results.reference_fields``), never the own dense model.
    return {"acc": acc, "acc_top5": top5, "val_acc": val, "params": params,
            "params_drop": 1 - params / d["dense_params"], "macs": macs, "flops_drop": 1 - macs / d["dense_macs"],
            "achieved_drop": out.achieved_drop, "layers": out.layers, "layers_full": out.full,
            "layer_order": list(out.layers), "note": measure.sweep_note(out.note, sweep),
            "allocation": out.allocation, "allocation_val_acc": out.allocation_val_acc, "round_to": preset.round_to,
            **measure.headline(sweep, preset.latency_modes[0], preset.throughput_batch)}


def _training_fields(preset: Preset, stats: TrainStats, ft: TrainStats) -> dict[str, Any]:
    """Optimizer steps and wall time of pre-training plus this target's fine-tuning."""
    wall = stats.wall_s + ft.wall_s
    return {"finetune_steps": ft.steps, "train_steps": stats.steps + ft.steps, "train_wall_s": wall,
            "finetune_wall_s": ft.wall_s, "gpu_s": wall if torch.device(preset.device).type == "cuda" else None,
            "train_peak_mem_mb": stats.peak_mem_mb, "finetune_peak_mem_mb": ft.peak_mem_mb}
