"""One job: one trained model — trained, or loaded from the cache — then compressed, fine-tuned and
measured at each of its targets.

A job knows nothing of executors or of the runner that planned it. ``run_job`` is what an
executor runs (submitit pickles it by reference, so it loads the data set itself and returns
records only); ``run_method`` is the job on data already loaded, in its natural steps:
``trained_model`` (train or load), ``measure_dense`` (the dense reference, measured once) and
``one_target`` (compress, fine-tune, finalize, measure). It returns what it built — the records
and, when asked, the dense and deployed models they describe — so the benchmark suite times
exactly those models.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.catalog.budget import Target
from bench.catalog.data import Splits, load
from bench.catalog.models import build, head_of
from bench.catalog.presets import Preset
from bench.catalog.protocol import Calib, Compressed, Method
from bench.catalog.registry import METHODS
from bench.execution import cache, distributed, measure
from bench.execution.provenance import versions
from bench.execution.train import TrainStats, accuracy, steps_per_epoch, train
from bench.records.errors import NotApplicable
from bench.records.results import Record, landing

log = logging.getLogger(__name__)
CALIB_BATCH = 128  # labelled train samples a gradient-based importance may look at


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainJob:
    """One trained model and the targets still to measure on it; pickled to the worker as it is.

    Holds names and paths only, never tensors: the worker loads the data set itself and
    shares ``cache_dir`` (which must be reachable from the worker) with every other job.
    """

    preset: Preset
    method: str
    seed: int
    targets: tuple[Target, ...]
    cache_dir: str
    data_dir: str | None = None

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    """What one (method, seed) built: a record per target, in the targets' order, and — when
    ``run_method`` was asked to keep them — the dense reference and each ok target's deployed
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
class Trained:
    """The trained model as prepared (e.g. over-parameterized), its training stats, and the test
    accuracy of the validation-selected epoch's dense model (``None`` when there is none)."""

    model: nn.Module
    stats: TrainStats
    best_acc: float | None


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
            "config_hash": preset.config_hash(), "versions": versions()}


def failed_records(job: TrainJob, reason: str) -> tuple[Record, ...]:
    """A failed record for each target of ``job``, which raised (or was lost) with ``reason``."""
    method = METHODS.get(job.method)
    return tuple(Record(**record_base(job.preset, method, t, job.seed), status="failed", reason=reason)
                 for t in job.targets)


def run_job(job: TrainJob, data: Splits | None = None, *, progress: bool = False) -> list[Record]:
    """Run ``job`` where it lands and return its records (the models stay in this process).

    This is the function submitit pickles (by reference, so the worker must be able to import
    ``bench``); without ``data`` it loads the job's data set here. A failure of one target is a
    failed record inside the list; a failure of the job itself (data missing, no CUDA on the
    node, training diverged) is raised, and the runner records it for each of the job's targets.
    """
    preset = job.preset
    if data is None:
        data_dir = Path(job.data_dir) if job.data_dir is not None else None
        data = load(preset.dataset, data_dir=data_dir, download=False).to(preset.device)
    built = run_method(preset, METHODS.get(job.method), data, list(job.targets), job.seed, progress=progress,
                       cache_dir=Path(job.cache_dir))
    return list(built.records)


def run_method(preset: Preset, method: Method, data: Splits, targets: list[Target], seed: int, *,
               progress: bool = False, cache_dir: Path | None = None, keep_models: bool = False) -> Built:
    """Every record of one (method, seed): one training (or a cached one), then one compression per target.

    A target whose compression or fine-tuning fails becomes a failed record; the others go on.
    With ``cache_dir``, the trained model is loaded from / saved to a checkpoint there. With
    ``keep_models``, the result also holds the dense and deployed models (else they are freed
    as the job goes).
    """
    torch.manual_seed(seed)  # the same initial weights for every method at this seed
    model = build(preset.model, data.num_classes, data.input_shape, preset.model_options).to(preset.device)
    reason = method.skip_reason(model)
    if reason:
        return Built(records=tuple(Record(**record_base(preset, method, t, seed), status="skipped", reason=reason)
                                   for t in targets))
    head = head_of(model, data.num_classes)  # named in the original architecture
    model = method.prepare(model).to(preset.device)
    calib = Calib(example=data.train_x[:1], batch_x=data.train_x[:CALIB_BATCH], batch_y=data.train_y[:CALIB_BATCH],
                  num_classes=data.num_classes, head=head)
    trained = trained_model(preset, method, model, data, calib, seed, progress=progress, cache_dir=cache_dir)
    dense = measure_dense(preset, method, trained, data)
    records, deployed = [], {}
    for target in targets:
        record, model_at = one_target(preset, method, trained, dense, data, calib, target, seed, progress=progress)
        records.append(record)
        if keep_models and model_at is not None:
            deployed[target] = model_at
    return Built(records=tuple(records), dense=dense.model if keep_models else None, deployed=deployed,
                 spectra=dense.spectra)


def trained_model(preset: Preset, method: Method, model: nn.Module, data: Splits, calib: Calib, seed: int, *,
                  progress: bool = False, cache_dir: Path | None = None) -> Trained:
    """``model`` (prepared, untrained) trained in place under the preset's budget, or loaded from
    ``cache_dir`` when a checkpoint of the same key is there (and saved there when not)."""
    budget = preset.budget
    key = cache.checkpoint_key(preset, method, seed)
    steps = steps_per_epoch(len(data.train_x), budget.batch_size) * budget.train_epochs
    path = cache_dir / f"{key}.pt" if cache_dir is not None else None
    meta = cache.load(path, model, key=key, steps=steps) if path is not None else None
    if not distributed.agree(meta is not None, preset.device):  # under torchrun: all ranks load, or all train
        meta = None
    # The validation-selected epoch's weights ride along in a second checkpoint: the protocol
    # compresses the last epoch's model, the report also shows the best-on-validation one.
    best = copy.deepcopy(model)
    best_path = path.with_suffix(".best.pt") if path is not None else None
    if meta is not None:
        stats = TrainStats(**meta["stats"])
        has_best = cache.load(best_path, best, key=key, steps=steps) is not None
        log.info("%s seed %d: trained model from cache %s", method.name, seed, path)
    else:
        stats = train(model, data, budget, epochs=budget.train_epochs, lr=budget.lr, seed=seed,
                      progress=progress, desc=f"{method.name} s{seed} train",
                      after_backward=method.regularizer(model, calib), keep_best=True, **preset.speed())
        has_best = stats.best_state is not None
        if has_best:
            best.load_state_dict(stats.best_state)
        if path is not None and distributed.is_main():
            if has_best:
                cache.save(best_path, best, {"best_epoch": stats.best_epoch}, key=key, steps=stats.steps)
            cache.save(path, model, {"stats": asdict(replace(stats, best_state=None))}, key=key, steps=stats.steps)
    best_acc = accuracy(method.dense_reference(best).eval(), data.test_x, data.test_y) if has_best else None
    return Trained(model=model, stats=stats, best_acc=best_acc)


def _accs(model: nn.Module, data: Splits) -> tuple[float, float | None, float]:
    top5 = accuracy(model, data.test_x, data.test_y, k=5) if data.num_classes > 10 else None
    return accuracy(model, data.test_x, data.test_y), top5, accuracy(model, data.val_x, data.val_y)


def _latencies(preset: Preset, model: nn.Module, data: Splits) -> tuple[measure.Latency, measure.Latency]:
    """(batch 1, throughput batch) latency of ``model``, in that order."""
    kw = {"device": preset.device, "rounds": preset.latency_rounds}
    return (measure.latency(model, data.input_shape, batch_size=1, **kw),
            measure.latency(model, data.input_shape, batch_size=preset.throughput_batch, **kw))


def measure_dense(preset: Preset, method: Method, trained: Trained, data: Splits) -> Dense:
    """The dense reference of ``trained`` and what every target's record says about it."""
    dense = method.dense_reference(trained.model).eval()
    spectra = measure.spectra_of(dense)
    acc, top5, val = _accs(dense, data)
    macs, params = measure.counts(dense, data.input_shape, preset.device)
    lat, tput = _latencies(preset, dense, data)
    stats = trained.stats
    return Dense(model=dense, spectra=spectra, fields={
        "base_acc": acc, "base_acc_top5": top5, "base_val_acc": val, "base_acc_val_selected": trained.best_acc,
        "best_val_epoch": stats.best_epoch or None, "dense_params": params, "dense_macs": macs,
        "spectra": spectra, "latency_dense_ms": lat.median_ms, "latency_dense_iqr_ms": lat.iqr_ms,
        "throughput_dense_ms": tput.median_ms, "pretrain_steps": stats.steps, "pretrain_wall_s": stats.wall_s})


def one_target(preset: Preset, method: Method, trained: Trained, dense: Dense, data: Splits, calib: Calib,
               target: Target, seed: int, *, progress: bool = False) -> tuple[Record, nn.Module | None]:
    """The record of ``target`` and the deployed model it describes (``None`` unless the record is ok).

    Compresses a copy of the trained model, fine-tunes it with the budget's fine-tuning steps,
    finalizes and measures it. A target the method cannot meet is a skipped record, any other
    failure a failed one: one failing target must not sink the others.
    """
    base = record_base(preset, method, target, seed)
    try:
        out = method.compress(copy.deepcopy(trained.model), target, calib)
        deployed = out.model.to(preset.device)
        budget = preset.budget
        ft = train(deployed, data, budget, epochs=budget.finetune_epochs, lr=budget.finetune_lr, seed=seed + 1,
                   progress=progress, desc=f"{method.name} {target} fine-tune", **preset.speed())
        deployed = method.finalize(deployed).eval()
        r = Record(**base, **dense.fields, **_deployed_fields(preset, method, deployed, out, data, dense),
                   **_training_fields(preset, trained.stats, ft))
        return replace(r, **landing(target.kind, target.drop, r.params_drop, r.flops_drop, r.note)), deployed
    except NotApplicable as why:
        return Record(**base, status="skipped", reason=str(why)), None
    except Exception as err:
        log.exception("%s at %s failed", method.name, target)
        return Record(**base, status="failed", reason=f"{type(err).__name__}: {err}"), None


def _deployed_fields(preset: Preset, method: Method, deployed: nn.Module, out: Compressed, data: Splits,
                     dense: Dense) -> dict[str, Any]:
    """Accuracy, counts, drops and latency of the deployed model, against the dense reference."""
    acc, top5, val = _accs(deployed, data)
    macs, params = measure.counts(deployed, data.input_shape, preset.device)
    params = method.deployed_params(deployed, params)
    lat, tput = _latencies(preset, deployed, data)
    d = dense.fields
    return {"acc": acc, "acc_top5": top5, "delta_acc": acc - d["base_acc"], "val_acc": val, "params": params,
            "params_drop": 1 - params / d["dense_params"], "macs": macs, "flops_drop": 1 - macs / d["dense_macs"],
            "achieved_drop": out.achieved_drop, "layers": out.layers, "note": out.note,
            "latency_device": lat.device, "latency_batch": 1, "latency_ms": lat.median_ms,
            "latency_iqr_ms": lat.iqr_ms, "throughput_batch": preset.throughput_batch, "throughput_ms": tput.median_ms}


def _training_fields(preset: Preset, stats: TrainStats, ft: TrainStats) -> dict[str, Any]:
    """Optimizer steps and wall time of pre-training plus this target's fine-tuning."""
    wall = stats.wall_s + ft.wall_s
    return {"finetune_steps": ft.steps, "train_steps": stats.steps + ft.steps, "train_wall_s": wall,
            "finetune_wall_s": ft.wall_s, "gpu_s": wall if torch.device(preset.device).type == "cuda" else None,
            "train_peak_mem_mb": stats.peak_mem_mb, "finetune_peak_mem_mb": ft.peak_mem_mb}
