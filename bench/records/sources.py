"""Read result records from run folders, results JSONL files and pytest-benchmark JSON files.

Both formats carry the same record fields (DESIGN: the benchmark JSON's ``extra_info`` is the
Record), so every report and the regression gate work from either. Plain dicts throughout:
this module imports neither torch nor anything of the harness outside ``bench.records``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.records.errors import UsageError
from bench.records.results import BENCH_KEY, CONFIG, RESULTS, parse_jsonl, references_in, with_references

ACCEPTED = "a run folder holding results.jsonl, a results .jsonl file, or a pytest-benchmark .json file"


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Records (dicts as stored in JSONL) from one or more sources, with what describes the runs.

    ``configs`` are the resolved presets found beside the records (a run folder's config.json
    or the suite's entry in a benchmark JSON), each with ``config_hash`` set to the hash of the
    records it describes, so that a report over several run folders can tell their configurations
    apart; ``machines`` the pytest-benchmark machine_info
    of each benchmark file. A record timed by pytest-benchmark says so in ``latency_source``.
    """

    records: tuple[dict[str, Any], ...]
    configs: tuple[dict[str, Any], ...] = ()
    # The reference lines of the JSONL sources (``bench.records.results.Reference`` as dicts).
    references: tuple[dict[str, Any], ...] = ()
    machines: tuple[dict[str, Any], ...] = ()
    sources: tuple[str, ...] = ()


# The one list of a configuration's identity: the resolved preset's fields that determine a trained
# model or its numbers (the training, what is protected and how ranks are allocated, how latency
# is timed). The runner's folder check, the records' ``config_hash``, the checkpoint-free reports
# and the suite all hash these and nothing else. Not in it: the methods, targets and seeds (a
# folder holds several of each) and the training loop's speed options that change how fast, not
# what (channels_last). A field missing from an older config.json is left out of its hash.
IDENTITY = ("dataset", "model", "model_options", "budget", "device", "amp", "compile", "latency_rounds",
            "throughput_batch", "latency_modes", "latency_sweep", "round_to", "protect", "allocation", "recipes",
            "chance_check")


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``IDENTITY`` fields of ``config`` as JSON holds them (a tuple and its list are equal), the
    device by its kind: under torchrun rank r runs on cuda:r, and every rank must be one
    configuration (or rank 1 finds "another configuration" in rank 0's folder)."""
    key = json.loads(json.dumps({k: config[k] for k in IDENTITY if k in config}, default=str))
    if isinstance(key.get("device"), str):
        key["device"] = key["device"].partition(":")[0]
    return key


def config_hash(config: Mapping[str, Any]) -> str:
    """The config hash of a resolved preset as stored in config.json: ``config["config_hash"]`` when
    present, else the first 12 hex digits of the SHA-256 of its ``identity``.
    ``bench.catalog.presets.Preset.config_hash`` is this function of the preset's fields, so the
    harness and a torch-free reader agree by construction."""
    if config.get("config_hash"):
        return str(config["config_hash"])
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:12]


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (``{"budget": {"lr": 0.1}}`` → ``{"budget.lr": 0.1}``)."""
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``budget.epochs 3 → 40, …``: where the identities of two resolved presets differ ("" when they do not)."""
    a, b = flat(identity(old)), flat(identity(new))
    return ", ".join(f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))


def with_hash(config: dict[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``config`` with ``config_hash`` set to the hash of the records it describes.

    The computed hash when the records carry it; otherwise, when all the folder's records share
    one hash, that one (a config.json written by an older harness whose Budget had other fields).
    """
    if config.get("config_hash"):
        return config
    mine = config_hash(config)
    hashes = {r.get("config_hash") for r in records if r.get("config_hash")}
    return {**config, "config_hash": mine if mine in hashes or len(hashes) != 1 else hashes.pop()}


def _read(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, reference lines) of a results JSONL file, as dicts, read once: see ``read_jsonl``."""
    parsed = parse_jsonl(Path(path))
    records = [d for _, d in parsed.records]
    return (with_references(records, references_in(records, parsed.references)),
            [r.to_dict() for r in parsed.references])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records (dicts) of a results JSONL file, each filled with its seed's reference where the
    file holds one, torn lines left out (``bench.records.results.parse_jsonl``); ``UsageError``
    naming file and line for any other line that is not a record."""
    return _read(path)[0]


def _cell(info: Mapping[str, Any]) -> tuple:
    return (info.get("config_hash"), info["dataset"], info["model"], info["method"], info["target_kind"],
            info["target_drop"], info["seed"])


def _dense_cell(info: Mapping[str, Any]) -> tuple:
    return (info.get("config_hash"), info["dataset"], info["model"], info["method"], info["seed"])


def read_benchmark_json(path: Path, name: str | Path | None = None) -> dict[str, Any]:
    """A pytest-benchmark JSON file's contents; ``UsageError`` naming it (as ``name``, default ``path``)
    when it is not JSON or not of pytest-benchmark's shape."""
    name = path if name is None else name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{name} is not JSON ({err.msg}); accepted: {ACCEPTED}") from None
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise UsageError(f"{name} is not a pytest-benchmark JSON file (no 'benchmarks'); accepted: {ACCEPTED}")
    check_benchmarks(name, data["benchmarks"])
    return data


def check_benchmarks(src: str | Path, benchmarks: Any) -> None:
    """``UsageError`` naming ``src`` and the entry unless ``benchmarks`` has pytest-benchmark's shape."""
    def bad(what: str) -> UsageError:
        return UsageError(f"{src} is not a pytest-benchmark JSON file ({what}); accepted: {ACCEPTED}")
    if not isinstance(benchmarks, list):
        raise bad(f"'benchmarks' is {type(benchmarks).__name__}, not a list")
    for i, bench in enumerate(benchmarks):
        if not isinstance(bench, dict):
            raise bad(f"benchmarks[{i}] is {type(bench).__name__}, not an object")
        for key in ("extra_info", "stats"):
            if bench.get(key) is not None and not isinstance(bench[key], dict):
                raise bad(f"benchmarks[{i}].{key} is {type(bench[key]).__name__}, not an object")
        stats = bench.get("stats") or {}
        for key in ("median", "iqr"):
            if key in stats and (not isinstance(stats[key], int | float) or isinstance(stats[key], bool)):
                raise bad(f"benchmarks[{i}].stats.{key} is {stats[key]!r}, not a number")
        info = bench.get("extra_info") or {}
        role = info.get("timed")
        need = ("dataset", "model", "method", "seed", *(("target_kind", "target_drop") if role == "deployed" else ()))
        missing = [k for k in need if k not in info] if role in ("deployed", "dense") else []
        if missing:
            raise bad(f"benchmarks[{i}].extra_info lacks {', '.join(missing)}")


def from_benchmark_json(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Records from a pytest-benchmark JSON written by ``pytest bench --benchmark-json``.

    Each deployed-model benchmark's ``extra_info`` is a Record; the two batch sizes of one
    cell carry the same record and are merged. Latencies are replaced by pytest-benchmark's
    own statistics (median and IQR, converted to ms) wherever both the deployed and the dense
    benchmark of that batch size are present, and the speed-up at that batch becomes their
    ratio, without an interval (pytest-benchmark times the two apart, not in paired rounds): the
    speed-up shown beside two latencies is always their ratio. Otherwise the record's own
    timing, its A/B speed-up and interval stay.
    """
    deployed: dict[tuple, dict[str, Any]] = {}
    timed: dict[tuple, dict[str, float]] = {}  # (role, key, batch) -> stats in ms
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        role, batch = info.get("timed"), info.get("timed_batch")
        stats = bench.get("stats") or {}
        if role == "deployed":
            key = _cell(info)
            rec = {k: v for k, v in info.items() if k not in ("timed", "timed_batch")}
            deployed.setdefault(key, rec)
        elif role == "dense":
            key = _dense_cell(info)
        else:
            continue  # a benchmark that is not one of the suite's
        if "median" in stats and batch is not None:
            # pytest-benchmark reports seconds per call of the timed function (iterations folded in)
            timed[(role, key, batch)] = {"median_ms": stats["median"] * 1e3, "iqr_ms": stats.get("iqr", 0) * 1e3}
    out = []
    for key, rec in deployed.items():
        dense_key = _dense_cell(rec)
        rec = dict(rec)
        for batch, fields_ in ((rec.get("latency_batch") or 1, ("latency_ms", "latency_iqr_ms", "latency_dense_ms",
                                                                "latency_dense_iqr_ms", "speedup_b1")),
                               (rec.get("throughput_batch"), ("throughput_ms", None, "throughput_dense_ms", None,
                                                              "speedup_bT"))):
            mine, dense = timed.get(("deployed", key, batch)), timed.get(("dense", dense_key, batch))
            if mine is None or dense is None:
                continue
            ms, iqr, dense_ms, dense_iqr, speedup = fields_
            rec[ms], rec[dense_ms] = mine["median_ms"], dense["median_ms"]
            if iqr is not None:
                rec[iqr], rec[dense_iqr] = mine["iqr_ms"], dense["iqr_ms"]
            rec[speedup] = dense["median_ms"] / mine["median_ms"] if mine["median_ms"] > 0 else None
            rec[f"{speedup}_lo"] = rec[f"{speedup}_hi"] = None
            rec["latency_source"] = "pytest-benchmark"
        out.append(rec)
    return out


def load(sources: Iterable[str | Path]) -> Loaded:
    """Records and run descriptions from every source, in the order given.

    A source is a run folder (its results.jsonl, and config.json when present), a ``.jsonl``
    file of records, or a pytest-benchmark ``.json`` file. Raises ``UsageError`` naming the
    source for a missing path, an unreadable file or a file in neither format.
    """
    records: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    machines: list[dict[str, Any]] = []
    names: list[str] = []
    for src in sources:
        p = Path(src)
        names.append(str(p))
        if p.is_dir():
            if not (p / RESULTS).is_file():
                raise UsageError(f"no {RESULTS} in folder {src}; accepted: {ACCEPTED}")
            recs, refs = _read(p / RESULTS)
            records += recs
            references += refs
            if (p / CONFIG).is_file():
                configs.append(with_hash(json.loads((p / CONFIG).read_text(encoding="utf-8")), recs))
        elif not p.is_file():
            raise UsageError(f"no results at {src}; accepted: {ACCEPTED}")
        elif p.suffix == ".json":
            data = read_benchmark_json(p, src)
            recs = from_benchmark_json(data)
            if not recs:
                raise UsageError(f"{src} holds no lorita-bench benchmarks (none with extra_info.timed); "
                                 "accepted: the JSON of `pytest bench --benchmark-json FILE`")
            records += recs
            if isinstance(data.get(BENCH_KEY), dict) and data[BENCH_KEY].get("config"):
                configs.append(with_hash(dict(data[BENCH_KEY]["config"]), recs))
            if data.get("machine_info"):
                machines.append(data["machine_info"])
        else:
            recs, refs = _read(p)
            records += recs
            references += refs
    return Loaded(records=tuple(records), configs=tuple(configs), machines=tuple(machines), sources=tuple(names),
                  references=tuple(references))
