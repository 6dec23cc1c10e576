"""Write docs/records.md, the reference of every ``Record`` field, from the dataclass itself.

    python scripts/record_fields.py docs/records.md

Names, types and defaults come from ``bench.records.results.Record``; each field's description is
the comment written beside it in ``results.py`` (the lines right above it, or at the end of its
line), else its line in ``NOTES`` below. A field with neither fails, naming the field, so that a new
field cannot reach the reference undescribed; ``tests/test_docs.py`` fails when the committed file is
not what this script writes.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

from bench.records import results
from bench.records.results import Record

# Fields results.py leaves uncommented (their names say most of it); a comment there wins.
NOTES = {
    "dataset": "registered data set name (`lorita-bench list`)",
    "model": "registered model name, or `timm:<arch>`",
    "method": "registered method name",
    "family": "`lorita`, `pruning` or `dense`",
    "n": "LoRITa's number of factors N; null for every other family",
    "target_kind": "`params` or `flops`: what the target drop counts",
    "target_drop": "the target drop, a fraction (0.7 = 70 % fewer)",
    "seed": "the seed of the training and of everything random after it",
    "status": "`ok`, or why the run gave no numbers (`failed`, `skipped`, `diverged`; "
              "`bench.records.results.STATUSES`)",
    "reason": "why a run that is not `ok` is not (an exception, a method that does not apply, a collapse)",
    "base_acc": "top-1 test accuracy of the method's own dense model (last epoch), a fraction",
    "acc": "top-1 test accuracy of the compressed model after fine-tuning, a fraction",
    "base_acc_top5": "top-5 test accuracy of the dense model, where there are more than 10 classes",
    "acc_top5": "top-5 test accuracy after fine-tuning, where there are more than 10 classes",
    "delta_acc": "`acc` − `ref_acc`: the ΔAcc of the tables, a fraction",
    "base_val_acc": "validation accuracy of the method's own dense model",
    "best_val_epoch": "the epoch `base_acc_val_selected` was taken at (chosen on validation)",
    "val_acc": "validation accuracy of the compressed model after fine-tuning",
    "dense_params": "parameters of the dense model (torch-pruning's counter)",
    "params": "parameters of the deployed model (for unstructured pruning: the non-zero ones)",
    "params_drop": "1 − params / dense_params",
    "dense_macs": "MACs per sample of the dense model (FLOPs = 2·MACs)",
    "macs": "MACs per sample of the deployed model, as it runs",
    "flops_drop": "1 − macs / dense_macs",
    "achieved_drop": "the drop the method reports having reached, of the target's kind",
    "layers": "per layer, the kept rank (LoRITa) or channels (pruning)",
    "note": "caveats the report must show (a missed target, sparse weights on dense kernels, …)",
    "latency_device": "the device latency was timed on (CPU model or GPU name)",
    "latency_batch": "batch size of the latency measurement (1)",
    "latency_dense_ms": "median latency of the dense model at `latency_batch`, ms",
    "latency_dense_iqr_ms": "its interquartile range, ms",
    "latency_ms": "median latency of the deployed model at `latency_batch`, ms",
    "latency_iqr_ms": "its interquartile range, ms",
    "throughput_batch": "batch size T of the second latency measurement",
    "throughput_dense_ms": "median time of the dense model for one batch of T, ms",
    "throughput_ms": "median time of the deployed model for one batch of T, ms",
    "pretrain_steps": "optimizer steps before compression",
    "finetune_steps": "optimizer steps of fine-tuning at this target",
    "train_steps": "pretrain_steps + finetune_steps: identical for every method of a run (checked)",
    "finetune_wall_s": "wall time of this target's fine-tuning, s",
    "versions": "versions of Python, torch, torchvision, torch-pruning, timm, … that made the record",
    "config_hash": "hash of the configuration fields that determine the trained models and numbers "
                   "(`bench.records.sources.config_hash`); a folder holds one",
    "allocation_val_acc": "with `auto`: each candidate allocation's zero-shot validation accuracy",
    "finetune_peak_mem_mb": "peak memory of fine-tuning at this target, MiB (as `train_peak_mem_mb`)",
    "finetune_decay_budget": "the decay budget of fine-tuning (as `pretrain_decay_budget`)",
    "ref_val_acc": "validation accuracy of the reference model",
    "val_acc_zero_shot": "validation accuracy of the compressed model before fine-tuning",
    "speedup_b1_lo": "lower end of the 95 % bootstrap interval of `speedup_b1`",
    "speedup_b1_hi": "upper end of the 95 % bootstrap interval of `speedup_b1`",
    "speedup_bT": "dense / deployed time at batch `throughput_batch`, median of the per-round ratios",
    "speedup_bT_lo": "lower end of the 95 % bootstrap interval of `speedup_bT`",
    "speedup_bT_hi": "upper end of the 95 % bootstrap interval of `speedup_bT`",
    "target_missed": "the counted drop is more than `target_tolerance` away from the target (see `note`)",
}


def _comments() -> dict[str, str]:
    """Each ``Record`` field's comment in results.py: the ``#`` lines right above it, or its line's end."""
    source = Path(results.__file__).read_text()
    lines = source.splitlines()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Record")
    found = {}
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        line = lines[node.lineno - 1]
        above, i = [], node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        text = " ".join(above + ([trailing] if trailing else []))
        if text:
            found[node.target.id] = text.replace("``", "`")
    return found


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{json.dumps(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "required"


def render() -> str:
    """docs/records.md as this checkout's ``Record`` defines it; ``ValueError`` naming undescribed fields."""
    comments = _comments()
    fields = dataclasses.fields(Record)
    missing = [f.name for f in fields if f.name not in comments and f.name not in NOTES]
    if missing:
        raise ValueError(f"Record fields without a description: {', '.join(missing)}; add a comment beside "
                         "the field in bench/records/results.py (or a line in scripts/record_fields.py's NOTES)")
    # A "|" inside a table cell, code span or not, must be escaped.
    rows = [f"| `{f.name}` | `{str(f.type).replace('|', chr(92) + '|')}` | {_default(f)} | "
            f"{comments.get(f.name) or NOTES[f.name]} |" for f in fields]
    return "\n".join([
        "# Record fields",
        "",
        "One record per (dataset, model, method, target, seed), one JSON object a line in a run's",
        "`results.jsonl` (and in `extra_info` of the pytest-benchmark JSON). Accuracies and drops are",
        "fractions (0–1); null where a value was not measured (a failed run, top-5 with 10 classes,",
        "`gpu_s` on a CPU). Generated from `bench.records.results.Record`; after a change of its fields:",
        "",
        "```bash",
        "python scripts/record_fields.py docs/records.md",
        "```",
        "",
        "| Field | Type | Default | Meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


def main(argv: list[str]) -> int:
    """Write ``render()`` to the one path in ``argv``; exit code 2 with a usage line otherwise."""
    if len(argv) != 1:
        print("usage: python scripts/record_fields.py docs/records.md", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
