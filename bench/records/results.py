"""``Record``: one row per (dataset, model, method, target, seed), kept in append-only JSONL.

Also the names of the files a run folder holds, written by ``bench.execution.runner`` and the
suite and read by ``bench.records.sources``: the one place they are spelled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

STATUSES = ("ok", "failed", "skipped")
RESULTS = "results.jsonl"  # a run folder's records, one JSON object a line
CONFIG = "config.json"  # a run folder's resolved preset (and its published numbers)
BENCH_KEY = "lorita_bench"  # top-level key the suite adds to pytest-benchmark's JSON (preset and config)


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
    train_wall_s: float | None = None  # this record's pre-training + fine-tuning wall time
    pretrain_wall_s: float | None = None  # shared by every target of one (method, seed)
    finetune_wall_s: float | None = None
    gpu_s: float | None = None  # on CUDA: GPU-seconds of training (one GPU per job); None on CPU
    # Peak memory of the (pre-)training in MiB: what N costs LoRITa. CUDA max_memory_allocated,
    # or on CPU the process's peak resident size during training (data set included).
    train_peak_mem_mb: float | None = None
    finetune_peak_mem_mb: float | None = None
    # What this record's model was trained as ("plain", "lorita-n3", "depgraph-sl:group-norm(reg=…)"):
    # methods of one pretrain_id, config and seed compress the very same trained model.
    pretrain_id: str | None = None
    pretrain_cached: bool | None = None  # the trained model came from the checkpoint cache
    # The one reference every ΔAcc is taken against: the plainly trained dense model of this
    # (config, seed), test and validation accuracy. delta_acc = acc - ref_acc where known.
    ref_acc: float | None = None
    ref_val_acc: float | None = None
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


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only once the block ends without error.

    Written to a temp file in the same folder, flushed, fsynced, then renamed over ``path``:
    a reader (or a crash) sees the old file or the new one, never half of either.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def load_records(path: Path) -> list[Record]:
    """Every record in a JSONL file (an absent file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [Record.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def append_record(path: Path, record: Record) -> None:
    """Append one record; the file is rewritten atomically, so an interrupt never leaves half a line."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + json.dumps(record.to_dict(), sort_keys=True) + "\n")
