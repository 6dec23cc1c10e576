"""Regression history: runs kept by commit, a series per cell and measure, and the changes in them.

The store is pytest-benchmark's own (``--benchmark-storage DIR --benchmark-autosave``)::

    DIR/Linux-CPython-3.12-64bit/0007_<commit>_<YYYYMMDD_HHMMSS>.json            timings, machine_info, commit_info
    DIR/Linux-CPython-3.12-64bit/0007_<commit>_<YYYYMMDD_HHMMSS>.results.jsonl   that run's records, one a line

pytest-benchmark writes the JSON (its ``commit_info`` gains the commit's subject, and its
``lorita_bench`` entry the preset, from ``bench/suite/plugin.py``); the suite writes the records of
the same session beside it, in the runner's results.jsonl format (``keep_records``), so failed
and skipped cells, which have no benchmark, are kept too. A run is keyed by its commit (id, date,
subject; a run from a working tree with uncommitted changes is a point of its own), its machine
(pytest-benchmark's ``machine_info``, less the host name and momentary clock) and, per record,
its configuration hash. Run folders, results JSONL and benchmark JSON files made before the
store existed are read too (backfill); one without a commit is placed by
its file time, unless ``SOURCE@REV`` names the commit it was made at.

A series is one measure of one cell in commit order: accuracy (fine-tuned, zero-shot) and
params and FLOPs drops per (config, dataset, model, method, target); the A/B speed-ups and
pytest-benchmark's latencies per (machine, config, …, target, batch); the training-step ratios
per (machine, benchmark). Configurations are never pooled, and timings compare only within one
machine. Several values at one commit (seeds, repeated runs) are averaged into one point.

How a change is found (``fit``), in the measure's analysis units (percentage points for
accuracies and drops; the natural log of speed-ups, latencies and ratios, so a step is a relative
change):

1. Noise σ of one commit's point: the largest of (a) the measure's floor
   (``Measure.noise_floor``), (b) the median over points of their own standard error (seeds'
   spread s/√k; the A/B bootstrap 95 % interval's half-width / 1.96; paired rounds' IQR as
   1.2533·(IQR/1.349)/√rounds for a median; not for unpaired timings, ``Measure.paired``), and
   (c) the median, over the like series of its group (the same measure and batch for every
   method and target of one configuration and machine), of each one's spread: 1.4826·MAD of
   successive differences / √2, from ``MIN_SPREAD_POINTS`` points on (a step is one outlying
   difference and leaves it alone). A series without like series uses its own spread; an
   unpaired timing with neither has no known noise, and no change is called in it yet. Twelve
   points estimate a spread poorly: a low estimate makes false changes, a high one hides real
   ones; a machine's noise hits all its cells alike, and step 4 catches a series noisier than
   its group.
2. Step fit: the split into two levels with the least within-level squared error, each level
   at least ``MIN_LEVEL`` points long, except that a level ending at the newest commit may be a
   single point (so that the newest commit can start a change; the next run confirms it).
3. The split is a change when the two levels differ by more than ``Z_CHANGE`` standard errors,
   |Δ| > Z·σ·√(1/n_before + 1/n_after), and by at least the measure's smallest relevant change
   (``Measure.min_change``: 1 pp of accuracy, 0.1 pp of a drop, 10 % of a timing or ratio).
   Both sides are then searched again (binary segmentation).
4. Every change is tested again between its neighbouring changes, with σ raised to the scatter
   of the series around its fitted levels where that is larger; the weakest failing change is
   dropped until all pass.

A change is reported at the first commit of its new level. A drift shows as a step once it has
added up: a series that moves 0.3 pp a commit splits where its two halves differ by more than
both thresholds. Z = 5 was chosen on the synthetic histories of tests/test_history.py (12
commits, 62 series each, with the run-to-run noise measured on this project's 2-core CI machine:
pytest-benchmark medians 11-19 %, A/B speed-ups 2.5-5 %, paired step ratios 1.5 %, accuracy one
test image): in 100 noise-only histories 1 of 6,200 series showed a change (Z = 4: 10), and in
97 of 100 planted histories exactly the planted changes were found (in the other 3 the planted
cell's unpaired latency series put the step one or two commits off).

Nothing here imports torch or anything of ``bench`` above ``bench.records``.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import math
import statistics
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.records.errors import UsageError
from bench.records.results import BENCH_KEY, CONFIG, RESULTS, atomic_write_text, finite
from bench.records.sources import from_benchmark_json, read_benchmark_json, read_jsonl, with_hash

RECORDS_SUFFIX = ".results.jsonl"  # beside pytest-benchmark's NNNN_TAG.json: NNNN_TAG.results.jsonl
SAVED_GLOB = "[0-9][0-9][0-9][0-9]_*.json"  # what pytest-benchmark's FileStorage saves and loads
ACCEPTED = ("a history store (a --benchmark-storage folder), a run folder holding results.jsonl, a results "
            ".jsonl file or a pytest-benchmark .json file, each optionally SOURCE@REV to name its commit")
Z_CHANGE = 5.0  # standard errors of the step between two levels (see the module docstring)
MIN_LEVEL = 2  # points of a level, except the newest, which may be one point
MIN_SPREAD_POINTS = 5  # points before the series' own spread is trusted as a noise estimate
MAD_TO_SIGMA = 1.4826  # MAD of a normal sample × this = its standard deviation
IQR_TO_SIGMA = 1 / 1.349  # IQR of a normal sample × this = its standard deviation
MEDIAN_SE = 1.2533  # standard error of a median = this × σ / √n (normal samples)
Z95 = 1.959964
# machine_info keys that differ between identical machines (the suite drops them when it saves;
# older or foreign JSON may still carry them)
VOLATILE_MACHINE_KEYS = ("node",)
VOLATILE_CPU_KEYS = ("hz_actual", "hz_actual_friendly")
UNRECORDED = "unrecorded"
FAMILIES = ("accuracy", "compression", "speed-up", "latency", "training step")


@dataclass(frozen=True, slots=True, kw_only=True)
class Measure:
    """One quantity tracked across commits, and what counts as a change of it.

    ``log``: analysed as ln(value), so noise, floor and smallest change are relative (a floor of
    ln 1.02 is 2 %); otherwise in the display unit, percentage points for accuracies and drops.
    ``better``: +1 when higher is better, -1 when lower is, 0 when neither (a drop that moves).
    ``timing``: machine-dependent, so its series are kept per machine. ``paired``: a point's own
    interval (seeds, the A/B bootstrap, paired rounds) is a fair measure of how far it moves from
    run to run. Unpaired timings (pytest-benchmark's medians) move several times further between
    runs than within one (measured here: 11-19 % against 4-6 %), so their noise comes only from
    the spread of the series, and no change is called before there are enough commits to see it.
    """

    key: str
    title: str
    family: str
    unit: str  # display unit of a value: "%", "×", "ms"
    log: bool
    noise_floor: float  # smallest σ, analysis units
    min_change: float  # smallest |Δ| that is a change, analysis units
    better: int
    timing: bool
    paired: bool = True

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"measure {self.key}: family {self.family!r} is not one of {FAMILIES}")
        if self.better not in (-1, 0, 1) or self.noise_floor < 0 or self.min_change <= 0:
            raise ValueError(f"measure {self.key}: better must be -1, 0 or 1, noise_floor >= 0, min_change > 0")

    def analysis(self, value: float) -> float:
        return math.log(value) if self.log else value

    def display(self, value: float) -> float:
        return math.exp(value) if self.log else value

    def change_text(self, delta: float) -> str:
        """A step ``delta`` (analysis units) as people read it: "-2.00 pp" or "+30.0 %"."""
        return f"{(math.exp(delta) - 1) * 100:+.1f} %" if self.log else f"{delta:+.2f} pp"


def _relative(pct: float) -> float:
    return math.log(1 + pct / 100)


MEASURES = (
    Measure(key="acc", title="accuracy, fine-tuned", family="accuracy", unit="%", log=False, noise_floor=0.25,
            min_change=1.0, better=1, timing=False),
    Measure(key="acc_zero_shot", title="accuracy, zero-shot", family="accuracy", unit="%", log=False,
            noise_floor=0.25, min_change=1.0, better=1, timing=False),
    # Counts are deterministic: any move beyond 0.1 pp is a change of method or counter.
    Measure(key="params_drop", title="Params↓", family="compression", unit="%", log=False, noise_floor=0.0,
            min_change=0.1, better=0, timing=False),
    Measure(key="flops_drop", title="FLOPs↓", family="compression", unit="%", log=False, noise_floor=0.0,
            min_change=0.1, better=0, timing=False),
    Measure(key="speedup", title="speed-up (A/B, dense / deployed)", family="speed-up", unit="×", log=True,
            noise_floor=_relative(2), min_change=_relative(10), better=1, timing=True),
    Measure(key="latency", title="latency (pytest-benchmark median)", family="latency", unit="ms", log=True,
            noise_floor=_relative(2), min_change=_relative(10), better=-1, timing=True, paired=False),
    Measure(key="n3_over_n1", title="LoRITa N=3 / N=1 training-step time", family="training step", unit="×",
            log=True, noise_floor=_relative(2), min_change=_relative(10), better=-1, timing=True),
    Measure(key="throughput_ratio", title="harness / plain-loop training throughput", family="training step",
            unit="×", log=True, noise_floor=_relative(2), min_change=_relative(10), better=1, timing=True),
    Measure(key="step_ms", title="timed training function (pytest-benchmark median)", family="training step",
            unit="ms", log=True, noise_floor=_relative(2), min_change=_relative(10), better=-1, timing=True,
            paired=False),
)
MEASURE = {m.key: m for m in MEASURES}
RECORD_MEASURES = ("acc", "acc_zero_shot", "params_drop", "flops_drop")  # record fields, fractions → %


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """The code a run was made from: ``id`` the full hash ("" when unknown), ``date`` the committer
    date (ISO 8601), ``dirty`` when the working tree had uncommitted changes."""

    id: str = ""
    date: str = ""
    subject: str = ""
    dirty: bool = False

    @property
    def short(self) -> str:
        return (self.id[:9] or "unknown") + ("+dirty" if self.dirty else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One run of the regression suite: its commit, machine, records and pytest-benchmark entries.

    ``when`` is the run's own time (ISO 8601: the benchmark JSON's ``datetime``, or a file's
    modification time); ``machine`` a short key of ``machine_info`` (``UNRECORDED`` when the
    source has none); ``placed_by`` says how the run was put in order ("commit" or "file time").
    """

    commit: Commit
    when: str
    source: str
    machine: str
    machine_info: dict[str, Any] = field(default_factory=dict)
    placed_by: str = "commit"
    records: tuple[dict[str, Any], ...] = ()
    benchmarks: tuple[dict[str, Any], ...] = ()
    configs: tuple[dict[str, Any], ...] = ()

    @property
    def position_key(self) -> tuple[str, bool] | tuple[str]:
        """Runs with equal keys are one point of a series: one commit (clean or not), or, without a
        commit, the source alone."""
        return (self.commit.id, self.commit.dirty) if self.commit.id else (f"source:{self.source}",)


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """Runs in commit order, the commits (points of every series) in that order, and notes on how
    the order was found."""

    runs: tuple[Run, ...]
    commits: tuple[Commit, ...]
    positions: tuple[int, ...]  # per run, the index of its commit in ``commits``
    notes: tuple[str, ...] = ()
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → machine_info

    def position(self, commit: str) -> int:
        """The index of ``commit``: "last" (any case) for the newest, else a commit id or its prefix.

        Raises ``UsageError`` naming the commits known when none or several match.
        """
        if not self.commits:
            raise UsageError("the history holds no runs")
        if commit.lower() == "last":
            return len(self.commits) - 1
        hits = {c.id for c in self.commits if c.id and c.id.startswith(commit.lower())}
        if len(hits) != 1 or len(commit) < 4:
            why = "is too short" if len(commit) < 4 else "is ambiguous" if hits else "is not in the history"
            known = ", ".join(c.short for c in self.commits[-8:])
            raise UsageError(f"commit {commit!r} {why}; accepted: last, or 4 or more leading hex digits of a "
                             f"commit in the history (newest: {known})")
        # a commit's clean and dirty runs are two points: the later one
        return max(i for i, c in enumerate(self.commits) if c.id in hits)


def git_commit(rev: str = "HEAD", repo: str | Path = ".") -> Commit:
    """The commit ``rev`` of the git repository at ``repo``: full id, committer date, subject.

    Raises ``UsageError`` when ``repo`` is not a git work tree or ``rev`` names no commit.
    """
    try:
        out = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%H%n%cI%n%s", rev, "--"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        why = getattr(err, "stderr", "") or str(err)
        raise UsageError(f"cannot resolve commit {rev!r} in {repo}: {why.strip().splitlines()[-1] if why else err}; "
                         "accepted: a revision git knows in that repository (--repo DIR)") from None
    commit_id, date, subject = ([*out.splitlines(), "", "", ""])[:3]
    return Commit(id=commit_id, date=date, subject=subject)


def storage_folder(storage: str | Path) -> Path | None:
    """The folder of a pytest-benchmark storage URI (``file://DIR`` or a bare path); ``None`` for
    another kind of storage (elasticsearch), beside which no records file can be kept."""
    text = str(storage)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    return None if "://" in text else Path(text)


def records_path(benchmark_json: Path) -> Path:
    """Where the records of the run saved as ``benchmark_json`` are kept: ``NNNN_TAG.results.jsonl``."""
    return benchmark_json.with_name(benchmark_json.name.removesuffix(".json") + RECORDS_SUFFIX)


def saved_run(folder: Path, machine_id: str, tag: str) -> Path | None:
    """The newest run pytest-benchmark saved under ``tag`` (``--benchmark-save NAME`` or the autosave
    tag) into ``folder/machine_id``, or ``None``: the file ``keep_records`` writes beside."""
    found = sorted((Path(folder) / machine_id).glob(f"[0-9][0-9][0-9][0-9]_{glob.escape(tag)}.json"))
    return found[-1] if found else None


def keep_records(benchmark_json: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` (Record dicts) beside ``benchmark_json`` as JSONL, atomically; returns the path."""
    path = records_path(Path(benchmark_json))
    atomic_write_text(path, "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in records))
    return path


def machine_key(machine_info: Mapping[str, Any] | None) -> str:
    """A short key of ``machine_info`` (the suite's comparison: everything but host name and clock)."""
    if not machine_info:
        return UNRECORDED
    info = {k: v for k, v in machine_info.items() if k not in VOLATILE_MACHINE_KEYS}
    if isinstance(info.get("cpu"), dict):
        info["cpu"] = {k: v for k, v in info["cpu"].items() if k not in VOLATILE_CPU_KEYS}
    return hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _file_time(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).isoformat(timespec="seconds")


def _split_rev(source: str | Path) -> tuple[Path, str | None]:
    """``PATH@REV`` → (PATH, REV) unless the whole text is an existing path."""
    text = str(source)
    if Path(text).exists() or "@" not in text:
        return Path(text), None
    path, _, rev = text.rpartition("@")
    return Path(path), rev or None


def _is_store(folder: Path) -> bool:
    return not (folder / RESULTS).is_file() and bool(_saved_jsons(folder))


def _saved_jsons(folder: Path) -> list[Path]:
    return sorted({*folder.glob(f"*/{SAVED_GLOB}"), *folder.glob(SAVED_GLOB)})


def _benchmark_run(path: Path, rev_commit: Commit | None, repo: Path | None) -> Run:
    """A run from a pytest-benchmark JSON, with the records kept beside it when there are any."""
    data = read_benchmark_json(path)
    beside = records_path(path)
    records = read_jsonl(beside) if beside.is_file() else from_benchmark_json(data)
    info = data.get("commit_info") or {}
    commit = rev_commit
    if commit is None and info.get("id") not in (None, "", "unknown", "unversioned"):
        commit = Commit(id=str(info["id"]), date=str(info.get("time") or ""), subject=str(info.get("subject") or ""),
                        dirty=bool(info.get("dirty")))
        if not commit.subject and repo is not None:  # saved without the suite's hook: ask git, if it knows
            try:
                known = git_commit(commit.id, repo)
                commit = Commit(id=commit.id, date=commit.date or known.date, subject=known.subject,
                                dirty=commit.dirty)
            except UsageError:
                pass
    config = (data.get(BENCH_KEY) or {}).get("config")
    configs = (with_hash(dict(config), records),) if isinstance(config, dict) else ()
    machine = data.get("machine_info") or {}
    return Run(commit=commit or Commit(), when=str(data.get("datetime") or _file_time(path)), source=str(path),
               machine=machine_key(machine), machine_info=dict(machine),
               placed_by="commit" if commit and commit.date else "run time", records=tuple(records),
               benchmarks=tuple(data["benchmarks"]), configs=configs)


def _records_run(path: Path, rev_commit: Commit | None) -> Run:
    """A backfilled run from a run folder or a results JSONL file (no machine recorded)."""
    file = path / RESULTS if path.is_dir() else path
    records = read_jsonl(file)
    configs: tuple[dict[str, Any], ...] = ()
    if path.is_dir() and (path / CONFIG).is_file():
        configs = (with_hash(json.loads((path / CONFIG).read_text(encoding="utf-8")), records),)
    return Run(commit=rev_commit or Commit(), when=_file_time(file), source=str(path), machine=UNRECORDED,
               placed_by="commit" if rev_commit else "file time", records=tuple(records), configs=configs)


def load_history(sources: Sequence[str | Path], *, repo: str | Path | None = ".") -> History:
    """Every run in ``sources``, in commit order.

    A source is a history store (a folder of pytest-benchmark saved runs, ``machine-id/NNNN_*.json``,
    with records beside them), a pytest-benchmark JSON file, a run folder or a results JSONL
    file; ``SOURCE@REV`` names the commit a source was made at, resolved with git in ``repo``.
    Runs are ordered by commit date (then run time); a run without a commit by its run or file
    time, which ``notes`` say. Raises ``UsageError`` naming the source for a missing path, a file
    in no known format, a store without saved runs, or a revision git does not know.
    """
    repo_path = Path(repo) if repo is not None else None
    runs: list[Run] = []
    notes: list[str] = []
    for src in sources:
        path, rev = _split_rev(src)
        commit = git_commit(rev, repo_path or ".") if rev else None
        if path.is_dir() and _is_store(path):
            if commit is not None:
                raise UsageError(f"{src}: a history store records each run's commit; accepted: @REV only after "
                                 "a run folder, results .jsonl or benchmark .json")
            runs += [_benchmark_run(p, None, repo_path) for p in _saved_jsons(path)]
        elif path.is_dir():
            if not (path / RESULTS).is_file():
                raise UsageError(f"no {RESULTS} and no saved pytest-benchmark runs ({SAVED_GLOB}) in folder "
                                 f"{path}; accepted: {ACCEPTED}")
            runs.append(_records_run(path, commit))
        elif not path.is_file():
            raise UsageError(f"no results at {src}; accepted: {ACCEPTED}")
        elif path.suffix == ".json":
            runs.append(_benchmark_run(path, commit, repo_path))
        else:
            runs.append(_records_run(path, commit))
    return order(runs, notes)


def order(runs: Sequence[Run], notes: Sequence[str] = ()) -> History:
    """``runs`` as a ``History``: commits ordered by commit date, ties and runs without a commit by
    run time; runs of one commit are one point."""
    def when(run: Run) -> tuple[datetime, datetime, str]:
        own = _parse_time(run.when)
        return (_parse_time(run.commit.date) if run.commit.date else own, own, run.source)

    ordered = sorted(runs, key=when)
    first: dict[tuple, tuple[datetime, datetime, str]] = {}
    for run in ordered:
        first.setdefault(run.position_key, when(run))
    keys = sorted(first, key=lambda k: first[k])
    index = {k: i for i, k in enumerate(keys)}
    by_key = {run.position_key: run.commit for run in ordered}
    commits = tuple(by_key[k] for k in keys)
    notes = list(notes)
    unplaced = [run for run in ordered if run.placed_by != "commit"]
    if unplaced:
        notes.append(f"{len(unplaced)} run(s) without a commit date are placed by their "
                     f"{' and '.join(sorted({r.placed_by for r in unplaced}))}: "
                     + ", ".join(f"{r.source} ({r.when})" for r in unplaced[:6]) + (", …" if len(unplaced) > 6 else "")
                     + "; name a source's commit with SOURCE@REV")
    machines = {run.machine: run.machine_info for run in ordered if run.machine != UNRECORDED}
    return History(runs=tuple(ordered), commits=commits, positions=tuple(index[r.position_key] for r in ordered),
                   notes=tuple(notes), machines=machines)


# -------------------------------------------------------------------------------------------- series


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """What a series follows. ``target`` is "params:0.5", "dense" for a method's dense model, or ""
    for a training-step benchmark (``method`` is then the benchmark's name); ``batch`` the timed
    batch size (timings only); ``machine`` a machine key for timings, "" otherwise."""

    config_hash: str = ""
    dataset: str = ""
    model: str = ""
    method: str
    target: str = ""
    batch: int | None = None
    machine: str = ""

    @property
    def label(self) -> str:
        parts = [self.method, self.target, f"b={self.batch}" if self.batch is not None else ""]
        return " ".join(p for p in parts if p)

    @property
    def group(self) -> tuple[str, str, str, str]:
        """(config hash, dataset, model, machine): what one figure may hold."""
        return (self.config_hash, self.dataset, self.model, self.machine)


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One commit's value of a series (display units, the mean over its seeds and runs), its
    standard error ``sigma`` in analysis units (``None``: one value without an interval) and the
    degrees of freedom of a seeds' interval (``None``: a recorded interval, normal quantiles)."""

    position: int
    value: float
    n: int = 1
    sigma: float | None = None
    df: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A step of a series: the new level starts at commit ``position`` (the last point of the old
    level was at ``previous``). Levels in display units, ``delta`` and ``se`` in analysis units."""

    position: int
    previous: int
    before: float
    after: float
    delta: float
    se: float
    direction: str  # "worse", "better" or "changed"

    @property
    def z(self) -> float:
        return abs(self.delta) / self.se if self.se > 0 else math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class Level:
    """A stretch of a series between changes: its first and last commit and mean (display units)."""

    start: int
    end: int
    mean: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """One measure of one cell in commit order, its noise scale (analysis units; ``noise_source``
    says which estimate set it), its fitted levels and the changes between them."""

    measure: Measure
    cell: Cell
    points: tuple[Point, ...]
    noise: float
    noise_source: str
    levels: tuple[Level, ...]
    changes: tuple[Change, ...]


def _benchmark_values(run: Run) -> Iterable[tuple[str, Cell, float, float | None]]:
    """(measure key, cell, value, σ in analysis units) of every pytest-benchmark entry of ``run``."""
    for bench in run.benchmarks:
        info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
        role = info.get("timed")
        median, rounds = stats.get("median"), stats.get("rounds") or 1
        sigma = None
        if finite(median) and median > 0 and finite(stats.get("iqr")):
            sigma = MEDIAN_SE * stats["iqr"] * IQR_TO_SIGMA / median / math.sqrt(rounds)
        if role in ("deployed", "dense") and finite(median) and median > 0:
            target = f"{info['target_kind']}:{info['target_drop']:g}" if role == "deployed" else "dense"
            cell = Cell(config_hash=info.get("config_hash") or "", dataset=info["dataset"], model=info["model"],
                        method=info["method"], target=target, batch=info.get("timed_batch"), machine=run.machine)
            yield "latency", cell, median * 1e3, sigma
        elif role is None:  # the training-step benchmarks (bench/suite/test_train_throughput.py)
            cell = Cell(method=str(bench.get("name") or bench.get("fullname")), machine=run.machine)
            if finite(median) and median > 0:
                yield "step_ms", cell, median * 1e3, sigma
            for key in ("n3_over_n1", "throughput_ratio"):
                ratio, iqr = info.get(key), info.get(f"{key}_iqr")
                if finite(ratio) and ratio > 0:
                    spread = None
                    if isinstance(iqr, list) and len(iqr) == 2 and all(finite(q) and q > 0 for q in iqr):
                        n = info.get("paired_rounds") or rounds
                        spread = MEDIAN_SE * (math.log(iqr[1]) - math.log(iqr[0])) * IQR_TO_SIGMA / math.sqrt(n)
                    yield key, cell, ratio, spread


def _record_values(run: Run) -> Iterable[tuple[str, Cell, float, float | None]]:
    """(measure key, cell, value, σ in analysis units) of every ok record of ``run``."""
    for r in run.records:
        if r.get("status") != "ok":
            continue
        base = {"config_hash": r.get("config_hash") or "", "dataset": r["dataset"], "model": r["model"],
                "method": r["method"], "target": f"{r['target_kind']}:{r['target_drop']:g}"}
        for key in RECORD_MEASURES:
            if finite(r.get(key)):
                yield key, Cell(**base), r[key] * 100, None
        machine = run.machine if run.machine != UNRECORDED else f"{UNRECORDED}:{r.get('latency_device') or '?'}"
        for suffix, batch in (("b1", r.get("latency_batch") or 1), ("bT", r.get("throughput_batch"))):
            value, lo, hi = (r.get(f"speedup_{suffix}{end}") for end in ("", "_lo", "_hi"))
            if not (finite(value) and value > 0) or batch is None:
                continue
            sigma = None
            if finite(lo) and finite(hi) and 0 < lo <= hi:  # the A/B bootstrap's 95 % interval
                sigma = (math.log(hi) - math.log(lo)) / (2 * Z95)
            yield "speedup", Cell(**base, batch=batch, machine=machine), value, sigma


def _point(measure: Measure, position: int, values: Sequence[tuple[float, float | None]]) -> Point:
    """Several values of one commit (seeds, repeated runs) as one point: their mean in analysis
    units, with the larger of the seeds' standard error and the recorded intervals' pooled one."""
    xs = [measure.analysis(v) for v, _ in values]
    k = len(xs)
    mean = statistics.fmean(xs)
    recorded = [s for _, s in values if s is not None]
    sigma = math.sqrt(statistics.fmean(s * s for s in recorded) / k) if recorded else None
    df = None
    if k > 1:
        seeds = statistics.stdev(xs) / math.sqrt(k)
        if sigma is None or seeds >= sigma:
            sigma, df = seeds, k - 1
    return Point(position=position, value=measure.display(mean), n=k, sigma=sigma, df=df)


def build_series(history: History) -> list[Series]:
    """Every series of ``history``, each with its noise, levels and changes (``fit``), in a stable
    order: family, config, dataset, model, machine, then cell.

    Series of one measure, group and batch (every method and target of one configuration on one
    machine) share a noise estimate, the median of their spreads (module docstring, step 1).
    """
    collected: dict[tuple[str, Cell], dict[int, list[tuple[float, float | None]]]] = {}
    for run, position in zip(history.runs, history.positions, strict=True):
        for key, cell, value, sigma in (*_record_values(run), *_benchmark_values(run)):
            collected.setdefault((key, cell), {}).setdefault(position, []).append((value, sigma))
    points = {(key, cell): tuple(_point(MEASURE[key], p, vs) for p, vs in sorted(by_position.items()))
              for (key, cell), by_position in collected.items()}
    spreads: dict[tuple, list[float]] = {}
    for (key, cell), pts in points.items():
        own = spread(MEASURE[key], [MEASURE[key].analysis(p.value) for p in pts])
        if own is not None:
            spreads.setdefault((key, cell.group, cell.batch), []).append(own)
    out = []
    for (key, cell), pts in points.items():
        like = spreads.get((key, cell.group, cell.batch), [])
        out.append(fit(MEASURE[key], cell, pts, pooled=(statistics.median(like), len(like)) if like else None))
    family = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(out, key=lambda s: (family[s.measure.family], s.cell.group, s.cell.method, s.cell.target,
                                      s.cell.batch or 0, MEASURES.index(s.measure)))


def fit(measure: Measure, cell: Cell, points: Sequence[Point], *,
        pooled: tuple[float, int] | None = None) -> Series:
    """The series of ``points`` (in commit order) with its noise, levels and changes.

    ``pooled``: the median spread of like series and how many there are (``build_series``).
    """
    xs = [measure.analysis(p.value) for p in points]
    noise, source = noise_scale(measure, xs, [p.sigma for p in points], pooled=pooled)
    splits, scatter = find_changes(xs, noise, measure.min_change)
    if scatter > noise + 1e-12:  # (float residue of a constant series is not scatter)
        noise, source = scatter, "scatter around the levels"
    bounds = [0, *splits, len(points)]
    means = [statistics.fmean(xs[a:b]) for a, b in itertools.pairwise(bounds)]
    levels = tuple(Level(start=points[a].position, end=points[b - 1].position, mean=measure.display(m))
                   for (a, b), m in zip(itertools.pairwise(bounds), means, strict=True))
    changes = []
    for i, k in enumerate(splits):
        nb, na = k - bounds[i], bounds[i + 2] - k
        delta = means[i + 1] - means[i]
        sign = 1 if delta > 0 else -1
        direction = "changed" if measure.better == 0 else ("better" if sign == measure.better else "worse")
        changes.append(Change(position=points[k].position, previous=points[k - 1].position,
                              before=measure.display(means[i]), after=measure.display(means[i + 1]), delta=delta,
                              se=noise * math.sqrt(1 / nb + 1 / na), direction=direction))
    return Series(measure=measure, cell=cell, points=tuple(points), noise=noise, noise_source=source, levels=levels,
                  changes=tuple(changes))


def spread(measure: Measure, xs: Sequence[float]) -> float | None:
    """The series' own noise estimate (analysis units): 1.4826·MAD of successive differences / √2,
    robust to a step (one outlying difference) and to a drift (the differences are centred on
    their median); ``None`` below ``MIN_SPREAD_POINTS`` points."""
    if len(xs) < MIN_SPREAD_POINTS:
        return None
    diffs = [b - a for a, b in itertools.pairwise(xs)]
    centre = statistics.median(diffs)
    return MAD_TO_SIGMA * statistics.median(abs(d - centre) for d in diffs) / math.sqrt(2)


def noise_scale(measure: Measure, xs: Sequence[float], sigmas: Sequence[float | None], *,
                pooled: tuple[float, int] | None = None) -> tuple[float, str]:
    """σ of one point of a series (analysis units) and which estimate set it: the measure's floor,
    the points' own standard errors (seeds or recorded intervals; their median), the series'
    ``spread``, or ``pooled`` = (the median spread of like series, their number)."""
    candidates = [(measure.noise_floor, "floor")]
    own = [s for s in sigmas if s is not None]
    if own and measure.paired:
        candidates.append((statistics.median(own), "points' own intervals"))
    if pooled is not None and pooled[1] > 1:
        candidates.append((pooled[0], f"median spread of {pooled[1]} like series"))
    else:
        mine = spread(measure, xs)
        if mine is not None:
            candidates.append((mine, "spread of the series"))
        elif not measure.paired:  # nothing says how far an unpaired timing moves between runs yet
            return math.inf, f"unknown below {MIN_SPREAD_POINTS} commits"
    return max(candidates, key=lambda c: c[0])


def _sse(xs: Sequence[float]) -> float:
    m = statistics.fmean(xs)
    return sum((x - m) ** 2 for x in xs)


def _step(xs: Sequence[float], lo: int, k: int, hi: int) -> tuple[float, float]:
    """|Δ| between the levels ``xs[lo:k]`` and ``xs[k:hi]``, and √(1/n_before + 1/n_after)."""
    return abs(statistics.fmean(xs[k:hi]) - statistics.fmean(xs[lo:k])), math.sqrt(1 / (k - lo) + 1 / (hi - k))


def _passes(xs: Sequence[float], lo: int, k: int, hi: int, noise: float, min_change: float) -> bool:
    delta, scale = _step(xs, lo, k, hi)
    return delta >= min_change - 1e-12 and delta > Z_CHANGE * noise * scale


def _best_split(xs: Sequence[float], lo: int, hi: int) -> int | None:
    """The split of ``xs[lo:hi]`` into two levels with the least squared error, each at least
    ``MIN_LEVEL`` long except a right one that ends at the newest point, which may be one point."""
    last_ok = hi - (1 if hi == len(xs) else MIN_LEVEL)
    options = range(lo + MIN_LEVEL, last_ok + 1)
    if not options:
        return None
    return min(options, key=lambda k: _sse(xs[lo:k]) + _sse(xs[k:hi]))


def _scatter(xs: Sequence[float], splits: Sequence[int]) -> float:
    """The standard deviation of ``xs`` around the levels between ``splits`` (0 below 3 degrees of freedom)."""
    bounds = [0, *splits, len(xs)]
    df = len(xs) - len(bounds) + 1
    return math.sqrt(sum(_sse(xs[a:b]) for a, b in itertools.pairwise(bounds)) / df) if df >= 3 else 0.0


def find_changes(xs: Sequence[float], noise: float, min_change: float) -> tuple[list[int], float]:
    """Indices into ``xs`` (analysis units, commit order) where a new level starts, and the scatter
    of ``xs`` around the final levels (module docstring, steps 2 to 4).

    ``noise`` is one point's σ, ``min_change`` the smallest relevant |Δ| between levels.
    """
    found: list[int] = []

    def search(lo: int, hi: int) -> None:
        k = _best_split(xs, lo, hi)
        if k is not None and _passes(xs, lo, k, hi, noise, min_change):
            found.append(k)
            search(lo, k)
            search(k, hi)

    search(0, len(xs))
    splits = sorted(found)
    while splits:  # every change re-tested between its neighbours, with the scatter around the levels
        sigma = max(noise, _scatter(xs, splits))
        bounds = [0, *splits, len(xs)]
        weak = [(_step(xs, bounds[i], k, bounds[i + 2]), k) for i, k in enumerate(splits)
                if not _passes(xs, bounds[i], k, bounds[i + 2], sigma, min_change)]
        if not weak:
            break
        splits.remove(min(weak, key=lambda w: w[0][0] / w[0][1])[1])  # the weakest: least |Δ| per unit of se
    return splits, _scatter(xs, splits)


def changes_at(series: Iterable[Series], position: int) -> list[tuple[Series, Change]]:
    """Every change that starts at commit ``position``, with its series."""
    return [(s, c) for s in series for c in s.changes if c.position == position]
