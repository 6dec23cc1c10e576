"""The controls section of a report: each method's cell beside its control (``scratch:<method>``: the same
deployed architecture trained from scratch with the same steps and recipe), paired by seed.

Liu et al. (ICLR 2019) found that for many structured-pruning methods the pruned architecture trained
from scratch matches the pruned and fine-tuned model: then the method's value is the architecture it
finds, not the weights it keeps. The difference is taken per seed (the control at seed s copies the
cell at seed s) and read only beyond its 95 % t-interval over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reports.tables import half_width95, latest

Rec = Mapping[str, Any]
# An interval containing 0 supports "no difference" only when it is this narrow (half-width, pp); a wider one
# (a seed that collapsed, a noisy target) supports nothing.
TIGHT_PP = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pair:
    """One method's cell and its control at one target of one configuration: fine-tuned test accuracies
    per seed (percent) of each side, the paired differences (method − control, pp) on the seeds where
    both are ok, and the statuses of the control's runs that are not ok."""

    config_hash: str
    dataset: str
    model: str
    method: str
    control: str
    target_kind: str
    target_drop: float
    method_acc: tuple[float, ...]
    control_acc: tuple[float, ...]
    diffs: tuple[float, ...]
    control_not_ok: tuple[str, ...] = ()

    def interval(self) -> tuple[float, float] | None:
        """The 95 % t-interval of the mean paired difference (pp); None with fewer than two seeds."""
        h = half_width95(self.diffs)
        return None if h is None else (statistics.fmean(self.diffs) - h, statistics.fmean(self.diffs) + h)

    def reading(self) -> str:
        """What the difference supports: who is better beyond the noise, or that it cannot tell."""
        if not self.diffs:
            return "no seed where both are ok" + (f" (control: {', '.join(self.control_not_ok)})"
                                                 if self.control_not_ok else "")
        iv = self.interval()
        if iv is None:
            return "one seed: no verdict"
        if iv[0] > 0:
            return "the method's weights are worth more than its architecture alone"
        if iv[1] < 0:
            return "from scratch is better: the method's value is its architecture"
        if (iv[1] - iv[0]) / 2 <= TIGHT_PP:
            return "no difference beyond the noise: the architecture explains the result"
        return f"inconclusive: the interval is wider than ±{TIGHT_PP:g} pp"


def pairs(records: Sequence[Rec]) -> list[Pair]:
    """Every (method cell, control) pair in ``records``: the latest record per (config, cell, seed); a
    control links to its cell through ``control_of``."""
    recs = latest(records)
    cells: dict[tuple, dict[int, Rec]] = {}
    for r in recs:
        cells.setdefault((r.get("config_hash") or "", r["dataset"], r["model"], r["method"], r["target_kind"],
                          r["target_drop"]), {})[r["seed"]] = r
    out = []
    for (chash, dataset, model, method, kind, drop), by_seed in cells.items():
        of = next((r.get("control_of") for r in by_seed.values() if r.get("control_of")), None)
        if of is None:
            continue
        mine = cells.get((chash, dataset, model, of, kind, drop), {})

        def acc(r: Rec | None) -> float | None:
            return r["acc"] * 100 if r is not None and r.get("status") == "ok" and r.get("acc") is not None else None

        seeds = sorted(set(by_seed) | set(mine))
        both = [s for s in seeds if acc(mine.get(s)) is not None and acc(by_seed.get(s)) is not None]
        out.append(Pair(config_hash=chash, dataset=dataset, model=model, method=of, control=method, target_kind=kind,
                        target_drop=drop, method_acc=tuple(a for s in seeds if (a := acc(mine.get(s))) is not None),
                        control_acc=tuple(a for s in seeds if (a := acc(by_seed.get(s))) is not None),
                        diffs=tuple(acc(mine[s]) - acc(by_seed[s]) for s in both),
                        control_not_ok=tuple(f"seed {s} {r.get('status')}" for s, r in sorted(by_seed.items())
                                             if r.get("status") != "ok")))
    out.sort(key=lambda p: (p.config_hash, p.dataset, p.model, p.method, p.target_kind, p.target_drop))
    return out


def _mean_h(values: Sequence[float]) -> str:
    if not values:
        return "–"
    h = half_width95(values)
    return f"{values[0]:.2f}" if h is None else f"{statistics.fmean(values):.2f} ± {h:.2f}"


def control_lines(records: Sequence[Rec]) -> list[str]:
    """The "Controls" section of report.md (empty when the records hold no control)."""
    found = pairs(records)
    if not found:
        return []
    several = len({p.config_hash for p in found}) > 1
    lines = ["## Controls: each method against its own architecture trained from scratch", "",
             "`scratch:M` re-initializes the architecture M deployed at that target (pruned widths; LoRITa's "
             "factorized layers at their ranks, spectrally initialized) and trains it from scratch for as many "
             "optimizer steps as M's pre-training plus fine-tuning, on M's recipe (Liu et al., ICLR 2019). "
             "Fine-tuned test accuracy in percent, mean ± half-width of the 95 % t-interval over seeds; the "
             "difference is paired by seed. Controls are never ranked among the methods.", "",
             "| " + ("Config | " if several else "") + "Data / model | Method | Target | Method acc | From scratch | "
             "Method − scratch (pp) [95 %] | Seeds | Reading |",
             "|" + ("---|" if several else "") + "---|---|---|--:|--:|--:|--:|---|"]
    for p in found:
        iv = p.interval()
        diff = "–" if not p.diffs else f"{statistics.fmean(p.diffs):+.2f}" + (
            f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else "")
        lines.append("| " + (f"`{p.config_hash}` | " if several else "") + f"{p.dataset} / {p.model} | {p.method} | "
                     f"{p.target_kind} {p.target_drop * 100:g}% | {_mean_h(p.method_acc)} | {_mean_h(p.control_acc)} | "
                     f"{diff} | {len(p.diffs)} | {p.reading()} |")
    return [*lines, ""]
