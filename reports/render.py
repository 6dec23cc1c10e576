"""A report folder: ``report.md`` with the comparison table and the protocol it was measured under."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reports.tables import comparison_table, latest


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def protocol_lines(records: Sequence[Mapping[str, Any]], config: Mapping[str, Any] | None) -> list[str]:
    ok = [r for r in records if r.get("status") == "ok"]
    lines = ["## Protocol", ""]
    if config:
        b = config.get("budget", {})
        lines.append(f"- Budget (identical for every method): {b.get('epochs')} epochs in all = "
                     f"{b.get('epochs', 0) - b.get('finetune_epochs', 0)} before compression + "
                     f"{b.get('finetune_epochs')} fine-tuning after; {b.get('optimizer')} lr {b.get('lr')} "
                     f"(fine-tune {b.get('finetune_lr')}), {b.get('schedule')} schedule, batch "
                     f"{b.get('batch_size')}, weight decay {b.get('weight_decay')} "
                     f"({'coupled L2' if b.get('optimizer') == 'sgd' else 'decoupled'}).")
    steps = sorted({r["train_steps"] for r in ok})
    if steps:
        lines.append(f"- Optimizer steps per method: {', '.join(map(str, steps))}.")
    lines += [
        "- Accuracy: top-1 on the test split, measured once at the end; nothing is selected on it "
        "(targets are met by counting, not by accuracy).",
        "- ΔAcc: accuracy of the compressed, fine-tuned model minus that of the same method's dense "
        "model before compression (for LoRITa, the merged model).",
        "- FLOPs↓ and Params↓: measured on the deployed model (LoRITa: the factorized model; pruning: "
        "the pruned model) with torch-pruning's counter; FLOPs = 2·MACs.",
    ]
    devs = sorted({r["latency_device"] for r in ok if r.get("latency_device")})
    if devs:
        lines.append(f"- Speed-up: dense latency / deployed latency, median of several rounds after "
                     f"warm-up, eval mode, on {', '.join(devs)}.")
    vers = next((r.get("versions") for r in ok if r.get("versions")), None)
    if vers:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())) + ".")
    return lines


def render(records: Sequence[Mapping[str, Any]], out_dir: Path, *, config: Mapping[str, Any] | None = None,
           title: str = "LoRITa vs structured pruning") -> Path:
    """Write ``out_dir/report.md`` for ``records`` (dicts as stored in results.jsonl); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = latest(records)
    text = "\n".join([f"# {title}", "", comparison_table(records), *protocol_lines(records, config), ""])
    path = out_dir / "report.md"
    _write(path, text)
    return path
