"""Run a preset: train each method once per seed under the shared budget, compress, measure, record."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench import cache, distributed, measure
from bench.budget import Target
from bench.data import Splits
from bench.methods import Calib, Method
from bench.models import build, head_of
from bench.presets import Preset
from bench.records.errors import NotApplicable, UsageError
from bench.records.results import CONFIG, RESULTS, Record, append_record, atomic_write_text, load_records
from bench.registry import METHODS
from bench.train import TrainStats, accuracy, train

if TYPE_CHECKING:  # bench.executors imports this module; run() imports it back lazily
    from bench.executors import ExecutorConfig

log = logging.getLogger(__name__)
CALIB_BATCH = 128  # labelled train samples a gradient-based importance may look at


class BudgetMismatch(RuntimeError):
    """Methods of one suite used different numbers of optimizer steps: the comparison is void."""


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (a fresh dict; looked up once per process)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # Every record and cache key asks; each lookup scans the installed distributions.
    out = []
    for dist in ("lorita-bench", "torch", "torchvision", "torch-pruning", "timm"):
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            out.append((dist, "not installed"))
    return tuple(out)


def _base(preset: Preset, method: Method, target: Target, seed: int, chash: str) -> dict:
    return {"dataset": preset.dataset, "model": preset.model, "method": method.name,
            "family": method.family, "n": method.n, "target_kind": target.kind,
            "target_drop": target.drop, "seed": seed, "config_hash": chash, "versions": versions()}


def _accs(model: torch.nn.Module, data: Splits) -> tuple[float, float | None, float]:
    top5 = accuracy(model, data.test_x, data.test_y, k=5) if data.num_classes > 10 else None
    return accuracy(model, data.test_x, data.test_y), top5, accuracy(model, data.val_x, data.val_y)


@functools.cache
def code_digest() -> str:
    """Digest of the source that shapes a trained model (method, data, models, training loop).

    In the cache key because the package version does not move with every change: a
    checkpoint trained by older code must not be reused (nor fool the regression gate).
    """
    import baselines
    import lorita

    root = Path(__file__).parent
    files = sorted([*Path(lorita.__file__).parent.glob("*.py"), *Path(baselines.__file__).parent.glob("*.py"),
                    *(root / f for f in ("train.py", "data.py", "models.py", "methods.py", "budget.py"))])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def checkpoint_key(preset: Preset, method: Method, seed: int) -> str:
    """Cache key of the trained model: everything that determines its weights."""
    return cache.cache_key({"dataset": preset.dataset, "model": preset.model, "options": preset.model_options,
                            "prepare": method.name, "budget": asdict(preset.budget), "seed": seed,
                            "device": torch.device(preset.device).type, "amp": preset.amp,
                            "versions": versions(), "code": code_digest()})


def run_method(preset: Preset, method: Method, data: Splits, targets: list[Target], seed: int, *,
               progress: bool = False, cache_dir: Path | None = None) -> list[Record]:
    """Every record of one (method, seed): one training (or a cached one), then one compression per target.

    A target whose compression or fine-tuning fails becomes a failed record; the others go on.
    With ``cache_dir``, the trained model is loaded from / saved to a checkpoint there.
    """
    budget, dev, chash = preset.budget, preset.device, preset.config_hash()
    torch.manual_seed(seed)  # the same initial weights for every method at this seed
    model = build(preset.model, data.num_classes, data.input_shape, preset.model_options).to(dev)
    reason = method.skip_reason(model)
    if reason:
        return [Record(**_base(preset, method, t, seed, chash), status="skipped", reason=reason)
                for t in targets]
    head = head_of(model, data.num_classes)  # named in the original architecture
    model = method.prepare(model).to(dev)
    calib = Calib(example=data.train_x[:1], batch_x=data.train_x[:CALIB_BATCH], batch_y=data.train_y[:CALIB_BATCH],
                  num_classes=data.num_classes, head=head)
    path = cache_dir / f"{checkpoint_key(preset, method, seed)}.pt" if cache_dir is not None else None
    meta = cache.load(path, model) if path is not None else None
    if not distributed.agree(meta is not None, dev):  # under torchrun: all ranks load, or all train
        meta = None
    # The validation-selected epoch's weights ride along in a second checkpoint: the protocol
    # compresses the last epoch's model, the report also shows the best-on-validation one.
    best = copy.deepcopy(model)
    best_path = path.with_suffix(".best.pt") if path is not None else None
    if meta is not None:
        stats = TrainStats(**meta["stats"])
        has_best = cache.load(best_path, best) is not None
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
                cache.save(best_path, best, {"best_epoch": stats.best_epoch})
            cache.save(path, model, {"stats": asdict(replace(stats, best_state=None))})
    best_acc = accuracy(method.dense_reference(best).eval(), data.test_x, data.test_y) if has_best else None
    del best
    dense = method.dense_reference(model).eval()
    spectra = measure.spectra_of(dense)
    base_acc, base_top5, base_val = _accs(dense, data)
    dense_macs, dense_params = measure.counts(dense, data.input_shape, dev)
    lat_kw = {"device": dev, "rounds": preset.latency_rounds}
    dense_lat = measure.latency(dense, data.input_shape, batch_size=1, **lat_kw)
    dense_tput = measure.latency(dense, data.input_shape, batch_size=preset.throughput_batch, **lat_kw)
    records = []
    for target in targets:
        common = _base(preset, method, target, seed, chash)
        try:
            out = method.compress(copy.deepcopy(model), target, calib)
            deployed = out.model.to(dev)
            ft = train(deployed, data, budget, epochs=budget.finetune_epochs, lr=budget.finetune_lr,
                       seed=seed + 1, progress=progress, desc=f"{method.name} {target} fine-tune",
                       **preset.speed())
            deployed = method.finalize(deployed).eval()
            acc, top5, val = _accs(deployed, data)
            macs, params = measure.counts(deployed, data.input_shape, dev)
            params = method.deployed_params(deployed, params)
            lat = measure.latency(deployed, data.input_shape, batch_size=1, **lat_kw)
            tput = measure.latency(deployed, data.input_shape, batch_size=preset.throughput_batch, **lat_kw)
            records.append(Record(
                **common, base_acc=base_acc, acc=acc, base_acc_top5=base_top5, acc_top5=top5,
                delta_acc=acc - base_acc, base_val_acc=base_val, val_acc=val,
                base_acc_val_selected=best_acc, best_val_epoch=stats.best_epoch or None,
                dense_params=dense_params, params=params, params_drop=1 - params / dense_params,
                dense_macs=dense_macs, macs=macs, flops_drop=1 - macs / dense_macs,
                achieved_drop=out.achieved_drop, layers=out.layers, note=out.note, spectra=spectra,
                latency_device=lat.device, latency_batch=1, latency_dense_ms=dense_lat.median_ms,
                latency_dense_iqr_ms=dense_lat.iqr_ms, latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms,
                throughput_batch=preset.throughput_batch, throughput_dense_ms=dense_tput.median_ms,
                throughput_ms=tput.median_ms, pretrain_steps=stats.steps, finetune_steps=ft.steps,
                train_steps=stats.steps + ft.steps,
                train_wall_s=stats.wall_s + ft.wall_s, pretrain_wall_s=stats.wall_s, finetune_wall_s=ft.wall_s,
                gpu_s=stats.wall_s + ft.wall_s if torch.device(dev).type == "cuda" else None))
        except NotApplicable as why:
            records.append(Record(**common, status="skipped", reason=str(why)))
        except Exception as err:  # one failing target must not sink the others
            log.exception("%s at %s failed", method.name, target)
            records.append(Record(**common, status="failed", reason=f"{type(err).__name__}: {err}"))
    return records


def check_budget(records: list[Record]) -> None:
    """Raise ``BudgetMismatch`` unless every successful record used the same optimizer steps."""
    steps = {(r.config_hash, r.method): r.train_steps for r in records if r.status == "ok"}
    by_config: dict[str, set[int]] = {}
    for (chash, _), s in steps.items():
        by_config.setdefault(chash, set()).add(s)
    for chash, values in by_config.items():
        if len(values) > 1:
            detail = ", ".join(f"{m}={s}" for (c, m), s in sorted(steps.items()) if c == chash)
            raise BudgetMismatch(f"methods used different optimizer steps ({detail}); "
                                 "every method must use the suite's one budget")


def run(preset: Preset, out_dir: Path, *, data_dir: Path | None = None, download: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print, cache_dir: Path | None = None,
        executor: ExecutorConfig | None = None, published: list[dict] | None = None) -> list[Record]:
    """Run ``preset``, appending records to ``out_dir/results.jsonl``; returns this config's records.

    Each (method, seed) is one job: one trained model and every target still missing for it.
    ``executor`` says where jobs run (default: in this process, one after another; see
    ``bench.executors`` for submitit on SLURM, local subprocesses or its debug cluster).
    Records are appended atomically as each job finishes, and a job that raises becomes a
    failed record per target with the reason, while the others go on. Resumable: a (method,
    target, seed) already recorded as ok or skipped under the same config hash is not run
    again, so a re-run after a partial failure runs only what is missing; trained models come
    from ``cache_dir`` (default ``bench.cache.default_dir()``) when there. The resolved preset
    is saved as ``out_dir/config.json``, with ``published`` (the preset's published numbers, for
    reports placing them beside the measured ones) when given. Raises ``UsageError`` for CUDA asked where the jobs
    run without it, or submitit asked and not installed; ``BudgetMismatch`` (see ``check_budget``).
    """
    from bench import executors

    config = executors.resolve(executor if executor is not None else executors.ExecutorConfig())
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_dir()
    if config.runs_here and torch.device(preset.device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {preset.device!r} requested but CUDA is not available here; "
                         "accepted: --device cpu, or run on a machine with a CUDA GPU")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under torchrun every rank computes, rank 0 alone writes
    if main:
        config_json = {**preset.to_dict(), **({"published": published} if published else {})}
        atomic_write_text(out_dir / CONFIG, json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    results = out_dir / RESULTS
    chash = preset.config_hash()
    done = {r.key for r in load_records(results) if r.status in ("ok", "skipped")}
    jobs = []
    for seed in preset.seeds:  # one job per trained model, so every seed is its own job
        for name in preset.methods:
            pending = tuple(t for t in preset.targets
                            if (chash, preset.dataset, preset.model, name, t.kind, t.drop, seed) not in done)
            if pending:
                jobs.append(executors.TrainJob(preset=preset, method=name, seed=seed, targets=pending,
                                               cache_dir=str(cache_dir.resolve()),
                                               data_dir=str(Path(data_dir).resolve()) if data_dir is not None
                                               else None))
    for finished in executors.run_jobs(jobs, config, folder=out_dir / executors.SUBMITIT_FOLDER,
                                       download=download, progress=progress, echo=echo):
        job = finished.job
        records = finished.records
        if finished.error is not None:
            method = METHODS.get(job.method)
            records = tuple(Record(**_base(preset, method, t, job.seed, chash), status="failed",
                                   reason=finished.error) for t in job.targets)
        for r in records:
            if main:
                append_record(results, r)
            if r.status != "ok" and main:
                echo(f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}: {r.status} ({r.reason})")
    if not main:
        return []
    mine = [r for r in load_records(results) if r.config_hash == chash]
    check_budget(mine)
    return mine
