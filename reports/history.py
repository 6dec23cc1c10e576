"""The regression history as a report folder: trends per cell across commits and the changes found.

Layout of ``out_dir``::

    history.md                   commits, changes, one section per family of measures, the rule
    tables/changes.md            the changes alone (what ``--fail-on-change`` reads from)
    figures/history-*.png, .svg  one figure per family of measures and group (config, machine)

Series, noise and changes come from ``bench.records.history`` (torch-free); this module only
draws and writes them. Configurations are never pooled, and timings only within one machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.records.history import (
    FAMILIES,
    MEASURES,
    MIN_LEVEL,
    MIN_SPREAD_POINTS,
    UNRECORDED,
    Z95,
    Z_CHANGE,
    Commit,
    History,
    Measure,
    Point,
    Series,
    build_series,
)
from bench.records.results import atomic_write_text
from reports.tables import _md_escape, t95

MAX_COLUMNS = 12  # commits shown in a trend table (the newest); the figures show every commit
FAMILY_TEXT = {
    "accuracy": "Top-1 test accuracy of the compressed model after fine-tuning and before it (zero-shot).",
    "compression": "Params↓ and FLOPs↓ counted on the deployed model (deterministic: any move is a change of "
                   "method or counter).",
    "speed-up": "Dense / deployed latency from the records' A/B timing (alternating rounds in one process), with "
                "its 95 % bootstrap interval, at batch 1 and the throughput batch. Per machine.",
    "latency": "pytest-benchmark's median forward time of each deployed model and of each method's dense model "
               "(\"dense\"), per batch size; intervals from the IQR and rounds. Per machine. Unpaired, they move "
               "with whatever else the machine does (10-20 % between ci runs on a shared 2-core machine, against "
               "2-5 % for the A/B speed-ups): a latency change usually shows first in the speed-ups.",
    "training step": "The training-cost benchmarks: LoRITa's N=3 / N=1 step-time ratio, the harness's throughput "
                     "against a plain loop (paired rounds; intervals from their IQR), and pytest-benchmark's median "
                     "of each timed training function. Per machine.",
}


def counted(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1 ("1 run", "12 runs")."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt(measure: Measure, value: float) -> str:
    if measure.unit == "%":
        return f"{value:.2f}"
    if measure.unit == "ms":
        return f"{value:.4g}"
    return f"{value:.3f}"


def _noise_text(measure: Measure, noise: float) -> str:
    if not math.isfinite(noise):
        return "unknown"
    return f"±{(math.exp(noise) - 1) * 100:.1f} %" if measure.log else f"±{noise:.2f} pp"


def _unit(measure: Measure) -> str:
    return {"%": " %", "×": "×", "ms": " ms"}[measure.unit]


def machine_line(key: str, info: Mapping[str, Any]) -> str:
    """One line naming a machine of the history: CPU and cores, GPU, torch, Python."""
    if key.startswith(UNRECORDED):
        device = key.partition(":")[2]
        return (f"not recorded (backfilled records{f' timed on {device}' if device else ''}: their timings are "
                "compared only with each other)")
    cpu = info.get("cpu") or {}
    parts = [f"CPU {cpu.get('brand_raw') or info.get('processor') or info.get('machine') or '?'}"
             + (f" ({cpu['count']} cores)" if cpu.get("count") else "")]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    parts += [f"{name} {info[k]}" for k, name in (("torch", "torch"), ("python_version", "Python"),
                                                  ("timing_cpu_threads", "timing threads")) if info.get(k)]
    return ", ".join(parts)


def _group_title(group: tuple[str, str, str, str], several_configs: bool) -> str:
    config, dataset, model, machine = group
    parts = [f"{dataset} / {model}" if dataset else "training-cost benchmarks"]
    if config and (several_configs or dataset):
        parts.append(f"config `{config}`")
    if machine:
        parts.append(f"machine `{machine}`")
    return ", ".join(parts)


SUBJECT_CHARS = 72  # a commit's subject in the tables, cut to this length


def _subject(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUBJECT_CHARS else text[:SUBJECT_CHARS - 1].rstrip() + "…"


def _commit_label(c: Commit, i: int) -> str:
    return c.short[:7] + ("+" if c.dirty else "") if c.id else f"run {i + 1}"


def commits_markdown(history: History) -> str:
    """The commits of the history in order, with how many runs each holds, their machines and configs."""
    lines = ["| # | Commit | Date | Subject | Runs | Machines | Configs |", "|---:|---|---|---|---:|---|---|"]
    for i, c in enumerate(history.commits):
        runs = [r for r, p in zip(history.runs, history.positions, strict=True) if p == i]
        configs = sorted({rec.get("config_hash") or "?" for r in runs for rec in r.records})
        date = c.date[:16].replace("T", " ") if c.date else f"(run {runs[0].when[:16].replace('T', ' ')})"
        subject = _subject(c.subject) or ("" if c.id else ", ".join(Path(r.source).name for r in runs))
        lines.append(f"| {i + 1} | {'`' + c.short + '`' if c.id else 'unknown'} | {date} | {_md_escape(subject)} | "
                     f"{len(runs)} | {', '.join(sorted({f'`{r.machine}`' for r in runs}))} | "
                     f"{', '.join(f'`{h}`' for h in configs) or '–'} |")
    return "\n".join(lines) + "\n"


def changes_markdown(series: Sequence[Series], history: History) -> str:
    """Every change found, newest commit first: where, which cell and measure, the two levels, the step,
    the noise and the step in standard errors."""
    found = sorted(((s, c) for s in series for c in s.changes), key=lambda sc: (-sc[1].position, sc[0].cell.label))
    if not found:
        return "No change beyond the noise in any series.\n"
    lines = ["| Commit | Subject | Group | Cell | Measure | Before | After | Change | Noise σ | Size | Verdict |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for s, c in found:
        commit = history.commits[c.position]
        gap = c.previous != c.position - 1
        where = f"`{commit.short}`" if commit.id else f"run {c.position + 1}"
        if gap:  # the series has no point at the commits between: the change happened somewhere in there
            where += f" (after {_commit_label(history.commits[c.previous], c.previous)})"
        m = s.measure
        lines.append(f"| {where} | {_md_escape(_subject(commit.subject))} | {_group_title(s.cell.group, True)} | "
                     f"{_md_escape(s.cell.label)} | {m.title} | {_fmt(m, c.before)}{_unit(m)} | "
                     f"{_fmt(m, c.after)}{_unit(m)} | {m.change_text(c.delta)} | {_noise_text(m, s.noise)} | "
                     f"{c.z:.1f} se | {c.direction} |")
    return "\n".join(lines) + "\n"


def trend_markdown(series: Sequence[Series], history: History) -> str:
    """One row per series of one group: its value at each of the newest ``MAX_COLUMNS`` commits (the
    first commit of a new level in bold), its noise and its changes."""
    shown = list(range(max(0, len(history.commits) - MAX_COLUMNS), len(history.commits)))
    head = ["Cell", "Measure", *(f"`{_commit_label(history.commits[i], i)}`" for i in shown), "Noise σ (from)",
            "Changes"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(shown) + "---|---:|"]
    for s in series:
        at = {p.position: p for p in s.points}
        starts = {c.position for c in s.changes}
        cells = []
        for i in shown:
            p = at.get(i)
            text = "–" if p is None else _fmt(s.measure, p.value)
            cells.append(f"**{text}**" if i in starts else text)
        lines.append(f"| {_md_escape(s.cell.label)} | {s.measure.title} ({s.measure.unit}) | " + " | ".join(cells)
                     + f" | {_noise_text(s.measure, s.noise)} ({s.noise_source}) | {len(s.changes) or ''} |")
    note = (f"\nThe newest {MAX_COLUMNS} of {len(history.commits)} commits; the figure shows all.\n"
            if len(shown) < len(history.commits) else "")
    return "\n".join(lines) + "\n" + note


def _band(measure: Measure, p: Point) -> tuple[float, float] | None:
    """A point's 95 % interval in display units: the seeds' t-interval, or the recorded one."""
    if p.sigma is None:
        return None
    q = t95(p.df) if p.df else Z95
    x = measure.analysis(p.value)
    return measure.display(x - q * p.sigma), measure.display(x + q * p.sigma)


def _ticks(ax: Any, history: History) -> None:
    n = len(history.commits)
    step = max(1, math.ceil(n / 16))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([_commit_label(history.commits[i], i) for i in ticks], rotation=45, ha="right",
                       fontsize="x-small", family="monospace")
    ax.set_xlim(-0.6, n - 0.4)


def _draw_series(ax: Any, s: Series, color: Any, label: str) -> None:
    m = s.measure
    xs = [p.position for p in s.points]
    ys = [p.value for p in s.points]
    bands = [_band(m, p) for p in s.points]
    ax.plot(xs, ys, color=color, marker="o", ms=3.5, lw=0.8, alpha=0.9, label=label, zorder=3)
    bars = [(x, y, b) for x, y, b in zip(xs, ys, bands, strict=True) if b is not None]
    if bars:
        ax.errorbar([x for x, _, _ in bars], [y for _, y, _ in bars],
                    yerr=[[max(y - b[0], 0) for _, y, b in bars], [max(b[1] - y, 0) for _, y, b in bars]],
                    fmt="none", ecolor=color, elinewidth=0.8, capsize=1.5, alpha=0.7, zorder=2)
    for level in s.levels:  # the fitted level, with the band one commit's value falls in without a change
        if not math.isfinite(s.noise):
            break
        x = m.analysis(level.mean)
        lo, hi = m.display(x - Z95 * s.noise), m.display(x + Z95 * s.noise)
        ax.fill_between([level.start - 0.3, level.end + 0.3], lo, hi, color=color, alpha=0.12, lw=0, zorder=1)
        ax.plot([level.start - 0.3, level.end + 0.3], [level.mean] * 2, color=color, lw=1.6, zorder=2)
    for c in s.changes:
        ax.axvline(c.position - 0.5, color="#D55E00", ls="--", lw=1.2, zorder=4)
        ax.annotate(m.change_text(c.delta), (c.position - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize="x-small", color="#D55E00")


def figures(series: Sequence[Series], history: History, out_dir: Path) -> list[Any]:
    """One figure per (family, group): a panel per (method, target) and unit, a line per (measure,
    batch); points with their 95 % intervals, fitted levels with their noise band, changes as
    dashed lines. Timings in ms are drawn on a log axis (batch 1 and the throughput batch differ
    by orders of magnitude)."""
    import seaborn as sns
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    from reports.plots import _figure, _save, _style

    groups: dict[tuple[str, tuple[str, str, str, str]], list[Series]] = {}
    for s in series:
        groups.setdefault((s.measure.family, s.cell.group), []).append(s)
    several = len({s.cell.config_hash for s in series if s.cell.config_hash}) > 1
    made = []
    for (family, group), members in groups.items():
        panels: dict[tuple[str, str, str], list[Series]] = {}
        for s in members:  # a ratio and a time of one benchmark get a panel each: one axis, one unit
            panels.setdefault((s.cell.method, s.cell.target, s.measure.unit), []).append(s)
        units = {(m, t): {u for m2, t2, u in panels if (m2, t2) == (m, t)} for m, t, _ in panels}
        lines = list(dict.fromkeys((s.measure.key, s.cell.batch) for s in members))
        palette = sns.color_palette("colorblind", max(len(lines), 3))
        color = {key: palette[i] for i, key in enumerate(lines)}
        ncols = min(3, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        title = _group_title(group, several)
        with _style():
            fig, axes = _figure(nrows, ncols, 4.3 * ncols, 2.9 * nrows + 0.9)
            for ax, ((method, target, unit), ss) in zip(axes, panels.items(), strict=False):
                for s in ss:
                    batch = f", b={s.cell.batch}" if s.cell.batch is not None else ""
                    _draw_series(ax, s, color[(s.measure.key, s.cell.batch)], f"{s.measure.title}{batch}")
                if unit == "ms":
                    ax.set_yscale("log")
                    lo, hi = ax.get_ylim()
                    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                    # minor ticks labelled only within one decade, where no major tick may show
                    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g") if hi / lo < 10 else NullFormatter())
                    ax.tick_params(axis="y", which="minor", labelsize="x-small")
                name = " ".join(p for p in (method, target) if p)
                ax.set_title(f"{name} ({unit})" if len(units[(method, target)]) > 1 else name, fontsize="small")
                ax.set_ylabel(unit)
                _ticks(ax, history)
            for ax in axes[len(panels):]:
                ax.set_visible(False)
            # One legend for every panel (panels differ in which lines they hold), below them all.
            by_label: dict[str, Any] = {}
            for ax in axes[:len(panels)]:
                for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                    by_label.setdefault(label, handle)
            fig.legend(list(by_label.values()), list(by_label), loc="outside lower center",
                       ncols=min(3, len(by_label)), fontsize="small", frameon=False)
            fig.suptitle(f"{family}: {title.replace('`', '')}", fontsize="medium")
            made.append(_save(fig, out_dir, f"history-{family.replace(' ', '-')}_{'_'.join(p for p in group if p)}",
                              f"{family.capitalize()} across commits — {title}",
                              "Points: each commit's value (mean over its seeds and runs) "
                              "with its 95 % interval where known; solid lines: the fitted levels, shaded: the band "
                              "a commit's value stays within (±1.96 σ) while nothing changes; dashed: a change, "
                              "at the first commit of the new level."))
    return made


def rule_lines() -> list[str]:
    """How changes are found, and each measure's floor and smallest relevant change."""
    lines = ["## How changes are found", "",
             "Each series is one measure of one cell in commit order; several values at one commit (seeds, repeated "
             "runs) are averaged. Accuracies and drops are analysed in percentage points, speed-ups, latencies and "
             "ratios as logarithms (so a step is a relative change).", "",
             "1. Noise σ of one commit's value: the largest of the measure's floor below, the points' own standard "
             "errors (seeds' spread, the A/B bootstrap interval, or paired rounds' IQR; their median; not for "
             "pytest-benchmark's unpaired medians, which move several times further between runs than within one) "
             "and the median spread of the like series of its group (same measure and batch, every method "
             "and target of one configuration and machine; a series' spread is 1.4826·MAD of successive differences "
             f"/ √2, from {MIN_SPREAD_POINTS} points on, so that one step, one outlying difference, leaves it alone). "
             f"An unpaired timing calls no change before {MIN_SPREAD_POINTS} commits show how far it moves.",
             f"2. Step fit: the split into two levels with the least within-level squared error, each level at least "
             f"{MIN_LEVEL} commits long except one that ends at the newest commit, which may be one commit (so the "
             "newest commit can start a change; the next run confirms it).",
             f"3. A change when the levels differ by more than {Z_CHANGE:g} standard errors, |Δ| > {Z_CHANGE:g}·σ·"
             "√(1/n_before + 1/n_after), and by at least the smallest relevant change below; both sides are then "
             "searched again.",
             "4. Each change is tested again between its neighbouring changes, σ raised to the scatter around the "
             "fitted levels where that is larger; the weakest failing change is dropped until all pass.", "",
             "A change is reported at the first commit of its new level; a slow drift shows as a step once it has "
             "added up.", "",
             "| Measure | Family | Scale | Noise floor | Smallest change | Better |", "|---|---|---|---:|---:|---|"]
    for m in MEASURES:
        floor = _noise_text(m, m.noise_floor).lstrip("±")
        smallest = m.change_text(m.min_change).lstrip("+")
        better = {1: "higher", -1: "lower", 0: "neither"}[m.better]
        lines.append(f"| {m.title} | {m.family} | {'relative' if m.log else 'pp'} | {floor} | {smallest} | {better} |")
    return [*lines, ""]


def render_history(history: History, out_dir: Path, *, series: Sequence[Series] | None = None,
                   plots: bool = True) -> Path:
    """Write the history report of ``history`` into ``out_dir``; returns history.md's path.

    ``series`` defaults to ``build_series(history)``; ``plots=False`` skips the figures (the only
    slow part). Never trains or measures; imports no torch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series = build_series(history) if series is None else list(series)
    changes_md = changes_markdown(series, history)
    atomic_write_text(out_dir / "tables" / "changes.md", changes_md)
    n_changes = sum(len(s.changes) for s in series)
    machines = sorted({s.cell.machine for s in series if s.cell.machine})
    text = ["# Regression history", "",
            f"{counted(len(history.runs), 'run')} at {counted(len(history.commits), 'commit')} (oldest first), "
            f"{len(series)} series, "
            f"{n_changes} change(s) beyond the noise. Configurations are never pooled; timings are compared only "
            "within one machine.", ""]
    text += [f"- {note}" for note in history.notes] + ([""] if history.notes else [])
    text += ["## Commits", "", commits_markdown(history), "## Changes", "",
             "A step whose new level lies outside the old level's noise (rule: [below](#how-changes-are-found)); "
             "newest first. Size: the step in standard errors of the difference of the two levels.", "",
             changes_md]
    plots_made = {}
    if plots:
        for fig in figures(series, history, out_dir / "figures"):
            plots_made[fig.title] = fig
    for family in FAMILIES:
        members = [s for s in series if s.measure.family == family]
        if not members:
            continue
        text += [f"## {family.capitalize()}", "", FAMILY_TEXT[family], ""]
        several = len({s.cell.config_hash for s in series if s.cell.config_hash}) > 1
        for group in dict.fromkeys(s.cell.group for s in members):
            title = _group_title(group, several)
            text += [f"### {title}", ""]
            fig = plots_made.get(f"{family.capitalize()} across commits — {title}")
            if fig is not None:
                png, svg = fig.png.relative_to(out_dir).as_posix(), fig.svg.relative_to(out_dir).as_posix()
                text += [f"![{fig.title}]({png})", "", f"{fig.caption} ([SVG]({svg}))", ""]
            text += [trend_markdown([s for s in members if s.cell.group == group], history)]
    text += rule_lines()
    if machines:
        text += ["## Machines", ""]
        text += [f"- `{key}`: {machine_line(key, history.machines.get(key, {}))}" for key in machines] + [""]
    text += ["## Runs", ""]
    text += [f"- `{_commit_label(history.commits[p], p)}` {run.when[:19].replace('T', ' ')}: {run.source} "
             f"({len(run.records)} records, {len(run.benchmarks)} benchmarks; placed by {run.placed_by})"
             for run, p in zip(history.runs, history.positions, strict=True)]
    path = out_dir / "history.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    return path
