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

from reports.tables import FAMILY_ORDER, UNRANKED, latest, speedup

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


def _legend(fig: Any, ax: Any, ncols: int = 4, more: Sequence[Any] = ()) -> None:
    # Below the panels, outside them: a legend inside an axis hides points wherever it lands.
    handles, labels = ax.get_legend_handles_labels()
    for other in more:  # entries drawn in other panels only (a published point at a FLOPs target)
        for h, label in zip(*other.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
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


# Hue families: LoRITa blues to purples by N, pruning oranges, reds, greens and browns, anything
# else teal; black is the reference model alone (so no method is grey or black).
LORITA_COLORS = ("#56B4E9", "#0072B2", "#3B3B98", "#7B4FB8", "#B48AD8", "#1B2A6B")
PRUNING_COLORS = ("#E69F00", "#009E73", "#B2182B", "#8C510A", "#CC79A7", "#D55E00", "#66A61E", "#F4A582",
                  "#1B7837", "#FDB863")  # the first four as far apart as the warm/green range allows
OTHER_COLORS = ("#00A6A6", "#5AAE61", "#878787")
REFERENCE_COLOR = "black"


def _styles(records: Sequence[Rec]) -> dict[str, dict[str, Any]]:
    """Colour, marker and legend label per method, the same in every figure of one report: LoRITa
    in blues and purples ordered by N, pruning in warm colours and greens, each method its own."""
    methods = _method_order(records)
    family = {r["method"]: r.get("family", "") for r in records}
    n = {r["method"]: r.get("n") for r in records}
    markers = {"lorita": "o", "pruning": "s"}
    lines = {"lorita": "-", "pruning": "--"}
    out, used = {}, {"lorita": 0, "pruning": 0, "": 0}
    for m in methods:
        fam = family[m] if family[m] in ("lorita", "pruning") else ""
        palette = {"lorita": LORITA_COLORS, "pruning": PRUNING_COLORS}.get(fam, OTHER_COLORS)
        color = palette[used[fam] % len(palette)]
        used[fam] += 1
        label = f"{m} (N={n[m]})" if fam == "lorita" and n[m] is not None and f"n{n[m]}" not in m else m
        out[m] = {"color": color, "marker": markers.get(fam, "^"), "ls": lines.get(fam, ":"), "label": label}
    return out


def _by_model(records: Iterable[Rec]) -> dict[tuple[str, str, str], list[Rec]]:
    """Records per (config hash, dataset, model): configurations are never drawn together."""
    out: dict[tuple[str, str, str], list[Rec]] = {}
    for r in records:
        out.setdefault((r.get("config_hash") or "", r["dataset"], r["model"]), []).append(r)
    return dict(sorted(out.items()))  # the tables' order


def _naming(groups: Iterable[tuple[str, str, str]]) -> Callable[[tuple[str, str, str]], tuple[str, str]]:
    """(file stem suffix, title) per group; the config hash is named only when there are several."""
    several = len({g[0] for g in groups}) > 1

    def name(g: tuple[str, str, str]) -> tuple[str, str]:
        h, dataset, model = g
        if several:
            return f"{dataset}_{model}_{h or 'unknown'}", f"{dataset} / {model} (config {h or 'unknown'})"
        return f"{dataset}_{model}", f"{dataset} / {model}"

    return name


def _ok(records: Iterable[Rec]) -> list[Rec]:
    # A control repeats its cell's architecture and counts: the report's Controls table shows it beside
    # that cell, so the figures keep to the methods.
    return [r for r in latest(records) if r.get("status") == "ok" and r.get("family") not in UNRANKED]


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats in both coordinates (larger drop and higher accuracy),
    sorted by drop ascending."""
    front, best_y = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _mean_points(rs: Sequence[Rec], x_key: str, y_key: str = "acc") -> list[tuple[float, float]]:
    cells: dict[tuple, list[Rec]] = {}
    for r in rs:
        if r.get(y_key) is not None:
            cells.setdefault((r["target_kind"], r["target_drop"]), []).append(r)
    return [(statistics.fmean(r[x_key] * 100 for r in c), statistics.fmean(r[y_key] * 100 for r in c))
            for c in cells.values()]


def _reference_acc(rs: Sequence[Rec]) -> tuple[float | None, str]:
    """The reference line: the mean over seeds of ``ref_acc`` (one per seed), or for records
    without it the mean of the methods' own dense accuracies, with its legend label."""
    refs = {r["seed"]: r["ref_acc"] for r in rs if r.get("ref_acc") is not None}
    if refs:
        return statistics.fmean(refs.values()) * 100, "reference (plainly trained dense model)"
    base = [r["base_acc"] * 100 for r in rs if r.get("base_acc") is not None]
    return (statistics.fmean(base), "dense (mean of the methods' dense models; no ref_acc)") if base else (None, "")


ACC_WINDOW_PP = 15.0  # the accuracy axis reaches this far below the dense accuracy; lower points sit on its edge
NO_SAVING = 0.005  # a method whose FLOPs↓ never exceeds this saves no FLOPs (e.g. unstructured sparsity)
STAGE_FIELDS = (("acc", "after fine-tuning"), ("acc_zero_shot", "zero-shot (before fine-tuning)"))


PUBLISHED_LABEL = "published, their protocol"
PUBLISHED_MARKERS = ("D", "P", "X", "*", "h")


def published_points(published: Sequence[Rec]) -> list[tuple[str, float, float, str]]:
    """Where each published number sits on the accuracy-vs-drop axes: (panel key "flops_drop" or
    "params_drop", drop %, accuracy %, legend label), a dense accuracy (``base_acc``) at 0 % in both
    panels, a compressed one (``acc``) at its target (a published MACs speed-up s at FLOPs↓ 1 − 1/s)."""
    out = []
    for p in published:
        source = re.split(r"[,(]", p.get("source") or "")[0].strip() or "publication"
        label = f"{p['method']}, {source} ({PUBLISHED_LABEL})"
        target = p.get("target")
        if p.get("metric") == "base_acc" or target is None:
            out += [(k, 0.0, p["value"] * 100, label) for k in ("flops_drop", "params_drop")]
            continue
        drop = target["drop"]
        if target["kind"] == "flops" and p.get("speed_up"):
            drop = 1 - 1 / p["speed_up"]
        out.append(("flops_drop" if target["kind"] == "flops" else "params_drop", drop * 100, p["value"] * 100,
                    label))
    return out


def _draw_published(ax: Any, key: str, points: Sequence[tuple[str, float, float, str]],
                    styles: Mapping[str, Mapping[str, Any]], floor: float) -> None:
    """Hollow markers for the published numbers of panel ``key``: never part of a mean or a front."""
    labels = list(dict.fromkeys(label for *_, label in points))
    for k, x, y, label in points:
        if k != key:
            continue
        method = label.split(",")[0]
        color = styles.get(method, {}).get("color", REFERENCE_COLOR)
        ax.scatter([x], [max(y, floor)], marker=PUBLISHED_MARKERS[labels.index(label) % len(PUBLISHED_MARKERS)],
                   s=70, facecolors="none", edgecolors=color, linewidths=1.4, zorder=5, label=label)


def accuracy_vs_drop(records: Sequence[Rec], out_dir: Path,
                     published: Mapping[str, Sequence[Rec]] | None = None) -> list[Plot]:
    """Accuracy vs FLOPs↓ and vs Params↓ per (config, dataset, model), fine-tuned in the top row
    and zero-shot (before fine-tuning) in the bottom row when the records carry it: every run as
    a faint point, each operating point's mean as a marker, each method's Pareto front as a line,
    and the reference model's accuracy as a black line. Both rows share the accuracy axis.

    A collapsed operating point (more than ``ACC_WINDOW_PP`` below the reference accuracy)
    would squash every other point into a sliver, so it is drawn on the axis' lower edge as ▼
    with its accuracy written beside it. A method that saves no FLOPs is left out of the FLOPs
    panel (named in a corner of it) instead of stretching its axis to 0. ``published`` (per config
    hash, the preset's published numbers as stored in config.json) adds hollow markers to the top row
    (``published_points``), labelled "published, their protocol": never in a mean or a front.
    """
    ok = [r for r in _ok(records) if r.get("acc") is not None]
    styles = _styles(ok)
    groups = _by_model(ok)
    name = _naming(groups)
    plots = []
    for g, rs in groups.items():
        stem, where = name(g)
        stages = [(k, t) for k, t in STAGE_FIELDS if any(r.get(k) is not None for r in rs)]
        ref, ref_label = _reference_acc(rs)
        pub = published_points((published or {}).get(g[0], ()))
        accs = [r[k] * 100 for r in rs for k, _ in stages if r.get(k) is not None]
        top = max(accs + ([ref] if ref is not None else []) + [y for _, _, y, _ in pub])
        floor = ref - ACC_WINDOW_PP if ref is not None else -math.inf
        if min(accs) >= floor:
            floor = -math.inf  # nothing to pin: let matplotlib fit the data
        with _style():
            fig, axes = _figure(len(stages), 2, 11, 4.2 * len(stages) + 0.4)
            for row, (acc_key, stage) in enumerate(stages):
                for col, (key, label) in enumerate((("flops_drop", "FLOPs↓ (%)"), ("params_drop", "Params↓ (%)"))):
                    ax = axes[2 * row + col]
                    left_out, clipped = [], []
                    for method in _method_order(rs):
                        mine = [r for r in rs if r["method"] == method and r.get(key) is not None
                                and r.get(acc_key) is not None]
                        if not mine:
                            continue
                        if key == "flops_drop" and max(r[key] for r in mine) <= NO_SAVING:
                            left_out.append(method)
                            continue
                        st = styles[method]
                        ax.scatter([r[key] * 100 for r in mine], [max(r[acc_key] * 100, floor) for r in mine],
                                   color=st["color"], marker=st["marker"], alpha=0.25, s=18, linewidths=0)
                        pts = _mean_points(mine, key, acc_key)
                        shown = [(x, max(y, floor)) for x, y in pts]
                        ax.scatter(*zip(*shown, strict=True), color=st["color"], marker=st["marker"], s=36,
                                   edgecolors="white", linewidths=0.6, zorder=3)
                        for x, y in pts:
                            if y < floor:
                                ax.scatter([x], [floor], color=st["color"], marker="v", s=60, zorder=4)
                                clipped.append((x, method, y))
                        front = [(x, max(y, floor)) for x, y in pareto_front(pts)]
                        ax.plot(*zip(*front, strict=True), color=st["color"], ls=st["ls"], lw=1.6,
                                label=st["label"], zorder=2)
                    if row == 0:
                        _draw_published(ax, key, pub, styles, floor)
                    if ref is not None:
                        ax.axhline(ref, color=REFERENCE_COLOR, ls=(0, (1, 2)), lw=1.3, label=ref_label)
                    if math.isfinite(floor):
                        ax.set_ylim(floor - 1.0, top + 0.8)
                        _label_clipped(ax, clipped, floor)
                    if left_out:
                        ax.text(0.02, 0.03, f"not drawn (no FLOPs saved): {', '.join(left_out)}",
                                transform=ax.transAxes, fontsize="x-small", color="0.3")
                    ax.set_title(stage, fontsize="medium")
                    ax.set_xlabel(label)
                    ax.set_ylabel("Top-1 test accuracy (%)")
            if not math.isfinite(floor):
                lo, hi = min(ax.get_ylim()[0] for ax in axes), max(ax.get_ylim()[1] for ax in axes)
                for ax in axes:
                    ax.set_ylim(lo, hi)  # zero-shot and fine-tuned on one scale, so the rows compare
            _legend(fig, axes[1], more=axes[:1])
            fig.suptitle(f"{where}: accuracy vs compression (lines: each method's Pareto front)")
            zero = ("; bottom row: zero-shot, the compressed model before any fine-tuning, on the same scale"
                    if len(stages) > 1 else "; the records carry no zero-shot accuracy")
            plots.append(_save(fig, out_dir, f"accuracy-vs-drop_{stem}",
                               f"Accuracy vs FLOPs↓ and Params↓ — {where}",
                               "Top row: after fine-tuning" + zero + ". Faint points are single runs, solid "
                               "markers the mean over seeds of each operating point; a method's line joins its "
                               "Pareto-optimal points (no other point of the same method has both a larger drop "
                               "and a higher accuracy); solid lines LoRITa (blues and purples by N), dashed pruning "
                               "(warm colours and greens); the black dotted line is the reference accuracy. Up and "
                               "right is better. ▼ marks a point below the axis, its accuracy written beside it."
                               + (" Hollow markers: numbers the methods' papers published under their own protocol "
                                  "(dense accuracy at 0 %), for orientation only: never in a mean, front or "
                                  "ranking." if pub else "")))
    return plots


# Clipped points closer than this share of the x-axis share one label: about a label's width
# (a method name and an accuracy in x-small type), so that neighbouring labels do not overlap.
CLIP_CLUSTER = 0.15


def _label_clipped(ax: Any, clipped: Sequence[tuple[float, str, float]], floor: float) -> None:
    """One label per cluster of points drawn on the lower edge: a line per method with its real
    accuracy, stacked upwards from the edge, so that several methods clipped at one target stay
    readable instead of printing on top of each other."""
    if not clipped:
        return
    xs = [x for x, _, _ in clipped]
    span = (max(xs) - min(xs)) or 1.0
    lo, hi = ax.get_xlim()
    near = CLIP_CLUSTER * max(hi - lo, span)
    clusters: list[list[tuple[float, str, float]]] = []
    for point in sorted(clipped):
        if clusters and point[0] - clusters[-1][-1][0] <= near:
            clusters[-1].append(point)
        else:
            clusters.append([point])
    for cluster in clusters:
        x = statistics.fmean(p[0] for p in cluster)
        text = "\n".join(f"{method} {y:.1f}%" for _, method, y in sorted(cluster, key=lambda p: -p[2]))
        right = x > (lo + hi) / 2  # keep the label inside the panel
        ax.annotate(text, (x, floor), textcoords="offset points", xytext=(-8 if right else 8, 6),
                    ha="right" if right else "left", va="bottom", fontsize="x-small", color="0.2",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.8", "alpha": 0.85}, zorder=5)


def layer_name(name: str) -> str:
    """A layer's module name as the records spell it; a bare index (a child of an nn.Sequential,
    such as the FCN's "1") is shown as ``model[1]`` so that it does not read as an ordinal."""
    return f"model[{name}]" if str(name).isdigit() else str(name)


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
    groups = _by_model(have)
    name = _naming(groups)
    plots = []
    for g, rs in groups.items():
        stem, where = name(g)
        per_method: dict[str, Rec] = {}
        for r in sorted(rs, key=lambda r: r["seed"]):
            per_method.setdefault(r["method"], r)
        layers = list(dict.fromkeys(layer for r in per_method.values() for layer in r["spectra"]))
        position = {layer: i + 1 for i, layer in enumerate(layers)}
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
                width = 0
                for method in _method_order(per_method.values()):
                    r = per_method[method]
                    if layer not in r["spectra"]:
                        continue
                    sv = _normalized(r["spectra"][layer])
                    width = max(width, len(sv))
                    label = f"N={r['n']} ({method})" if r.get("family") == "lorita" else method
                    ax.semilogy(range(1, len(sv) + 1), [max(v, 1e-8) for v in sv], color=styles[method]["color"],
                                lw=1.4, label=label)
                # The record's own layer name (module path), then where it sits among the compressible
                # layers: "1" alone reads as "first layer" in an nn.Sequential where it is the first Linear.
                ax.set_title(f"{layer_name(layer)} — #{position[layer]} of {total}, {width} σ", fontsize="medium")
                ax.set_xlabel("index i")
                ax.set_ylabel("σᵢ / σ₁")
                ax.set_ylim(1e-4, 1.5)
            for ax in axes[len(layers):]:
                ax.set_visible(False)
            _legend(fig, axes[0])
            fig.suptitle(f"{where}: singular values of the trained dense (merged) weights")
            plots.append(_save(fig, out_dir, f"spectra_{stem}",
                               f"Singular-value decay per layer — {where}",
                               "σᵢ/σ₁ of each compressible layer after training (LoRITa: after merging the N "
                               "factors; convolutions reshaped out × in·k·k). Panel titles are the layers' module "
                               "names in the model (model[i]: child i of an nn.Sequential, as in the FCN), their "
                               "position among the compressible layers and their number of singular values. A "
                               "faster decay for "
                               "larger N is the low rank that LoRITa's training induces, and what truncation "
                               "exploits." + shown))
    return plots


def _natural(names: Iterable[str]) -> list[str]:
    """Layer names in natural order (``features.3`` before ``features.10``): records without
    ``layer_order`` stored their layers with sorted keys, and the model's order is lost."""
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def _kept_fraction(r: Rec, layer: str, largest: Mapping[str, float]) -> float | None:
    """What ``r`` keeps of ``layer``: rank / full rank (LoRITa) or channels / dense channels (pruning);
    records without ``layers_full`` (older ones) against the largest value any record keeps there."""
    kept = (r.get("layers") or {}).get(layer)
    if kept is None:
        return None
    full = (r.get("layers_full") or {}).get(layer) or largest.get(layer)
    return kept / full if full else None


def kept_layers(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Per layer, the kept fraction (LoRITa: rank / full rank; pruning: output channels / the dense
    model's), mean over seeds, as a heatmap per target: methods down, layers across, so that layers
    of different shapes compare. Protected layers (the records' ``protected``) are marked."""
    import seaborn as sns

    ok = [r for r in _ok(records) if r.get("layers")]
    groups = _by_model(ok)
    name = _naming(groups)
    plots = []
    for g, rs in groups.items():
        stem, where = name(g)
        targets = sorted({(r["target_kind"], r["target_drop"]) for r in rs})
        layers = list(dict.fromkeys(layer for r in rs for layer in (r.get("layer_order") or _natural(r["layers"]))))
        largest = {layer: max(r["layers"][layer] for r in rs if layer in r["layers"]) for layer in layers}
        protected = {p for r in rs for p in r.get("protected") or ()}
        methods = _method_order(rs)
        ticks = [layer_name(layer) + (" (protected)" if layer in protected else "") for layer in layers]
        with _style():
            fig, axes = _figure(len(targets), 1, max(6.0, 0.55 * len(layers) + 2.5),
                                (0.32 * len(methods) + 1.1) * len(targets) + 1.2)
            for ax, (kind, drop) in zip(axes, targets, strict=True):
                grid = []
                for method in methods:
                    mine = [r for r in rs
                            if r["method"] == method and (r["target_kind"], r["target_drop"]) == (kind, drop)]
                    row = []
                    for layer in layers:
                        vals = [v for r in mine if (v := _kept_fraction(r, layer, largest)) is not None]
                        row.append(statistics.fmean(vals) if vals else math.nan)
                    grid.append(row)
                sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=len(layers) <= 24, fmt=".2f",
                            annot_kws={"fontsize": "xx-small"}, cbar=ax is axes[0], xticklabels=ticks,
                            yticklabels=methods, linewidths=0.4, linecolor="white",
                            cbar_kws={"label": "kept fraction"} if ax is axes[0] else None)
                for i, layer in enumerate(layers):
                    if layer in protected:
                        ax.add_patch(_outline(i, len(methods)))
                ax.set_title(f"target: {kind} drop {drop * 100:g}%", fontsize="medium")
                ax.tick_params(axis="x", labelrotation=60, labelsize="x-small")
                ax.tick_params(axis="y", labelrotation=0, labelsize="small")
            axes[-1].set_xlabel("layer (module name)")
            fig.suptitle(f"{where}: what each method keeps per layer (fraction of the layer)")
            plots.append(_save(fig, out_dir, f"kept-per-layer_{stem}",
                               f"Kept fraction per layer — {where}",
                               "LoRITa: rank kept / full rank of the layer (1.00 where it stays dense); pruning: "
                               "output neurons/channels left / the dense model's. Mean over seeds; blank: the "
                               "method has no such layer. Outlined columns, named \"(protected)\", are the "
                               "protected layers, which no method may change."))
    return plots


def _outline(column: int, rows: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((column, 0), 1, rows, fill=False, edgecolor="#D55E00", lw=2.0, clip_on=False)


def speedup_vs_theory(records: Sequence[Rec], out_dir: Path) -> list[Plot]:
    """Measured speed-up (dense / deployed latency) against the FLOP count's promise
    1/(1 − FLOPs↓), at batch 1 and at the throughput batch; the dashed diagonal is parity."""
    ok = [r for r in _ok(records) if r.get("flops_drop") is not None and r["flops_drop"] < 1
          and (speedup(r, "1") or speedup(r, "T"))]
    styles = _styles(ok)
    groups = _by_model(ok)
    name = _naming(groups)
    plots = []
    for g, rs in groups.items():
        stem, where = name(g)
        tput = next((r["throughput_batch"] for r in rs if r.get("throughput_batch")), "T")
        device = next((r["latency_device"] for r in rs if r.get("latency_device")), "unknown device")
        with _style():
            fig, axes = _figure(1, 2, 11, 4.4)
            top = 1.0
            for ax, batch, label in ((axes[0], "1", "batch 1"), (axes[1], "T", f"batch {tput}")):
                for method in _method_order(rs):
                    mine = [r for r in rs if r["method"] == method and speedup(r, batch) is not None]
                    if not mine:
                        continue
                    st = styles[method]
                    xs, ys = [1 / (1 - r["flops_drop"]) for r in mine], [speedup(r, batch) for r in mine]
                    ax.scatter(xs, ys, color=st["color"], marker=st["marker"], s=30, label=st["label"], zorder=3)
                    bars = [(x, y, r[f"speedup_b{batch}_lo"], r[f"speedup_b{batch}_hi"])
                            for x, y, r in zip(xs, ys, mine, strict=True)
                            if r.get(f"speedup_b{batch}_lo") is not None and r.get(f"speedup_b{batch}_hi") is not None]
                    if bars:  # the A/B timing's 95 % bootstrap interval
                        ax.errorbar([b[0] for b in bars], [b[1] for b in bars],
                                    yerr=[[max(b[1] - b[2], 0) for b in bars], [max(b[3] - b[1], 0) for b in bars]],
                                    fmt="none", ecolor=st["color"], elinewidth=1, capsize=2, zorder=2)
                    top = max(top, *xs, *ys, *(b[3] for b in bars))
                ax.set_title(label, fontsize="medium")
                ax.set_xlabel("theoretical speed-up 1/(1 − FLOPs↓)")
                ax.set_ylabel("measured speed-up (dense / deployed latency)")
            for ax in axes:
                ax.plot([0.9, top * 1.05], [0.9, top * 1.05], color=REFERENCE_COLOR, ls="--", lw=1, label="parity")
                ax.axhline(1.0, color="0.6", ls=":", lw=1)
                ax.set_xlim(0.9, top * 1.05)
                ax.set_ylim(0, top * 1.1)
            _legend(fig, axes[1], ncols=5)
            fig.suptitle(f"{where}: measured vs theoretical speed-up on {device}")
            plots.append(_save(fig, out_dir, f"speedup-vs-theory_{stem}",
                               f"Measured vs theoretical speed-up — {where}",
                               "One point per run; error bars, where recorded, are the 95 % bootstrap interval of "
                               "the A/B timing. Points below the diagonal fall short of what the FLOP count "
                               "promises; below the dotted line the compressed model is slower than the dense one "
                               "(a factorized layer runs two kernels, and on small layers, at batch 1 and on CPU "
                               "per-kernel overheads, not arithmetic, set the latency)."))
    return plots


FIGURES: tuple[tuple[str, Callable[[Sequence[Rec], Path], list[Plot]], str], ...] = (
    ("Accuracy vs FLOPs↓ and Params↓", accuracy_vs_drop, "no successful run with an accuracy"),
    ("Singular-value decay per layer", spectra,
     "no record carries `spectra` (the dense model's singular values per layer); records from "
     "`pytest bench --benchmark-json` carry them, and runner records will once the Record has the field"),
    ("Kept fraction per layer", kept_layers, "no successful run recorded its per-layer ranks or widths"),
    ("Measured vs theoretical speed-up", speedup_vs_theory, "no successful run has both latencies measured"),
)


def render_all(records: Sequence[Rec], out_dir: Path,
               published: Mapping[str, Sequence[Rec]] | None = None) -> tuple[list[Plot], list[str]]:
    """Every figure the records allow, written into ``out_dir``; and, for each kind of figure that
    could not be drawn, one line saying why (for the report). ``published``: per config hash, the
    published numbers the accuracy-vs-drop figure shows beside the measured ones."""
    plots, skipped = [], []
    for title, draw, why in FIGURES:
        made = draw(records, Path(out_dir), published) if draw is accuracy_vs_drop else draw(records, Path(out_dir))
        plots += made
        if not made:
            skipped.append(f"{title}: not drawn — {why}.")
    return plots, skipped
