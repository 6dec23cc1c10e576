"""The suite's cells, its session cache of trained models, and the timed forward pass.

Training and measuring go through ``bench.runner.run_method`` itself, so a cell's record is
exactly what ``lorita-bench run`` writes for it; the suite only keeps hold of the models the
runner makes (see ``_Keeping``) so that pytest-benchmark can time them afterwards.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import data as data_mod
from bench import measure, runner
from bench.budget import Target
from bench.data import Splits
from bench.presets import Preset
from bench.records.results import Record
from bench.registry import METHODS

WARMUP_ROUNDS = 10  # as bench.measure.latency
# Timed on CPU at the runner's fixed intra-op thread count, so that the suite's timings and the
# records' agree in meaning (and a busy neighbour core does not stall every parallel region).
CPU_THREADS = inspect.signature(measure.latency).parameters["cpu_threads"].default


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


class _Keeping:
    """A registered method that also keeps the models ``run_method`` makes from it.

    Everything is delegated to the method; ``dense_reference``, ``compress`` and ``finalize``
    additionally remember what they return. ``run_method`` handles one target at a time
    (compress, fine-tune in place, finalize, measure), so the model ``finalize`` returns after a
    ``compress`` is the one that target's record describes; ``Suite.trained`` checks that by
    counting it again.
    """

    def __init__(self, method: Any) -> None:
        self._method = method
        self._target: Target | None = None
        self.dense: nn.Module | None = None
        self.deployed: dict[Target, nn.Module] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def dense_reference(self, model: nn.Module) -> nn.Module:
        self.dense = self._method.dense_reference(model)
        return self.dense

    def compress(self, model: nn.Module, target: Target, calib: Any) -> Any:
        out = self._method.compress(model, target, calib)
        self._target = target
        self.deployed[target] = out.model
        return out

    def finalize(self, model: nn.Module) -> nn.Module:
        out = self._method.finalize(model)
        if self._target is not None:
            self.deployed[self._target] = out
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Trained:
    """One (method, seed) after ``run_method``: a record and a deployed model per target, the dense
    reference, and its spectra ({layer: σᵢ/σ₁ descending}) for the report's decay figure."""

    records: dict[Target, Record]
    deployed: dict[Target, nn.Module]
    dense: nn.Module | None
    spectra: dict[str, list[float]]


class Suite:
    """The session's preset and data, and the trained models: one training per (method, seed).

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
        self._trained: dict[tuple[str, int], Trained | BaseException] = {}

    @property
    def data(self) -> Splits:
        if self._data is None:
            self._data = data_mod.load(self.preset.dataset, data_dir=self.data_dir).to(self.preset.device)
        return self._data

    def group(self, batch: int) -> str:
        """pytest-benchmark group: every deployed and dense model of one dataset/model at one batch size,
        so that the terminal table reads as a comparison against the dense rows of the same group."""
        return f"{self.preset.dataset}/{self.preset.model} b={batch}"

    def trained(self, method: str, seed: int) -> Trained:
        """Train ``method`` at ``seed`` (first call only), compress at every target, measure.

        A training that raised is cached too and raised again for each of its cells.
        """
        key = (method, seed)
        if key not in self._trained:
            try:
                self._trained[key] = self._train(method, seed)
            except Exception as err:  # cached: the method's other cells must not retrain to fail again
                self._trained[key] = err
        got = self._trained[key]
        if isinstance(got, BaseException):
            raise RuntimeError(f"training {method} at seed {seed} failed: {got}") from got
        return got

    def _train(self, method: str, seed: int) -> Trained:
        keeping = _Keeping(METHODS.get(method))
        records = runner.run_method(self.preset, keeping, self.data, list(self.preset.targets), seed,
                                    cache_dir=self.cache_dir)
        by_target = {Target(kind=r.target_kind, drop=r.target_drop): r for r in records}
        for target, model in keeping.deployed.items():
            rec = by_target[target]
            if rec.status == "ok":
                macs, params = measure.counts(model, self.data.input_shape, self.preset.device)
                params = keeping.deployed_params(model, params)
                if (macs, params) != (rec.macs, rec.params):
                    raise RuntimeError(f"the model kept for timing {method} at {target} counts "
                                       f"{params} params / {macs} MACs, the record {rec.params} / {rec.macs}: "
                                       "bench.runner.run_method no longer deploys Compressed.model itself")
        spectra = measure.spectra_of(keeping.dense) if keeping.dense is not None else {}
        return Trained(records=by_target, deployed=dict(keeping.deployed), dense=keeping.dense, spectra=spectra)

    def records(self) -> list[Record]:
        """Every record of the (method, seed) pairs trained so far in this session."""
        return [r for t in self._trained.values() if isinstance(t, Trained) for r in t.records.values()]

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
