"""``lorita-bench``: list what is registered, run a preset, render a report."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.records.errors import BudgetMismatch, UsageError


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise UsageError(f"bad {what} {text!r}; accepted: comma-separated integers, e.g. 0,1,2") from None


BUDGET_FLAGS = ("epochs", "finetune_epochs", "batch_size", "optimizer", "lr", "finetune_lr", "weight_decay",
                "schedule", "label_smoothing")


def _options(text: str) -> dict[str, object]:
    """``"width=0.25,depth=2"`` → {"width": 0.25, "depth": 2} (ints, floats, true/false, else strings)."""
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
        out[key.strip()] = value
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.catalog import DATASETS, METHODS, MODELS, PRESETS

    tables = (("presets", PRESETS), ("datasets", DATASETS), ("models", MODELS), ("methods", METHODS))
    width = max(len(e.name) for _, reg in tables for e in reg) + 2
    for title, reg in tables:
        print(f"{title}:")
        for e in reg:
            paper = f"  [{e.meta['paper']}]" if e.meta.get("paper") else ""
            print(f"  {e.name:<{width}}{e.description}{paper}")
    return 0


def _preset_changes(args: argparse.Namespace) -> dict[str, object]:
    """The ``Preset`` fields ``run``'s options change (``None``: not given)."""
    from bench.catalog.budget import parse_targets

    return {"dataset": args.dataset, "model": args.model, "device": args.device,
            "amp": False if args.no_amp else None, "compile": True if args.compile else None,
            "latency_rounds": args.latency_rounds, "throughput_batch": args.throughput_batch,
            "methods": tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else None,
            "targets": parse_targets(args.targets) if args.targets else None,
            "seeds": _ints(args.seeds, "seeds") if args.seeds else None}


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from bench import frontend
    from bench.catalog import PRESETS
    from bench.execution import executors, runner
    from bench.records.results import RESULTS
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
        data_dir=args.data_dir, download=args.download, runs_here=executors.resolve(executor).runs_here)
    out = frontend.check_folder(args.out, "--out")
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
    records = runner.run(preset, out, data_dir=args.data_dir, download=args.download,
                         progress=main_rank and not args.no_progress,
                         echo=(lambda s: print(s, file=sys.stderr)) if main_rank else (lambda s: None),
                         cache_dir=args.cache_dir, executor=executor, published=published)
    if not main_rank:
        return 0
    dicts = [r.to_dict() for r in records]
    print(comparison_table(dicts))
    path = render(dicts, out, config={**preset.to_dict(), "published": published})
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
                  plots=not args.no_plots)
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


def _add_run(sub: argparse._SubParsersAction) -> None:
    """The ``run`` command and its options."""
    run = sub.add_parser("run", help="run a preset and write records and a report")
    run.add_argument("--preset", default="quick")
    run.add_argument("--out", default="out/quick", help="folder for results.jsonl, config.json, report.md")
    run.add_argument("--dataset")
    run.add_argument("--model", help="a registered model or timm:<arch>")
    run.add_argument("--model-options", help="KEY=VALUE,… passed to the model builder, e.g. width=0.5")
    run.add_argument("--latency-rounds", type=int)
    run.add_argument("--throughput-batch", type=int)
    run.add_argument("--methods", help="comma-separated, e.g. lorita-n1,lorita-n3,l1-filter")
    run.add_argument("--targets", help="e.g. params:0.5,0.7,0.9 or flops:0.5")
    run.add_argument("--epochs", type=int, help="total epochs per method (before + after compression)")
    run.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning after compression")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--optimizer", help="sgd or adamw")
    run.add_argument("--lr", type=float)
    run.add_argument("--finetune-lr", type=float)
    run.add_argument("--weight-decay", type=float)
    run.add_argument("--schedule", help="cosine, step, onecycle or constant")
    run.add_argument("--label-smoothing", type=float)
    run.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    run.add_argument("--cache-dir", help="trained-model checkpoints (default ~/.cache/lorita-bench/checkpoints)")
    run.add_argument("--seeds", help="comma-separated, e.g. 0,1,2")
    run.add_argument("--device", help="cpu, cuda or cuda:N")
    run.add_argument("--data-dir")
    run.add_argument("--download", action="store_true", help="fetch datasets (needs internet)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--executor", default="local", help="local (in this process, the default) or submitit "
                     "(one job per trained model; needs pip install 'lorita-bench[slurm]')")
    run.add_argument("--cluster", help="with --executor submitit: slurm, local (subprocesses here) or debug "
                     "(in process); default: slurm where sbatch exists, else local")
    run.add_argument("--slurm-partition", help="with --executor submitit on SLURM: the partition")
    run.add_argument("--gpus-per-job", type=int, help="with --executor submitit (default: 1 on cuda, else 0)")
    run.add_argument("--max-parallel", type=int, help="with --executor submitit on SLURM: array tasks at once")
    run.add_argument("--timeout-min", type=int, help="with --executor submitit: each job's limit in minutes "
                     "(default 1440)")
    run.set_defaults(fn=_cmd_run)

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lorita-bench", description="LoRITa vs structured pruning, "
                                 "under identical training budgets.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered presets, datasets, models and methods").set_defaults(fn=_cmd_list)
    _add_run(sub)
    rep = sub.add_parser("report", help="render report.md, tables and figures from results")
    rep.add_argument("sources", nargs="+", help="run folders, results.jsonl files or pytest-benchmark JSON files")
    rep.add_argument("--out", required=True)
    rep.add_argument("--no-plots", action="store_true", help="tables only (skips matplotlib)")
    rep.set_defaults(fn=_cmd_report)
    cmp = sub.add_parser("compare", help="regression gate: exit 1, one line per problem, when NEW falls short "
                         "of REFERENCE")
    cmp.add_argument("reference", help="committed reference results (e.g. reference/ci.jsonl)")
    cmp.add_argument("new", help="the new run: a run folder, results.jsonl or pytest-benchmark JSON")
    cmp.add_argument("--acc-tol", type=float, default=0.01,
                     help="largest accepted accuracy fall, as a fraction (default 0.01 = 1 pp); params and "
                     "MACs must match exactly")
    cmp.set_defaults(fn=_cmd_compare)
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
