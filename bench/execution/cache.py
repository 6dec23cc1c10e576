"""Trained-model cache: one checkpoint per (dataset, model, method preparation, budget, seed, versions).

A target sweep, a re-run or a report after an interruption reuses the trained model
instead of training again. Writes are atomic (temp file + rename); loads use
``torch.load(weights_only=True)`` and verify a digest of every tensor, so a truncated
or corrupted file is reported and retrained, never silently used.
"""

from __future__ import annotations

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
from bench.execution.provenance import code_digest, versions
from bench.records.results import atomic_file

log = logging.getLogger(__name__)
FORMAT = 1


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
                      "prepare": method.pretraining(), "budget": asdict(preset.budget), "seed": seed,
                      "device": torch.device(preset.device).type, "amp": preset.amp,
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


def save(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``meta`` (plain JSON types) to ``path`` atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "state_dict": state, "digest": _digest(state), "meta": json.dumps(meta)}
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def load(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """Load ``path`` into ``model`` and return its meta; ``None`` when absent or unusable.

    An unreadable, truncated, tampered or mismatched checkpoint is logged as a warning and
    moved aside to ``*.corrupt`` (kept for inspection), so the caller retrains.
    """
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not a lorita-bench checkpoint")
        state = payload["state_dict"]
        if _digest(state) != payload["digest"]:
            raise ValueError("tensor digest mismatch")
        model.load_state_dict(state, strict=True)
        return json.loads(payload["meta"])
    except Exception as err:  # any failure means: do not trust it
        aside = path.with_suffix(path.suffix + ".corrupt")
        os.replace(path, aside)
        log.warning("corrupt checkpoint %s (%s: %s); moved to %s and retraining",
                    path, type(err).__name__, err, aside)
        return None
