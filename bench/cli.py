"""``lorita-bench``: list what is registered, run a preset, render a report, gate a run, follow the history."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.records.errors import BudgetMismatch, UsageError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"bad {what} {text!r}; accepted: comma-separated integers, e.g. 0,1,2") from None


BUDGET_FLAGS = ("epochs", "finetune_epochs", "batch_size", "optimizer", "lr", "finetune_lr", "weight_decay",
                "schedule", "label_smoothing")


def _options(text: str) -> dict[str, object]:
    """``"width=0.25,depth=2"`` → {"width": 0.25, "depth": 2} (ints, floats, true/false, none, else strings)."""
    out: dict[str, object] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, raw = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad model option {part!r}; accepted: KEY=VALUE[,KEY=VALUE…], e.g. width=0.5")
        value: object = raw.strip()
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        if raw.strip().lower() in ("true", "false"):
            value = raw.strip().lower() == "true"
        elif raw.strip().lower() == "none":  # e.g. vit's fc_norm=none (timm: "decide from the pooling")
            value = None
        out[key.strip()] = value
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.catalog import DATASETS, METHODS, MODELS, PRESETS

    if args.preset is not None:
        return _show_preset(args.preset)
    tables = (("presets", PRESETS), ("datasets", DATASETS), ("models", MODELS), ("methods", METHODS))
    width = max(len(e.name) for _, reg in tables for e in reg) + 2
    for title, reg in tables:
        print(f"{title}:")
        for e in reg:
            paper = f"  [{e.meta['paper']}]" if e.meta.get("paper") else ""
            print(f"  {e.name:<{width}}{e.description}{paper}")
    print("\n`lorita-bench list PRESET` shows a preset's every field; `lorita-bench run --help` the options that "
          "change them.")
    return 0


def _show_preset(name: str) -> int:
    """Print the preset ``name`` field by field: what ``run --preset NAME`` does when no option changes it."""
    from dataclasses import asdict

    from bench.catalog import PRESETS

    entry = PRESETS.entry(name)
    p = entry.obj

    def kv(d: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items()) or "its defaults"
    rows = (("dataset", p.dataset), ("model", f"{p.model} ({kv(p.model_options)})"),
            ("methods", ", ".join(p.methods)), ("targets", ", ".join(f"{t.kind}:{t.drop:g}" for t in p.targets)),
            ("budget", kv(asdict(p.budget))), ("seeds", ", ".join(map(str, p.seeds))), ("device", p.device),
            ("speed", kv(p.speed()) + " (amp and channels_last act on CUDA only)"),
            ("latency", f"{p.latency_rounds} rounds at batch {', '.join(map(str, p.latency_batches()))}, "
             f"mode {', '.join(p.latency_modes)}"), ("round-to", p.round_to),
            ("protect", ", ".join(p.protect) or "none"), ("ranks", f"LoRITa's allocation {p.allocation}"))
    print(f"{name}: {entry.description}")
    for key, value in rows:
        print(f"  {key:<9}{value}")
    for pub in entry.meta.get("published", ()):
        at = f" at {pub.target.kind}:{pub.target.drop:.3g}" if pub.target is not None else ""
        print(f"  published {pub.method} {pub.metric}{at} = {pub.value:.4f} ({pub.source})")
    print(f"run it: lorita-bench run --preset {name} --out out/{name}")
    return 0


def _preset_changes(args: argparse.Namespace) -> dict[str, object]:
    """The ``Preset`` fields ``run``'s options change (``None``: not given)."""
    from bench.catalog.budget import parse_targets

    return {"dataset": args.dataset, "model": args.model, "device": args.device,
            "amp": False if args.no_amp else None, "compile": True if args.compile else None,
            "latency_rounds": args.latency_rounds, "throughput_batch": args.throughput_batch,
            "methods": tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
            "targets": parse_targets(args.targets) if args.targets else None,
            "seeds": _ints(args.seeds, "seeds") if args.seeds else None,
            "protect": _protect(args.protect) if args.protect is not None else None,
            "allocation": args.allocation, "chance_check": False if args.no_chance_check else None,
            "round_to": args.round_to, "latency_sweep": _ints(args.latency_sweep, "latency sweep")
            if args.latency_sweep else None,
            "latency_modes": tuple(m.strip() for m in args.latency_modes.split(",") if m.strip())
            if args.latency_modes is not None else None,
            **_controls(args)}


def _controls(args: argparse.Namespace) -> dict[str, object]:
    """``--controls`` and ``--control-targets`` as ``Preset`` fields (empty when not given)."""
    from bench.catalog import PRESETS
    from bench.catalog.budget import parse_targets
    from bench.catalog.controls import parse_controls

    if args.controls is None:
        if args.control_targets:
            raise UsageError("--control-targets without --controls; accepted: --controls scratch[:METHOD,…] first")
        return {}
    methods = (tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods
               else PRESETS.get(args.preset).methods)
    out: dict[str, object] = {"controls": parse_controls(args.controls, methods)}
    if args.control_targets:
        out["control_targets"] = parse_targets(args.control_targets)
    return out


def _protect(text: str) -> tuple[str, ...]:
    """``--protect``: comma-separated patterns; "none" (or nothing) protects no layer."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return () if parts in ((), ("none",)) else parts


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bench import frontend
    from bench.catalog import PRESETS
    from bench.execution import executors, runner
    from bench.records.results import RESULTS, parse_jsonl
    from reports import comparison_table, render

    executor = executors.ExecutorConfig(kind=args.executor, cluster=args.cluster, slurm_partition=args.slurm_partition,
                                        gpus_per_job=args.gpus_per_job, max_parallel=args.max_parallel,
                                        timeout_min=args.timeout_min)
    # Every path the user gave is checked before any training (an unusable one ends in one line).
    from bench.execution import cache

    if args.data_dir is not None:
        frontend.check_folder(args.data_dir, "--data-dir", create=args.download)
    preset = frontend.resolve_preset(
        args.preset, flags=frontend.CLI_FLAGS, changes=_preset_changes(args),
        budget_changes={k: getattr(args, k) for k in BUDGET_FLAGS if getattr(args, k) is not None},
        model_options=_options(args.model_options) if args.model_options else None,
        data_dir=args.data_dir, download=args.download, runs_here=executors.resolve(executor).runs_here,
        note=lambda line: print(f"note: {line}", file=sys.stderr))
    out = frontend.check_folder(args.out if args.out is not None else f"out/{args.preset}", "--out")
    frontend.check_folder(args.cache_dir if args.cache_dir else cache.default_dir(), "--cache-dir")
    main_rank = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: data parallel training
        from bench.execution import distributed

        if executor.kind != "local":
            raise UsageError("torchrun runs the suite in-process; accepted: --executor local under torchrun")
        preset = preset.override(device=distributed.setup_from_env(preset.device))
        main_rank = distributed.is_main()
    published = [asdict(p) for p in PRESETS.entry(args.preset).meta.get("published", ())]
    # Every rank runs the suite; only rank 0 shows progress, prints and reports.
    run_kw = {"data_dir": args.data_dir, "download": args.download, "progress": main_rank and not args.no_progress,
              "echo": (lambda s: print(s, file=sys.stderr)) if main_rank else (lambda s: None),
              "cache_dir": args.cache_dir, "executor": executor}
    if args.tune or args.tune_grid:
        preset = _tuned(preset, out, args.tune_grid, run_kw)
    records = runner.run(preset, out, published=published, **run_kw)
    if not main_rank:
        return 0
    dicts = [r.to_dict() for r in records]
    print(comparison_table(dicts))
    references = [r.to_dict() for r in parse_jsonl(out / RESULTS).references]
    path = render(dicts, out, config={**preset.to_dict(), "published": published}, references=references)
    print(f"report: {path}")
    print(f"records: {out / RESULTS}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reports import load, render

    loaded = load(args.sources)
    if not loaded.records:
        raise UsageError(f"no records in {', '.join(args.sources)}; accepted: a run folder, results.jsonl "
                         "or pytest-benchmark JSON holding at least one record")
    path = render(loaded.records, Path(args.out), configs=loaded.configs, machines=loaded.machines,
                  plots=not args.no_plots, references=loaded.references)
    print(f"report: {path}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.records.compare import check_tolerance, compare_paths, summary

    tol = check_tolerance(args.acc_tol)
    result = compare_paths(args.reference, args.new, acc_tol=tol)
    for line in result.problems:
        print(line)
    for line in result.notes:
        print(f"note: {line}", file=sys.stderr)
    print(summary(result, tol), file=sys.stderr)
    return 0 if result.ok else 1


def _cmd_history(args: argparse.Namespace) -> int:
    from bench.records.history import build_series, changes_at, load_history
    from reports.history import counted, render_history

    history = load_history(args.sources, repo=args.repo)
    at = history.position(args.fail_on_change) if args.fail_on_change is not None else None
    series = build_series(history)
    path = render_history(history, Path(args.out), series=series, plots=not args.no_plots)
    found = [(s, c) for s in series for c in s.changes]
    for s, c in sorted(found, key=lambda sc: sc[1].position):
        commit = history.commits[c.position]
        print(f"{commit.short} {s.cell.label} ({'/'.join(p for p in s.cell.group if p)}): {s.measure.title} "
              f"{s.measure.change_text(c.delta)} ({c.z:.1f} se, {c.direction}) {commit.subject}".rstrip())
    print(f"history: {counted(len(history.runs), 'run')} at {counted(len(history.commits), 'commit')}, "
          f"{len(series)} series, "
          f"{len(found)} change(s) beyond the noise", file=sys.stderr)
    print(f"report: {path}")
    if at is None:
        return 0
    started = changes_at(series, at)
    commit = history.commits[at]
    if started:
        print(f"change at {commit.short}: {len(started)} series start a new level there (--fail-on-change "
              f"{args.fail_on_change})", file=sys.stderr)
        return 1
    print(f"ok: no series starts a change at {commit.short}", file=sys.stderr)
    return 0


class _CatalogParser(argparse.ArgumentParser):
    """A parser whose help names the catalog's entries (``{presets}``, ``{methods}``, …) in its
    option texts. The names are filled in only when the help is shown: importing the catalog
    imports torch, which ``list``-free commands (``report``, ``compare``) never need."""

    def format_help(self) -> str:
        names = _choices()
        for action in self._actions:
            if action.help and "{" in action.help:
                action.help = action.help.format(**names)
        return super().format_help()


def _choices() -> dict[str, str]:
    """Every closed set an option of ``run`` takes, as comma-separated names."""
    from bench.catalog import DATASETS, METHODS, MODELS, PRESETS
    from bench.catalog.budget import OPTIMIZERS, SCHEDULES, TARGET_KINDS
    from bench.catalog.presets import LATENCY_MODES
    from bench.execution.executors import CLUSTERS, EXECUTORS

    def join(names) -> str:
        return ", ".join(names)
    return {"presets": join(PRESETS.names()), "datasets": join(DATASETS.names()), "models": join(MODELS.names()),
            "methods": join(METHODS.names()), "optimizers": join(OPTIMIZERS), "schedules": join(SCHEDULES),
            "target_kinds": join(TARGET_KINDS), "executors": join(EXECUTORS), "clusters": join(CLUSTERS),
            "latency_modes": join(LATENCY_MODES)}


PRESETS_DEFAULT = "default: the preset's"


def _add_run(sub: argparse._SubParsersAction) -> None:
    """The ``run`` command and its options.

    Help texts hold ``{name}`` fields that ``_CatalogParser`` fills from the catalog; a
    ``%`` in them must be written ``%%`` (argparse formats them too).
    """
    run = sub.add_parser("run", help="run a preset and write records and a report",
                         description="Train every method of a preset under one budget, compress each to every "
                         "target, measure, and write results.jsonl, config.json and report.md. Options change "
                         "one field of the preset each; an option not given keeps the preset's value, and "
                         "`lorita-bench list PRESET` shows every value of a preset.")
    d = PRESETS_DEFAULT
    run.add_argument("--preset", default="quick", metavar="NAME",
                     help="the configuration to start from, one of: {presets}. `lorita-bench list` says what "
                     "each one runs and how long it takes (default: quick)")
    run.add_argument("--out", metavar="DIR", help="folder for results.jsonl, config.json and report.md; a re-run "
                     "into the same folder resumes (default: out/PRESET, e.g. out/quick)")
    run.add_argument("--dataset", metavar="NAME", help=f"data set to train and test on, one of: {{datasets}} ({d})")
    run.add_argument("--model", metavar="NAME", help="model, one of: {models}; another model than the preset's "
                     f"starts from its own defaults, not the preset's --model-options ({d})")
    run.add_argument("--model-options", metavar="KEY=VALUE,…", help="options of the model's builder, e.g. "
                     "width=0.5 (`lorita-bench list` names each model's options), merged into the preset's; "
                     f"checked before any training ({d})")
    run.add_argument("--methods", metavar="M,M,…", help=f"comma-separated, from: {{methods}} ({d})")
    run.add_argument("--controls", metavar="scratch[:M,…]", help="also run controls: scratch trains each method's "
                     "deployed architecture from scratch with the same steps and recipe (Liu et al. 2019), shown "
                     "beside the method's cell; scratch:M,… for chosen methods; one extra training per cell "
                     "(default: none)")
    run.add_argument("--control-targets", metavar="KIND:DROP,…", help="the targets the controls run at, among "
                     "--targets (default: every target)")
    run.add_argument("--targets", metavar="KIND:DROP,…", help="compression targets: KIND from {target_kinds}, "
                     f"drops as fractions in (0, 1), e.g. params:0.5,0.7,0.9 or params:0.5,flops:0.7 ({d})")
    run.add_argument("--cache-dir", metavar="DIR", help="trained-model checkpoints, shared by runs (default: "
                     "$LORITA_BENCH_CACHE, else ~/.cache/lorita-bench/checkpoints)")
    run.add_argument("--seeds", metavar="S,S,…", help="comma-separated seeds; several give means with 95 %% intervals "
                     f"({d}: 0)")
    run.add_argument("--device", metavar="DEV", help=f"cpu, cuda or cuda:N ({d}: cpu for quick, ci and the "
                     "*-fcn presets, cuda for the others)")
    run.add_argument("--data-dir", metavar="DIR", help="data set folder in torchvision's layout; digits needs "
                     "none (default: $LORITA_BENCH_DATA, else ~/.cache/lorita-bench/data)")
    run.add_argument("--download", action="store_true", help="fetch missing data sets into the data folder; needs "
                     "internet (default: off)")
    run.add_argument("--no-progress", action="store_true", help="no progress output (default: bars in a "
                     "terminal; elsewhere one line per training, fine-tuning and run)")
    _add_budget_options(run)
    _add_protocol_options(run)
    _add_deploy_options(run)
    _add_executor_options(run)
    run.set_defaults(fn=_cmd_run)


def _add_budget_options(run: argparse.ArgumentParser) -> None:
    """The training budget every method shares (epochs, batch, optimizer, schedule) and its speed options."""
    d = PRESETS_DEFAULT
    run.add_argument("--epochs", type=int, metavar="N", help="total epochs of every method, before plus after "
                     f"compression ({d})")
    run.add_argument("--finetune-epochs", type=int, metavar="N", help="of --epochs, those spent fine-tuning after "
                     f"compression, at every target ({d})")
    run.add_argument("--batch-size", type=int, metavar="N", help=f"training batch size, for every method ({d})")
    run.add_argument("--optimizer", metavar="NAME", help=f"one of: {{optimizers}} ({d})")
    run.add_argument("--lr", type=float, metavar="LR", help=f"peak learning rate before compression ({d})")
    run.add_argument("--finetune-lr", type=float, metavar="LR", help=f"peak learning rate of fine-tuning after "
                     f"compression ({d})")
    run.add_argument("--weight-decay", type=float, metavar="WD", help="with sgd the coupled L2 penalty LoRITa's "
                     f"theory is stated for; with adamw decoupled decay ({d})")
    run.add_argument("--schedule", metavar="NAME", help=f"learning-rate schedule, one of: {{schedules}} ({d})")
    run.add_argument("--label-smoothing", type=float, metavar="EPS", help="cross-entropy label smoothing, in "
                     f"[0, 1) ({d})")
    run.add_argument("--no-amp", action="store_true", help="train without bf16 autocast on CUDA; CPU runs never "
                     "use it (default: the preset's: autocast on, except the repro-* presets)")
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward pass (default: "
                     "off, as in every preset)")


def _add_protocol_options(run: argparse.ArgumentParser) -> None:
    """What every method may touch and how it is judged: protected layers, rank allocation, the chance
    check, and recipes tuned on the validation split."""
    d = PRESETS_DEFAULT
    run.add_argument("--protect", metavar="PATTERN,…", help="layers no method may change, the same for every "
                     "method: @head (the classifier) and glob patterns on layer names, e.g. @head,features.0; "
                     "none protects nothing; checked against the model before any training (default: @head)")
    run.add_argument("--allocation", metavar="RULE", choices=("global", "min-share", "auto"),
                     help="how LoRITa spends a target across layers: global (one σ/σ_max threshold, the "
                     "paper's), min-share (the same threshold over layers that can save at least 1 %% of the "
                     "model), auto (at each target, the one more accurate on the validation split) "
                     f"({d}: auto)")
    run.add_argument("--no-chance-check", action="store_true", help="rank a dense model that ends at chance on "
                     "validation instead of recording its training as diverged: only for plumbing runs on "
                     "random-label data; a non-finite loss is a collapse either way (default: checked)")
    run.add_argument("--tune", action="store_true", help="choose each method's recipe on the validation split: "
                     "every method runs every point of one grid (--tune-grid; default: weight decay at 1/3, 1 and 3 "
                     "times the preset's) and keeps its best; the steps stay the same (default: off)")
    run.add_argument("--tune-grid", metavar="FIELD=V,…;…", help="the grid --tune searches, each value typed as the "
                     "budget field it sets, e.g. 'weight_decay=1e-4,1e-3;nesterov=true,false;milestones=0.5/0.75,0.3' "
                     "(default: weight decay ×1/3, ×1, ×3)")


def _add_deploy_options(run: argparse.ArgumentParser) -> None:
    """How deployed models are shaped (``--round-to``) and timed (rounds, batches and modes of the latency)."""
    d = PRESETS_DEFAULT
    run.add_argument("--latency-rounds", type=int, metavar="N", help="timed rounds of every latency measurement, "
                     f"reported as median and IQR ({d}: 30 for most, 20 for ci)")
    run.add_argument("--throughput-batch", type=int, metavar="N", help="batch size of the second latency "
                     f"measurement, beside batch 1 ({d}: 256)")
    run.add_argument("--round-to", type=int, metavar="K", help="deploy LoRITa's ranks and every pruned width as "
                     "multiples of K (torch-pruning's round_to for the baselines); 8 suits tensor cores; the "
                     f"target search still lands on the target ({d}: 1, no rounding)")
    run.add_argument("--latency-modes", metavar="MODE,…", help="how latency is timed, from: {latency_modes}. "
                     "eager-fp32: float32 eager PyTorch (the suite's original timing); deploy: as the model ships "
                     "(CUDA: the training's dtype, bf16 unless --no-amp, with CUDA graphs; CPU: float32 eager); "
                     "onnxruntime: ONNX Runtime's CPU execution provider at 1 thread, needs pip install "
                     "'lorita-bench[onnx]'. The first mode fills the records' headline latency "
                     f"({d}: eager-fp32)")
    run.add_argument("--latency-sweep", metavar="B,B,…", help="more batch sizes to time every latency mode at, "
                     f"beside batch 1 and --throughput-batch, e.g. 1,16,64,256,1024 ({d}: none)")


def _tuned(preset: Any, out: Path, grid_text: str | None, run_kw: dict[str, Any]) -> Any:
    """``preset`` with every method's recipe chosen on the validation split (``bench.execution.tune``)."""
    from bench.execution import tune

    grid = tune.parse_grid(grid_text) if grid_text else tune.default_grid(preset)
    run_kw["echo"](f"tuning: {len(tune.points(grid))} recipes per method ({grid}), each a run in "
                   f"{out / tune.TUNE_FOLDER}")
    tuned = tune.tune(preset, out, grid, **run_kw)
    run_kw["echo"]("tuned: " + "; ".join(f"{m} {r}" for m, r in tuned.recipes.items()))
    return tuned


def _add_executor_options(run: argparse.ArgumentParser) -> None:
    """Where the training jobs of ``run`` execute (in this process, or through submitit)."""
    run.add_argument("--executor", default="local", metavar="KIND", help="where training jobs run, one of: "
                     "{executors}. local: in this process, one after another; submitit: one job per trained "
                     "model, needs pip install 'lorita-bench[slurm]' (default: local)")
    run.add_argument("--cluster", metavar="KIND", help="with --executor submitit, one of: {clusters}; local runs "
                     "subprocesses here, debug runs in this process (default: slurm where SLURM's srun is "
                     "on the PATH, else local)")
    run.add_argument("--slurm-partition", metavar="NAME", help="with --executor submitit on SLURM: the partition "
                     "(default: the cluster's default partition)")
    run.add_argument("--gpus-per-job", type=int, metavar="N", help="with --executor submitit (default: 1 on cuda, "
                     "else 0)")
    run.add_argument("--max-parallel", type=int, metavar="N", help="with --executor submitit on SLURM: array tasks "
                     "at once (default: submitit's, 256)")
    run.add_argument("--timeout-min", type=int, metavar="MIN", help="with --executor submitit: each job's limit in "
                     "minutes (default: 1440)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lorita-bench", description="LoRITa vs structured pruning, "
                                 "under identical training budgets.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_CatalogParser)
    lst = sub.add_parser("list", help="registered presets (what each runs, how long), datasets, models and methods",
                         description="Print every registered preset, dataset, model and method with a one-line "
                         "description; with PRESET, that preset's whole configuration.")
    lst.add_argument("preset", nargs="?", metavar="PRESET", help="show this preset's fields: dataset, model and "
                     "options, methods, targets, budget, seeds, device (default: list everything)")
    lst.set_defaults(fn=_cmd_list)
    _add_run(sub)
    rep = sub.add_parser("report", help="render report.md, tables and figures from results")
    rep.add_argument("sources", nargs="+", help="run folders, results.jsonl files or pytest-benchmark JSON files")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, tables and figures "
                     "(required)")
    rep.add_argument("--no-plots", action="store_true", help="tables only, skips matplotlib (default: off)")
    rep.set_defaults(fn=_cmd_report)
    cmp = sub.add_parser("compare", help="regression gate: exit 1, one line per problem, when NEW falls short "
                         "of REFERENCE")
    cmp.add_argument("reference", help="committed reference results (e.g. reference/ci.jsonl)")
    cmp.add_argument("new", help="the new run: a run folder, results.jsonl or pytest-benchmark JSON")
    cmp.add_argument("--acc-tol", type=float, default=0.01, metavar="TOL",
                     help="largest accepted accuracy fall, as a fraction; params and MACs must match exactly "
                     "(default: 0.01 = 1 pp)")
    cmp.set_defaults(fn=_cmd_compare)
    hist = sub.add_parser("history", help="trends per cell across commits, and the changes beyond the noise",
                          description="Read runs kept by commit (a pytest-benchmark storage folder written with "
                          "--benchmark-storage DIR --benchmark-autosave, and run folders, results .jsonl or "
                          "benchmark .json files made before), follow every measure of every cell in commit "
                          "order and report where a series steps beyond its noise: history.md, tables/changes.md "
                          "and one figure per family of measures.")
    hist.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="a history store, run folders, results .jsonl or pytest-benchmark .json files; "
                      "SOURCE@REV names the commit a source without one was made at (e.g. reference/ci.jsonl@cef1460)")
    hist.add_argument("--out", required=True, metavar="DIR", help="folder for history.md, tables and figures "
                      "(required)")
    hist.add_argument("--fail-on-change", metavar="COMMIT", help="exit 1 when COMMIT starts a change beyond the "
                      "noise in any series: last (the newest commit of the history) or a commit id (default: "
                      "report only)")
    hist.add_argument("--repo", default=".", metavar="DIR", help="git repository that SOURCE@REV and commit "
                      "subjects are looked up in (default: the current folder)")
    hist.add_argument("--no-plots", action="store_true", help="tables only, skips matplotlib (default: off)")
    hist.set_defaults(fn=_cmd_history)
    return ap


# OS errors a user causes with a path (a file where a folder should be, no permission, a full
# disk): one line and exit 2 like a UsageError. Any other OSError is a bug and stays a traceback.
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                         errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except UsageError as err:
        print(f"lorita-bench: error: {err}", file=sys.stderr)
        return 2
    except BudgetMismatch as err:  # the run's own numbers void the comparison: a failure, not a usage error
        print(f"lorita-bench: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in USER_ERRNOS:
            raise
        where = f" {err.filename}" + (f" → {err.filename2}" if err.filename2 else "") if err.filename else ""
        print(f"lorita-bench: error: cannot use{where}: {err.strerror}", file=sys.stderr)
        return 2
    finally:
        # Under torchrun: leave the process group on every exit path (see distributed.teardown).
        distributed = sys.modules.get("bench.execution.distributed")
        if distributed is not None:
            distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
