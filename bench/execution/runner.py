"""Plan a run and hand its jobs to an executor: one job per (method, seed) with targets still missing.

The runner plans (which jobs, resuming from the records already there), hands the jobs to
``bench.execution.executors`` and appends every record it gets back; it never runs a job
itself. Imports point one way: runner → executors → job → train / measure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench.catalog.presets import Preset
from bench.execution import cache, distributed, executors
from bench.execution.job import TrainJob, failed_records
from bench.records.results import CONFIG, RESULTS, Record, append_record, atomic_write_text, load_records


class BudgetMismatch(RuntimeError):
    """Methods of one suite used different numbers of optimizer steps: the comparison is void."""


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


def plan(preset: Preset, done: set[tuple], *, cache_dir: Path, data_dir: Path | None = None) -> list[TrainJob]:
    """One job per (seed, method) of ``preset`` with a target whose record key is not in ``done``.

    One job per trained model, so every seed is its own job; the job carries only its missing
    targets, and absolute paths, since it may run on another machine.
    """
    chash, jobs = preset.config_hash(), []
    for seed in preset.seeds:
        for name in preset.methods:
            pending = tuple(t for t in preset.targets
                            if (chash, preset.dataset, preset.model, name, t.kind, t.drop, seed) not in done)
            if pending:
                jobs.append(TrainJob(preset=preset, method=name, seed=seed, targets=pending,
                                     cache_dir=str(Path(cache_dir).resolve()),
                                     data_dir=str(Path(data_dir).resolve()) if data_dir is not None else None))
    return jobs


def run(preset: Preset, out_dir: Path, *, data_dir: Path | None = None, download: bool = False,
        progress: bool = True, echo: Callable[[str], None] = print, cache_dir: Path | None = None,
        executor: executors.ExecutorConfig | None = None, published: list[dict] | None = None) -> list[Record]:
    """Run ``preset``, appending records to ``out_dir/results.jsonl``; returns this config's records.

    Each (method, seed) is one job (see ``plan``). ``executor`` says where jobs run (default: in
    this process, one after another; see ``bench.execution.executors`` for submitit on SLURM,
    local subprocesses or its debug cluster). Records are appended atomically as each job
    finishes, and a job that raises becomes a failed record per target with the reason, while
    the others go on. Resumable: a (method, target, seed) already recorded as ok or skipped
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
    done = {r.key for r in load_records(results) if r.status in ("ok", "skipped")}
    jobs = plan(preset, done, cache_dir=Path(cache_dir) if cache_dir is not None else cache.default_dir(),
                data_dir=data_dir)
    for finished in executors.run_jobs(jobs, config, folder=out_dir / executors.SUBMITIT_FOLDER,
                                       download=download, progress=progress, echo=echo):
        records = finished.records if finished.error is None else failed_records(finished.job, finished.error)
        for r in records if main else ():
            append_record(results, r)
            if r.status != "ok":
                echo(f"{r.method} {r.target_kind}:{r.target_drop:g} seed {r.seed}: {r.status} ({r.reason})")
    if not main:
        return []
    mine = [r for r in load_records(results) if r.config_hash == preset.config_hash()]
    check_budget(mine)
    return mine
