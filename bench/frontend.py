"""What both front ends (``bench.cli`` and the pytest suite in ``bench/suite``) do first: resolve a
preset from the user's options and check, once, that it can run here.

Each front end spells its options its own way (``--device`` / ``--lorita-device``); ``Flags``
carries the spelling, so an error names the flag the user typed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.catalog.presets import Preset
from bench.catalog.registry import PRESETS
from bench.records.errors import UsageError


@dataclass(frozen=True, slots=True, kw_only=True)
class Flags:
    """How a front end spells the options an error may name (``download=None``: it has none)."""

    device: str
    data_dir: str
    download: str | None = None


CLI_FLAGS = Flags(device="--device", data_dir="--data-dir", download="--download")
SUITE_FLAGS = Flags(device="--lorita-device", data_dir="--lorita-data-dir")


def resolve_preset(name: str, *, flags: Flags, changes: Mapping[str, Any] | None = None,
                   budget_changes: Mapping[str, Any] | None = None,
                   model_options: Mapping[str, Any] | None = None, data_dir: str | Path | None = None,
                   download: bool = False, runs_here: bool = True) -> Preset:
    """The registered preset ``name`` with ``changes`` (``Preset`` fields; ``None`` values are
    ignored), ``budget_changes`` (``Budget`` fields) and ``model_options`` (merged into the
    preset's) applied, checked to run here.

    ``runs_here`` says whether the jobs run on this machine, whose CUDA is then theirs (jobs
    sent to a cluster find the node's GPU, or fail there as failed records). Raises
    ``UsageError`` for an unknown name or a bad value (named by the preset and budget
    validators), a ``data_dir`` that is not a folder (unless ``download``), and a CUDA device
    where jobs run here without CUDA.
    """
    preset = PRESETS.get(name)
    changes = dict(changes or {})
    if budget_changes:
        changes["budget"] = replace(preset.budget, **budget_changes)
    if model_options:
        changes["model_options"] = {**preset.model_options, **model_options}
    preset = preset.override(**changes)
    if data_dir is not None and not download and not Path(data_dir).is_dir():
        also = f", or add {flags.download}" if flags.download else ""
        raise UsageError(f"data directory {data_dir} does not exist; pass an existing folder to "
                         f"{flags.data_dir}{also}")
    if runs_here and torch.device(preset.device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"preset {name!r} runs on {preset.device!r} but CUDA is not available here; accepted: "
                         f"{flags.device} cpu, or a machine with a CUDA GPU")
    return preset


def check_folder(path: str | Path, flag: str, *, create: bool = True) -> Path:
    """``path`` as a folder this process may use, checked before any training; ``UsageError`` naming
    ``flag`` otherwise.

    With ``create`` (an output or cache folder), a folder that is absent is created and must be
    writable; without it (an input folder), an existing path must be a readable folder and an
    absent one is left to the caller (``resolve_preset`` explains a missing data folder).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; accepted: a folder (or a path to create one)")
    existing = next((q for q in (p.absolute(), *p.absolute().parents) if q.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{flag} {path} cannot be a folder: {existing} is a file; accepted: a path whose "
                         "parents are folders")
    if not create:
        if p.exists() and not os.access(p, os.R_OK | os.X_OK):
            raise UsageError(f"{flag} {path} is not readable; accepted: a folder this user can read")
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path} cannot be created ({err.strerror}); accepted: a folder this user "
                         "can write") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} is not writable; accepted: a folder this user can write")
    return p
