"""Where a run's training jobs execute: in this process, or handed to submitit (SLURM, local processes, debug).

One job (``bench.execution.job.TrainJob``) is one trained model — (dataset, model, pre-training,
budget, seed) — together with every compression target still missing for each method that
compresses it; ``bench.execution.job.run_job`` runs it and returns its ``Record``s and the
trained model's dense accuracy. This module
only submits, waits and collects: queueing, placement, array parallelism and time limits belong
to submitit and the cluster; planning and resuming belong to the runner, which hands over only
the jobs whose records are missing or failed. There is no scheduler, queue or RPC
here, and nothing here calls back into the runner.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import bench
from bench.catalog import data as data_mod
from bench.execution import progress as progress_out
from bench.execution.job import JobResult, TrainJob, run_job
from bench.records.errors import UsageError
from bench.records.results import Record

log = logging.getLogger(__name__)
EXECUTORS = ("local", "submitit")
CLUSTERS = ("slurm", "local", "debug")
SUBMITIT_FOLDER = "submitit"  # under the run's output folder: pickled jobs, results and logs
# How often the harness looks at unfinished jobs. On SLURM submitit rate-limits its own sacct
# calls, so polling faster than that only burns the login node's CPU.
POLL_S = {"slurm": 15.0, "local": 0.5}
# submitit's own defaults are minutes (5 on SLURM, 2 locally): far too short for a training job.
DEFAULT_TIMEOUT_MIN = 24 * 60


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorConfig:
    """How a run's training jobs execute.

    ``kind="local"`` (the default) trains in this process, one job after another, with the
    data set loaded once. ``kind="submitit"`` hands every job to ``submitit.AutoExecutor`` on
    ``cluster``: ``"slurm"`` (a job array), ``"local"`` (one subprocess per job on this
    machine, all started at once), ``"debug"`` (in this process, through submitit's own code
    path), or ``None`` for submitit's detection (slurm where ``sbatch`` exists, else local).
    ``gpus_per_job`` defaults to 1 for a CUDA preset and 0 otherwise; ``max_parallel`` caps
    how many array tasks SLURM runs at once; ``timeout_min`` is each job's wall-clock limit
    (default ``DEFAULT_TIMEOUT_MIN``).
    Raises ``UsageError`` for an unknown kind or cluster, a bad number, or a submitit option
    given to the local executor.
    """

    kind: str = "local"
    cluster: str | None = None
    slurm_partition: str | None = None
    gpus_per_job: int | None = None
    max_parallel: int | None = None
    timeout_min: int | None = None  # None: DEFAULT_TIMEOUT_MIN

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UsageError(f"unknown executor {self.kind!r}; accepted: {', '.join(EXECUTORS)}")
        if self.cluster is not None and self.cluster not in CLUSTERS:
            raise UsageError(f"unknown cluster {self.cluster!r}; accepted: {', '.join(CLUSTERS)}")
        for name, value, low in (("gpus-per-job", self.gpus_per_job, 0), ("max-parallel", self.max_parallel, 1),
                                 ("timeout-min", self.timeout_min, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise UsageError(f"bad --{name} {value!r}; accepted: an integer >= {low}")
        if self.kind == "local":
            given = [flag for flag, value in (("--cluster", self.cluster), ("--slurm-partition", self.slurm_partition),
                                              ("--gpus-per-job", self.gpus_per_job),
                                              ("--max-parallel", self.max_parallel),
                                              ("--timeout-min", self.timeout_min)) if value is not None]
            if given:
                raise UsageError(f"{', '.join(given)} given with --executor local; accepted: these options "
                                 "with --executor submitit, or none of them")
        if self.slurm_partition is not None and self.cluster in ("local", "debug"):
            raise UsageError(f"--slurm-partition given with --cluster {self.cluster}; accepted: --cluster slurm "
                             "(or no --cluster, where submitit detects SLURM)")

    @property
    def runs_here(self) -> bool:
        """Whether the jobs run on this machine (so this machine's CUDA is the jobs' CUDA)."""
        return self.kind == "local" or self.cluster in ("local", "debug")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """A job that ended: its records and its trained model's dense accuracies, or why it
    produced none (``error``)."""

    job: TrainJob
    records: tuple[Record, ...] = ()
    dense_acc: float | None = None
    dense_val_acc: float | None = None
    training: dict[str, Any] = field(default_factory=dict)  # see JobResult
    error: str | None = None

    @classmethod
    def of(cls, job: TrainJob, result: JobResult) -> Finished:
        return cls(job=job, records=result.records, dense_acc=result.dense_acc, dense_val_acc=result.dense_val_acc,
                   training=result.training)


def require_submitit() -> ModuleType:
    """The ``submitit`` module; ``UsageError`` naming the extra to install when it is absent."""
    try:
        import submitit
    except ImportError:
        raise UsageError("--executor submitit needs the optional package submitit, which is not installed; "
                         "accepted: pip install 'lorita-bench[slurm]' (or pip install submitit), "
                         "or --executor local") from None
    return submitit


def resolve(config: ExecutorConfig) -> ExecutorConfig:
    """``config`` with the cluster submitit would pick filled in.

    Raises ``UsageError`` when submitit is asked for and not installed, or SLURM is asked for
    on a machine without it (submitit looks for ``srun``).
    """
    if config.kind != "submitit":
        return config
    submitit = require_submitit()
    if config.cluster is None:
        return replace(config, cluster=submitit.AutoExecutor.which())
    if config.cluster == "slurm" and shutil.which("srun") is None:
        raise UsageError("--cluster slurm asked for, but SLURM's srun is not on this machine's PATH; accepted: "
                         "run from a SLURM login node, or --cluster local / --cluster debug")
    return config


def run_jobs(jobs: Sequence[TrainJob], config: ExecutorConfig, *, folder: Path, download: bool = False,
             progress: bool = True, echo: Callable[[str], None] = print,
             before: Callable[[TrainJob], TrainJob | None] | None = None) -> Iterator[Finished]:
    """Execute ``jobs`` as ``config`` says and yield each one as it finishes (any order).

    A job that raises yields a ``Finished`` with ``error`` set and the others go on; the
    caller turns it into failed records. ``folder`` receives submitit's pickles and logs, in
    one subfolder per call. ``before`` is asked, just before a job starts (or is submitted),
    for what is left of it (``None``: nothing, the job is dropped): another run into the same
    folder may have recorded some of its targets meanwhile.
    Every job must share one preset (one run).
    """
    if not jobs:
        return
    if config.kind == "local":
        yield from _in_process(jobs, download=download, progress=progress, before=before)
    else:
        if before is not None:
            jobs = [j for j in map(before, jobs) if j is not None]
            if not jobs:
                return
        yield from _submitit(jobs, resolve(config), folder=folder, download=download, progress=progress, echo=echo)


def _in_process(jobs: Sequence[TrainJob], *, download: bool, progress: bool,
                before: Callable[[TrainJob], TrainJob | None] | None = None) -> Iterator[Finished]:
    preset = jobs[0].preset
    data_dir = Path(jobs[0].data_dir) if jobs[0].data_dir is not None else None
    data = data_mod.load(preset.dataset, data_dir=data_dir, download=download).to(preset.device)
    bar = progress_out.bar(len(jobs), desc="suite", unit="run") if progress else None
    try:
        for i, planned in enumerate(jobs, 1):
            job = before(planned) if before is not None else planned
            if job is None:
                if bar is not None:
                    bar.update()
                continue
            try:
                result = run_job(job, data, progress=progress)
            except Exception as err:  # one failing method must not sink the others
                log.exception("%s failed", job.label)
                done = Finished(job=job, error=f"{type(err).__name__}: {err}")
            else:
                done = Finished.of(job, result)
            _progress(bar, progress, f"suite: {i}/{len(jobs)} runs done", done)
            yield done
    finally:
        if bar is not None:
            bar.close()


def _progress(bar: Any, progress: bool, head: str, done: Finished) -> None:
    """One finished job: a bar step in a terminal, else one plain line (``progress`` on)."""
    what = f"{done.job.label}: {'failed' if done.error else 'done'}"
    if bar is not None:
        bar.set_postfix_str(what)
        bar.update()
    elif progress:
        progress_out.line(f"{head} ({what})")


def _parameters(config: ExecutorConfig, cuda: bool) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords for ``config``."""
    gpus = config.gpus_per_job if config.gpus_per_job is not None else int(cuda)
    # The worker unpickles run_job by reference, so it must import this checkout: put the
    # folder holding the ``bench`` package first on its path (a no-op when it is installed).
    root = Path(bench.__file__).resolve().parent.parent
    setup = [f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    timeout = config.timeout_min if config.timeout_min is not None else DEFAULT_TIMEOUT_MIN
    params: dict[str, Any] = {"name": "lorita-bench", "timeout_min": timeout, "nodes": 1,
                              "tasks_per_node": 1, "gpus_per_node": gpus, "slurm_setup": setup, "local_setup": setup}
    if config.slurm_partition is not None:
        params["slurm_partition"] = config.slurm_partition
    if config.max_parallel is not None:
        params["slurm_array_parallelism"] = config.max_parallel
    return params


def _reason(handle: Any, err: BaseException) -> str:
    """One line for a record: the job id, the exception's last line and where the log is."""
    submitit = require_submitit()
    text = str(err)
    if isinstance(err, submitit.core.utils.FailedJobError):
        # The message wraps the worker's whole traceback; its last line names the exception.
        body = text.split("-" * 22)
        trace = body[1] if len(body) > 2 else text
        last = [line for line in trace.splitlines() if line.strip()][-1:] or [text]
        return f"job {handle.job_id} failed: {last[0].strip()} (log: {handle.paths.stderr})"
    if isinstance(err, submitit.core.utils.UncompletedJobError):
        first = text.splitlines()[0] if text else type(err).__name__
        return f"job {handle.job_id} did not complete: {first}"
    return f"{type(err).__name__}: {err}"  # the debug cluster hands back the worker's own exception


def _submitit(jobs: Sequence[TrainJob], config: ExecutorConfig, *, folder: Path, download: bool, progress: bool,
              echo: Callable[[str], None]) -> Iterator[Finished]:
    submitit = require_submitit()
    preset = jobs[0].preset
    # Fail here, once, on a missing data set, and download it once instead of in every job at once.
    data_mod.load(preset.dataset, data_dir=Path(jobs[0].data_dir) if jobs[0].data_dir else None, download=download)
    # One folder per submission: local job ids are PIDs, and a reused PID must never find the
    # result pickle of an earlier run's job under its name.
    folder = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    executor = submitit.AutoExecutor(folder=folder, cluster=config.cluster)
    executor.update_parameters(**_parameters(config, torch.device(preset.device).type == "cuda"))
    handles = executor.map_array(run_job, list(jobs))
    echo(f"submitted {len(handles)} job(s) to submitit ({config.cluster}): "
         f"{', '.join(h.job_id for h in handles)}; logs in {folder}")
    if config.max_parallel is not None and config.cluster != "slurm":
        echo(f"note: --max-parallel applies on SLURM only; submitit's {config.cluster} cluster runs every job")
    by_id = {id(h): job for h, job in zip(handles, jobs, strict=True)}
    if config.cluster == "debug":
        # Debug jobs run in this process when first asked about; done() re-runs a failed one
        # and opens pdb, so each is asked exactly once, through exception().
        order: Iterator[Any] = iter(handles)
    else:
        order = submitit.helpers.as_completed(handles, poll_frequency=POLL_S.get(config.cluster, POLL_S["local"]))
    bar = progress_out.bar(len(handles), desc="jobs", unit="job") if progress else None
    try:
        for i, handle in enumerate(order, 1):
            job = by_id[id(handle)]
            try:
                err = handle.exception()
                result = handle.result() if err is None else None
            except Exception as caught:  # a job killed outside Python, or unreadable results
                err, result = caught, None
            if err is not None:
                log.warning("%s (job %s) failed: %s", job.label, handle.job_id, err)
                done = Finished(job=job, error=_reason(handle, err))
            else:
                done = Finished.of(job, result)
            _progress(bar, progress, f"jobs: {i}/{len(handles)} done", done)
            yield done
    finally:
        if bar is not None:
            bar.close()
