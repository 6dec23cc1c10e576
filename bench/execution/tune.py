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
import math
import statistics
import typing
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.catalog.budget import RECIPE_FIELDS, Budget
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
    """``"weight_decay=1e-4,1e-3;nesterov=true,false;milestones=0.5/0.75,0.3"``: each value typed
    as the budget field it sets (a number, true/false, a name, fractions joined by ``/``) and
    checked as the budget checks it. ``UsageError`` (one line) naming a field a recipe may not set
    or a value of the wrong type or range."""
    grid: dict[str, tuple[Any, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in RECIPE_FIELDS or not values:
            raise UsageError(f"bad tuning grid {part!r}; accepted: FIELD=V1,V2[;FIELD=…] with FIELD one of "
                             f"{', '.join(RECIPE_FIELDS)}")
        grid[key] = tuple(_value(key, v.strip()) for v in values.split(","))
        for value in grid[key]:
            replace(Budget(), **{key: value})  # the budget's own range check, as a one-line UsageError
    if not grid:
        raise UsageError(f"empty tuning grid {text!r}; accepted: e.g. weight_decay=1e-4,1e-3,1e-2")
    return grid


_TYPES = typing.get_type_hints(Budget)
_ACCEPTED = {bool: "true or false", int: "an integer", float: "a number", str: "a name"}
_ACCEPTED_EACH = {int: "integers", float: "numbers", str: "names"}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _value(key: str, text: str) -> Any:
    """``text`` as a value of the budget field ``key`` (``_TYPES``: bool, int, float, str or a tuple of floats)."""
    kind = _TYPES[key]
    tuple_of = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None
    try:
        if tuple_of is not None:
            return tuple(_scalar(tuple_of, t.strip()) for t in text.split("/"))
        return _scalar(kind, text)
    except ValueError:
        accepted = (f"{_ACCEPTED_EACH[tuple_of]} joined by '/', e.g. 0.5/0.75" if tuple_of is not None
                    else _ACCEPTED[kind])
        raise UsageError(f"bad tuning grid value {key}={text!r}; accepted: {accepted}") from None


def _scalar(kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(text)
        return _BOOLS[text.lower()]
    if kind is float and not math.isfinite(float(text)):
        raise ValueError(text)
    return kind(text)


def points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (the first field varies slowest)."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def tune(preset: Preset, out_dir: Path, grid: Mapping[str, Sequence[Any]], **run_kw: Any) -> Preset:
    """``preset`` with each method's recipe set to the grid point of best validation accuracy.

    Every method searches the same points (the same grid size for all). A point's score is the
    mean ``val_acc`` of the method's ok records after fine-tuning over the targets (−∞ when none
    is ok); ties keep the earlier point. ``run_kw`` goes to ``bench.execution.runner.run`` for
    every point (cache, data, executor, echo, …). A point sets the fields it names over the
    method's own recipe (``_over``), which it never replaces. Returns the preset with ``recipes`` holding the
    choices, ``recipe_source="tuned"`` and ``tune_grid`` the grid, which every record then carries.
    """
    grid = {k: tuple(v) for k, v in grid.items()}
    candidates = points(grid)
    for point in candidates:  # every point checked before the first is run
        replace(preset.budget, **point)
    chosen: dict[str, dict[str, Any]] = {}
    for name in preset.methods:
        scores = []
        for point in candidates:
            trial = replace(preset, methods=(name,), recipes={**preset.recipes, name: _over(preset, name, point)},
                            recipe_source="tuning", tune_grid=grid)
            records = runner.run(trial, Path(out_dir) / TUNE_FOLDER / f"{name}-{trial.config_hash()}", **run_kw)
            vals = [r.val_acc for r in records if r.method == name and r.status == "ok" and r.val_acc is not None]
            scores.append(statistics.fmean(vals) if vals else float("-inf"))
        chosen[name] = _over(preset, name, candidates[max(range(len(scores)), key=scores.__getitem__)])
    return replace(preset, recipes={**preset.recipes, **chosen}, recipe_source="tuned", tune_grid=grid)


def _over(preset: Preset, name: str, point: Mapping[str, Any]) -> dict[str, Any]:
    """Method ``name``'s own recipe in ``preset`` with the grid point's fields set over it: a point
    changes what it names and keeps the rest of the method's published recipe."""
    return {**preset.recipes.get(name, {}), **point}
