"""The suite's cells, its session cache of trained models, and the timed forward pass.

Training and measuring go through ``bench.execution.job.run_group`` itself, so a cell's record
is exactly what ``lorita-bench run`` writes for it; the job hands back the dense and deployed
models its records describe, and pytest-benchmark times exactly those.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.catalog import data as data_mod
from bench.catalog.budget import Target
from bench.catalog.data import Splits
from bench.catalog.presets import Preset
from bench.catalog.protocol import PLAIN
from bench.catalog.registry import METHODS
from bench.execution import job, measure
from bench.execution.job import Built
from bench.records.results import Record, reference_fields

WARMUP_ROUNDS = measure.WARMUP
# Timed on CPU at the records' fixed intra-op thread count, so that the suite's timings and the
# records' agree in meaning (and a busy neighbour core does not stall every parallel region).
CPU_THREADS = measure.CPU_THREADS


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One benchmark: a method's deployed model at one target, for one seed and batch size."""

    method: str
    target: Target
    seed: int
    batch: int

    @property
    def id(self) -> str:
        return f"{self.method}-{self.target.kind}{self.target.drop * 100:g}-s{self.seed}-b{self.batch}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DenseCell:
    """The dense reference of one trained (method, seed), timed at one batch size."""

    method: str
    seed: int
    batch: int

    @property
    def id(self) -> str:
        return f"{self.method}-s{self.seed}-b{self.batch}"


def batch_sizes(preset: Preset) -> tuple[int, ...]:
    """Batch 1 (latency) and the preset's throughput batch."""
    return tuple(dict.fromkeys((1, preset.throughput_batch)))


def cells(preset: Preset) -> list[Cell]:
    """Every (method, target, seed, batch) of ``preset``, in the runner's order."""
    return [Cell(method=m, target=t, seed=s, batch=b) for s in preset.seeds for m in preset.methods
            for t in preset.targets for b in batch_sizes(preset)]


def dense_cells(preset: Preset) -> list[DenseCell]:
    """Every trained dense reference of ``preset`` (one per method and seed) at each batch size."""
    return [DenseCell(method=m, seed=s, batch=b) for s in preset.seeds for m in preset.methods
            for b in batch_sizes(preset)]


class Suite:
    """The session's preset and data, and the trained models: one training per (pre-training, seed).

    Holds state (the cache), hence a class. Data are loaded on first use, so collecting the
    suite (``--collect-only``, ``--benchmark-disable`` with ``-k`` matching nothing) trains nothing.
    """

    def __init__(self, preset: Preset, name: str, *, data_dir: Path | None = None, rounds: int | None = None,
                 cache_dir: Path | None = None) -> None:
        self.preset = preset
        self.name = name
        self.data_dir = data_dir
        self.cache_dir = cache_dir  # trained-model checkpoints, as `lorita-bench run --cache-dir`; None: no cache
        self.rounds = rounds or preset.latency_rounds
        self._data: Splits | None = None
        self._trained: dict[tuple[str, int], Built | BaseException] = {}
        self._refs: dict[int, tuple[float, float | None]] = {}  # per seed: the plain model's (test, val) accuracy

    @property
    def data(self) -> Splits:
        if self._data is None:
            self._data = data_mod.load(self.preset.dataset, data_dir=self.data_dir).to(self.preset.device)
        return self._data

    def group(self, batch: int) -> str:
        """pytest-benchmark group: every deployed and dense model of one dataset/model at one batch size,
        so that the terminal table reads as a comparison against the dense rows of the same group."""
        return f"{self.preset.dataset}/{self.preset.model} b={batch}"

    def trained(self, method: str, seed: int) -> Built:
        """Train ``method``'s model at ``seed`` (first call only, shared with every method of the
        preset that names the same pre-training), compress at every target, measure; the records
        with the dense and deployed models they describe.

        A training that raised is cached too and raised again for each of its cells.
        """
        key = (method, seed)
        if key not in self._trained:
            pretraining = self._pretraining(method)
            if pretraining != PLAIN and seed not in self._refs:
                self._reference(seed)
            group = ([METHODS.get(method)] if pretraining is None else
                     [METHODS.get(m) for m in self.preset.methods if self._pretraining(m) == pretraining])
            work = [(m, list(self.preset.targets)) for m in group]
            try:
                if pretraining is None:  # one training per target (lowrank-fixed): run_method trains each
                    one = job.run_method(self.preset, group[0], self.data, list(self.preset.targets), seed,
                                         cache_dir=self.cache_dir, keep_models=True)
                    group_out = job.Group(built={method: one})
                else:
                    group_out = job.run_group(self.preset, work, self.data, seed, cache_dir=self.cache_dir,
                                              keep_models=True)
                if pretraining == PLAIN and group_out.dense_acc is not None:
                    self._refs[seed] = (group_out.dense_acc, group_out.dense_val_acc)
                ref = self._refs.get(seed)
                self._trained.update({(name, seed): replace(b, records=tuple(
                    replace(r, **reference_fields(r.acc, ref)) if r.status == "ok" else r for r in b.records))
                    for name, b in group_out.built.items()})
            except Exception as err:  # cached: the group's other cells must not retrain to fail again
                self._trained.update({(m.name, seed): err for m in group})
        got = self._trained[key]
        if isinstance(got, BaseException):
            raise RuntimeError(f"training {method} at seed {seed} failed: {got}") from got
        return got

    def _pretraining(self, method: str) -> str | None:
        """What ``method`` trains (shared by the methods that name it), or ``None`` where that depends on
        the target (a training per target, shared with no other method)."""
        ids = self.preset.by_training(METHODS.get(method), self.preset.targets)
        return next(iter(ids)) if len(ids) == 1 else None

    def _reference(self, seed: int) -> None:
        """Train the preset's plain methods at ``seed`` (or, with none, the plain model alone):
        the reference accuracy every other record of the seed is measured against."""
        plain = [m for m in self.preset.methods if self._pretraining(m) == PLAIN]
        if plain:
            # A failure is recorded with the plain methods' cells; the others go on without a reference.
            with contextlib.suppress(RuntimeError):
                self.trained(plain[0], seed)
            return
        got = job.run_group(self.preset, [], self.data, seed, cache_dir=self.cache_dir)
        if got.dense_acc is not None:
            self._refs[seed] = (got.dense_acc, got.dense_val_acc)

    def records(self) -> list[Record]:
        """Every record of the (method, seed) pairs trained so far in this session."""
        return [r for t in self._trained.values() if isinstance(t, Built) for r in t.records]

    def complete(self) -> bool:
        """Whether every (method, seed) of the preset has been trained in this session."""
        return all((m, s) in self._trained for m in self.preset.methods for s in self.preset.seeds)

    def example(self, batch: int) -> torch.Tensor:
        """A fixed random input batch on the preset's device (the timed forward's input)."""
        x = torch.randn(batch, *self.data.input_shape, generator=torch.Generator().manual_seed(0))
        return x.to(self.preset.device)


def extra_info(record: Record, spectra: dict[str, list[float]], role: str, batch: int, preset: str) -> dict[str, Any]:
    """What a benchmark stores in ``extra_info``: every Record field, the spectra when the record
    has none, and which model (``timed``: "deployed" or "dense") was timed at which batch."""
    info = record.to_dict()
    if not info.get("spectra") and spectra:
        info["spectra"] = spectra
    info.update(timed=role, timed_batch=batch, preset=preset)
    return info


DENSE_FIELDS = ("dataset", "model", "method", "family", "n", "seed", "config_hash", "base_acc", "base_acc_top5",
                "base_val_acc", "dense_params", "dense_macs", "latency_device", "versions")


def dense_info(record: Record, batch: int, preset: str) -> dict[str, Any]:
    """``extra_info`` of a dense-reference benchmark: the fields of ``record`` that describe the dense model."""
    info = {k: v for k, v in record.to_dict().items() if k in DENSE_FIELDS}
    info.update(timed="dense", timed_batch=batch, preset=preset)
    return info


def time_forward(benchmark: Any, model: nn.Module, x: torch.Tensor, *, rounds: int,
                 warmup_rounds: int = WARMUP_ROUNDS) -> None:
    """Time ``model(x)`` with ``benchmark.pedantic`` in eval mode without autograd.

    On CUDA the timed function synchronizes, so each round measures the kernels and not just
    their launch; on CPU torch runs at ``CPU_THREADS`` intra-op threads while timing (restored
    after). Under ``--benchmark-disable`` pytest-benchmark calls it once, untimed.
    """
    model.eval()
    cuda = x.is_cuda

    def forward() -> None:
        model(x)
        if cuda:
            torch.cuda.synchronize(x.device)

    threads = torch.get_num_threads()
    if not cuda and CPU_THREADS is not None:
        torch.set_num_threads(CPU_THREADS)
    try:
        with torch.inference_mode():
            benchmark.pedantic(forward, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    finally:
        torch.set_num_threads(threads)
