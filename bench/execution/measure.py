"""What the harness measures on a deployed model: counts (torch-pruning's counter) and latency
(A/B against the dense model, in the named ``LATENCY_MODES``, over a batch sweep)."""

from __future__ import annotations

import copy
import io
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import lorita
from bench.catalog.presets import LATENCY_MODES
from lorita.counting import count_macs_params

SPECTRA_DIGITS = 4  # significant digits kept in records: enough for a decay plot, small JSON
WARMUP = 10  # untimed passes of each model before the timed rounds
# CPU latency runs at this many intra-op threads, so that numbers from machines with different
# core counts (or a busy neighbour core) stay comparable; None keeps torch's setting.
CPU_THREADS = 1


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
    """One model's forward-pass time over the rounds of an A/B measurement (ms: median and IQR)."""

    device: str
    batch_size: int
    median_ms: float
    iqr_ms: float
    rounds: int


def device_name(device: str | torch.device, threads: int | None = None) -> str:
    """The GPU's name, or ``cpu:ARCH (T threads)`` at ``threads`` (default: torch's intra-op count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads() if threads is None else threads
    return f"cpu:{platform.processor() or platform.machine()} ({threads} thread{'s' if threads != 1 else ''})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ABLatency:
    """An A/B latency measurement: each model's latency over the same alternating rounds, and the
    median of the per-round ratios dense/deployed (the speed-up) with its bootstrap 95 % interval."""

    dense: Latency
    deployed: Latency
    speedup: float
    speedup_lo: float
    speedup_hi: float


BOOTSTRAP_RESAMPLES = 2000


class Unavailable(Exception):
    """A latency mode that cannot run this model here (an ONNX export that fails, no onnxruntime):
    the record says why in its note; the run goes on."""


# One batch's timed call; a Runner makes one per batch size from a model prepared once per mode.
Call = Callable[[], object]
Runner = Callable[[int], Call]


def latency_ab(dense: nn.Module, deployed: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
               device: str = "cpu", warmup: int = WARMUP, rounds: int = 50, cpu_threads: int | None = CPU_THREADS,
               mode: str = "eager-fp32", amp: bool = True, channels_last: bool = True) -> ABLatency:
    """Time ``dense`` and ``deployed`` in alternating rounds on the same input, in one process.

    Each round times one forward pass of each (the order swapped every round, so neither
    always runs on a warmer cache), after ``warmup`` passes of each: a clock boost, thermal
    drift or a busy neighbour core hits both. The speed-up is the median of the per-round
    ratios; its interval is a percentile bootstrap of that median (fixed seed). CUDA events
    on GPU, ``perf_counter`` at ``cpu_threads`` intra-op threads on CPU. ``mode`` is one of
    ``LATENCY_MODES`` (see ``runner``); raises ``Unavailable`` where it cannot run.
    """
    sweep = latency_sweep(dense, deployed, input_shape, modes=(mode,), batches=(batch_size,), device=device,
                          warmup=warmup, rounds=rounds, cpu_threads=cpu_threads, amp=amp, channels_last=channels_last)
    entry = sweep[0]
    if entry.result is None:
        raise Unavailable(entry.note)
    return entry.result


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepEntry:
    """One (mode, batch) of a latency sweep: its A/B result, or ``None`` and why not (``note``)."""

    mode: str
    batch: int
    result: ABLatency | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The flat form records keep (``Record.latency_sweep``): ms medians and IQRs, speed-up and interval."""
        r = self.result
        if r is None:
            return {"mode": self.mode, "batch": self.batch, "note": self.note}
        return {"mode": self.mode, "batch": self.batch, "device": r.deployed.device, "rounds": r.deployed.rounds,
                "dense_ms": r.dense.median_ms, "dense_iqr_ms": r.dense.iqr_ms, "deployed_ms": r.deployed.median_ms,
                "deployed_iqr_ms": r.deployed.iqr_ms, "speedup": r.speedup, "speedup_lo": r.speedup_lo,
                "speedup_hi": r.speedup_hi, "note": self.note}


def latency_sweep(dense: nn.Module, deployed: nn.Module, input_shape: tuple[int, ...], *, modes: Sequence[str],
                  batches: Sequence[int], device: str = "cpu", warmup: int = WARMUP, rounds: int = 50,
                  cpu_threads: int | None = CPU_THREADS, amp: bool = True,
                  channels_last: bool = True) -> list[SweepEntry]:
    """A/B latency of ``deployed`` against ``dense`` in every mode at every batch (ascending).

    Each model is prepared once per mode (cast, captured, exported: ``runner``); a mode that
    cannot run (``Unavailable``) gives one entry per batch with the reason. A batch that runs
    out of GPU memory ends the mode's sweep there: every larger batch gets an entry saying so.
    Modes leave ``dense`` and ``deployed`` as they were (train/eval mode, device, dtype).
    """
    was_training = dense.training, deployed.training
    dense.eval()
    deployed.eval()
    try:
        return [e for mode in modes for e in _sweep_mode(dense, deployed, input_shape, mode, batches, device, warmup,
                                                           rounds, cpu_threads, amp, channels_last)]
    finally:
        dense.train(was_training[0])
        deployed.train(was_training[1])


def _sweep_mode(dense: nn.Module, deployed: nn.Module, input_shape: tuple[int, ...], mode: str,
                batches: Sequence[int], device: str, warmup: int, rounds: int, cpu_threads: int | None, amp: bool,
                channels_last: bool) -> list[SweepEntry]:
    """One mode of ``latency_sweep`` (the models already in eval mode)."""
    try:
        runners = [runner(m, mode, input_shape, device=device, amp=amp, channels_last=channels_last,
                          cpu_threads=cpu_threads) for m in (dense, deployed)]
    except Unavailable as why:
        return [SweepEntry(mode=mode, batch=b, note=str(why)) for b in sorted(batches)]
    out: list[SweepEntry] = []
    full = ""
    for b in sorted(batches):
        if full:
            out.append(SweepEntry(mode=mode, batch=b, note=full))
            continue
        try:
            out.append(SweepEntry(mode=mode, batch=b, result=_ab(runners, mode, b, device, warmup, rounds,
                                                                 cpu_threads)))
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError, or a graph capture that ran out
            if "out of memory" not in str(err):
                raise
            full = f"out of GPU memory at batch {b}"
            out.append(SweepEntry(mode=mode, batch=b, note=full))
            torch.cuda.empty_cache()
        except Unavailable as why:
            out.append(SweepEntry(mode=mode, batch=b, note=str(why)))
    return out


def _ab(runners: list[Runner], mode: str, batch: int, device: str, warmup: int, rounds: int,
        cpu_threads: int | None) -> ABLatency:
    """One A/B measurement of two prepared models at ``batch``, torch at ``cpu_threads`` on CPU."""
    ort = mode == "onnxruntime"
    cuda = torch.device(device).type == "cuda" and not ort
    before = torch.get_num_threads()
    if not cuda and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        with torch.inference_mode():
            calls = [r(batch) for r in runners]
            times = alternating(calls[0], calls[1], cuda=cuda, warmup=warmup, rounds=rounds)
        name = device_name("cpu" if ort else device)  # with the thread count the rounds ran at
    finally:
        torch.set_num_threads(before)
    if ort:
        name = f"onnxruntime {ORT_PROVIDER} on {name}"
    ratios = [d / max(e, 1e-9) for d, e in zip(*times, strict=True)]
    lo, hi = bootstrap_median_interval(ratios)

    def summary(ts: list[float]) -> Latency:
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], 0.0, ts[0])
        return Latency(device=name, batch_size=batch, median_ms=statistics.median(ts), iqr_ms=q3 - q1,
                       rounds=rounds)

    return ABLatency(dense=summary(times[0]), deployed=summary(times[1]), speedup=statistics.median(ratios),
                     speedup_lo=lo, speedup_hi=hi)


def headline(sweep: Sequence[SweepEntry], mode: str, throughput_batch: int) -> dict[str, Any]:
    """The record fields of a latency sweep: ``latency_sweep`` (every entry) and the headline fields
    (``latency_*`` at batch 1, ``throughput_*`` at ``throughput_batch``, their speed-ups) of ``mode``.

    A headline batch that did not run leaves its fields ``None`` (the note says why).
    """
    at = {e.batch: e.result for e in sweep if e.mode == mode}
    one, tput = at.get(1), at.get(throughput_batch)
    fields: dict[str, Any] = {"latency_mode": mode, "latency_sweep": [e.to_dict() for e in sweep],
                              "latency_batch": 1, "throughput_batch": throughput_batch,
                              "latency_device": (one or tput).deployed.device if one or tput else None}
    for prefix, r, ms in (("b1", one, "latency"), ("bT", tput, "throughput")):
        fields.update({f"{ms}_dense_ms": r and r.dense.median_ms, f"{ms}_ms": r and r.deployed.median_ms,
                       f"speedup_{prefix}": r and r.speedup, f"speedup_{prefix}_lo": r and r.speedup_lo,
                       f"speedup_{prefix}_hi": r and r.speedup_hi})
    fields.update(latency_dense_iqr_ms=one and one.dense.iqr_ms, latency_iqr_ms=one and one.deployed.iqr_ms)
    return fields


def sweep_note(note: str, sweep: Sequence[SweepEntry]) -> str:
    """``note`` followed by each distinct reason a (mode, batch) of ``sweep`` did not run, as "mode: why"."""
    why = dict.fromkeys(f"latency {e.mode}: {e.note}" for e in sweep if e.result is None and e.note)
    return "; ".join([note, *why] if note else why)


def bootstrap_median_interval(values: list[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (reproducible: fixed ``seed``)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    cut = (1 - level) / 2
    return meds[int(cut * (resamples - 1))], meds[int((1 - cut) * (resamples - 1))]


def runner(model: nn.Module, mode: str, input_shape: tuple[int, ...], *, device: str = "cpu", amp: bool = True,
           channels_last: bool = True, cpu_threads: int | None = CPU_THREADS) -> Runner:
    """``model`` prepared once for timing in ``mode``; call the result with a batch size for the timed call.

    - "eager-fp32": the model as it is, float32, eager, eval mode (the suite's original timing).
    - "deploy": as the model ships on the device. On CUDA: a copy in the training's dtype (bf16
      when ``amp``, as training autocasts), channels-last for conv nets when ``channels_last``, each
      batch's forward captured once as a CUDA graph and replayed, so kernel launches are not
      timed (a model whose capture fails runs eager in that dtype, and the note says so). On CPU
      training runs float32 and eager PyTorch has no launch overhead to remove: "deploy" is
      float32 eager there, and a CPU deployment runtime is timed as "onnxruntime".
    - "onnxruntime": a float32 CPU copy exported to ONNX (batch axis dynamic) and run by ONNX
      Runtime's CPU execution provider at ``cpu_threads`` intra-op threads (1 inter-op); needs
      the ``onnx`` extra. An export or session that fails raises ``Unavailable``.
    ``model`` itself is never changed (copies are cast, captured or exported).
    """
    if mode not in LATENCY_MODES:
        raise ValueError(f"latency mode must be one of {', '.join(LATENCY_MODES)}, got {mode!r}")
    shape = tuple(input_shape)
    if mode == "onnxruntime":
        return _ort_runner(model, shape, cpu_threads)
    cuda = torch.device(device).type == "cuda"
    if mode == "eager-fp32" or not cuda:
        def eager(batch: int) -> Call:
            x = torch.randn(batch, *shape, device=device)
            return lambda: model(x)
        return eager
    return _graph_runner(model, shape, device, torch.bfloat16 if amp else torch.float32, channels_last)


def _graph_runner(model: nn.Module, shape: tuple[int, ...], device: str, dtype: torch.dtype,
                  channels_last: bool) -> Runner:
    m = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    nhwc = channels_last and len(shape) == 3 and any(isinstance(c, nn.Conv2d) for c in m.modules())
    if nhwc:
        m = m.to(memory_format=torch.channels_last)

    def graphed(batch: int) -> Call:
        x = torch.randn(batch, *shape, device=device, dtype=dtype)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        # Warm-up on a side stream before capture, as torch.cuda.graphs documents (cuDNN and
        # cuBLAS pick their kernels and allocate workspaces outside the graph).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                m(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                m(x)
        except RuntimeError as err:
            if "out of memory" in str(err):
                raise
            raise Unavailable(f"CUDA graph capture failed ({type(err).__name__}: {str(err)[:120]})") from None
        return graph.replay
    return graphed


ORT_PROVIDER = "CPUExecutionProvider"


def _ort_runner(model: nn.Module, shape: tuple[int, ...], cpu_threads: int | None) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Unavailable("onnxruntime is not installed (pip install 'lorita-bench[onnx]')") from None
    onnx_bytes = export_onnx(model, shape)
    try:
        session = ort.InferenceSession(onnx_bytes, _ort_options(ort, cpu_threads), providers=[ORT_PROVIDER])
    except Exception as err:  # onnxruntime raises its own types (InvalidGraph, NotImplemented, …)
        raise Unavailable(f"onnxruntime cannot load the export ({type(err).__name__}: {str(err)[:160]})") from None
    name = session.get_inputs()[0].name

    def run(batch: int) -> Call:
        x = {name: torch.randn(batch, *shape).numpy()}
        return lambda: session.run(None, x)
    return run


def _ort_options(ort: Any, cpu_threads: int | None) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_threads or 0  # 0: onnxruntime's own default (all cores)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: a deployed model's constant folding is not news
    return opts


ONNX_OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The ONNX bytes of a float32 CPU copy of ``model`` in eval mode, with a dynamic batch axis.

    The TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package, works
    on torch 2.4 through 2.14 alike, and handles the suite's models; torch's newer exporter needs
    ``onnxscript`` besides. Any failure (an op without an ONNX form, a missing package) raises
    ``Unavailable`` naming it.
    """
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # torch 2.9+ warns on every call that this exporter is the legacy one.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(m, (torch.zeros(1, *input_shape),), buf, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                              opset_version=ONNX_OPSET)
    except Exception as err:
        raise Unavailable(f"ONNX export failed ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    return buf.getvalue()


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
