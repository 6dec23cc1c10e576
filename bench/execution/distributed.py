"""Data parallel training inside one job, under ``torchrun`` (DDP); a no-op otherwise.

    torchrun --nproc_per_node 4 -m bench.cli run --preset cifar10-resnet20 --data-dir D

Every rank runs the same suite on the same seeds; the training loop splits each global
batch across ranks and DDP averages the gradients, so the optimizer steps, the batch size
and the schedule are those of the one-process run. Only rank 0 writes records, checkpoints
and the report.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_from_env(device: str) -> str:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); return this rank's device.

    NCCL on CUDA (one GPU per rank, ``cuda:LOCAL_RANK``), gloo on CPU. Without torchrun,
    returns ``device`` unchanged.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def teardown() -> None:
    """Leave the process group, if this process joined one (a no-op otherwise).

    Call it on every exit path of an entry point that may have called ``setup_from_env``: a group
    whose threads are still alive at interpreter exit can abort the rank ("terminate called without
    an active exception"), and torchrun then kills the other ranks with SIGTERM.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the one process that writes files (rank 0, or the only process)."""
    return rank() == 0


def agree(flag: bool, device: str | torch.device = "cpu") -> bool:
    """True only if ``flag`` is true on every rank (e.g. every rank loaded the same checkpoint)."""
    if not active():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
