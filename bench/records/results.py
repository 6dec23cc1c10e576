"""``Record``: one row per (dataset, model, method, target, seed), kept in append-only JSONL.

Also the names of the files a run folder holds, written by ``bench.execution.runner`` and the
suite and read by ``bench.records.sources``: the one place they are spelled.

Several runs may share one folder (two identical runs at once, a wider sweep beside a running
one): every writer takes ``locked(results)`` — an ``fcntl.flock`` on a lock file beside it —
and appends a record as one ``O_APPEND`` write, so no record is lost or torn by another writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

from bench.records.errors import UsageError

# "diverged": the training ended with a non-finite loss or at chance accuracy on validation; its
# records carry the curve and the recipe, and are never ranked, bold or plotted.
STATUSES = ("ok", "failed", "skipped", "diverged")
# Statuses a resumed run does not repeat: a failed cell is tried again; a diverged one is a
# result about its recipe (the cached collapsed model would give it again).
DONE = ("ok", "skipped", "diverged")
RESULTS = "results.jsonl"  # a run folder's records, one JSON object a line
CONFIG = "config.json"  # a run folder's resolved preset (and its published numbers)
BENCH_KEY = "lorita_bench"  # top-level key the suite adds to pytest-benchmark's JSON (preset and config)
TARGET_TOLERANCE = 0.01  # an achieved drop farther than this from its target is a missed target
STALE_TEMP_S = 3600.0  # a temp file of an atomic write older than this is a leftover of a killed writer


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """Everything measured for one compressed model. Accuracies are fractions (0–1), drops too."""

    dataset: str
    model: str
    method: str
    family: str
    n: int | None
    target_kind: str
    target_drop: float
    seed: int
    status: str = "ok"
    reason: str = ""
    base_acc: float | None = None
    acc: float | None = None
    base_acc_top5: float | None = None
    acc_top5: float | None = None
    delta_acc: float | None = None
    base_val_acc: float | None = None
    # The dense model of the epoch with the best validation accuracy (test accuracy; chosen on
    # validation, never on test). Compression always starts from the last epoch.
    base_acc_val_selected: float | None = None
    best_val_epoch: int | None = None
    val_acc: float | None = None
    dense_params: int | None = None
    params: int | None = None
    params_drop: float | None = None
    dense_macs: float | None = None
    macs: float | None = None
    flops_drop: float | None = None
    achieved_drop: float | None = None
    layers: dict[str, int] = field(default_factory=dict)
    # Per layer, what ``layers`` counts out of: the full rank (LoRITa) or the dense model's
    # channels (pruning); the kept-per-layer figure shows layers[k] / layers_full[k].
    layers_full: dict[str, int] = field(default_factory=dict)
    # The names of ``layers`` in the model's order (JSON objects are stored with sorted keys).
    layer_order: list[str] = field(default_factory=list)
    # The layers no method changed in this run: one list for every method (``--protect``).
    protected: list[str] = field(default_factory=list)
    # LoRITa: the rank allocation used at this target (lorita.ALLOCATIONS) and, when it was chosen
    # ("auto"), each candidate's zero-shot validation accuracy.
    allocation: str | None = None
    allocation_val_acc: dict[str, float] = field(default_factory=dict)
    note: str = ""
    spectra: dict[str, list[float]] = field(default_factory=dict)  # dense model's σᵢ/σ₁ per layer
    latency_device: str | None = None
    latency_batch: int | None = None
    latency_dense_ms: float | None = None
    latency_dense_iqr_ms: float | None = None
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    throughput_batch: int | None = None
    throughput_dense_ms: float | None = None
    throughput_ms: float | None = None
    pretrain_steps: int | None = None
    finetune_steps: int | None = None
    train_steps: int | None = None
    # Wall times hold the optimizer steps alone (no validation pass, whatever the progress display).
    train_wall_s: float | None = None  # this record's pre-training + fine-tuning wall time
    pretrain_wall_s: float | None = None  # shared by every target of one (method, seed)
    finetune_wall_s: float | None = None
    # On CUDA: GPU-seconds of this deployed model's training (pre-training + its fine-tuning; one GPU per
    # job; the pre-training is shared by the targets of a (method, seed): do not sum it over them); None on CPU
    gpu_s: float | None = None
    # Peak memory of the (pre-)training's steps in MiB: what N costs LoRITa. CUDA max_memory_allocated,
    # or on CPU the process's peak resident size during the steps (data set included); neither counts
    # the validation passes or the best epoch's copy.
    train_peak_mem_mb: float | None = None
    finetune_peak_mem_mb: float | None = None
    # How far weight decay could act (bench.catalog.budget.decay_budget): Σₜ lrₜ·wd/(1−momentum)
    # for SGD, Σₜ lrₜ·wd for AdamW; a direction without gradient support keeps e^(−budget).
    pretrain_decay_budget: float | None = None
    finetune_decay_budget: float | None = None
    # The pre-training's per-epoch {"loss": […], "val_acc": […]} (val_acc where computed).
    pretrain_curve: dict[str, list[float]] = field(default_factory=dict)
    # What this record's model was trained as ("plain", "lorita-n3", "depgraph-sl:group-norm(reg=…)"):
    # methods of one pretrain_id, config and seed compress the very same trained model.
    pretrain_id: str | None = None
    # The optimizer settings this method trained with (bench.catalog.presets.Preset.recipe_of):
    # its own recipe where the preset gives one; the steps are the same for every method.
    recipe: dict[str, Any] = field(default_factory=dict)
    pretrain_cached: bool | None = None  # the trained model came from the checkpoint cache
    # The one reference every ΔAcc is taken against: the plainly trained dense model of this
    # (config, seed), test and validation accuracy. delta_acc = acc - ref_acc where known.
    ref_acc: float | None = None
    ref_val_acc: float | None = None
    # Written before its seed's reference was known (the plain job had not reported, or failed):
    # ΔAcc is left open, never taken against the method's own dense model, and a reader fills it
    # from the folder's reference line once one is there (``with_references``).
    ref_pending: bool = False
    # The compressed model before fine-tuning: what truncation or pruning alone costs.
    acc_zero_shot: float | None = None
    val_acc_zero_shot: float | None = None
    # A/B latency: dense and deployed timed in alternating rounds in one process; the median of
    # the per-round ratios dense/deployed and its bootstrap 95 % interval, at batch 1 and T.
    speedup_b1: float | None = None
    speedup_b1_lo: float | None = None
    speedup_b1_hi: float | None = None
    speedup_bT: float | None = None
    speedup_bT_lo: float | None = None
    speedup_bT_hi: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    config_hash: str = ""
    # Drops are fractions: a counted drop (params_drop or flops_drop, as the target's kind) more
    # than target_tolerance away from target_drop is a missed target, and the note says by how much.
    target_tolerance: float = TARGET_TOLERANCE
    target_missed: bool = False
    # The pre-training's per-epoch validation passes (keep_best), timed apart from pretrain_wall_s.
    pretrain_val_wall_s: float | None = None
    # Deployed ranks and pruned widths are multiples of round_to (1: not rounded; None: a record
    # from before the option, which never rounded).
    round_to: int | None = None
    # How the headline latency fields (latency_ms, throughput_ms, speedup_b1, speedup_bT) were timed:
    # one of bench.catalog.presets.LATENCY_MODES; None: a record from before the modes ("eager-fp32").
    latency_mode: str | None = None
    # Every A/B latency of this record, one dict per (mode, batch): mode, batch, device, rounds,
    # dense_ms, dense_iqr_ms, deployed_ms, deployed_iqr_ms, speedup, speedup_lo, speedup_hi and note;
    # a (mode, batch) that could not run (export failed, out of memory) has only mode, batch and note.
    latency_sweep: list[dict[str, Any]] = field(default_factory=list)
    # A control (family "control", e.g. scratch:group-l2): the method whose cell (same config, target
    # and seed) it copies; the report shows the two side by side and never ranks the control.
    control_of: str | None = None
    # Low-rank training (lowrank-fixed): the ranks were fixed before training, from the target alone.
    ranks_fixed_before_training: bool | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def key(self) -> tuple:
        """What identifies a run within a suite (used to resume)."""
        return (self.config_hash, self.dataset, self.model, self.method, self.target_kind,
                self.target_drop, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The one pre-training whose dense model is the reference of its (config, seed).
REFERENCE_PRETRAINING = "plain"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """The reference of one (config, seed): the plainly trained dense model's test and validation
    accuracy. Kept as a line of its own in results.jsonl (``{"kind": "reference", …}``), written
    as soon as the plain job reports, so that records written before it get their ΔAcc whenever
    the folder is read, whatever order the jobs finished in."""

    config_hash: str
    dataset: str
    model: str
    seed: int
    acc: float
    val_acc: float | None = None
    # What the plain training cost (its optimizer steps, wall time, whether it came from the
    # checkpoint cache): a report counts it where no record carries it (a reference-only job).
    train_steps: int | None = None
    train_wall_s: float | None = None
    cached: bool | None = None

    @property
    def key(self) -> tuple:
        return (self.config_hash, self.dataset, self.model, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "reference", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _get(r: Any, key: str) -> Any:
    return r.get(key) if isinstance(r, dict) else getattr(r, key, None)


def reference_key(r: Any) -> tuple:
    """The (config, dataset, model, seed) whose reference ``r`` (a Record or a record dict) is taken against."""
    return (_get(r, "config_hash") or "", _get(r, "dataset"), _get(r, "model"), _get(r, "seed"))


def references_in(records: Iterable[Any], lines: Iterable[Reference] = ()) -> dict[tuple, tuple[float, float | None]]:
    """Per ``reference_key``, the reference (test, validation accuracy): from reference ``lines``, else
    (folders written before reference lines existed) the dense accuracy of an ok record whose model
    was trained plainly. ``records`` are Records or record dicts."""
    out = {reference_key(r): (_get(r, "base_acc"), _get(r, "base_val_acc")) for r in records
           if _get(r, "status") == "ok" and _get(r, "pretrain_id") == REFERENCE_PRETRAINING
           and _get(r, "base_acc") is not None}
    out.update({ref.key: (ref.acc, ref.val_acc) for ref in lines})
    return out


def reference_fields(acc: float | None, ref: tuple[float, float | None] | None) -> dict[str, Any]:
    """The record fields that carry a seed's reference ``ref`` (test, validation accuracy), and ΔAcc
    against it; with ``ref`` unknown, the record is pending (no ΔAcc, never the own dense model's)."""
    if ref is None:
        return {"ref_acc": None, "ref_val_acc": None, "delta_acc": None, "ref_pending": True}
    return {"ref_acc": ref[0], "ref_val_acc": ref[1], "delta_acc": None if acc is None else acc - ref[0],
            "ref_pending": False}


def with_references(records: list[Any], refs: dict[tuple, tuple[float, float | None]]) -> list[Any]:
    """``records`` (Records or dicts), each pending one whose reference is in ``refs`` filled in."""
    out = []
    for r in records:
        ref = refs.get(reference_key(r)) if _get(r, "ref_pending") else None
        if ref is None:
            out.append(r)
        elif isinstance(r, dict):
            out.append({**r, **reference_fields(r.get("acc"), ref)})
        else:
            out.append(replace(r, **reference_fields(r.acc, ref)))
    return out


def landing(target_kind: str, target_drop: float, params_drop: float | None, flops_drop: float | None,
            note: str = "", tolerance: float = TARGET_TOLERANCE) -> dict[str, Any]:
    """The record fields that say whether a deployed model landed on its target.

    ``target_tolerance``, ``target_missed`` (the counted drop of the target's kind is more than
    ``tolerance`` away from ``target_drop``, either way) and ``note``, which then says so after
    the method's own ``note``: a missed target must never pass for a landed one.
    """
    got = params_drop if target_kind == "params" else flops_drop
    missed = got is not None and abs(got - target_drop) > tolerance + 1e-12
    if missed:
        why = (f"target missed: {target_kind} drop {got * 100:.1f}% for a target of {target_drop * 100:g}% "
               f"(tolerance {tolerance * 100:g} pp)")
        note = f"{note}; {why}" if note else why
    return {"target_tolerance": tolerance, "target_missed": missed, "note": note}


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only once the block ends without error.

    Written to a temp file in the same folder, flushed, fsynced, then renamed over ``path``:
    a reader (or a crash) sees the old file or the new one, never half of either.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's host and PID in the name let ``clean_stale_temp`` tell a killed writer's
    # leftover from a live writer's file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the renamed file should have the usual permissions (shared
        # results folders and checkpoint caches are read by other users and jobs).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half."""
    with atomic_file(path) as f:
        f.write(text)


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_")


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temp(folder: Path, *, max_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Remove what killed atomic writes left in ``folder`` (``.NAME.HOST-PID.XXXX.tmp``) and return it.

    A temp file goes when its writer ran on this host and its PID is gone, or when it is older
    than ``max_age_s`` (a writer on another host of a shared file system, or an older harness's
    file without a PID). A missing folder holds nothing.
    """
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    host, now = _host(), time.time()
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name[1:-len(".tmp")].rsplit(".", 2)
        owner = parts[1].rpartition("-") if len(parts) == 3 else ("", "", "")
        dead = owner[0] == host and owner[2].isdigit() and not _alive(int(owner[2]))
        try:
            old = now - tmp.stat().st_mtime > max_age_s
            if dead or old:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another run cleaned it first
            pass
    return removed


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of the records file ``path`` for the block (blocks until free).

    An ``fcntl.flock`` on ``PATH.lock`` beside it, released when the block ends or the process
    dies; every process that reads-then-writes a run folder holds it. Not re-entrant: do not
    nest two blocks on one path in one process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True, slots=True, kw_only=True)
class Parsed:
    """What a results JSONL file holds: record dicts with their line numbers, reference lines,
    and the numbers of torn lines (records cut off by a writer killed mid-line), left out."""

    records: tuple[tuple[int, dict[str, Any]], ...]
    references: tuple[Reference, ...]
    torn: tuple[int, ...]


ACCEPTED_LINES = "one result record (or reference line) a line (fix or remove that line)"


def parse_jsonl(path: Path) -> Parsed:
    """Read ``path`` (an absent file holds nothing), setting no line aside but naming the torn ones.

    A line that starts a JSON object and breaks off is torn — what a writer killed mid-line
    leaves, at the end or, with an older harness or a shared file system, in the middle — and
    is left out wherever it is. Any other line that is not a record or a reference raises
    ``UsageError`` naming file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records, refs, torn = [], [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            if line.lstrip().startswith("{"):
                torn.append(i)
                continue
            raise UsageError(f"{path}:{i} is not a JSON record ({err.msg}); accepted: {ACCEPTED_LINES}") from None
        if not isinstance(d, dict):
            raise UsageError(f"{path}:{i} is not a result record (not an object); accepted: {ACCEPTED_LINES}")
        if d.get("kind") == "reference":
            try:
                refs.append(Reference.from_dict(d))
            except TypeError as err:
                raise UsageError(f"{path}:{i} is not a reference line ({err}); accepted: {ACCEPTED_LINES}") from None
        elif "method" not in d:
            raise UsageError(f"{path}:{i} is not a result record (no 'method'); accepted: {ACCEPTED_LINES}")
        else:
            records.append((i, d))
    return Parsed(records=tuple(records), references=tuple(refs), torn=tuple(torn))


def _records(path: Path, parsed: Parsed) -> list[Record]:
    out = []
    for i, d in parsed.records:
        try:
            out.append(Record.from_dict(d))
        except (TypeError, ValueError) as err:
            raise UsageError(f"{path}:{i} is not a result record ({err}); accepted: {ACCEPTED_LINES}") from None
    return out


def load_folder(path: Path) -> tuple[list[Record], dict[tuple, tuple[float, float | None]]]:
    """The records of the JSONL file ``path``, each filled with its seed's reference where the file
    holds one (see ``Reference``), and those references by ``reference_key``. Torn lines are left
    out; ``UsageError`` naming file and line for any other line that is not a record."""
    parsed = parse_jsonl(path)
    records = _records(Path(path), parsed)
    refs = references_in(records, parsed.references)
    return with_references(records, refs), refs


def load_records(path: Path) -> list[Record]:
    """Every record in a JSONL file (an absent file has none), references filled in and torn lines
    left out (see ``load_folder``)."""
    return load_folder(path)[0]


def _free_corrupt_name(path: Path) -> Path:
    """``PATH.corrupt``, or ``PATH.corrupt.N`` for the first N not taken."""
    copy, n = path.with_name(path.name + ".corrupt"), 1
    while copy.exists():
        copy, n = path.with_name(f"{path.name}.corrupt.{n}"), n + 1
    return copy


def set_aside_torn(path: Path) -> tuple[Path, tuple[int, ...]] | None:
    """If ``path`` holds torn lines (anywhere), keep a copy of the file and drop them from it.

    Returns (the copy ``PATH.corrupt``, or ``PATH.corrupt.N`` when that exists already; the torn
    lines' numbers), or ``None`` when the file is sound. Call it holding ``locked(path)``.
    """
    path = Path(path)
    torn = parse_jsonl(path).torn
    if not torn:
        return None
    copy = _free_corrupt_name(path)
    shutil.copyfile(path, copy)
    lines = path.read_text(encoding="utf-8").splitlines()
    atomic_write_text(path, "".join(line + "\n" for i, line in enumerate(lines, 1) if i not in torn))
    return copy, torn


def append_record(path: Path, record: Record | Reference, *, lock_held: bool = False) -> None:
    """Append one record (or reference line) as one line, in one ``O_APPEND`` write, fsynced.

    Takes ``locked(path)`` unless the caller holds it already (``lock_held``), so concurrent
    appenders (several runs, or processes, into one folder) never lose or interleave a record.
    A file that does not end in a newline ends in a line cut off by a writer killed mid-write (a
    live writer would hold the lock): that tail is moved to ``PATH.corrupt`` (or ``.corrupt.N``)
    and cut from the file before the append, so a torn line never becomes a middle line, which
    would stop every later read of the folder.
    """
    path = Path(path)
    with contextlib.nullcontext() if lock_held else locked(path):
        data = (json.dumps(record.to_dict(), sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                whole = os.pread(fd, size, 0)
                keep = whole.rfind(b"\n") + 1
                _free_corrupt_name(path).write_bytes(whole[keep:])
                os.ftruncate(fd, keep)
            if os.write(fd, data) != len(data):
                raise OSError(f"short write appending to {path}")
            os.fsync(fd)
        finally:
            os.close(fd)


def finite(value: Any) -> bool:
    """Whether ``value`` is a number that is neither NaN nor infinite (``None`` is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
