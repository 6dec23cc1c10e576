"""What LoRITa's N costs in training: step time and peak memory of N factors against N=1, paired.

Two training steps are timed in alternating rounds (A B, then B A, …) on the same device in
one process, so that clock boosts, thermal drift or a busy neighbour hit both; the verdict is
the median of the per-round ratios, with its interquartile range. On CUDA each step is timed
with CUDA events; on CPU with ``perf_counter``. Inputs are random tensors of the data set's
shape: step time does not depend on the values.

``python -m bench.execution.steptime --device cuda --models vgg16,vit --n 3`` prints a table and, with
``--out FILE``, writes the measurements as JSON (the GPU evidence script's step-time table).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lorita
from bench.catalog.models import build
from bench.execution import measure

Step = Callable[[], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Paired:
    """Step times of A and B (median ms) and the median and IQR of the per-round ratio B/A."""

    a_ms: float
    b_ms: float
    ratio: float
    ratio_q1: float
    ratio_q3: float
    rounds: int


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, amp: bool = True,
                  channels_last: bool = True, compile: bool = False) -> Step:
    """One SGD step of the suite's loop (momentum, coupled weight decay, bf16 autocast and
    channels-last on CUDA, optional ``torch.compile``) on the fixed batch ``(x, y)``."""
    cuda = x.device.type == "cuda"
    if cuda and channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda and amp else contextlib.nullcontext():
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def paired(a: Step, b: Step, device: torch.device | str, *, rounds: int = 15, warmup: int = 3,
           steps_per_round: int = 1, clock: str = "wall") -> Paired:
    """Time ``a`` and ``b`` in ``rounds`` alternating rounds (order swapped every round) after
    ``warmup`` untimed rounds; each round times ``steps_per_round`` consecutive steps of each.

    On CPU, ``clock="cpu"`` times the process's CPU time instead of wall time: on a machine
    shared with other processes a round's wall time depends on how the scheduler shares the
    cores, its CPU time much less (run single-threaded, so no worker thread spins in it).
    On CUDA, CUDA events time the kernels whatever ``clock`` says."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    device = torch.device(device)

    def block(step: Step) -> Step:
        def run() -> None:
            for _ in range(steps_per_round):
                step()
        return run

    ta, tb = measure.alternating(block(a), block(b), cuda=device.type == "cuda", warmup=warmup, rounds=rounds,
                                 timer=time.process_time if clock == "cpu" else time.perf_counter)
    ratios = sorted(y / x for x, y in zip(ta, tb, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if rounds >= 2 else (ratios[0], 0, ratios[0])
    return Paired(a_ms=statistics.median(ta) / steps_per_round, b_ms=statistics.median(tb) / steps_per_round,
                  ratio=statistics.median(ratios), ratio_q1=q1, ratio_q3=q3, rounds=rounds)


def peak_step_memory_mb(step: Step, device: torch.device) -> float | None:
    """CUDA peak memory (MiB) of one call of ``step``; None on CPU. Whatever else is allocated on
    the device counts too: call it where only the measured model is alive, after a first step
    (so that its gradients and optimizer state exist)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _alone_peak_mb(make: Callable[[], Step], device: torch.device, *, compiled: bool) -> float | None:
    """``peak_step_memory_mb`` of a step built by ``make`` with nothing of another model alive:
    built, stepped once (optimizer state, compilation), measured, then freed before returning."""
    step = make()
    step()
    peak = peak_step_memory_mb(step, device)
    del step
    if compiled:
        torch._dynamo.reset()  # its cache of compiled code may hold the model's parameters
    gc.collect()
    return peak


def n_vs_1(model_name: str, n: int, *, device: str, batch_size: int, input_shape: tuple[int, ...] = (1, 32, 32),
           num_classes: int = 10, options: dict | None = None, compile: bool = False, rounds: int = 15,
           steps_per_round: int = 1, amp: bool = True, channels_last: bool = True) -> dict:
    """N-factor LoRITa against N=1 on ``model_name``: paired step times and each one's peak memory.

    Each peak is measured with only its own model, gradients and optimizer state on the device
    (the other model is built after the first is freed); the paired timing then builds both again.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch_size, *input_shape, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    def make(factors: int) -> Step:
        torch.manual_seed(0)
        model = build(model_name, num_classes, input_shape, options or {})
        model = lorita.overparameterize(model, factors) if factors > 1 else model
        return training_step(model.to(dev), x, y, amp=amp, channels_last=channels_last, compile=compile)

    memory = [None, None]
    if dev.type == "cuda":
        memory = [_alone_peak_mb(lambda f=f: make(f), dev, compiled=compile) for f in (1, n)]
    # The warm-up rounds compile (with compile=True) and allocate optimizer state outside the timing.
    p = paired(make(1), make(n), dev, rounds=rounds, steps_per_round=steps_per_round)
    return {"model": model_name, "options": options or {}, "n": n, "batch_size": batch_size, "device": device,
            "amp": amp and dev.type == "cuda", "channels_last": channels_last and dev.type == "cuda",
            "compile": compile, **asdict(p), "peak_mem_n1_mb": memory[0], "peak_mem_n_mb": memory[1]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.execution.steptime", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vgg16,resnet20,vit", help="comma-separated registered models")
    ap.add_argument("--n", type=int, default=3, help="LoRITa factors compared with N=1 (default 3)")
    ap.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    ap.add_argument("--batch-size", type=int, default=128, help="default 128, the presets' batch")
    ap.add_argument("--rounds", type=int, default=15, help="paired rounds (default 15)")
    ap.add_argument("--steps-per-round", type=int, default=1, help="consecutive steps timed together (default 1)")
    ap.add_argument("--compile", choices=("no", "yes", "both"), default="no", help="torch.compile (default no)")
    ap.add_argument("--model-options", default="", help="MODEL:KEY=VALUE;… e.g. vgg16:width=0.25")
    ap.add_argument("--out", help="write the measurements as JSON to this file (appends to a list there)")
    args = ap.parse_args(argv)
    options: dict[str, dict] = {}
    for part in filter(None, args.model_options.split(";")):
        model, _, kv = part.partition(":")
        key, _, value = kv.partition("=")
        options.setdefault(model, {})[key] = json.loads(value)
    compiles = {"no": (False,), "yes": (True,), "both": (False, True)}[args.compile]
    results = []
    for model in filter(None, args.models.split(",")):
        for comp in compiles:
            r = n_vs_1(model, args.n, device=args.device, batch_size=args.batch_size, options=options.get(model),
                       compile=comp, rounds=args.rounds, steps_per_round=args.steps_per_round)
            results.append(r)
            print(f"{model:10s} compile={comp!s:5s} N=1 {r['a_ms']:.2f} ms  N={args.n} {r['b_ms']:.2f} ms  "
                  f"ratio {r['ratio']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}]  "
                  f"peak {r['peak_mem_n1_mb'] or float('nan'):.0f}/{r['peak_mem_n_mb'] or float('nan'):.0f} MiB",
                  flush=True)
            if args.out:
                path = Path(args.out)
                old = json.loads(path.read_text()) if path.exists() else []
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps([*old, r], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
