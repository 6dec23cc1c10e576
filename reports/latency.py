"""Latency as deployed: the batch sweep of every latency mode, measured against theoretical speed-up,
and deployed shapes rounded to K (``--round-to``) beside unrounded ones.

Reads the records' ``latency_sweep`` entries (one A/B measurement per mode and batch,
``bench.execution.measure.SweepEntry.to_dict``). Theoretical speed-up = dense MACs / deployed MACs;
measured / theoretical says how much of the counted saving the runtime turns into time.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reports.tables import FAMILY_ORDER, _md_escape, mean_or_none

Rec = Mapping[str, Any]
MODE_TEXT = {"eager-fp32": "eager PyTorch, float32 (the suite's original timing)",
             "deploy": "as deployed: on CUDA the training's dtype (bf16 under amp) with CUDA graphs; on CPU float32 "
             "eager PyTorch",
             "onnxruntime": "ONNX export run by ONNX Runtime's CPU execution provider"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One (method, target, K, mode, batch) over its seeds: mean speed-up, latencies and theoretical speed-up."""

    dataset: str
    model: str
    method: str
    family: str
    target: str
    round_to: int
    mode: str
    batch: int
    device: str
    speedup: float | None
    dense_ms: float | None
    deployed_ms: float | None
    theoretical: float | None
    seeds: int
    note: str = ""

    @property
    def efficiency(self) -> float | None:
        """Measured / theoretical speed-up (1: the runtime turns every counted MAC saved into time)."""
        if self.speedup is None or not self.theoretical:
            return None
        return self.speedup / self.theoretical


def _target(r: Rec) -> str:
    return f"{r['target_kind']} {r['target_drop'] * 100:g}%"


def cells(records: Sequence[Rec]) -> list[Cell]:
    """Every (dataset, model, method, target, K, mode, batch) of the ok records' sweeps, seeds pooled."""
    groups: dict[tuple, list[tuple[Rec, Mapping[str, Any]]]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        for e in r.get("latency_sweep") or ():
            key = (r["dataset"], r["model"], r["method"], r.get("family", ""), _target(r), r.get("round_to") or 1,
                   e["mode"], e["batch"])
            groups.setdefault(key, []).append((r, e))
    out = []
    for (dataset, model, method, family, target, k, mode, batch), pairs in groups.items():
        ran = [e for _, e in pairs if e.get("speedup") is not None]
        theory = [r["dense_macs"] / r["macs"] for r, _ in pairs if r.get("macs") and r.get("dense_macs")]
        notes = sorted({e["note"] for _, e in pairs if e.get("note")})
        out.append(Cell(dataset=dataset, model=model, method=method, family=family, target=target, round_to=k,
                        mode=mode, batch=batch, device=next((e["device"] for e in ran if e.get("device")), ""),
                        speedup=mean_or_none([e["speedup"] for e in ran]),
                        dense_ms=mean_or_none([e["dense_ms"] for e in ran]),
                        deployed_ms=mean_or_none([e["deployed_ms"] for e in ran]),
                        theoretical=mean_or_none(theory), seeds=len(ran), note="; ".join(notes)))
    return sorted(out, key=lambda c: (c.dataset, c.model, c.mode, FAMILY_ORDER.get(c.family, 9), c.method,
                                      c.target, c.round_to, c.batch))


def _by(items: Sequence[Cell], *fields: str) -> dict[tuple, list[Cell]]:
    out: dict[tuple, list[Cell]] = {}
    for c in items:
        out.setdefault(tuple(getattr(c, f) for f in fields), []).append(c)
    return out


def _speed(c: Cell | None) -> str:
    if c is None:
        return ""
    if c.speedup is None:
        return "not run" + (f" ({_md_escape(c.note[:60])})" if c.note else "")
    eff = c.efficiency
    return f"{c.speedup:.2f}× ({eff:.2f})" if eff is not None else f"{c.speedup:.2f}×"


def sweep_markdown(records: Sequence[Rec]) -> str:
    """Per (dataset, model, mode): rows method × target × K, a column per batch, "measured× (measured/theoretical)"."""
    blocks = []
    for (dataset, model, mode), block in _by(cells(records), "dataset", "model", "mode").items():
        batches = sorted({c.batch for c in block})
        several_k = len({c.round_to for c in block}) > 1
        device = next((c.device for c in block if c.device), "")
        head = ["Method", "Target", *(["K"] if several_k else []), "Theoretical",
                *(f"b={b}" for b in batches)]
        lines = [f"### {dataset} / {model}: {mode}" + (f" ({device})" if device else ""), "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for (method, target, k), row in _by(block, "method", "target", "round_to").items():
            at = {c.batch: c for c in row}
            theory = row[0].theoretical
            lines.append("| " + " | ".join([method, target, *([str(k)] if several_k else []),
                                            f"{theory:.2f}×" if theory else "–",
                                            *(_speed(at.get(b)) for b in batches)]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def round_to_markdown(records: Sequence[Rec]) -> str:
    """K side by side, where a (dataset, model) was run at several K: per method and target, each K's
    FLOPs↓, fine-tuned accuracy and speed-up at its headline mode's throughput batch."""
    ok = [r for r in records if r.get("status") == "ok"]
    groups: dict[tuple, list[Rec]] = {}
    for r in ok:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    blocks = []
    for (dataset, model), rs in groups.items():
        ks = sorted({r.get("round_to") or 1 for r in rs})
        if len(ks) < 2:
            continue
        head = ["Method", "Target", *(f"K={k}: {what}" for k in ks for what in ("FLOPs↓", "Acc", "Speed-up b=T"))]
        lines = [f"### {dataset} / {model}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        by_point: dict[tuple[str, str], dict[int, list[Rec]]] = {}
        for r in rs:
            by_point.setdefault((r["method"], _target(r)), {}).setdefault(r.get("round_to") or 1, []).append(r)
        for (method, target), at in by_point.items():
            cells_: list[str] = []
            for k in ks:
                got = at.get(k, [])
                flops, acc, sp = (mean_or_none([r[key] for r in got if r.get(key) is not None])
                                  for key in ("flops_drop", "acc", "speedup_bT"))
                tput = {r.get("throughput_batch") for r in got} - {None}
                cells_ += [f"{100 * flops:.1f}" if flops is not None else "–",
                           f"{100 * acc:.2f}" if acc is not None else "–",
                           f"{sp:.2f}× (b={min(tput)})" if sp is not None and tput else "–"]
            lines.append("| " + " | ".join([method, target, *cells_]) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else ""


def median_efficiency(records: Sequence[Rec], *, mode: str, batch: int) -> float | None:
    """Median over (method, target, K) of measured / theoretical speed-up in ``mode`` at ``batch``."""
    effs = [c.efficiency for c in cells(records) if c.mode == mode and c.batch == batch and c.efficiency is not None]
    return statistics.median(effs) if effs else None


def latency_lines(records: Sequence[Rec]) -> list[str]:
    """The report section on latency as deployed (empty when no record has a latency sweep)."""
    sweep = sweep_markdown(records)
    if not sweep:
        return []
    modes = list(dict.fromkeys(c.mode for c in cells(records)))
    lines = ["## Latency by mode and batch", "",
             "Each cell: measured speed-up (dense / deployed latency, A/B in alternating rounds, mean over seeds) "
             "and in parentheses measured / theoretical, where theoretical = dense MACs / deployed MACs (1.00: every "
             "counted MAC saved shows as time). Modes:", "",
             *(f"- **{m}**: {MODE_TEXT.get(m, m)}." for m in modes), "", sweep]
    k_table = round_to_markdown(records)
    if k_table:
        lines += ["## Rounded to K", "",
                  "Deployed ranks and pruned widths as multiples of K (`--round-to`; K=1: as the target search put "
                  "them), side by side: FLOPs↓ (%), fine-tuned accuracy (%) and the headline speed-up at the "
                  "throughput batch.", "", k_table]
    return lines
