"""pytest plugin of the benchmark suite: options, pytest-benchmark hooks and the accuracy gate.

Registered by ``bench/conftest.py`` whenever pytest is given ``bench`` (or a path below it).

Options:
    --preset NAME               preset whose cells become benchmarks (default: quick)
    --lorita-device DEV         override the preset's device (cpu, cuda, cuda:N)
    --lorita-data-dir DIR       dataset folder (torchvision layout), as ``lorita-bench run --data-dir``
    --lorita-cache-dir DIR      trained-model checkpoints, as ``lorita-bench run --cache-dir``
    --lorita-no-cache           train every model afresh, no checkpoint read or written
    --lorita-rounds N           timed rounds per benchmark (default: the preset's latency_rounds)
    --lorita-compare REFERENCE  after the run, gate its records against REFERENCE like
                                ``lorita-bench compare`` (exit status 1 on any problem)
    --lorita-acc-tol TOL        that gate's accuracy tolerance, a fraction (default 0.01)

Timings are gated by pytest-benchmark itself, and only on the machine that saved the baseline:

    pytest bench --preset ci --benchmark-save=ci                       # once, on the CI machine
    pytest bench --preset ci --benchmark-compare --benchmark-compare-fail=median:25%

Every run pytest-benchmark saves into its storage (``--benchmark-save`` / ``--benchmark-autosave``)
gets the session's records beside it (``NNNN_TAG.results.jsonl``, failed and skipped cells
included) and the commit's subject in its ``commit_info``: such a storage folder is the
regression history that ``lorita-bench history`` reads (``bench/records/history.py``):

    pytest bench --preset ci --benchmark-storage "$LORITA_BENCH_HISTORY" --benchmark-autosave

Before pytest-benchmark loads the saved run, ``pytest_configure`` here compares its
``machine_info`` with this machine's (CPU, cores, Python, OS release, torch, CUDA, GPU and
driver, timing threads; not the host name). When they differ, or no run is saved, comparison
and ``--benchmark-compare-fail`` are switched off and the terminal summary says why: the
timings are still reported, never gated across machines. (pytest-benchmark would otherwise
warn, and with ``filterwarnings = error`` that warning is an INTERNALERROR.)
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench import frontend
from bench.execution import cache
from bench.execution.runner import BudgetMismatch, check_budget
from bench.records.compare import check_tolerance, compare, summary
from bench.records.errors import UsageError
from bench.records.history import git_commit, keep_records, saved_run, storage_folder
from bench.records.results import BENCH_KEY
from bench.records.sources import load
from bench.suite.cells import CPU_THREADS, Suite

SUITE = pytest.StashKey[Suite]()
REFERENCE = pytest.StashKey[tuple]()
NOTES = pytest.StashKey[list]()
GATE = pytest.StashKey[Any]()
STARTED = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lorita-bench", "lorita-bench benchmark suite (pytest bench)")
    group.addoption("--preset", default="quick", help="registered preset whose cells are benchmarked "
                    "(default: quick; `lorita-bench list` shows them)")
    group.addoption("--lorita-device", default=None, help="override the preset's device: cpu, cuda or cuda:N")
    group.addoption("--lorita-data-dir", default=None, help="dataset folder, as `lorita-bench run --data-dir`")
    group.addoption("--lorita-cache-dir", default=None,
                    help="trained-model checkpoints, as `lorita-bench run --cache-dir` (default: "
                    "$LORITA_BENCH_CACHE or ~/.cache/lorita-bench/checkpoints)")
    group.addoption("--lorita-no-cache", action="store_true", help="train every model, read and write no checkpoint")
    group.addoption("--lorita-rounds", type=int, default=None,
                    help="timed rounds per benchmark (default: the preset's latency_rounds)")
    group.addoption("--lorita-compare", metavar="REFERENCE", default=None,
                    help="gate this run's records against REFERENCE (results.jsonl, run folder or benchmark "
                    "JSON) like `lorita-bench compare`; exit status 1 on any problem")
    group.addoption("--lorita-acc-tol", type=float, default=0.01,
                    help="accuracy tolerance of --lorita-compare, a fraction (default 0.01 = 1 pp)")


def _suite(config: pytest.Config) -> Suite:
    name = config.getoption("preset")
    data_dir = config.getoption("lorita_data_dir")
    preset = frontend.resolve_preset(name, flags=frontend.SUITE_FLAGS,
                                     changes={"device": config.getoption("lorita_device")}, data_dir=data_dir)
    rounds = config.getoption("lorita_rounds")
    if rounds is not None and rounds < 1:
        raise UsageError(f"bad --lorita-rounds {rounds}; accepted: an integer >= 1")
    cache_dir = None if config.getoption("lorita_no_cache") else Path(config.getoption("lorita_cache_dir")
                                                                       or cache.default_dir())
    return Suite(preset, name, data_dir=Path(data_dir) if data_dir else None, rounds=rounds, cache_dir=cache_dir)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[NOTES] = []
    config.stash[STARTED] = time.time()
    try:
        config.stash[SUITE] = _suite(config)
        ref = config.getoption("lorita_compare")
        if ref:
            check_tolerance(config.getoption("lorita_acc_tol"))
            config.stash[REFERENCE] = load([ref]).records
    except UsageError as err:
        raise pytest.UsageError(str(err)) from None
    _guard_timing_compare(config)


def _machine_info(config: pytest.Config) -> dict[str, Any]:
    info = config.hook.pytest_benchmark_generate_machine_info(config=config)
    config.hook.pytest_benchmark_update_machine_info(config=config, machine_info=info)
    return info


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differing(a.get(k), b.get(k), f"{prefix}{k}.")]
    same = json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    return [] if same else [prefix.rstrip(".")]


def _guard_timing_compare(config: pytest.Config) -> None:
    """Let ``--benchmark-compare(-fail)`` through only against a run saved on this same machine."""
    compare = config.getoption("benchmark_compare", None)
    if not compare:
        return
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.utils import get_machine_id, load_storage

    storage = load_storage(config.getoption("benchmark_storage"), logger=Logger(Logger.QUIET, config=config),
                           default_machine_id=get_machine_id(), netrc=config.getoption("benchmark_netrc"))
    saved = list(storage.load())[-1:] if compare is True else list(storage.load(compare))
    why = None
    if not saved:
        why = (f"no saved benchmark run{'' if compare is True else f' matching {compare!r}'} in {storage}; "
               "save one on this machine with --benchmark-save=NAME")
    else:
        mine = _machine_info(config)
        for path, data in saved:
            diff = _differing(mine, data.get("machine_info", {}))
            if diff:
                why = (f"{Path(path).name} was saved on a different machine (differs in {', '.join(diff[:6])}"
                       f"{', …' if len(diff) > 6 else ''}); timings are reported, not gated")
                break
    if why is not None:
        config.option.benchmark_compare = []
        config.option.benchmark_compare_fail = None
        config.stash[NOTES].append(f"timing comparison off: {why}")
    else:
        config.stash[NOTES].append(f"timings compared with {', '.join(Path(p).name for p, _ in saved)} "
                                   "(saved on this machine)")


def _gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Add torch, CUDA, GPU and driver; drop what differs between identical machines."""
    import torch

    # Identical CI runners differ in host name and momentary clock; neither changes a timing's meaning,
    # and leaving them in would make every saved run "another machine".
    machine_info.pop("node", None)
    if isinstance(machine_info.get("cpu"), dict):
        for key in ("hz_actual", "hz_actual_friendly"):
            machine_info["cpu"].pop(key, None)
    machine_info["torch"] = torch.__version__
    machine_info["timing_cpu_threads"] = CPU_THREADS
    machine_info["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name(0)
        machine_info["gpu_count"] = torch.cuda.device_count()
        machine_info["gpu_driver"] = _gpu_driver()
        machine_info["cudnn"] = torch.backends.cudnn.version()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Record the preset (and its resolved config) beside the benchmarks, for the report's protocol."""
    suite = config.stash.get(SUITE, None)
    if suite is not None:
        output_json[BENCH_KEY] = {"preset": suite.name, "config": suite.preset.to_dict()}


def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict[str, Any]) -> None:
    """Add the commit's subject: pytest-benchmark records id and dates only, and a history reads better
    with what each commit did."""
    if commit_info.get("id") in (None, "", "unknown", "unversioned"):
        return
    # pytest-benchmark found the commit with git already; a failure here costs only the subject.
    with contextlib.suppress(UsageError):
        commit_info.setdefault("subject", git_commit(commit_info["id"], Path.cwd()).subject)


def _keep_records(config: pytest.Config, records: list) -> None:
    """Write ``records`` beside the run pytest-benchmark has just saved into its file storage, if it saved one.

    pytest-benchmark saves in its own ``pytest_sessionfinish`` wrapper, before this plugin's hook runs;
    the file is the newest ``NNNN_TAG.json`` of this machine under the tag it saved with.
    """
    tag = config.getoption("benchmark_save", None) or config.getoption("benchmark_autosave", None)
    folder = storage_folder(config.getoption("benchmark_storage", None) or "")
    if not tag or folder is None or config.getoption("benchmark_disable", False):
        return
    from pytest_benchmark.utils import get_machine_id

    saved = saved_run(folder, get_machine_id(), tag)
    # A session that saved nothing (no benchmark ran) must not overwrite an earlier session's records
    # under a reused --benchmark-save name.
    if saved is None or saved.stat().st_mtime < config.stash[STARTED]:
        return
    path = keep_records(saved, [r.to_dict() for r in records])
    config.stash[NOTES].append(f"history: timings saved in {saved}, records beside them in {path.name}; "
                               f"`lorita-bench history {folder} --out DIR` shows the trends")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    ref = config.stash.get(REFERENCE, None)
    suite = config.stash.get(SUITE, None)
    if suite is None or config.option.collectonly:
        return
    records = suite.records()
    _keep_records(config, records)
    try:  # the budget rule holds in the suite as in `lorita-bench run`, gate or not
        check_budget(records)
    except BudgetMismatch as err:
        config.stash[NOTES].append(f"budget rule: {err}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if ref is None:
        return
    if not records:
        config.stash[NOTES].append("--lorita-compare: no cell ran, nothing was gated")
        return
    result = compare(ref, records, acc_tol=config.getoption("lorita_acc_tol"), partial=not suite.complete())
    config.stash[GATE] = result
    if not result.ok:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    notes = config.stash.get(NOTES, [])
    result = config.stash.get(GATE, None)
    if not notes and result is None:
        return
    terminalreporter.section("lorita-bench")
    for note in notes:
        terminalreporter.line(note)
    if result is not None:
        for line in result.problems:
            terminalreporter.line(line, red=True)
        for line in result.notes:
            terminalreporter.line(f"note: {line}")
        terminalreporter.line(f"--lorita-compare {config.getoption('lorita_compare')}: "
                              f"{summary(result, config.getoption('lorita_acc_tol'))}",
                              red=not result.ok, green=result.ok)
