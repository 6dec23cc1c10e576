"""Paper-style comparison tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Rec = Mapping[str, Any]

COLUMNS = ("Method", "N", "Target", "Base acc", "Acc", "ΔAcc", "FLOPs↓", "Params↓",
           "Speed-up b=1", "Speed-up b=T")


def latest(records: Iterable[Rec]) -> list[Rec]:
    """One record per run key, the last written (a resumed run supersedes an earlier failure)."""
    keep: dict[tuple, Rec] = {}
    for r in records:
        keep[(r.get("config_hash"), r["dataset"], r["model"], r["method"], r["target_kind"],
              r["target_drop"], r["seed"])] = r
    return list(keep.values())


def _stat(values: Sequence[float], scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    vals = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    text = fmt.format(statistics.fmean(vals))
    if len(vals) > 1:
        text += f" ± {statistics.stdev(vals):.{digits}f}"
    return text


def _speedup(rs: Sequence[Rec], dense: str, deployed: str) -> list[float]:
    return [r[dense] / r[deployed] for r in rs if r.get(dense) and r.get(deployed)]


def rows(records: Iterable[Rec]) -> list[dict[str, str]]:
    """Table rows (strings), one per (dataset, model, method, target), seeds aggregated as mean ± std.

    Accuracies and drops are in percent; speed-ups are dense latency / deployed latency
    measured in the same run. Failed and skipped runs appear with their reason.
    """
    groups: dict[tuple, list[Rec]] = {}
    for r in latest(records):
        groups.setdefault((r["dataset"], r["model"], r["method"], r["target_kind"], r["target_drop"]),
                          []).append(r)
    out = []
    for (dataset, model, method, kind, drop), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        row = {"Dataset": dataset, "Model": model, "Method": method,
               "N": str(rs[0]["n"]) if rs[0].get("n") is not None else "–",
               "Target": f"{kind} {drop * 100:g}%"}
        if not ok:
            reason = rs[-1].get("reason") or rs[-1]["status"]
            row.update({c: "–" for c in COLUMNS[3:]})
            row["Acc"] = f"{rs[-1]['status']}: {reason}"
        else:
            row.update({
                "Base acc": _stat([r["base_acc"] for r in ok]),
                "Acc": _stat([r["acc"] for r in ok]),
                "ΔAcc": _stat([r["delta_acc"] for r in ok], signed=True),
                "FLOPs↓": _stat([r["flops_drop"] for r in ok], digits=1),
                "Params↓": _stat([r["params_drop"] for r in ok], digits=1),
                "Speed-up b=1": _stat(_speedup(ok, "latency_dense_ms", "latency_ms"), 1.0) + "×",
                "Speed-up b=T": _stat(_speedup(ok, "throughput_dense_ms", "throughput_ms"), 1.0) + "×",
            })
        out.append(row)
    order = {"lorita": 0, "pruning": 1}
    out.sort(key=lambda row: (row["Dataset"], row["Model"], row["Target"],
                              order.get(_family(records, row["Method"]), 2), row["Method"]))
    return out


def _family(records: Iterable[Rec], method: str) -> str:
    return next((r.get("family", "") for r in records if r["method"] == method), "")


def comparison_table(records: Sequence[Rec]) -> str:
    """A GitHub-Markdown table per (dataset, model) of every method at every target."""
    records = list(records)
    parts = []
    by_model: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows(records):
        by_model.setdefault((row["Dataset"], row["Model"]), []).append(row)
    for (dataset, model), rs in by_model.items():
        tput = next((r.get("throughput_batch") for r in records if r.get("throughput_batch")), "T")
        header = [c.replace("b=T", f"b={tput}") for c in COLUMNS]
        lines = [f"### {dataset} / {model}", "",
                 "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rs]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
