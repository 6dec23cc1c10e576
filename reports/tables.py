"""Paper-style tables (Markdown, LaTeX, CSV) and the iso-accuracy table, from result records.

Records are plain dicts as stored in results.jsonl. A table row is one (dataset, model,
method, target) operating point with its seeds aggregated as mean ± std; the best value of
each column within one operating point is set in bold.
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
FAMILY_ORDER = {"lorita": 0, "pruning": 1, "dense": 2}
ISO_TOLERANCES_PP = (0.5, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """One numeric column: where its value comes from, its display unit and which way is better."""

    key: str
    header: str  # Markdown header; "b=T" becomes the throughput batch size
    latex: str
    csv: str  # CSV column stem, with its unit
    scale: float = 100.0  # record value × scale = displayed value (fractions → percent)
    digits: int = 2
    signed: bool = False
    better: str | None = "max"  # "max", "min", or None (nothing to bold)
    suffix: str = ""
    spread: bool = True  # show "± std" when there are several seeds


METRICS = (
    Metric(key="base_acc", header="Base acc", latex="Base acc", csv="base_acc_pct"),
    Metric(key="acc", header="Acc", latex="Acc", csv="acc_pct"),
    Metric(key="delta_acc", header="ΔAcc", latex=r"$\Delta$Acc", csv="delta_acc_pp", signed=True),
    Metric(key="flops_drop", header="FLOPs↓", latex=r"FLOPs$\downarrow$", csv="flops_drop_pct", digits=1),
    Metric(key="params_drop", header="Params↓", latex=r"Params$\downarrow$", csv="params_drop_pct", digits=1),
    Metric(key="speedup_b1", header="Speed-up b=1", latex="Speed-up $b{=}1$", csv="speedup_b1", scale=1.0,
           suffix="×"),
    Metric(key="speedup_bT", header="Speed-up b=T", latex="Speed-up $b{=}T$", csv="speedup_throughput",
           scale=1.0, suffix="×"),
    # Equal for every method by the budget rule, so there is no best to mark.
    Metric(key="train_steps", header="Train steps", latex="Steps", csv="train_steps", scale=1.0, digits=0,
           better=None, spread=False),
    Metric(key="train_wall_s", header="Train s", latex="Train s", csv="train_wall_s", scale=1.0, digits=1,
           better="min"),
)
COLUMNS = ("Method", "N", "Target", *(m.header for m in METRICS))


def latest(records: Iterable[Rec]) -> list[Rec]:
    """One record per run key, the last written (a resumed run supersedes an earlier failure)."""
    keep: dict[tuple, Rec] = {}
    for r in records:
        keep[(r.get("config_hash"), r["dataset"], r["model"], r["method"], r["target_kind"],
              r["target_drop"], r["seed"])] = r
    return list(keep.values())


def speedup(r: Rec, batch: str = "1") -> float | None:
    """Dense latency / deployed latency, both measured in the same run; ``batch`` "1" or "T"."""
    dense, mine = (("latency_dense_ms", "latency_ms") if batch == "1"
                   else ("throughput_dense_ms", "throughput_ms"))
    return r[dense] / r[mine] if r.get(dense) and r.get(mine) else None


def _value(r: Rec, key: str) -> float | None:
    if key == "speedup_b1":
        return speedup(r, "1")
    if key == "speedup_bT":
        return speedup(r, "T")
    v = r.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One operating point: a method at a target, seeds aggregated.

    ``values`` holds, per metric key, the successful runs' values in display units (percent,
    ratio, steps, seconds). ``status`` is "ok" when at least one run succeeded, else the last
    run's status with its ``reason``. ``notes`` are caveats the report must show (the methods'
    notes, and failures of some of the seeds).
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
    reason: str = ""
    notes: tuple[str, ...] = ()
    throughput_batch: int | None = None
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


def _sort_key(row: Row) -> tuple:
    return (row.dataset, row.model, row.target_kind, row.target_drop, FAMILY_ORDER.get(row.family, 9),
            row.n if row.n is not None else 0, row.method)


def rows(records: Iterable[Rec]) -> list[Row]:
    """Table rows, one per (dataset, model, method, target), sorted by target then family and N."""
    groups: dict[tuple, list[Rec]] = {}
    for r in latest(records):
        groups.setdefault((r["dataset"], r["model"], r["method"], r["target_kind"], r["target_drop"]), []).append(r)
    out = []
    for (dataset, model, method, kind, drop), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        ok = [r for r in rs if r.get("status") == "ok"]
        bad = [r for r in rs if r.get("status") != "ok"]
        notes = list(dict.fromkeys(r["note"] for r in ok if r.get("note")))
        if ok and bad:
            notes += [f"{len(bad)} of {len(rs)} runs not ok (seed {r['seed']} {r.get('status')}: "
                      f"{r.get('reason') or 'no reason recorded'})" for r in bad[:1]]
        values = {}
        for m in METRICS:
            vals = [_value(r, m.key) for r in ok]
            values[m.key] = tuple(v * m.scale for v in vals if v is not None)
        out.append(Row(dataset=dataset, model=model, method=method, family=rs[0].get("family", ""),
                       n=rs[0].get("n"), target_kind=kind, target_drop=drop, runs=len(rs), ok_runs=len(ok),
                       status="ok" if ok else bad[-1].get("status", "failed"),
                       reason="" if ok else (bad[-1].get("reason") or ""), notes=tuple(notes),
                       throughput_batch=next((r.get("throughput_batch") for r in ok if r.get("throughput_batch")),
                                             None),
                       values=values))
    out.sort(key=_sort_key)
    return out


def fmt(row: Row, m: Metric) -> str:
    """``mean`` or ``mean ± std`` (several seeds) in the metric's display unit; "–" when unmeasured."""
    mean = row.mean(m.key)
    if mean is None:
        return "–"
    text = (f"{{:+.{m.digits}f}}" if m.signed else f"{{:.{m.digits}f}}").format(mean)
    std = row.std(m.key)
    if std is not None and m.spread:
        text += f" ± {std:.{m.digits}f}"
    return text + m.suffix


def best(block: Sequence[Row], m: Metric) -> set[int]:
    """Indices in ``block`` holding the best value of ``m`` (ties at display precision all win).

    Nothing is marked when fewer than two rows have a value, or when more than half of them
    share the best value (bold marks a winner; when most rows tie there is none).
    """
    if m.better is None:
        return set()
    means = {i: round(v, m.digits) for i, row in enumerate(block) if (v := row.mean(m.key)) is not None}
    if len(means) < 2:
        return set()
    top = (max if m.better == "max" else min)(means.values())
    winners = {i for i, v in means.items() if v == top}
    return winners if len(winners) <= len(means) / 2 else set()


def _blocks(rows_: Sequence[Row], by: tuple[str, ...]) -> dict[tuple, list[Row]]:
    out: dict[tuple, list[Row]] = {}
    for row in rows_:
        out.setdefault(tuple(getattr(row, a) for a in by), []).append(row)
    return out


def _headers(block: Sequence[Row]) -> list[Metric]:
    tput = next((r.throughput_batch for r in block if r.throughput_batch), None)
    return [replace(m, header=m.header.replace("b=T", f"b={tput or 'T'}"),
                    latex=m.latex.replace("{=}T", f"{{=}}{tput or 'T'}")) for m in METRICS]


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _note_marks(block: Sequence[Row]) -> dict[str, int]:
    marks: dict[str, int] = {}
    for row in block:
        for note in row.notes:
            marks.setdefault(note, len(marks) + 1)
    return marks


def markdown(rows_: Sequence[Row]) -> str:
    """One GitHub-Markdown table per (dataset, model), best per column (per target) in bold.

    Failed and skipped operating points keep their row, with status and reason in the Acc
    column; notes become numbered footnotes under the table.
    """
    parts = []
    for (dataset, model), block in _blocks(rows_, ("dataset", "model")).items():
        metrics = _headers(block)
        header = ["Method", "N", "Target", *(m.header for m in metrics)]
        lines = [f"### {dataset} / {model}", "", "| " + " | ".join(header) + " |",
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
                    cells += [f"**{fmt(row, m)}**" if i in bold[m.key] else fmt(row, m) for m in metrics]
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
    text = text.replace(" ± ", r" $\pm$ ").replace("×", r"$\times$").replace("–", "--")
    return ("$-$" + text[1:]) if text.startswith("-") else text


def latex(rows_: Sequence[Row], *, caption: str = "") -> str:
    """One booktabs ``table`` per (dataset, model), the same content as ``markdown`` (needs ``booktabs``)."""
    parts = ["% Generated by lorita-bench; needs \\usepackage{booktabs}."]
    for (dataset, model), block in _blocks(rows_, ("dataset", "model")).items():
        metrics = _headers(block)
        ncols = 3 + len(metrics)
        marks = _note_marks(block)
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{{latex_escape(caption or f'{dataset} / {model}')}}}",
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
                        text = _latex_number(fmt(row, m))
                        cells.append(rf"\textbf{{{text}}}" if i in bold[m.key] else text)
                lines.append(" & ".join(cells) + r" \\")
            if g < len(groups) - 1:
                lines.append(r"\midrule")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if marks:
            lines.append(r"\par\footnotesize " + "; ".join(
                rf"\textsuperscript{{{k}}}{latex_escape(note)}" for note, k in marks.items()))
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(rows_: Sequence[Row]) -> str:
    """One CSV line per operating point: identification, status, notes, then each metric's
    mean and std in its display unit (``acc_pct_mean``, ``delta_acc_pp_std``, …), unrounded."""
    buf = io.StringIO()
    head = ["dataset", "model", "method", "family", "n", "target_kind", "target_drop", "runs", "ok_runs",
            "status", "reason", "note", "throughput_batch"]
    for m in METRICS:
        head += [f"{m.csv}_mean", f"{m.csv}_std"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for row in rows_:
        line = [row.dataset, row.model, row.method, row.family, "" if row.n is None else row.n, row.target_kind,
                row.target_drop, row.runs, row.ok_runs, row.status, row.reason, "; ".join(row.notes),
                row.throughput_batch or ""]
        for m in METRICS:
            mean, std = row.mean(m.key), row.std(m.key)
            line += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        w.writerow(line)
    return buf.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class IsoRow:
    """For one method: the largest FLOPs↓ and Params↓ (percent) among its operating points whose
    mean ΔAcc stays within each tolerance; ``None`` where no point does."""

    dataset: str
    model: str
    method: str
    family: str
    n: int | None
    within: tuple[tuple[float, float | None, float | None], ...]  # (tolerance pp, FLOPs↓ %, Params↓ %)
    # Per tolerance: True when one std of ΔAcc over seeds would move the entry (the point it
    # reports could fall out, or a larger-drop point come in): its rank is within the noise.
    fragile: tuple[bool, ...] = ()


def iso_accuracy(rows_: Sequence[Row], tolerances_pp: Sequence[float] = ISO_TOLERANCES_PP) -> list[IsoRow]:
    """The iso-accuracy table: per (dataset, model, method), the largest drops with ΔAcc ≥ −tolerance.

    ΔAcc is the mean over seeds of each point's accuracy minus its own dense model's, in
    percentage points; only the swept targets are candidates (no interpolation between them).
    """
    out = []
    for (dataset, model, method), block in _blocks(rows_, ("dataset", "model", "method")).items():
        ok = [r for r in block if r.status == "ok" and r.mean("delta_acc") is not None]
        within, fragile = [], []
        for tol in tolerances_pp:
            # 1e-9: a drop of exactly the tolerance counts as within it despite float rounding
            good = [r for r in ok if r.mean("delta_acc") >= -tol - 1e-9]
            flops = [v for r in good if (v := r.mean("flops_drop")) is not None]
            params = [v for r in good if (v := r.mean("params_drop")) is not None]
            within.append((tol, max(flops, default=None), max(params, default=None)))
            best = max(good, key=lambda r: r.mean("params_drop") or 0.0, default=None)
            beyond = [r for r in ok if r not in good
                      and (r.mean("params_drop") or 0.0) > (best.mean("params_drop") or 0.0 if best else -1)]
            fragile.append(any(r.std("delta_acc") is not None and
                               (r.mean("delta_acc") - r.std("delta_acc") < -tol if r is best
                                else r.mean("delta_acc") + r.std("delta_acc") >= -tol)
                               for r in ([best] if best else []) + beyond))
        out.append(IsoRow(dataset=dataset, model=model, method=method, family=block[0].family, n=block[0].n,
                          within=tuple(within), fragile=tuple(fragile)))
    out.sort(key=lambda r: (r.dataset, r.model, FAMILY_ORDER.get(r.family, 9), r.n or 0, r.method))
    return out


def _iso_cells(block: Sequence[IsoRow]) -> tuple[list[str], list[list[str]]]:
    headers, columns = [], []
    for j, (tol, _, _) in enumerate(block[0].within):
        for k, what in ((1, "FLOPs↓"), (2, "Params↓")):
            headers.append(f"{what} @ ΔAcc ≥ −{tol:g} pp")
            vals = [r.within[j][k] for r in block]
            shown = [round(v, 1) for v in vals if v is not None]
            top = max(shown, default=None)
            # the same rule as ``best``: a winner only when at most half of the methods share the top
            bold = len(shown) > 1 and sum(v == top for v in shown) <= len(shown) / 2
            marks = ["†" if r.fragile and r.fragile[j] else "" for r in block]
            columns.append([("–" if v is None else f"**{v:.1f}**" if bold and round(v, 1) == top else f"{v:.1f}")
                            + mark for v, mark in zip(vals, marks, strict=True)])
    return headers, columns


def iso_markdown(iso: Sequence[IsoRow]) -> str:
    """The iso-accuracy table in GitHub Markdown, one per (dataset, model), best per column in bold."""
    parts = []
    for (dataset, model), block in _blocks(iso, ("dataset", "model")).items():
        headers, columns = _iso_cells(block)
        lines = [f"### {dataset} / {model}", "", "| " + " | ".join(["Method", "N", *headers]) + " |",
                 "|---|---|" + "|".join("--:" for _ in headers) + "|"]
        for i, r in enumerate(block):
            lines.append("| " + " | ".join([r.method, "–" if r.n is None else str(r.n),
                                            *(c[i] for c in columns)]) + " |")
        if any(any(r.fragile) for r in block):
            lines += ["", "† within one standard deviation (over seeds) of the tolerance: another set of seeds "
                      "could move this entry, so its ranking against the others is within the noise."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def iso_latex(iso: Sequence[IsoRow]) -> str:
    """The iso-accuracy table as booktabs LaTeX."""
    parts = ["% Generated by lorita-bench; needs \\usepackage{booktabs}."]
    for (dataset, model), block in _blocks(iso, ("dataset", "model")).items():
        headers, columns = _iso_cells(block)
        tex_headers = [h.replace("FLOPs↓", r"FLOPs$\downarrow$").replace("Params↓", r"Params$\downarrow$")
                       .replace("ΔAcc ≥ −", r"$\Delta$Acc $\geq -$") for h in headers]
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\caption{{Iso-accuracy, {latex_escape(dataset)} / {latex_escape(model)}}}",
                 rf"\begin{{tabular}}{{ll{'r' * len(headers)}}}", r"\toprule",
                 " & ".join(["Method", "$N$", *tex_headers]) + r" \\", r"\midrule"]
        for i, r in enumerate(block):
            cells = [c[i].replace("–", "--").replace("†", r"$^\dagger$") for c in columns]
            cells = [re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", c) for c in cells]
            lines.append(" & ".join([latex_escape(r.method), "--" if r.n is None else str(r.n), *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def iso_csv(iso: Sequence[IsoRow]) -> str:
    """The iso-accuracy table as CSV, one line per method, drops in percent (empty: none within)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    tols = [t for t, _, _ in iso[0].within] if iso else list(ISO_TOLERANCES_PP)
    w.writerow(["dataset", "model", "method", "family", "n",
                *(f"{what}_drop_pct_within_{t:g}pp" for t in tols for what in ("flops", "params"))])
    for r in iso:
        w.writerow([r.dataset, r.model, r.method, r.family, "" if r.n is None else r.n,
                    *("" if v is None else repr(v) for _, f, p in r.within for v in (f, p))])
    return buf.getvalue()


def runs_markdown(records: Iterable[Rec]) -> str:
    """Every run unaggregated (one line per seed): status, accuracy, counts and latencies."""
    recs = sorted(latest(records), key=lambda r: (r["dataset"], r["model"], r["target_kind"], r["target_drop"],
                                                   FAMILY_ORDER.get(r.get("family", ""), 9), r.get("n") or 0,
                                                   r["method"], r["seed"]))
    tput = next((r["throughput_batch"] for r in recs if r.get("throughput_batch")), "T")
    head = ["Dataset", "Model", "Method", "Target", "Seed", "Status", "Acc", "ΔAcc", "Params", "MACs",
            "Latency b=1 ms (dense)", f"Latency b={tput} ms (dense)", "Config"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def num(v: Any, f: str) -> str:
        return "–" if v is None else format(v, f)

    for r in recs:
        ok = r.get("status") == "ok"
        status = r.get("status", "") if ok else _md_escape(f"{r.get('status')}: {r.get('reason') or ''}")
        lines.append("| " + " | ".join([
            r["dataset"], r["model"], r["method"], f"{r['target_kind']} {r['target_drop'] * 100:g}%",
            str(r["seed"]), status,
            num(r["acc"] * 100, ".2f") if ok and r.get("acc") is not None else "–",
            num(r.get("delta_acc") * 100 if r.get("delta_acc") is not None else None, "+.2f"),
            num(r.get("params"), ",d") if isinstance(r.get("params"), int) else num(r.get("params"), ",.0f"),
            num(r.get("macs"), ",.0f"),
            f"{num(r.get('latency_ms'), '.3f')} ({num(r.get('latency_dense_ms'), '.3f')})",
            f"{num(r.get('throughput_ms'), '.3f')} ({num(r.get('throughput_dense_ms'), '.3f')})",
            f"`{r.get('config_hash', '')}`"]) + " |")
    return "\n".join(lines) + "\n"
