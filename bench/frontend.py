"""What both front ends (``bench.cli`` and the pytest suite in ``bench/suite``) do first: resolve a
preset from the user's options and check, once, that it can run here.

Each front end spells its options its own way (``--device`` / ``--lorita-device``); ``Flags``
carries the spelling, so an error names the flag the user typed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
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

# LORITA_BENCH_TINY=1 shrinks whatever preset a command resolves to, so that the documented
# commands can be run as written, in seconds (tests/test_docs.py). One place, both front ends.
TINY_ENV = "LORITA_BENCH_TINY"
# The regression gate's reference is this preset's full run: shrunk, `compare` would fail by design,
# and at ~20 s it is already small.
TINY_EXEMPT = ("ci",)


def tiny(preset: Preset) -> Preset:
    """``preset`` shrunk for a smoke run: 2 epochs (1 of them fine-tuning where the preset fine-tunes),
    its first seed, its first target and 3 latency rounds; every other field kept.

    What ``LORITA_BENCH_TINY=1`` applies to every preset but ``TINY_EXEMPT``. The numbers it gives
    measure nothing; it exists to check that a command runs.
    """
    budget = replace(preset.budget, epochs=2, finetune_epochs=min(preset.budget.finetune_epochs, 1))
    return preset.override(budget=budget, seeds=preset.seeds[:1], targets=preset.targets[:1],
                           latency_rounds=min(preset.latency_rounds, 3))


def tiny_requested() -> bool:
    """Whether ``LORITA_BENCH_TINY`` asks for tiny runs ("1"); ``UsageError`` for another value than "0" or "1"."""
    value = os.environ.get(TINY_ENV, "0")
    if value not in ("0", "1"):
        raise UsageError(f"bad {TINY_ENV}={value!r}; accepted: 1 (shrink every preset for a smoke run) or 0")
    return value == "1"


def resolve_preset(name: str, *, flags: Flags, changes: Mapping[str, Any] | None = None,
                   budget_changes: Mapping[str, Any] | None = None,
                   model_options: Mapping[str, Any] | None = None, data_dir: str | Path | None = None,
                   download: bool = False, runs_here: bool = True,
                   note: Callable[[str], None] | None = None) -> Preset:
    """The registered preset ``name`` with ``changes`` (``Preset`` fields; ``None`` values are
    ignored), ``budget_changes`` (``Budget`` fields) and ``model_options`` applied, checked to
    run here.

    ``model_options`` are merged into the preset's when the model stays the preset's; a
    ``changes["model"]`` naming another model starts from that model's own defaults, so the
    preset's options (an FCN's depth and width) are dropped, and ``note`` is told so in one
    line. With ``LORITA_BENCH_TINY=1`` the result is shrunk by ``tiny`` (the ``ci`` gate excepted).
    ``runs_here`` says whether the jobs run on this machine, whose CUDA is then theirs
    (jobs sent to a cluster find the node's GPU, or fail there as failed records). The model
    is built once on the meta device at the data set's input shape (``check_model_builds``),
    so that a bad option fails here, before any training, and not as a failed record per run.
    Raises ``UsageError`` for an unknown name or a bad value (named by the preset, budget and
    model-option validators), a ``data_dir`` that is not a folder (unless ``download``), a CUDA
    device where jobs run here without CUDA, the onnxruntime latency mode where jobs run here
    without its packages, and model options the builder rejects.
    """
    preset = PRESETS.get(name)
    changes = dict(changes or {})
    if budget_changes:
        changes["budget"] = replace(preset.budget, **budget_changes)
    options, dropped = preset.model_options, None
    model = changes.get("model")
    if model is not None and model != preset.model:
        if options and not model_options:
            shown = ",".join(f"{k}={v}" for k, v in options.items())
            dropped = (f"preset {name!r} sets model options {shown} for {preset.model}; --model {model} starts "
                       "from its own defaults instead (set some with --model-options)")
        options = {}
    changes["model_options"] = {**options, **(model_options or {})}
    preset = preset.override(**changes)
    if tiny_requested() and name not in TINY_EXEMPT:
        preset = tiny(preset)
    if data_dir is not None and not download and not Path(data_dir).is_dir():
        also = f", or add {flags.download}" if flags.download else ""
        raise UsageError(f"data directory {data_dir} does not exist; pass an existing folder to "
                         f"{flags.data_dir}{also}")
    if runs_here and torch.device(preset.device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"preset {name!r} runs on {preset.device!r} but CUDA is not available here; accepted: "
                         f"{flags.device} cpu, or a machine with a CUDA GPU")
    if runs_here and "onnxruntime" in preset.latency_modes:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"latency mode onnxruntime needs {' and '.join(missing)}, not installed here; accepted: "
                             "pip install 'lorita-bench[onnx]', or other latency modes")
    check_model_builds(preset, data_dir=data_dir, download=download)
    if dropped is not None and note is not None:  # only once the run is known to be valid
        note(dropped)
    return preset


def check_model_builds(preset: Preset, *, data_dir: str | Path | None = None, download: bool = False) -> None:
    """Build ``preset``'s model once with its options, on the meta device (no memory, no time), at
    the input shape and classes of its data set; ``UsageError`` naming the options if that fails.

    The data set is loaded for its shape (the jobs load it again; it is the build of a model
    that may fail for a shape, e.g. a ViT patch that does not divide the image). A builder
    that cannot run on the meta device is built on the CPU instead. The preset's protected-layer
    patterns are matched against the built model here too.
    """
    from bench.catalog import data as data_mod
    from bench.catalog.models import build, protected_layers

    splits = data_mod.load(preset.dataset, data_dir=Path(data_dir) if data_dir is not None else None,
                           download=download)
    shape, classes = splits.input_shape, splits.num_classes
    del splits
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build(preset.model, classes, shape, preset.model_options)
            protected_layers(model, classes, preset.protect)  # a pattern that names no layer fails here
            return
        except UsageError:
            raise
        except Exception as err:  # the options are the user's: whatever the builder raises names them
            failure = f"{type(err).__name__}: {err}"
    shown = ",".join(f"{k}={v}" for k, v in preset.model_options.items()) or "no options"
    raise UsageError(f"model {preset.model!r} cannot be built with {shown} for {preset.dataset} "
                     f"(input {tuple(shape)}, {classes} classes): {failure}; accepted: options its builder takes "
                     "(see `lorita-bench list`)")


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
