"""The regression gate: a new run's records against a committed reference, cell by cell.

A cell is one (dataset, model, method, target, seed). The gate fails when a cell's accuracy
(or its dense model's) falls by more than a tolerance, when params or MACs of a deployed or
dense model change at all (they are deterministic counts, so any change is a real change of
method or counter), when a cell that succeeded now fails, when a cell or a whole method
disappears, when the run's config hash no longer matches the reference's, or when an ok record
of the new run lacks a number (an accuracy, params or MACs that is missing, NaN or infinite: a
run that produced no number must not pass). Timing is not
gated here: latencies depend on the machine, so they are compared by pytest-benchmark's
``--benchmark-compare-fail`` on a matching machine only (see ``bench/suite``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records.errors import UsageError
from bench.records.results import finite
from bench.records.sources import load

DEFAULT_ACC_TOL = 0.01  # a fraction, like the records' accuracies: 0.01 = 1 percentage point
COUNTS = (("params", "params"), ("macs", "MACs"), ("dense_params", "dense params"), ("dense_macs", "dense MACs"))
ACCURACIES = (("acc", "accuracy"), ("base_acc", "dense accuracy"), ("acc_top5", "top-5 accuracy"))
REQUIRED = (("acc", "accuracy"), ("base_acc", "dense accuracy"), *COUNTS)  # every ok record has these numbers


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The gate's verdict: one line per problem (empty: pass), and informational notes."""

    problems: tuple[str, ...]
    notes: tuple[str, ...]
    cells: int  # reference cells checked

    @property
    def ok(self) -> bool:
        return not self.problems


def _dicts(records: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [r.to_dict() if hasattr(r, "to_dict") else r for r in records]


def _key(r: Mapping[str, Any]) -> tuple:
    return (r["dataset"], r["model"], r["method"], r["target_kind"], r["target_drop"], r["seed"])


def _name(key: tuple) -> str:
    dataset, model, method, kind, drop, seed = key
    return f"{dataset}/{model} {method} {kind}:{drop:g} seed {seed}"


def _by_cell(records: Iterable[Mapping[str, Any]]) -> dict[tuple, Mapping[str, Any]]:
    out: dict[tuple, Mapping[str, Any]] = {}
    for r in records:
        out[_key(r)] = r  # the last written wins, as in a resumed run
    return out


def check_tolerance(acc_tol: float) -> float:
    """``acc_tol`` if it is a fraction in [0, 1); ``UsageError`` otherwise."""
    if not isinstance(acc_tol, int | float) or not 0 <= acc_tol < 1:
        raise UsageError(f"bad accuracy tolerance {acc_tol!r}; accepted: a fraction in [0, 1), "
                         "e.g. 0.01 for 1 percentage point")
    return float(acc_tol)


def compare(reference: Iterable[Any], new: Iterable[Any], *, acc_tol: float = DEFAULT_ACC_TOL,
            partial: bool = False) -> Comparison:
    """Gate ``new`` records against ``reference`` records (Records or their dicts).

    ``acc_tol`` is the largest accepted fall of an accuracy, as a fraction (0.01 = 1 pp).
    ``partial=True`` checks only the reference cells present in ``new`` (for a filtered run);
    otherwise a reference cell missing from ``new`` is a problem, reported once per method
    when the whole method is gone. Cells only in ``new`` are noted, never a problem.
    Raises ``UsageError`` for a bad tolerance or an empty reference.
    """
    acc_tol = check_tolerance(acc_tol)
    ref, got = _by_cell(_dicts(reference)), _by_cell(_dicts(new))
    if not ref:
        raise UsageError("the reference holds no records; accepted: the results of a run "
                         "(results.jsonl, a run folder, or a pytest-benchmark JSON)")
    problems: list[str] = []
    notes: list[str] = []
    ref_hashes = sorted({r.get("config_hash", "") for r in ref.values()})
    new_hashes = sorted({r.get("config_hash", "") for r in got.values()})
    if got and ref_hashes != new_hashes:
        problems.append(f"config hash changed: reference {', '.join(ref_hashes)}, new {', '.join(new_hashes)} "
                        "(the preset's dataset, model or budget changed: numbers are not comparable; "
                        "regenerate the reference if the change is intended)")
    _missing(ref, got, partial, problems, notes)
    for key, n in got.items():
        if n.get("status") == "ok":
            bad = [f"{what} {n.get(field)!r}" for field, what in REQUIRED if not finite(n.get(field))]
            if bad:
                problems.append(f"{_name(key)}: ok but without a number: {', '.join(bad)} (missing or not finite)")
    checked = 0
    for key, r in ref.items():
        if key in got:
            checked += 1
            _cell(_name(key), r, got[key], acc_tol, problems, notes)
    extra = [k for k in got if k not in ref]
    if extra:
        notes.append(f"{len(extra)} cells are not in the reference and were not checked "
                     f"(e.g. {_name(extra[0])})")
    ref_dev = {r.get("latency_device") for r in ref.values()} - {None}
    new_dev = {r.get("latency_device") for r in got.values()} - {None}
    if ref_dev and new_dev and ref_dev != new_dev:
        notes.append(f"timings not comparable: reference timed on {', '.join(sorted(ref_dev))}, "
                     f"new on {', '.join(sorted(new_dev))}")
    notes.append("timings are not gated here; gate them with pytest-benchmark's --benchmark-compare-fail "
                 "on the machine that saved the baseline (bench/suite)")
    return Comparison(problems=tuple(problems), notes=tuple(notes), cells=checked)


def _missing(ref: Mapping[tuple, Any], got: Mapping[tuple, Any], partial: bool, problems: list[str],
             notes: list[str]) -> None:
    """Reference cells absent from the new run: a problem (once per method when the whole method is
    gone), or a note when the run is ``partial``."""
    missing = [k for k in ref if k not in got]
    if missing and not partial:
        gone_methods = {k[:3] for k in missing} - {k[:3] for k in got}
        for dataset, model, method in sorted(gone_methods):
            n = sum(k[:3] == (dataset, model, method) for k in ref)
            problems.append(f"{dataset}/{model} {method}: method disappeared ({n} reference cells have no result)")
        problems += [f"{_name(k)}: missing (in the reference, not in the new run)"
                     for k in missing if k[:3] not in gone_methods]
    elif missing:
        notes.append(f"{len(missing)} reference cells not in this (filtered) run were not checked")


def _cell(name: str, r: Mapping[str, Any], n: Mapping[str, Any], acc_tol: float, problems: list[str],
          notes: list[str]) -> None:
    """One cell: a status that got worse, an accuracy fallen beyond ``acc_tol``, a count that changed."""
    if r.get("status") == "ok" and n.get("status") != "ok":
        problems.append(f"{name}: was ok, now {n.get('status')} ({n.get('reason') or 'no reason recorded'})")
        return
    if r.get("status") != "ok" or n.get("status") != "ok":
        if r.get("status") != n.get("status"):
            notes.append(f"{name}: was {r.get('status')}, now {n.get('status')}")
        return
    for field, what in ACCURACIES:
        a, b = r.get(field), n.get(field)
        if finite(a) and finite(b) and b < a - acc_tol - 1e-12:
            problems.append(f"{name}: {what} fell {(a - b) * 100:.2f} pp ({a * 100:.2f}% → {b * 100:.2f}%; "
                            f"tolerance {acc_tol * 100:.2f} pp)")
    for field, what in COUNTS:
        a, b = r.get(field), n.get(field)
        if a != b and finite(b):  # a number the run did not produce is its own problem (see compare)
            problems.append(f"{name}: {what} changed {a} → {b} (counts are deterministic: any change is a "
                            "change of method or counter)")


def compare_paths(reference: str | Path, new: str | Path, *, acc_tol: float = DEFAULT_ACC_TOL) -> Comparison:
    """``compare`` on two sources (run folders, results JSONL or pytest-benchmark JSON files).

    Raises ``UsageError`` for a missing or unreadable source, as ``bench.records.sources.load`` does.
    """
    return compare(load([reference]).records, load([new]).records, acc_tol=acc_tol)


def summary(result: Comparison, acc_tol: float) -> str:
    """The gate's last line."""
    if result.ok:
        return (f"ok: {result.cells} cells match the reference (accuracy within {acc_tol * 100:.2f} pp, "
                "params and MACs identical)")
    return f"regression: {len(result.problems)} problem(s) in {result.cells} checked cells"
