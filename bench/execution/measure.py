"""What the harness measures on a deployed model: counts (torch-pruning's counter) and latency."""

from __future__ import annotations

import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import lorita
from lorita.counting import count_macs_params

SPECTRA_DIGITS = 4  # significant digits kept in records: enough for a decay plot, small JSON


def counts(model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu") -> tuple[float, int]:
    """(MACs per sample, parameters) of ``model`` on one sample; FLOPs = 2·MACs."""
    example = torch.zeros(1, *input_shape, device=device)
    return count_macs_params(model, example)


def spectra_of(model: nn.Module) -> dict[str, list[float]]:
    """Normalized singular values σᵢ/σ₁ (descending) of every compressible layer, rounded for JSON."""
    out = {}
    for name, s in lorita.spectra(model).items():
        top = float(s[0]) if len(s) else 0.0
        out[name] = [float(f"{float(v) / top:.{SPECTRA_DIGITS}g}") if top > 0 else 0.0 for v in s]
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    device: str
    batch_size: int
    median_ms: float
    iqr_ms: float
    rounds: int


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu:{platform.processor() or platform.machine()} ({threads} thread{'s' if threads != 1 else ''})"


def latency(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
            device: str = "cpu", warmup: int = 10, rounds: int = 50, cpu_threads: int | None = 1) -> Latency:
    """Median and IQR of one forward pass, in eval mode, after ``warmup`` passes.

    On CUDA each round is timed with CUDA events (kernel time, synchronized); on CPU with
    ``perf_counter`` at ``cpu_threads`` intra-op threads (fixed, so numbers from machines
    with different core counts or a busy neighbour stay comparable; ``None`` keeps torch's
    setting). The model's mode and torch's thread count are restored.
    """
    if torch.device(device).type != "cpu" or cpu_threads is None:
        return _latency(model, input_shape, batch_size, device, warmup, rounds)
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads)
    try:
        return _latency(model, input_shape, batch_size, device, warmup, rounds)
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def _latency(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, device: str, warmup: int,
             rounds: int) -> Latency:
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        model(x)
    times = [time_call(lambda: model(x), cuda) for _ in range(rounds)]
    model.train(was_training)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Latency(device=device_name(device), batch_size=batch_size, median_ms=statistics.median(times),
                   iqr_ms=q3 - q1, rounds=rounds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Paired:
    """An A/B latency measurement: each model's latency over the same alternating rounds, and the
    median of the per-round ratios dense/deployed (the speed-up) with its bootstrap 95 % interval."""

    dense: Latency
    deployed: Latency
    speedup: float
    speedup_lo: float
    speedup_hi: float


BOOTSTRAP_RESAMPLES = 2000


def latency_ab(dense: nn.Module, deployed: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
               device: str = "cpu", warmup: int = 10, rounds: int = 50, cpu_threads: int | None = 1) -> Paired:
    """Time ``dense`` and ``deployed`` in alternating rounds on the same input, in one process.

    Each round times one forward pass of each (the order swapped every round, so neither
    always runs on a warmer cache), after ``warmup`` passes of each: a clock boost, thermal
    drift or a busy neighbour core hits both. The speed-up is the median of the per-round
    ratios; its interval is a percentile bootstrap of that median (fixed seed). CUDA events
    on GPU, ``perf_counter`` at ``cpu_threads`` intra-op threads on CPU, as ``latency``.
    """
    before = torch.get_num_threads()
    cpu = torch.device(device).type == "cpu"
    if cpu and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        times = _ab_times(dense, deployed, input_shape, batch_size, device, warmup, rounds)
        name = device_name(device)  # with the thread count the rounds ran at
    finally:
        torch.set_num_threads(before)
    ratios = [d / max(e, 1e-9) for d, e in zip(*times, strict=True)]
    lo, hi = bootstrap_median_interval(ratios)

    def summary(ts: list[float]) -> Latency:
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], 0.0, ts[0])
        return Latency(device=name, batch_size=batch_size, median_ms=statistics.median(ts), iqr_ms=q3 - q1,
                       rounds=rounds)

    return Paired(dense=summary(times[0]), deployed=summary(times[1]), speedup=statistics.median(ratios),
                  speedup_lo=lo, speedup_hi=hi)


def bootstrap_median_interval(values: list[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (reproducible: fixed ``seed``)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = (1 - level) / 2
    return meds[int(cut * (resamples - 1))], meds[int((1 - cut) * (resamples - 1))]


@torch.inference_mode()
def _ab_times(dense: nn.Module, deployed: nn.Module, input_shape: tuple[int, ...], batch_size: int, device: str,
              warmup: int, rounds: int) -> tuple[list[float], list[float]]:
    modes = dense.training, deployed.training
    dense.eval()
    deployed.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    cuda = torch.device(device).type == "cuda"
    times = alternating(lambda: dense(x), lambda: deployed(x), cuda=cuda, warmup=warmup, rounds=rounds)
    dense.train(modes[0])
    deployed.train(modes[1])
    return times


def alternating(a: Callable[[], object], b: Callable[[], object], *, cuda: bool, warmup: int, rounds: int,
                timer: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Milliseconds of ``a`` and of ``b`` in ``rounds`` paired rounds, after ``warmup`` untimed ones.

    Each round times one call of each, the order swapped every round, so that neither always
    runs on a warmer cache and drift (a clock boost, a busy neighbour) hits both alike.
    """
    for _ in range(warmup):
        a()
        b()
    if cuda:
        torch.cuda.synchronize()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(rounds):
        pair = ((a, ta), (b, tb))
        for fn, out in (pair if i % 2 == 0 else pair[::-1]):
            out.append(time_call(fn, cuda, timer))
    return ta, tb


def time_call(fn: Callable[[], object], cuda: bool, timer: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds ``fn()`` takes: CUDA events around it, synchronized, on a GPU (the kernels'
    time, not their launch); else ``timer`` (wall time by default; ``time.process_time`` for CPU time)."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = timer()
    fn()
    return (timer() - t0) * 1e3
