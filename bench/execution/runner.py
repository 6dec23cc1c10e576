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
from typing import Any

from bench.catalog.budget import Target
from bench.catalog.presets import Preset
from bench.catalog.protocol import PLAIN
from bench.catalog.registry import METHODS
from bench.execution import cache, distributed, executors
from bench.execution.job import TrainJob, failed_records
from bench.execution.provenance import code_digest
from bench.records.errors import BudgetMismatch, UsageError
from bench.records.results import (
    CONFIG,
    DONE,
    RESULTS,
    Record,
    Reference,
    append_record,
    atomic_write_text,
    clean_stale_temp,
    load_folder,
    load_records,
    locked,
    reference_fields,
    reference_key,
    set_aside_torn,
)
from bench.records.sources import config_hash, identity_differences

__all__ = ["BudgetMismatch", "check_budget", "plan", "run", "seeds_with_reference"]


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
    reference of every other record of the seed. A seed with no plain job and no known reference
    (``references``: seeds whose reference is already recorded) gets a reference-only plain job
    (trained once, or loaded from the cache), also when all its cells are done: records written
    while their reference was missing (its job failed or was killed) get it from this one.
    """
    chash, jobs = preset.config_hash(), []
    for seed in preset.seeds:
        groups: dict[str, list[tuple[str, tuple[Target, ...]]]] = {}
        for name in (*preset.methods, *preset.controls):
            # One job per training: a method whose training depends on the target gets one per target.
            missing = [t for t in preset.targets_of(name) if _cell(chash, preset, name, t, seed) not in done]
            for pretraining, pending in preset.by_training(METHODS.get(name), missing).items():
                groups.setdefault(pretraining, []).append((name, tuple(pending)))
        if PLAIN not in groups and seed not in references:  # also when every cell is done: a later run fills the gap
            groups[PLAIN] = []
        for pretraining in sorted(groups, key=lambda p: p != PLAIN):
            jobs.append(TrainJob(preset=preset, pretraining=pretraining, seed=seed, work=tuple(groups[pretraining]),
                                 cache_dir=str(Path(cache_dir).resolve()),
                                 data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None))
    return jobs


def _cell(chash: str, preset: Preset, method: str, target: Target, seed: int) -> tuple:
    """The ``Record.key`` that ``method`` at ``target`` and ``seed`` under ``preset`` (hash ``chash``) gets."""
    return (chash, preset.dataset, preset.model, method, target.kind, target.drop, seed)


def seeds_with_reference(refs: dict[tuple, tuple[float, float | None]], preset: Preset) -> frozenset[int]:
    """The seeds of ``preset``'s config whose reference is in ``refs`` (``bench.records.results.load_folder``)."""
    chash = preset.config_hash()
    return frozenset(seed for (h, dataset, model, seed) in refs
                     if (h, dataset, model) == (chash, preset.dataset, preset.model))


def _read_config(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not JSON ({err.msg}); accepted: the config.json a run wrote (or remove "
                         "it together with results.jsonl, or --out to another folder)") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path} is not a run's config.json; accepted: --out to another folder")
    return config


def _merged(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` widened to describe ``old``'s records too: the union of methods, targets and seeds."""
    if not old:
        return new
    union = dict(new)
    for key in ("methods", "targets", "seeds", "controls"):
        both = [*old.get(key, ()), *new.get(key, ())]
        union[key] = list({json.dumps(v, sort_keys=True): v for v in both}.values())
    if "published" not in union and old.get("published"):
        union["published"] = old["published"]
    return union


def _claim(out_dir: Path, preset: Preset, published: list[dict] | None, echo: Callable[[str], None], *,
           write: bool) -> tuple[list[Record], dict[tuple, tuple[float, float | None]]]:
    """Check that ``out_dir`` may take this run's records; return the records and references there.

    Call it holding ``locked(out_dir / RESULTS)``. With ``write`` (the one writing process), first
    removes leftover temp files, sets torn lines aside, and then writes config.json, widened
    to the union of every run's methods, targets and seeds. Raises ``UsageError`` when the folder
    holds records (or a config.json) of another configuration, or records made by other code
    (another ``code_digest``: a resumed folder must not hold references and records of two code
    versions): config.json always describes every record in its folder, so runs never mix silently.
    """
    results, chash = out_dir / RESULTS, preset.config_hash()
    if write:
        clean_stale_temp(out_dir)
        torn = set_aside_torn(results)
        if torn is not None:
            echo(f"{results}:{','.join(map(str, torn[1]))} was cut off (a run killed mid-write): set aside, "
                 f"the whole file kept in {torn[0]}; resuming")
    records, refs = load_folder(results)
    old = _read_config(out_dir / CONFIG)
    hashes = {r.config_hash for r in records if r.config_hash}
    old_hash = config_hash(old) if old else None
    if old_hash is not None and old_hash not in hashes and len(hashes) == 1:
        old_hash = next(iter(hashes))  # written by an older harness whose Budget had other fields
    others = sorted((hashes | ({old_hash} if old_hash else set())) - {chash})
    new = {**preset.to_dict(), "config_hash": chash, "code": code_digest(),
           **({"published": published} if published else {})}
    if others:
        fields = ((identity_differences(old, new) or "no field of its identity (another harness version)")
                  if old and old_hash != chash else "unknown (no config.json describes them)")
        raise UsageError(f"{out_dir} holds results of another configuration (config {', '.join(others)}; this run "
                         f"{chash}; differs in {fields}); accepted: --out to another folder, or this folder's "
                         "configuration")
    if old and records and old.get("code", new["code"]) != new["code"]:
        raise UsageError(f"{out_dir} holds results made by other code (code {old['code']}, this checkout "
                         f"{new['code']}): resuming would mix two code versions' numbers and references; accepted: "
                         "--out to a fresh folder")
    if write:
        atomic_write_text(out_dir / CONFIG, json.dumps(_merged(old, new), indent=2, sort_keys=True) + "\n")
    return records, refs


def _done(results: Path) -> set[tuple]:
    with locked(results):
        return {r.key for r in load_records(results) if r.status in DONE}


def _still_to_run(results: Path, echo: Callable[[str], None]) -> Callable[[TrainJob], TrainJob | None]:
    """The job with the targets that no other run has recorded meanwhile (``None``: none left)."""
    def pending(job: TrainJob) -> TrainJob | None:
        if not job.work:  # a reference-only job: needed while no other run has recorded the reference
            with locked(results):
                refs = load_folder(results)[1]
            if job.seed in seeds_with_reference(refs, job.preset):
                echo(f"{job.label}: the reference already recorded (by another run into this folder); skipped")
                return None
            return job
        done, chash = _done(results), job.preset.config_hash()
        work = tuple((name, left) for name, targets in job.work
                     if (left := tuple(t for t in targets if _cell(chash, job.preset, name, t, job.seed) not in done)))
        if not work:
            echo(f"{job.label}: every target already recorded (by another run into this folder); skipped")
            return None
        return replace(job, work=work) if work != job.work else job
    return pending


def _report(results: Path, finished: executors.Finished, echo: Callable[[str], None]) -> None:
    """Write what a job handed back, as soon as it ends: the seed's reference line (the plain job's
    dense accuracy), then its records, each with the reference where known and pending where not
    (a reader fills it in once the reference line is there). Under the lock, checking the budget
    before each record; a cell another run recorded meanwhile is not written again."""
    job, preset = finished.job, finished.job.preset
    records = finished.records if finished.error is None else failed_records(job, finished.error)
    with locked(results):
        have, refs = load_folder(results)
        if job.pretraining == PLAIN and finished.dense_acc is not None:
            ref = Reference(config_hash=preset.config_hash(), dataset=preset.dataset, model=preset.model,
                            seed=job.seed, acc=finished.dense_acc, val_acc=finished.dense_val_acc,
                            train_steps=finished.training.get("steps"), train_wall_s=finished.training.get("wall_s"),
                            cached=finished.training.get("cached"))
            if ref.key not in refs:
                append_record(results, ref, lock_held=True)
                refs[ref.key] = (ref.acc, ref.val_acc)
        elif job.pretraining == PLAIN:
            echo(f"seed {job.seed}: the reference (plain) training produced no model "
                 f"({finished.error or 'its training diverged'}); this seed's records wait for it, and a later run "
                 "into this folder trains it again")
        done = {r.key for r in have if r.status in DONE}
        for r in records:
            if r.key in done:
                echo(f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}: already recorded by another "
                     "run into this folder; not written again")
                continue
            if r.status == "ok":
                r = replace(r, **reference_fields(r.acc, refs.get(reference_key(r))))
            check_budget([*(h for h in have if h.config_hash == r.config_hash), r])  # before it is written
            append_record(results, r, lock_held=True)
            have.append(r)
            if r.status in DONE:
                done.add(r.key)
            if r.status != "ok":
                echo(f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}: {r.status} ({r.reason})")


def run(preset: Preset, out_dir: Path, *, data_dir: Path | None = None, download: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print, cache_dir: Path | None = None,
        executor: executors.ExecutorConfig | None = None, published: list[dict] | None = None) -> list[Record]:
    """Run ``preset``, appending records to ``out_dir/results.jsonl``; returns this config's records.

    Each (pre-training, seed) is one job (see ``plan``): methods that compress the same trained
    model share it. ``executor`` says where jobs run (default: in this process, one after
    another; see ``bench.execution.executors`` for submitit on SLURM, local subprocesses or its
    debug cluster). Records are appended atomically as each job finishes, and a job that raises
    becomes a failed record per target with the reason, while the others go on. Every ok record
    carries its seed's reference accuracy (``ref_acc``: the plainly trained dense model's) and
    ΔAcc against it, filled in when it is read if the record was written before the reference
    (``ref_pending``; a seed whose reference job failed gets it from a later run). Resumable: a
    (method, target, seed) already recorded as ok or skipped under the same config hash is not
    run again; trained models come from ``cache_dir``
    (default ``bench.execution.cache.default_dir()``) when there. The resolved preset is saved
    as ``out_dir/config.json``, with ``published`` (the preset's published numbers) when given.
    Several runs may share ``out_dir``: what is done is re-read under the folder's lock before
    each job and before each record is written, so each cell is recorded once. Torn lines (a run
    killed mid-write) are set aside in ``results.jsonl.corrupt``.
    The front ends check the paths, the data folder and CUDA before calling this (``bench.frontend``).
    Raises ``UsageError`` for submitit asked and not installed, a folder holding records of another
    configuration or of other code, or a malformed results.jsonl; ``BudgetMismatch`` (see ``check_budget``),
    before the record that would void the comparison is written.
    """
    config = executor if executor is not None else executors.ExecutorConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()  # under torchrun every rank computes, rank 0 alone writes
    results = out_dir / RESULTS
    with locked(results):
        existing, refs = _claim(out_dir, preset, published, echo, write=main)
    cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_dir()
    if main:
        clean_stale_temp(cache_dir)
    jobs = plan(preset, {r.key for r in existing if r.status in DONE}, cache_dir=cache_dir, data_dir=data_dir,
                references=seeds_with_reference(refs, preset))
    # Under torchrun every rank must run the same jobs, so only the start-up state decides there.
    before = None if distributed.active() else _still_to_run(results, echo)
    for finished in executors.run_jobs(jobs, config, folder=out_dir / executors.SUBMITIT_FOLDER,
                                       download=download, progress=progress, echo=echo, before=before):
        if main:  # as each job ends: a killed orchestrator loses no finished job
            _report(results, finished, echo)
    if not main:
        return []
    mine = [r for r in load_records(results) if r.config_hash == preset.config_hash()]
    check_budget(mine)
    return mine
