"""What the harness measures on a deployed model: counts (torch-pruning's counter) and latency."""

from __future__ import annotations

import platform
import statistics
import time
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
    return f"cpu:{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


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
    times = []
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    model.train(was_training)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return Latency(device=device_name(device), batch_size=batch_size, median_ms=statistics.median(times),
                   iqr_ms=q3 - q1, rounds=rounds)
