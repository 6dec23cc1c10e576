"""Trained-model cache: one checkpoint per (dataset, model, method preparation, budget, seed, versions).

A target sweep, a re-run or a report after an interruption reuses the trained model
instead of training again. Writes are atomic (temp file + rename); loads use
``torch.load(weights_only=True)`` and verify a digest of every tensor, so a truncated
or corrupted file is reported and retrained, never silently used. A checkpoint also proves
what it is: it carries its cache key, the parameter names and shapes of its architecture and
its optimizer step count, and a load checks each of them, because a valid checkpoint of
another training (a file copied or renamed over this one) passes every digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.catalog.presets import Preset
from bench.catalog.protocol import Method
from bench.execution import distributed
from bench.execution.provenance import code_digest, versions
from bench.records.results import atomic_file

log = logging.getLogger(__name__)
FORMAT = 2  # 2: key, shapes and steps stored and verified


def default_dir() -> Path:
    """``$LORITA_BENCH_CACHE``, else ``~/.cache/lorita-bench/checkpoints``."""
    env = os.environ.get("LORITA_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lorita-bench" / "checkpoints"


def cache_key(parts: dict[str, Any]) -> str:
    """Hex digest of everything that determines a trained model (JSON-serializable ``parts``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def checkpoint_key(preset: Preset, method: Method, seed: int) -> str:
    """Cache key of the trained model: everything that determines its weights."""
    return cache_key({"dataset": preset.dataset, "model": preset.model, "options": preset.model_options,
                      "prepare": preset.pretraining_of(method), "budget": asdict(preset.pretraining_budget(method)),
                      "seed": seed, "protect": list(preset.protect),  # a sparsity regularizer skips them
                      "device": torch.device(preset.device).type, "amp": preset.amp,
                      # Under torchrun each rank normalizes BatchNorm over its share of the batch only
                      # (no SyncBatchNorm), so a model trained by W processes is another model.
                      "processes": distributed.world(),
                      "versions": versions(), "code": code_digest()})


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in state.items()}


def save(path: Path, model: nn.Module, meta: dict[str, Any], *, key: str = "", steps: int | None = None) -> None:
    """Write ``model``'s state dict and ``meta`` (plain JSON types) to ``path`` atomically, with
    the cache ``key`` and the optimizer ``steps`` of the training that made it (for ``load``)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "digest": _digest(state), "meta": json.dumps(meta),
               "key": key, "shapes": json.dumps(_shapes(state)), "steps": -1 if steps is None else int(steps)}
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def _verify(payload: Any, model: nn.Module, key: str | None, steps: int | None) -> dict[str, torch.Tensor]:
    """The payload's state dict, once it proved to be what the caller asked for; ``ValueError`` if not."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"not a lorita-bench checkpoint of format {FORMAT} (found {found!r})")
    state = payload["state_dict"]
    if _digest(state) != payload["digest"]:
        raise ValueError("tensor digest mismatch")
    if key is not None and payload.get("key") != key:
        raise ValueError(f"cache key mismatch: the file holds {payload.get('key')!r}, not {key!r} "
                         "(a checkpoint of another training)")
    want, have = _shapes(model.state_dict()), json.loads(payload["shapes"])
    if have != _shapes(state):
        raise ValueError("the stored parameter shapes are not those of the stored tensors")
    diff = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    if diff:
        raise ValueError(f"architecture mismatch: {len(diff)} parameter(s) differ in name or shape "
                         f"(e.g. {diff[0]}: file {have.get(diff[0])}, model {want.get(diff[0])})")
    if steps is not None and payload.get("steps") != steps:
        raise ValueError(f"step count mismatch: the file was trained for {payload.get('steps')} optimizer steps, "
                         f"this budget takes {steps}")
    return state


def load(path: Path, model: nn.Module, *, key: str | None = None, steps: int | None = None) -> dict[str, Any] | None:
    """Load ``path`` into ``model`` and return its meta; ``None`` when absent or unusable.

    With ``key`` (the cache key) and ``steps`` (the optimizer steps the training takes), the
    checkpoint must carry exactly those, and its parameter names and shapes must be ``model``'s.
    An unreadable, truncated, tampered or mismatched checkpoint — a valid one of another training
    included — is reported in one warning line and moved aside to ``*.corrupt`` (kept for
    inspection), so the caller retrains.
    """
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(_verify(payload, model, key, steps), strict=True)
        return json.loads(payload["meta"])
    except Exception as err:  # any failure means: do not trust it
        aside = path.with_suffix(path.suffix + ".corrupt")
        with contextlib.suppress(FileNotFoundError):  # another run set it aside first
            os.replace(path, aside)
        log.warning("corrupt checkpoint %s (%s: %s); moved to %s and retraining",
                    path, type(err).__name__, err, aside)
        return None
