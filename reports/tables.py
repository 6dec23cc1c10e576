"""Paper-style tables (Markdown, LaTeX, CSV) and the iso-accuracy table, from result records.

Records are plain dicts as stored in results.jsonl. A table row is one (config, dataset, model,
method, target) operating point with its seeds aggregated: the mean and, with several seeds,
the half-width of the 95 % Student-t interval of that mean. Tables of different configurations
(config hashes) are never merged. A value is set in bold only where it beats the runner-up by
more than the noise (see ``best``); ΔAcc is taken against the one reference model per seed.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

Rec = Mapping[str, Any]
FAMILY_ORDER = {"lorita": 0, "lowrank": 1, "pruning": 2, "dense": 3, "control": 4}
# Controls (e.g. scratch:group-l2) are shown, never ranked: they answer a question about their cell.
UNRANKED = ("control",)
ISO_TOLERANCES_PP = (0.5, 1.0)
DEFAULT_TARGET_TOLERANCE = 0.01  # records without ``target_tolerance``: drops closer than 1 pp are ties
STAGES = ("fine-tuned", "zero-shot")
STAGE_KEY = {"fine-tuned": ("acc", "delta_acc"), "zero-shot": ("acc_zero_shot", "delta_acc_zero_shot")}

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (no scipy in reports).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean of ``values``, or ``None`` when there are none (a cell with nothing measured)."""
    return statistics.fmean(values) if values else None


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` ≥ 1 degrees of freedom (a table to 30,
    then the Cornish-Fisher expansion around the normal quantile, good to 1e-3)."""
    if df < 1:
        raise ValueError(f"t95 needs df >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def half_width95(values: Sequence[float]) -> float | None:
    """Half-width of the 95 % t-interval of the mean of ``values`` (t·s/√k); None with fewer than two."""
    return t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """One numeric column: where its value comes from, its display unit and how a best is judged.

    ``rule`` says when a row is marked best: "acc" (its 95 % interval over seeds lies above the
    runner-up's; never with one seed), "drop" (it beats the runner-up by more than the
    target-landing tolerance, and by more than the seed intervals when there are several),
    "speedup" (its interval, over seeds or from the A/B bootstrap, lies above the runner-up's),
    or None (nothing to mark). ``table`` False keeps the metric in the CSV only; ``paired`` names
    the Δ shown in parentheses beside the value in Markdown and LaTeX.
    """

    key: str
    header: str  # Markdown header; "b=T" becomes the throughput batch size
    latex: str
    csv: str  # CSV column stem, with its unit
    scale: float = 100.0  # record value × scale = displayed value (fractions → percent)
    digits: int = 2
    signed: bool = False
    rule: str | None = None
    suffix: str = ""
    spread: bool = True  # show "± half-width" when there are several seeds
    table: bool = True
    paired: str | None = None


METRICS = (
    Metric(key="ref_acc", header="Ref acc", latex="Ref acc", csv="ref_acc_pct", table=False),
    Metric(key="base_acc", header="Dense acc", latex="Dense acc", csv="base_acc_pct"),
    Metric(key="acc_zero_shot", header="Zero-shot acc (ΔAcc)", latex=r"Zero-shot acc ($\Delta$)",
           csv="acc_zero_shot_pct", rule="acc", paired="delta_acc_zero_shot"),
    Metric(key="delta_acc_zero_shot", header="ΔAcc zero-shot", latex=r"$\Delta$Acc zero-shot",
           csv="delta_acc_zero_shot_pp", signed=True, table=False),
    Metric(key="acc", header="Fine-tuned acc (ΔAcc)", latex=r"Fine-tuned acc ($\Delta$)", csv="acc_pct", rule="acc",
           paired="delta_acc"),
    Metric(key="delta_acc", header="ΔAcc", latex=r"$\Delta$Acc", csv="delta_acc_pp", signed=True, table=False),
    Metric(key="flops_drop", header="FLOPs↓", latex=r"FLOPs$\downarrow$", csv="flops_drop_pct", digits=1,
           rule="drop"),
    Metric(key="params_drop", header="Params↓", latex=r"Params$\downarrow$", csv="params_drop_pct", digits=1,
           rule="drop"),
    Metric(key="speedup_b1", header="Speed-up b=1", latex="Speed-up $b{=}1$", csv="speedup_b1", scale=1.0,
           suffix="×", rule="speedup"),
    Metric(key="speedup_b1_lo", header="", latex="", csv="speedup_b1_lo", scale=1.0, table=False),
    Metric(key="speedup_b1_hi", header="", latex="", csv="speedup_b1_hi", scale=1.0, table=False),
    Metric(key="speedup_bT", header="Speed-up b=T", latex="Speed-up $b{=}T$", csv="speedup_throughput",
           scale=1.0, suffix="×", rule="speedup"),
    Metric(key="speedup_bT_lo", header="", latex="", csv="speedup_throughput_lo", scale=1.0, table=False),
    Metric(key="speedup_bT_hi", header="", latex="", csv="speedup_throughput_hi", scale=1.0, table=False),
    # Wall times are costs, not verdicts: mean over seeds, no interval, nothing marked.
    Metric(key="finetune_wall_s", header="Fine-tune s", latex="Fine-tune s", csv="finetune_wall_s", scale=1.0,
           digits=1, spread=False),
    # Equal for every method by the budget rule; in the protocol line and the CSV.
    Metric(key="train_steps", header="", latex="", csv="train_steps", scale=1.0, digits=0, table=False),
    Metric(key="pretrain_wall_s", header="", latex="", csv="pretrain_wall_s", scale=1.0, table=False),
    Metric(key="train_wall_s", header="", latex="", csv="train_wall_s", scale=1.0, table=False),
    Metric(key="train_peak_mem_mb", header="", latex="", csv="train_peak_mem_mb", scale=1.0, table=False),
    Metric(key="finetune_peak_mem_mb", header="", latex="", csv="finetune_peak_mem_mb", scale=1.0, table=False),
)
_BY_KEY = {m.key: m for m in METRICS}
TABLE_METRICS = tuple(m for m in METRICS if m.table)
COLUMNS = ("Method", "N", "Target", *(m.header for m in TABLE_METRICS))


def latest(records: Iterable[Rec]) -> list[Rec]:
    """One record per run key, the last written (a resumed run supersedes an earlier failure)."""
    keep: dict[tuple, Rec] = {}
    for r in records:
        keep[(r.get("config_hash"), r["dataset"], r["model"], r["method"], r["target_kind"],
              r["target_drop"], r["seed"])] = r
    return list(keep.values())


def speedup(r: Rec, batch: str = "1") -> float | None:
    """The record's speed-up at batch 1 (``batch`` "1") or at the throughput batch ("T").

    Records with the A/B timing carry ``speedup_b1`` / ``speedup_bT`` (median of per-round
    ratios dense/deployed); older ones only the two medians, whose ratio is used instead.
    """
    if r.get(f"speedup_b{batch}") is not None:
        return float(r[f"speedup_b{batch}"])
    dense, mine = (("latency_dense_ms", "latency_ms") if batch == "1"
                   else ("throughput_dense_ms", "throughput_ms"))
    return r[dense] / r[mine] if r.get(dense) and r.get(mine) else None


def reference(r: Rec) -> tuple[float | None, str]:
    """What ΔAcc is taken against: ``(ref_acc, "ref")`` when the record has the reference
    model's accuracy, ``(None, "pending")`` when it was written before its seed's reference was
    known (no ΔAcc: never against the method's own dense model), else its own dense model's
    ``(base_acc, "base")`` (records before ``ref_acc`` existed), ``(None, "")`` with neither."""
    if r.get("ref_acc") is not None:
        return float(r["ref_acc"]), "ref"
    if r.get("ref_pending"):
        return None, "pending"
    if r.get("base_acc") is not None:
        return float(r["base_acc"]), "base"
    return None, ""


def delta(r: Rec, key: str = "acc") -> float | None:
    """``r[key]`` (a fraction) minus the record's reference accuracy; None when either is missing."""
    ref, kind = reference(r)
    if r.get(key) is None or ref is None:
        return r.get("delta_acc") if key == "acc" and kind == "" else None
    return float(r[key]) - ref


def _value(r: Rec, key: str) -> float | None:
    if key in ("speedup_b1", "speedup_bT"):
        return speedup(r, key[-1])
    if key == "delta_acc":
        v = delta(r, "acc")
    elif key == "delta_acc_zero_shot":
        v = delta(r, "acc_zero_shot")
    else:
        v = r.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def tolerance(r: Rec) -> float:
    """The record's target-landing tolerance (a fraction; 0.01 when not recorded)."""
    t = r.get("target_tolerance")
    return float(t) if t is not None else DEFAULT_TARGET_TOLERANCE


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One operating point: a method at a target in one configuration, seeds aggregated.

    ``values`` holds, per metric key, the successful runs' values in display units (percent,
    ratio, seconds). ``status`` is "ok" when at least one run succeeded, else the last run's
    status with its ``reason``. ``notes`` are caveats the report must show (the methods' notes,
    failures of some of the seeds, missed targets). ``reference`` says what ΔAcc was taken
    against over the ok runs: "ref" (the one reference model), "base" (the method's own dense
    model: old records) or "mixed". ``tolerance_pp`` is the target-landing tolerance in percent.
    """

    dataset: str
    model: str
    method: str
    family: str
    n: int | None
    target_kind: str
    target_drop: float
    runs: int
    ok_runs: int
    status: str
    config_hash: str = ""
    reason: str = ""
    notes: tuple[str, ...] = ()
    throughput_batch: int | None = None
    reference: str = "ref"
    tolerance_pp: float = DEFAULT_TARGET_TOLERANCE * 100
    pretrain_id: str = ""
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.target_kind} {self.target_drop * 100:g}%"

    def mean(self, key: str) -> float | None:
        vals = self.values.get(key, ())
        return statistics.fmean(vals) if vals else None

    def std(self, key: str) -> float | None:
        vals = self.values.get(key, ())
        return statistics.stdev(vals) if len(vals) > 1 else None

    def half_width(self, key: str) -> float | None:
        """Half-width of the 95 % t-interval of the mean over seeds; None with fewer than two."""
        return half_width95(self.values.get(key, ()))

    def interval(self, key: str) -> tuple[float, float] | None:
        """The 95 % interval the ranking uses (display units), or None where there is none.

        Over seeds: mean ± t·s/√k. A speed-up also has its A/B bootstrap interval (the mean of
        the records' lo and hi); with several seeds the union of both is used, with one seed the
        bootstrap interval alone. One seed and no bootstrap: no interval.
        """
        mean, h = self.mean(key), self.half_width(key)
        seeds = (mean - h, mean + h) if mean is not None and h is not None else None
        lo, hi = self.mean(f"{key}_lo"), self.mean(f"{key}_hi")
        boot = (lo, hi) if lo is not None and hi is not None else None
        if seeds and boot:
            return min(seeds[0], boot[0]), max(seeds[1], boot[1])
        return seeds or boot


def _sort_key(row: Row) -> tuple:
    return (row.config_hash, row.dataset, row.model, row.target_kind, row.target_drop,
            FAMILY_ORDER.get(row.family, 9), row.n if row.n is not None else 0, row.method)


def rows(records: Iterable[Rec]) -> list[Row]:
    """Table rows, one per (config, dataset, model, method, target), sorted by config, target,
    then family and N. Records of different config hashes are never aggregated together; records
    of a collapsed training (status "diverged") make no row (``reports.health.failure_lines``)."""
    groups: dict[tuple, list[Rec]] = {}
    for r in latest(records):
        if r.get("status") == "diverged":  # a collapsed training is listed under failures only
            continue
        groups.setdefault((r.get("config_hash") or "", r["dataset"], r["model"], r["method"], r["target_kind"],
                           r["target_drop"]), []).append(r)
    out = []
    for (chash, dataset, model, method, kind, drop), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        ok = [r for r in rs if r.get("status") == "ok"]
        bad = [r for r in rs if r.get("status") != "ok"]
        notes = list(dict.fromkeys(r["note"] for r in ok if r.get("note")))
        if ok and bad:
            notes += [f"{len(bad)} of {len(rs)} runs not ok (seed {r['seed']} {r.get('status')}: "
                      f"{r.get('reason') or 'no reason recorded'})" for r in bad[:1]]
        missed = [r for r in ok if r.get("target_missed")]
        if missed:
            notes.append(f"target missed: the achieved drop is more than the tolerance ({tolerance(missed[0]):.1%}) "
                         f"away from {kind} {drop * 100:g}% (seed {', '.join(str(r['seed']) for r in missed)})")
        values = {}
        for m in METRICS:
            vals = [_value(r, m.key) for r in ok]
            values[m.key] = tuple(v * m.scale for v in vals if v is not None)
        refs = {reference(r)[1] for r in ok} - {""}
        out.append(Row(dataset=dataset, model=model, method=method, family=rs[0].get("family", ""),
                       n=rs[0].get("n"), target_kind=kind, target_drop=drop, runs=len(rs), ok_runs=len(ok),
                       status="ok" if ok else bad[-1].get("status", "failed"), config_hash=chash,
                       reason="" if ok else (bad[-1].get("reason") or ""), notes=tuple(notes),
                       throughput_batch=next((r.get("throughput_batch") for r in ok if r.get("throughput_batch")),
                                             None),
                       reference=refs.pop() if len(refs) == 1 else ("mixed" if refs else ""),
                       tolerance_pp=max((tolerance(r) for r in rs), default=DEFAULT_TARGET_TOLERANCE) * 100,
                       pretrain_id=next((r["pretrain_id"] for r in rs if r.get("pretrain_id")), ""),
                       values=values))
    out.sort(key=_sort_key)
    return out


def _num(value: float, m: Metric, digits: int | None = None) -> str:
    d = m.digits if digits is None else digits
    return (f"{{:+.{d}f}}" if m.signed else f"{{:.{d}f}}").format(value)


def fmt(row: Row, m: Metric) -> str:
    """The cell of ``m`` in display units; "–" when unmeasured.

    ``mean`` with one seed, ``mean ± h`` with several (h: half-width of the 95 % t-interval
    of the mean). A speed-up with an interval shows it as ``mean× [lo, hi]``.
    """
    mean = row.mean(m.key)
    if mean is None:
        return "–"
    text = _num(mean, m)
    if m.rule == "speedup":
        iv = row.interval(m.key)
        # a speed-up is positive: a t-interval reaching below 0 (two noisy seeds) is shown from 0
        return text + m.suffix + (f" [{max(iv[0], 0.0):.{m.digits}f}, {iv[1]:.{m.digits}f}]" if iv else "")
    h = row.half_width(m.key)
    if h is not None and m.spread:
        text += f" ± {h:.{m.digits}f}"
    return text + m.suffix


def cell(row: Row, m: Metric) -> str:
    """``fmt`` with the paired Δ in parentheses (accuracy columns)."""
    text = fmt(row, m)
    if m.paired and text != "–":
        text += f" ({fmt(row, _BY_KEY[m.paired])})"
    return text


def best(block: Sequence[Row], m: Metric) -> set[int]:
    """Indices in ``block`` (rows at one target) whose value of ``m`` is best beyond the noise.

    At most one row is marked: the one with the best mean, and only when it beats the runner-up
    by more than the noise. "acc": both have a 95 % t-interval over seeds (so two or more seeds)
    and the two intervals do not overlap. "drop": the means differ by more than the target-landing
    tolerance, and the seed intervals, where both exist, do not overlap. "speedup": both have an
    interval (seeds or A/B bootstrap) and they do not overlap. Nothing when fewer than two rows
    have a value. Controls (``UNRANKED`` families) never compete.
    """
    if m.rule is None:
        return set()
    have = sorted(((v, i) for i, row in enumerate(block)
                   if row.family not in UNRANKED and (v := row.mean(m.key)) is not None), reverse=True)
    if len(have) < 2:
        return set()
    (top, i_top), (second, i_second) = have[0], have[1]
    a, b = block[i_top].interval(m.key), block[i_second].interval(m.key)
    if m.rule == "drop":
        tol = max(block[i_top].tolerance_pp, block[i_second].tolerance_pp)
        if top - second <= tol:
            return set()
        return {i_top} if a is None or b is None or a[0] > b[1] else set()
    return {i_top} if a is not None and b is not None and a[0] > b[1] else set()


def _blocks(rows_: Sequence[Any], by: tuple[str, ...]) -> dict[tuple, list[Any]]:
    out: dict[tuple, list[Any]] = {}
    for row in rows_:
        out.setdefault(tuple(getattr(row, a) for a in by), []).append(row)
    return out


def _headers(block: Sequence[Row]) -> list[Metric]:
    tput = next((r.throughput_batch for r in block if r.throughput_batch), None)
    return [replace(m, header=m.header.replace("b=T", f"b={tput or 'T'}"),
                    latex=m.latex.replace("{=}T", f"{{=}}{tput or 'T'}")) for m in TABLE_METRICS]


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _note_marks(block: Sequence[Row]) -> dict[str, int]:
    marks: dict[str, int] = {}
    for row in block:
        for note in row.notes:
            marks.setdefault(note, len(marks) + 1)
    return marks


def group_title(dataset: str, model: str, config_hash: str, *, several: bool,
                labels: Mapping[str, str] | None = None) -> str:
    """"dataset / model", naming the config (and what differs in it) when the report holds several."""
    title = f"{dataset} / {model}"
    if several:
        title += f" · config `{config_hash or 'unknown'}`"
        if labels and labels.get(config_hash):
            title += f" ({labels[config_hash]})"
    return title


def reference_line(block: Sequence[Row]) -> str:
    """The sentence under a table's heading: the reference accuracy all ΔAcc are taken against."""
    refs = [v for r in block for v in r.values.get("ref_acc", ())]
    kinds = {r.reference for r in block if r.status == "ok"}
    if refs and kinds == {"ref"}:
        seeds = max(len(r.values.get("ref_acc", ())) for r in block)
        # every ok row of a seed carries the same ref_acc: the mean over rows is the mean over seeds
        return (f"Reference accuracy (the plainly trained dense model every ΔAcc is taken against): "
                f"{statistics.fmean(refs):.2f} % (mean over {seeds} seed{'s' if seeds > 1 else ''}).")
    if "pending" in kinds:
        n = sum(1 for r in block if r.reference == "pending")
        return (f"{n} row{'s' if n != 1 else ''} await{'s' if n == 1 else ''} the reference of a seed (its plain "
                "training failed or has not reported): no ΔAcc there until a later run into the folder trains it; "
                "never taken against the method's own dense model.")
    if kinds == {"base"}:
        return ("No reference accuracy in these records (written before `ref_acc` existed): ΔAcc is each "
                "method's accuracy minus its own dense model's.")
    return ("Some records lack the reference accuracy: their ΔAcc is taken against the method's own dense model, "
            "the others' against the reference model.") if kinds else ""


def markdown(rows_: Sequence[Row], *, labels: Mapping[str, str] | None = None) -> str:
    """One GitHub-Markdown table per (config, dataset, model); bold per column and target where
    ``best`` finds a winner beyond the noise.

    Failed and skipped operating points keep their row, with status and reason in the first
    accuracy column; notes become numbered footnotes under the table. ``labels`` maps a config
    hash to what differs in it, for the headings when there are several configs.
    """
    several = len({r.config_hash for r in rows_}) > 1
    parts = []
    for (chash, dataset, model), block in _blocks(rows_, ("config_hash", "dataset", "model")).items():
        metrics = _headers(block)
        header = ["Method", "N", "Target", *(m.header for m in metrics)]
        lines = [f"### {group_title(dataset, model, chash, several=several, labels=labels)}", ""]
        if line := reference_line(block):
            lines += [line, ""]
        lines += ["| " + " | ".join(header) + " |",
                  "|" + "|".join("---" if i < 3 else "--:" for i in range(len(header))) + "|"]
        marks = _note_marks(block)
        for _, target_rows in _blocks(block, ("target_kind", "target_drop")).items():
            bold = {m.key: best(target_rows, m) for m in metrics}
            for i, row in enumerate(target_rows):
                sup = "".join(f"<sup>{marks[n]}</sup>" for n in row.notes)
                cells = [row.method + sup, str(row.n) if row.n is not None else "–", row.target]
                if row.status != "ok":
                    cells += ["–", _md_escape(f"{row.status}: {row.reason or 'no reason recorded'}"),
                              *("–" for _ in metrics[2:])]
                else:
                    cells += [f"**{cell(row, m)}**" if i in bold[m.key] else cell(row, m) for m in metrics]
                lines.append("| " + " | ".join(cells) + " |")
        if marks:
            lines += [""] + [f"<sup>{k}</sup> {_md_escape(note)}  " for note, k in marks.items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def comparison_table(records: Sequence[Rec]) -> str:
    """The Markdown results tables of ``records`` (what ``lorita-bench run`` prints)."""
    return markdown(rows(records))


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (for method names, reasons, notes)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _latex_number(text: str) -> str:
    text = (text.replace(" ± ", r" $\pm$ ").replace("×", r"$\times$").replace("–", "--")
            .replace("(-", "($-$").replace("(+", "($+$"))
    return ("$-$" + text[1:]) if text.startswith("-") else text


def latex(rows_: Sequence[Row], *, caption: str = "", labels: Mapping[str, str] | None = None) -> str:
    """One booktabs ``table`` per (config, dataset, model), the same content as ``markdown``
    (needs ``booktabs``)."""
    several = len({r.config_hash for r in rows_}) > 1
    parts = ["% Generated by lorita-bench; needs \\usepackage{booktabs}."]
    for (chash, dataset, model), block in _blocks(rows_, ("config_hash", "dataset", "model")).items():
        metrics = _headers(block)
        ncols = 3 + len(metrics)
        marks = _note_marks(block)
        title = caption or group_title(dataset, model, chash, several=several, labels=labels).replace("`", "")
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{{latex_escape(title)}}}",
                 rf"\begin{{tabular}}{{lll{'r' * len(metrics)}}}", r"\toprule",
                 " & ".join(["Method", "$N$", "Target", *(m.latex for m in metrics)]) + r" \\", r"\midrule"]
        groups = list(_blocks(block, ("target_kind", "target_drop")).values())
        for g, target_rows in enumerate(groups):
            bold = {m.key: best(target_rows, m) for m in metrics}
            for i, row in enumerate(target_rows):
                sup = "".join(rf"\textsuperscript{{{marks[n]}}}" for n in row.notes)
                cells = [latex_escape(row.method) + sup, str(row.n) if row.n is not None else "--",
                         latex_escape(row.target)]
                if row.status != "ok":
                    cells.append(rf"\multicolumn{{{ncols - 3}}}{{l}}{{{latex_escape(row.status)}: "
                                 rf"{latex_escape(row.reason or 'no reason recorded')}}}")
                else:
                    for m in metrics:
                        text = _latex_number(cell(row, m))
                        cells.append(rf"\textbf{{{text}}}" if i in bold[m.key] else text)
                lines.append(" & ".join(cells) + r" \\")
            if g < len(groups) - 1:
                lines.append(r"\midrule")
        lines += [r"\bottomrule", r"\end{tabular}"]
        foot = [latex_escape(reference_line(block))] if reference_line(block) else []
        foot += [rf"\textsuperscript{{{k}}}{latex_escape(note)}" for note, k in marks.items()]
        if foot:
            lines.append(r"\par\footnotesize " + "; ".join(foot))
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(rows_: Sequence[Row]) -> str:
    """One CSV line per operating point: identification, status, notes, then each metric's
    mean, std and 95 % t-interval half-width in its display unit (``acc_pct_mean``,
    ``delta_acc_pp_std``, ``acc_zero_shot_pct_ci95``, …), unrounded."""
    buf = io.StringIO()
    head = ["config_hash", "dataset", "model", "method", "family", "n", "target_kind", "target_drop", "runs",
            "ok_runs", "status", "reason", "note", "throughput_batch", "delta_reference", "target_tolerance_pct",
            "pretrain_id"]
    for m in METRICS:
        head += [f"{m.csv}_mean", f"{m.csv}_std", f"{m.csv}_ci95"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for row in rows_:
        line = [row.config_hash, row.dataset, row.model, row.method, row.family, "" if row.n is None else row.n,
                row.target_kind, row.target_drop, row.runs, row.ok_runs, row.status, row.reason,
                "; ".join(row.notes), row.throughput_batch or "", row.reference, row.tolerance_pp, row.pretrain_id]
        for m in METRICS:
            line += ["" if v is None else repr(v) for v in (row.mean(m.key), row.std(m.key), row.half_width(m.key))]
        w.writerow(line)
    return buf.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class IsoRow:
    """For one method and stage ("fine-tuned" or "zero-shot"): the largest FLOPs↓ and Params↓
    (percent) among its operating points whose mean ΔAcc at that stage stays within each
    tolerance, with the mean accuracy (percent) at the point each reports; ``None`` where no
    point does. ``dense_acc`` is the method's own dense accuracy (percent), ``seeds`` the
    fewest ok seeds of its points."""

    dataset: str
    model: str
    method: str
    family: str
    n: int | None
    within: tuple[tuple[float, float | None, float | None], ...]  # (tolerance pp, FLOPs↓ %, Params↓ %)
    # Per tolerance: True when the 95 % t-interval over seeds of ΔAcc would move the entry (the
    # point it reports could fall out, or a larger-drop point come in): its rank is within the noise.
    fragile: tuple[bool, ...] = ()
    acc_at: tuple[tuple[float | None, float | None], ...] = ()  # per tolerance: acc at the FLOPs / Params point
    stage: str = "fine-tuned"
    config_hash: str = ""
    dense_acc: float | None = None
    seeds: int = 1
    tolerance_pp: float = DEFAULT_TARGET_TOLERANCE * 100


def iso_accuracy(rows_: Sequence[Row], tolerances_pp: Sequence[float] = ISO_TOLERANCES_PP) -> list[IsoRow]:
    """The iso-accuracy table: per (config, dataset, model, method) and stage, the largest drops
    with ΔAcc ≥ −tolerance.

    ΔAcc is the mean over seeds of each point's accuracy minus the reference model's (records
    without ``ref_acc``: the method's own dense model's), in percentage points: after fine-tuning
    ("fine-tuned") and before it ("zero-shot", where the records carry ``acc_zero_shot``). Only
    the swept targets are candidates (no interpolation between them).
    """
    out = []
    for (chash, dataset, model, method), block in _blocks(rows_, ("config_hash", "dataset", "model",
                                                                   "method")).items():
        for stage in STAGES:
            acc_key, dkey = STAGE_KEY[stage]
            ok = [r for r in block if r.status == "ok" and r.mean(dkey) is not None]
            if not ok:
                continue
            within, fragile, acc_at = [], [], []
            for tol in tolerances_pp:
                # 1e-9: a drop of exactly the tolerance counts as within it despite float rounding
                good = [r for r in ok if r.mean(dkey) >= -tol - 1e-9]
                picks = [max((r for r in good if r.mean(k) is not None), key=lambda r, k=k: r.mean(k), default=None)
                         for k in ("flops_drop", "params_drop")]
                within.append((tol, *(p.mean(k) if p else None
                                      for p, k in zip(picks, ("flops_drop", "params_drop"), strict=True))))
                acc_at.append(tuple(p.mean(acc_key) if p else None for p in picks))
                pick = picks[1]
                beyond = [r for r in ok if r not in good
                          and (r.mean("params_drop") or 0.0) > ((pick.mean("params_drop") or 0.0) if pick else -1)]

                def crosses(r: Row, tol: float = tol, dkey: str = dkey) -> bool:
                    iv = r.interval(dkey)
                    return iv is not None and iv[0] < -tol <= iv[1]

                fragile.append(any(crosses(r) for r in ([pick] if pick else []) + beyond))
            out.append(IsoRow(dataset=dataset, model=model, method=method, family=block[0].family, n=block[0].n,
                              within=tuple(within), fragile=tuple(fragile), acc_at=tuple(acc_at), stage=stage,
                              config_hash=chash, dense_acc=statistics.fmean(
                                  v for r in ok for v in r.values.get("base_acc", ())) if any(
                                  r.values.get("base_acc") for r in ok) else None,
                              seeds=min(len(r.values.get(dkey, ())) for r in ok),
                              tolerance_pp=max(r.tolerance_pp for r in ok)))
    out.sort(key=lambda r: (r.config_hash, r.dataset, r.model, STAGES.index(r.stage), FAMILY_ORDER.get(r.family, 9),
                            r.n or 0, r.method))
    return out


def iso_best(block: Sequence[IsoRow], j: int, k: int) -> int | None:
    """Index in ``block`` (one stage) of the entry of column (tolerance ``j``, ``k`` 1: FLOPs↓,
    2: Params↓) that is best beyond the noise, or None.

    The top entry wins only when it exceeds the runner-up by more than the target-landing
    tolerance, both rest on at least two seeds, and neither is fragile (†): with one seed
    whether a point is within the tolerance is itself a single draw.
    """
    have = sorted(((v, i) for i, r in enumerate(block)
                   if r.family not in UNRANKED and (v := r.within[j][k]) is not None), reverse=True)
    if len(have) < 2:
        return None
    (top, i), (second, i2) = have[0], have[1]
    a, b = block[i], block[i2]
    if top - second <= max(a.tolerance_pp, b.tolerance_pp) or min(a.seeds, b.seeds) < 2:
        return None
    return None if (a.fragile and a.fragile[j]) or (b.fragile and b.fragile[j]) else i


def _iso_cells(block: Sequence[IsoRow]) -> tuple[list[str], list[list[str]]]:
    headers, columns = [], []
    for j, (tol, _, _) in enumerate(block[0].within):
        for k, what in ((1, "FLOPs↓"), (2, "Params↓")):
            headers.append(f"{what} @ ΔAcc ≥ −{tol:g} pp (acc)")
            win = {}
            for stage_rows in _blocks(block, ("stage",)).values():
                i = iso_best(stage_rows, j, k)
                if i is not None:
                    win[id(stage_rows[i])] = True
            col = []
            for r in block:
                v = r.within[j][k]
                if v is None:  # † here: a larger-drop point could come within the tolerance
                    col.append("–" + ("†" if r.fragile and r.fragile[j] else ""))
                    continue
                acc = r.acc_at[j][k - 1] if r.acc_at else None
                text = f"{v:.1f}" + (f" ({acc:.2f})" if acc is not None else "")
                text = f"**{text}**" if id(r) in win else text
                col.append(text + ("†" if r.fragile and r.fragile[j] else ""))
            columns.append(col)
    return headers, columns


def _dense(r: IsoRow) -> str:
    return "–" if r.dense_acc is None else f"{r.dense_acc:.2f}"


def iso_markdown(iso: Sequence[IsoRow], *, labels: Mapping[str, str] | None = None) -> str:
    """The iso-accuracy table in GitHub Markdown, one per (config, dataset, model), fine-tuned
    rows then zero-shot rows; bold where ``iso_best`` finds a winner."""
    several = len({r.config_hash for r in iso}) > 1
    parts = []
    for (chash, dataset, model), block in _blocks(iso, ("config_hash", "dataset", "model")).items():
        headers, columns = _iso_cells(block)
        lines = [f"### {group_title(dataset, model, chash, several=several, labels=labels)}", "",
                 "| " + " | ".join(["Method", "N", "Stage", "Dense acc", *headers]) + " |",
                 "|---|---|---|--:|" + "|".join("--:" for _ in headers) + "|"]
        for i, r in enumerate(block):
            lines.append("| " + " | ".join([r.method, "–" if r.n is None else str(r.n), r.stage, _dense(r),
                                            *(c[i] for c in columns)]) + " |")
        if any(any(r.fragile) for r in block):
            lines += ["", "† the 95 % t-interval of ΔAcc over seeds crosses the tolerance at this entry's point "
                      "or at a larger-drop point: another set of seeds could move this entry, so its ranking "
                      "against the others is within the noise."]
        if max(r.seeds for r in block) < 2:
            lines += ["", "One seed: whether a point stays within the tolerance is a single draw, so no entry is "
                      "marked best."]
        elif min(r.seeds for r in block) < 2:
            lines += ["", "Entries resting on one seed (the others failed) are never marked best."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def iso_latex(iso: Sequence[IsoRow]) -> str:
    """The iso-accuracy table as booktabs LaTeX."""
    several = len({r.config_hash for r in iso}) > 1
    parts = ["% Generated by lorita-bench; needs \\usepackage{booktabs}."]
    for (chash, dataset, model), block in _blocks(iso, ("config_hash", "dataset", "model")).items():
        headers, columns = _iso_cells(block)
        tex_headers = [h.replace("FLOPs↓", r"FLOPs$\downarrow$").replace("Params↓", r"Params$\downarrow$")
                       .replace("ΔAcc ≥ −", r"$\Delta$Acc $\geq -$") for h in headers]
        title = group_title(dataset, model, chash, several=several).replace("`", "")
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{Iso-accuracy, {latex_escape(title)}}}",
                 rf"\begin{{tabular}}{{lllr{'r' * len(headers)}}}", r"\toprule",
                 " & ".join(["Method", "$N$", "Stage", "Dense acc", *tex_headers]) + r" \\", r"\midrule"]
        for i, r in enumerate(block):
            cells = [c[i].replace("–", "--").replace("†", r"$^\dagger$") for c in columns]
            cells = [re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", c) for c in cells]
            lines.append(" & ".join([latex_escape(r.method), "--" if r.n is None else str(r.n), r.stage,
                                     _dense(r).replace("–", "--"), *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def iso_csv(iso: Sequence[IsoRow]) -> str:
    """The iso-accuracy table as CSV, one line per method and stage, drops and the accuracy at
    each reported point in percent (empty: none within)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    tols = [t for t, _, _ in iso[0].within] if iso else list(ISO_TOLERANCES_PP)
    w.writerow(["config_hash", "dataset", "model", "method", "family", "n", "stage", "dense_acc_pct", "seeds",
                *(f"{what}_within_{t:g}pp" for t in tols
                  for what in ("flops_drop_pct", "params_drop_pct", "acc_pct_at_flops", "acc_pct_at_params",
                               "fragile"))])
    for r in iso:
        cells = []
        for j, (_, f, p) in enumerate(r.within):
            fa, pa = r.acc_at[j] if r.acc_at else (None, None)
            cells += ["" if v is None else repr(v) for v in (f, p, fa, pa)]
            cells.append(bool(r.fragile and r.fragile[j]))
        w.writerow([r.config_hash, r.dataset, r.model, r.method, r.family, "" if r.n is None else r.n, r.stage,
                    "" if r.dense_acc is None else repr(r.dense_acc), r.seeds, *cells])
    return buf.getvalue()


def runs_markdown(records: Iterable[Rec]) -> str:
    """Every run unaggregated (one line per seed): status, accuracies, counts and latencies; runs of
    a collapsed training are under failures instead (``reports.health``)."""
    recs = sorted((r for r in latest(records) if r.get("status") != "diverged"),
                  key=lambda r: (r.get("config_hash") or "", r["dataset"], r["model"],
                                                   r["target_kind"], r["target_drop"],
                                                   FAMILY_ORDER.get(r.get("family", ""), 9), r.get("n") or 0,
                                                   r["method"], r["seed"]))
    tput = next((r["throughput_batch"] for r in recs if r.get("throughput_batch")), "T")
    head = ["Dataset", "Model", "Method", "Target", "Seed", "Status", "Ref acc", "Dense acc", "Zero-shot acc",
            "Acc", "ΔAcc", "Params", "MACs", "Latency b=1 ms (dense)", f"Latency b={tput} ms (dense)", "Config"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def num(v: Any, f: str) -> str:
        return "–" if v is None else format(v, f)

    def pct(v: Any) -> str:
        return "–" if v is None else f"{v * 100:.2f}"

    for r in recs:
        ok = r.get("status") == "ok"
        status = r.get("status", "") if ok else _md_escape(f"{r.get('status')}: {r.get('reason') or ''}")
        d = delta(r) if ok else None
        lines.append("| " + " | ".join([
            r["dataset"], r["model"], r["method"], f"{r['target_kind']} {r['target_drop'] * 100:g}%",
            str(r["seed"]), status, pct(r.get("ref_acc")), pct(r.get("base_acc")),
            pct(r.get("acc_zero_shot")) if ok else "–", pct(r.get("acc")) if ok else "–",
            num(d * 100 if d is not None else None, "+.2f"),
            num(r.get("params"), ",d") if isinstance(r.get("params"), int) else num(r.get("params"), ",.0f"),
            num(r.get("macs"), ",.0f"),
            f"{num(r.get('latency_ms'), '.3f')} ({num(r.get('latency_dense_ms'), '.3f')})",
            f"{num(r.get('throughput_ms'), '.3f')} ({num(r.get('throughput_dense_ms'), '.3f')})",
            f"`{r.get('config_hash', '')}`"]) + " |")
    return "\n".join(lines) + "\n"
