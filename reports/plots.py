"""Figures from result records, each written as PNG and SVG.

Drawn on ``matplotlib.figure.Figure`` objects without pyplot: saving goes through the Agg
(PNG) and SVG canvases directly, so rendering a report never selects or changes a global
backend (it works headless and inside a host that has its own). seaborn supplies the style
and a colour-blind-safe palette. Records are plain dicts as stored in results.jsonl.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.tables import FAMILY_ORDER, latest, speedup

Rec = Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plot:
    """One written figure: its title, caption (what to read from it) and both files."""

    title: str
    caption: str
    png: Path
    svg: Path


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
          # Fixed ids and no timestamp: re-rendering the same records gives byte-identical SVGs.
          "svg.hashsalt": "lorita-bench"}
    with matplotlib.rc_context(rc):
        yield


def _figure(nrows: int, ncols: int, width: float, height: float):  # -> (Figure, list[Axes])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _legend(fig: Any, ax: Any, ncols: int = 4) -> None:
    # Below the panels, outside them: a legend inside an axis hides points wherever it lands.
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)), fontsize="small",
                   frameon=False)


def _save(fig: Any, out_dir: Path, stem: str, title: str, caption: str) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    fig.savefig(png, dpi=150)
    fig.savefig(svg, metadata={"Date": None})
    return Plot(title=title, caption=caption, png=png, svg=svg)


def _method_order(records: Iterable[Rec]) -> list[str]:
    first: dict[str, Rec] = {}
    for r in records:
        first.setdefault(r["method"], r)
    return sorted(first, key=lambda m: (FAMILY_ORDER.get(first[m].get("family", ""), 9), first[m].get("n") or 0, m))


def _styles(records: Sequence[Rec]) -> dict[str, dict[str, Any]]:
    """Colour, marker and legend label per method, the same in every figure of one report."""
    import seaborn as sns

    methods = _method_order(records)
    family = {r["method"]: r.get("family", "") for r in records}
    colors = sns.color_palette("colorblind", max(len(methods), 1))
    markers = {"lorita": "o", "pruning": "s"}
    lines = {"lorita": "-", "pruning": "--"}
    return {m: {"color": colors[i], "marker": markers.get(family[m], "^"), "ls": lines.get(family[m], ":"),
                "label": m} for i, m in enumerate(methods)}


def _by_model(records: Iterable[Rec]) -> dict[tuple[str, str], list[Rec]]:
    out: dict[tuple[str, str], list[Rec]] = {}
    for r in records:
        out.setdefault((r["dataset"], r["model"]), []).append(r)
    return out


def _ok(records: Iterable[Rec]) -> list[Rec]:
    return [r for r in latest(records) if r.get("status") == "ok"]


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (larger drop and higher accuracy),
    sorted by drop ascending."""
    front, best_y = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _mean_points(rs: Sequence[Rec], x_key: str) -> list[tuple[float, float]]:
    cells: dict[tuple, list[Rec]] = {}
    for r in rs:
        cells.setdefault((r["target_kind"], r["target_drop"]), []).append(r)
    return [(statistics.fmean(r[x_key] * 100 for r in c), statistics.fmean(r["acc"] * 100 for r in c))
            for c in cells.values()]


ACC_WINDOW_PP = 15.0  # the accuracy axis reaches this far below the dense accuracy; lower points sit on its edge
NO_SAVING = 0.005  # a method whose FLOPs↓ never exceeds this saves no FLOPs (e.g. unstructured sparsity)


def accuracy_vs_drop(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Accuracy vs FLOPs↓ and vs Params↓ per (dataset, model): every run as a faint point, each
    operating point's mean as a marker, and each method's Pareto front as a line.

    A collapsed operating point (more than ``ACC_WINDOW_PP`` below the dense accuracy) would
    squash every other point into a sliver, so it is drawn on the axis' lower edge as ▼ with
    its accuracy written beside it. A method that saves no FLOPs is left out of the FLOPs panel
    (named in a corner of it) instead of stretching its axis to 0.
    """
    ok = [r for r in _ok(records) if r.get("acc") is not None]
    styles = _styles(ok)
    plots = []
    for (dataset, model), rs in _by_model(ok).items():
        base = [r["base_acc"] * 100 for r in rs if r.get("base_acc") is not None]
        top = max([r["acc"] * 100 for r in rs] + base)
        floor = statistics.fmean(base) - ACC_WINDOW_PP if base else -math.inf
        if min(r["acc"] * 100 for r in rs) >= floor:
            floor = -math.inf  # nothing to pin: let matplotlib fit the data
        with _style():
            fig, axes = _figure(1, 2, 11, 4.6)
            for ax, key, label in ((axes[0], "flops_drop", "FLOPs↓ (%)"), (axes[1], "params_drop", "Params↓ (%)")):
                left_out = []
                for method in _method_order(rs):
                    mine = [r for r in rs if r["method"] == method and r.get(key) is not None]
                    if not mine:
                        continue
                    if key == "flops_drop" and max(r[key] for r in mine) <= NO_SAVING:
                        left_out.append(method)
                        continue
                    st = styles[method]
                    ax.scatter([r[key] * 100 for r in mine], [max(r["acc"] * 100, floor) for r in mine],
                               color=st["color"], marker=st["marker"], alpha=0.25, s=18, linewidths=0)
                    pts = _mean_points(mine, key)
                    shown = [(x, max(y, floor)) for x, y in pts]
                    ax.scatter(*zip(*shown, strict=True), color=st["color"], marker=st["marker"], s=36,
                               edgecolors="white", linewidths=0.6, zorder=3)
                    for x, y in pts:
                        if y < floor:
                            ax.scatter([x], [floor], color=st["color"], marker="v", s=60, zorder=4)
                            ax.annotate(f"{method} {y:.1f}%", (x, floor), textcoords="offset points",
                                        xytext=(-6, 2), ha="right", fontsize="x-small", color="0.25")
                    front = [(x, max(y, floor)) for x, y in pareto_front(pts)]
                    ax.plot(*zip(*front, strict=True), color=st["color"], ls=st["ls"], lw=1.6, label=st["label"],
                            zorder=2)
                if base:
                    ax.axhline(statistics.fmean(base), color="0.4", ls=(0, (1, 2)), lw=1.2,
                               label="dense (mean of the methods' dense models)")
                if math.isfinite(floor):
                    ax.set_ylim(floor - 1.0, top + 0.8)
                if left_out:
                    ax.text(0.02, 0.03, f"not drawn (no FLOPs saved): {', '.join(left_out)}", transform=ax.transAxes,
                            fontsize="x-small", color="0.3")
                ax.set_xlabel(label)
                ax.set_ylabel("Top-1 test accuracy (%)")
            _legend(fig, axes[1])
            fig.suptitle(f"{dataset} / {model}: accuracy vs compression (lines: each method's Pareto front)")
            plots.append(_save(fig, out_dir, f"accuracy-vs-drop_{dataset}_{model}",
                               f"Accuracy vs FLOPs↓ and Params↓ — {dataset} / {model}",
                               "Faint points are single runs, solid markers the mean over seeds of each operating "
                               "point; a method's line joins its Pareto-optimal points (no other point of the same "
                               "method has both a larger drop and a higher accuracy); solid lines LoRITa, dashed "
                               "pruning. Up and right is better. ▼ marks a point below the axis, its accuracy "
                               "written beside it."))
    return plots


def _normalized(values: Sequence[float]) -> list[float]:
    top = max(values, default=0.0)
    return [v / top for v in values] if top > 0 else list(values)


MAX_SPECTRA_PANELS = 12


def spectra(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Singular-value decay σᵢ/σ₁ of every layer of each method's trained dense (merged) model,
    one panel per layer and one line per N (LoRITa's signature figure). Reads the records'
    ``spectra`` field ({layer: singular values}); the first seed of each method is drawn, and
    only LoRITa's methods when there are any."""
    have = [r for r in latest(records) if r.get("spectra")]
    if any(r.get("family") == "lorita" for r in have):
        # The figure compares N; a pruning method's pre-trained model is trained as N=1 is, and
        # would only hide that line.
        have = [r for r in have if r.get("family") == "lorita"]
    styles = _styles(have)
    plots = []
    for (dataset, model), rs in _by_model(have).items():
        per_method: dict[str, Rec] = {}
        for r in sorted(rs, key=lambda r: r["seed"]):
            per_method.setdefault(r["method"], r)
        layers = list(dict.fromkeys(name for r in per_method.values() for name in r["spectra"]))
        total = len(layers)
        if total > MAX_SPECTRA_PANELS:
            # A ResNet-56 has 57 layers: a panel each makes a huge figure that takes tens of
            # seconds to save and nobody reads. Evenly spaced layers, first and last included.
            step = (total - 1) / (MAX_SPECTRA_PANELS - 1)
            layers = [layers[round(i * step)] for i in range(MAX_SPECTRA_PANELS)]
        shown = "" if total == len(layers) else f" {len(layers)} of {total} layers shown, evenly spaced."
        ncols = min(4, len(layers))
        nrows = math.ceil(len(layers) / ncols)
        with _style():
            fig, axes = _figure(nrows, ncols, 3.2 * ncols + 0.6, 2.9 * nrows + 0.5)
            for ax, layer in zip(axes, layers, strict=False):
                for method in _method_order(per_method.values()):
                    r = per_method[method]
                    if layer not in r["spectra"]:
                        continue
                    sv = _normalized(r["spectra"][layer])
                    label = f"N={r['n']} ({method})" if r.get("family") == "lorita" else method
                    ax.semilogy(range(1, len(sv) + 1), [max(v, 1e-8) for v in sv], color=styles[method]["color"],
                                lw=1.4, label=label)
                ax.set_title(f"layer {layer}", fontsize="medium")
                ax.set_xlabel("index i")
                ax.set_ylabel("σᵢ / σ₁")
                ax.set_ylim(1e-4, 1.5)
            for ax in axes[len(layers):]:
                ax.set_visible(False)
            _legend(fig, axes[0])
            fig.suptitle(f"{dataset} / {model}: singular values of the trained dense (merged) weights")
            plots.append(_save(fig, out_dir, f"spectra_{dataset}_{model}",
                               f"Singular-value decay per layer — {dataset} / {model}",
                               "σᵢ/σ₁ of each compressible layer after training (LoRITa: after merging the N "
                               "factors; convolutions reshaped out × in·k·k). A faster decay for larger N is the "
                               "low rank that LoRITa's training induces, and what truncation exploits." + shown))
    return plots


def kept_layers(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Per-layer kept rank (LoRITa) or kept output width (pruning) at each target, mean over
    seeds, as grouped bars per layer, one panel per target."""
    ok = [r for r in _ok(records) if r.get("layers")]
    styles = _styles(ok)
    plots = []
    for (dataset, model), rs in _by_model(ok).items():
        targets = sorted({(r["target_kind"], r["target_drop"]) for r in rs})
        layers = list(dict.fromkeys(name for r in rs for name in r["layers"]))
        methods = _method_order(rs)
        width = 0.8 / max(len(methods), 1)
        with _style():
            fig, axes = _figure(len(targets), 1, max(6.0, 1.1 * len(layers) * max(1, len(methods) / 3) + 2),
                                2.6 * len(targets) + 0.6)
            for ax, (kind, drop) in zip(axes, targets, strict=True):
                for j, method in enumerate(methods):
                    mine = [r for r in rs
                            if r["method"] == method and (r["target_kind"], r["target_drop"]) == (kind, drop)]
                    if not mine:
                        continue
                    ys = [statistics.fmean(r["layers"][name] for r in mine if name in r["layers"])
                          if any(name in r["layers"] for r in mine) else 0 for name in layers]
                    xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(layers))]
                    ax.bar(xs, ys, width=width * 0.95, color=styles[method]["color"], label=method)
                ax.set_xticks(range(len(layers)), [str(name) for name in layers])
                ax.set_title(f"target: {kind} drop {drop * 100:g}%", fontsize="medium")
                ax.set_ylabel("kept rank / width")
            axes[-1].set_xlabel("layer (module name)")
            _legend(fig, axes[0])
            fig.suptitle(f"{dataset} / {model}: what each method keeps per layer")
            plots.append(_save(fig, out_dir, f"kept-per-layer_{dataset}_{model}",
                               f"Kept rank / channels per layer — {dataset} / {model}",
                               "LoRITa: rank kept by the global singular-value threshold; pruning: output "
                               "neurons/channels left by the pruner. Mean over seeds."))
    return plots


def speedup_vs_theory(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Measured speed-up (dense / deployed latency) against the FLOP count's promise
    1/(1 − FLOPs↓), at batch 1 and at the throughput batch; the dashed diagonal is parity."""
    ok = [r for r in _ok(records) if r.get("flops_drop") is not None and r["flops_drop"] < 1
          and (speedup(r, "1") or speedup(r, "T"))]
    styles = _styles(ok)
    plots = []
    for (dataset, model), rs in _by_model(ok).items():
        tput = next((r["throughput_batch"] for r in rs if r.get("throughput_batch")), "T")
        device = next((r["latency_device"] for r in rs if r.get("latency_device")), "unknown device")
        with _style():
            fig, axes = _figure(1, 2, 11, 4.4)
            top = 1.0
            for ax, batch, label in ((axes[0], "1", "batch 1"), (axes[1], "T", f"batch {tput}")):
                for method in _method_order(rs):
                    pts = [(1 / (1 - r["flops_drop"]), s) for r in rs if r["method"] == method
                           and (s := speedup(r, batch)) is not None]
                    if pts:
                        st = styles[method]
                        ax.scatter(*zip(*pts, strict=True), color=st["color"], marker=st["marker"], s=30,
                                   label=method, zorder=3)
                        top = max(top, *(max(p) for p in pts))
                ax.set_title(label, fontsize="medium")
                ax.set_xlabel("theoretical speed-up 1/(1 − FLOPs↓)")
                ax.set_ylabel("measured speed-up (dense / deployed latency)")
            for ax in axes:
                ax.plot([0.9, top * 1.05], [0.9, top * 1.05], color="0.4", ls="--", lw=1, label="parity")
                ax.axhline(1.0, color="0.6", ls=":", lw=1)
                ax.set_xlim(0.9, top * 1.05)
                ax.set_ylim(0, top * 1.1)
            _legend(fig, axes[1], ncols=5)
            fig.suptitle(f"{dataset} / {model}: measured vs theoretical speed-up on {device}")
            plots.append(_save(fig, out_dir, f"speedup-vs-theory_{dataset}_{model}",
                               f"Measured vs theoretical speed-up — {dataset} / {model}",
                               "Points below the diagonal fall short of what the FLOP count promises (small "
                               "layers are bound by overheads, not arithmetic); below the dotted line the "
                               "compressed model is slower than the dense one."))
    return plots


FIGURES: tuple[tuple[str, Callable[[Sequence[Rec], Path], list[Plot]], str], ...] = (
    ("Accuracy vs FLOPs↓ and Params↓", accuracy_vs_drop, "no successful run with an accuracy"),
    ("Singular-value decay per layer", spectra,
     "no record carries `spectra` (the dense model's singular values per layer); records from "
     "`pytest bench --benchmark-json` carry them, and runner records will once the Record has the field"),
    ("Kept rank / channels per layer", kept_layers, "no successful run recorded its per-layer ranks or widths"),
    ("Measured vs theoretical speed-up", speedup_vs_theory, "no successful run has both latencies measured"),
)


def render_all(records: Sequence[Rec], out_dir: Path) -> tuple[list[Plot], list[str]]:
    """Every figure the records allow, written into ``out_dir``; and, for each kind of figure that
    could not be drawn, one line saying why (for the report)."""
    plots, skipped = [], []
    for title, draw, why in FIGURES:
        made = draw(records, Path(out_dir))
        plots += made
        if not made:
            skipped.append(f"{title}: not drawn — {why}.")
    return plots, skipped
