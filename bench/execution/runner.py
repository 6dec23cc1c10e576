"""Plan a run and hand its jobs to an executor: one job per (pre-training, seed) with targets still missing.

The runner plans (which jobs, resuming from the records already there), hands the jobs to
``bench.execution.executors`` and appends every record it gets back, with the one reference
accuracy of its seed (the plainly trained model's); it never runs a job itself. Imports point
one way: runner → executors → job → train / measure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.catalog.budget import Target
from bench.catalog.presets import Preset
from bench.catalog.protocol import PLAIN
from bench.catalog.registry import METHODS
from bench.execution import cache, distributed, executors
from bench.execution.job import TrainJob, failed_records
from bench.records.results import CONFIG, RESULTS, Record, append_record, atomic_write_text, load_records


class BudgetMismatch(RuntimeError):
    """Methods of one suite used different numbers of optimizer steps: the comparison is void."""


def check_budget(records: list[Record]) -> None:
    """Raise ``BudgetMismatch`` unless, per config, every successful record — each (method,
    target, seed) on its own — used the same number of optimizer steps."""
    by_config: dict[str, dict[int, list[Record]]] = {}
    for r in records:
        if r.status == "ok":
            by_config.setdefault(r.config_hash, {}).setdefault(r.train_steps, []).append(r)
    for chash, by_steps in by_config.items():
        if len(by_steps) > 1:
            detail = "; ".join(f"{steps} steps: " + ", ".join(
                f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}" for r in rs[:3])
                + (f" (+{len(rs) - 3} more)" if len(rs) > 3 else "") for steps, rs in sorted(by_steps.items()))
            raise BudgetMismatch(f"config {chash}: runs used different optimizer steps ({detail}); "
                                 "every method must use the suite's one budget")


def plan(preset: Preset, done: set[tuple], *, cache_dir: Path, data_dir: Path | None = None,
         references: frozenset[int] = frozenset()) -> list[TrainJob]:
    """One job per (seed, pre-training) of ``preset`` with a target whose record key is not in ``done``.

    Methods that name the same ``pretraining`` share the job, so each distinct model is trained
    once per seed; the job carries each method's missing targets, and absolute paths, since it
    may run on another machine. Each seed's plain job comes first: its dense model is the
    reference of every other record of the seed. A seed with work pending, no plain job and no
    known reference (``references``: seeds whose reference is already recorded) gets a
    reference-only plain job (trained once, or loaded from the cache).
    """
    chash, jobs = preset.config_hash(), []
    for seed in preset.seeds:
        groups: dict[str, list[tuple[str, tuple[Target, ...]]]] = {}
        for name in preset.methods:
            pending = tuple(t for t in preset.targets
                            if (chash, preset.dataset, preset.model, name, t.kind, t.drop, seed) not in done)
            if pending:
                groups.setdefault(METHODS.get(name).pretraining(), []).append((name, pending))
        if groups and PLAIN not in groups and seed not in references:
            groups[PLAIN] = []
        for pretraining in sorted(groups, key=lambda p: p != PLAIN):
            jobs.append(TrainJob(preset=preset, pretraining=pretraining, seed=seed, work=tuple(groups[pretraining]),
                                 cache_dir=str(Path(cache_dir).resolve()),
                                 data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None))
    return jobs


def known_references(records: list[Record], preset: Preset) -> dict[int, tuple[float, float | None]]:
    """Per seed, the reference (test, validation accuracy) already recorded in ``records``: the
    dense accuracy of an ok record of ``preset``'s config whose model was trained plainly."""
    chash = preset.config_hash()
    return {r.seed: (r.base_acc, r.base_val_acc) for r in records
            if r.status == "ok" and r.config_hash == chash and r.pretrain_id == PLAIN and r.base_acc is not None}


def with_reference(record: Record, ref: tuple[float, float | None] | None) -> Record:
    """``record`` with its seed's reference accuracy, and ΔAcc taken against it."""
    if ref is None or record.status != "ok" or record.acc is None:
        return record
    return replace(record, ref_acc=ref[0], ref_val_acc=ref[1], delta_acc=record.acc - ref[0])


def run(preset: Preset, out_dir: Path, *, data_dir: Path | None = None, download: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print, cache_dir: Path | None = None,
        executor: executors.ExecutorConfig | None = None, published: list[dict] | None = None) -> list[Record]:
    """Run ``preset``, appending records to ``out_dir/results.jsonl``; returns this config's records.

    Each (pre-training, seed) is one job (see ``plan``): methods that compress the same trained
    model share it. ``executor`` says where jobs run (default: in
    this process, one after another; see ``bench.execution.executors`` for submitit on SLURM,
    local subprocesses or its debug cluster). Records are appended atomically as each job
    finishes, and a job that raises becomes a failed record per target with the reason, while
    the others go on. Every ok record carries its seed's reference accuracy (``ref_acc``: the
    plainly trained dense model's) and ΔAcc against it. Resumable: a (method, target, seed) already
    recorded as ok or skipped
    under the same config hash is not run again; trained models come from ``cache_dir``
    (default ``bench.execution.cache.default_dir()``) when there. The resolved preset is saved
    as ``out_dir/config.json``, with ``published`` (the preset's published numbers) when given.
    The front ends check the data folder and CUDA before calling this (``bench.frontend``).
    Raises ``UsageError`` for submitit asked and not installed; ``BudgetMismatch`` (see
    ``check_budget``).
    """
    config = executor if executor is not None else executors.ExecutorConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under torchrun every rank computes, rank 0 alone writes
    if main:
        config_json = {**preset.to_dict(), **({"published": published} if published else {})}
        atomic_write_text(out_dir / CONFIG, json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    results = out_dir / RESULTS
    existing = load_records(results)
    done = {r.key for r in existing if r.status in ("ok", "skipped")}
    refs = known_references(existing, preset)
    jobs = plan(preset, done, cache_dir=Path(cache_dir) if cache_dir is not None else cache.default_dir(),
                data_dir=data_dir, references=frozenset(refs))
    # A seed's records wait for its plain job (local executors run it first, so they rarely do).
    awaiting = {j.seed for j in jobs if j.pretraining == PLAIN}
    held: dict[int, list[Record]] = {}
    for finished in executors.run_jobs(jobs, config, folder=out_dir / executors.SUBMITIT_FOLDER,
                                       download=download, progress=progress, echo=echo):
        job = finished.job
        records = finished.records if finished.error is None else failed_records(job, finished.error)
        if job.pretraining == PLAIN:
            awaiting.discard(job.seed)
            if finished.dense_acc is not None:
                refs[job.seed] = (finished.dense_acc, finished.dense_val_acc)
        held.setdefault(job.seed, []).extend(records)
        for seed in [s for s in held if s not in awaiting]:
            _append(results, [with_reference(r, refs.get(seed)) for r in held.pop(seed)], main=main, echo=echo)
    for seed in list(held):  # a plain job that never reported (cannot happen with the executors here)
        _append(results, held.pop(seed), main=main, echo=echo)
    if not main:
        return []
    mine = [r for r in load_records(results) if r.config_hash == preset.config_hash()]
    check_budget(mine)
    return mine


def _append(results: Path, records: list[Record], *, main: bool, echo: Callable[[str], None]) -> None:
    for r in records if main else ():
        append_record(results, r)
        if r.status != "ok":
            echo(f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}: {r.status} ({r.reason})")
