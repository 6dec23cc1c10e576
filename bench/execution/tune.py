"""Each method's recipe chosen on the validation split, from one grid searched the same way for every method.

A method's published recipe may not suit this budget, and the preset's one recipe was tuned for
one method at most. ``tune`` gives every method the same chance: for each point of one grid of
budget fields (``bench.catalog.budget.RECIPE_FIELDS``: weight decay, lr, …), the method is run at
the preset's targets under that recipe, and the point with the best mean validation accuracy of
its fine-tuned models is kept. The test split is never read for the choice. Every point is a
run of its own (its own folder under ``out_dir/tune``, its trained models in the shared cache),
so the final run with the chosen recipes trains nothing again.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.catalog.budget import RECIPE_FIELDS
from bench.catalog.presets import Preset
from bench.execution import runner
from bench.records.errors import UsageError

TUNE_FOLDER = "tune"


def default_grid(preset: Preset) -> dict[str, tuple[Any, ...]]:
    """Weight decay at a third of, at, and three times the preset's: the knob LoRITa's low rank and
    the pruning baselines' sparsity both depend on."""
    wd = preset.budget.weight_decay
    return {"weight_decay": (wd / 3, wd, wd * 3)}


def parse_grid(text: str) -> dict[str, tuple[Any, ...]]:
    """``"weight_decay=1e-4,1e-3;lr=0.01,0.05"``; ``UsageError`` naming a field a recipe may not set."""
    grid: dict[str, tuple[Any, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in RECIPE_FIELDS or not values:
            raise UsageError(f"bad tuning grid {part!r}; accepted: FIELD=V1,V2[;FIELD=…] with FIELD one of "
                             f"{', '.join(RECIPE_FIELDS)}")
        grid[key] = tuple(_value(v.strip()) for v in values.split(","))
    if not grid:
        raise UsageError(f"empty tuning grid {text!r}; accepted: e.g. weight_decay=1e-4,1e-3,1e-2")
    return grid


def _value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # optimizer or schedule names; the budget checks them


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (the first field varies slowest)."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def tune(preset: Preset, out_dir: Path, grid: Mapping[str, Sequence[Any]], **run_kw: Any) -> Preset:
    """``preset`` with each method's recipe set to the grid point of best validation accuracy.

    Every method searches the same points (the same grid size for all). A point's score is the
    mean ``val_acc`` of the method's ok records after fine-tuning over the targets (−∞ when none
    is ok); ties keep the earlier point. ``run_kw`` goes to ``bench.execution.runner.run`` for
    every point (cache, data, executor, echo, …). Returns the preset with ``recipes`` holding the
    choices, ``recipe_source="tuned"`` and ``tune_grid`` the grid, which every record then carries.
    """
    grid = {k: tuple(v) for k, v in grid.items()}
    candidates = points(grid)
    chosen: dict[str, dict[str, Any]] = {}
    for name in preset.methods:
        scores = []
        for point in candidates:
            trial = replace(preset, methods=(name,), recipes={**preset.recipes, name: point},
                            recipe_source="tuning", tune_grid=grid)
            records = runner.run(trial, Path(out_dir) / TUNE_FOLDER / f"{name}-{trial.config_hash()}", **run_kw)
            vals = [r.val_acc for r in records if r.method == name and r.status == "ok" and r.val_acc is not None]
            scores.append(statistics.fmean(vals) if vals else float("-inf"))
        chosen[name] = candidates[max(range(len(scores)), key=scores.__getitem__)]
    return replace(preset, recipes={**preset.recipes, **chosen}, recipe_source="tuned", tune_grid=grid)
