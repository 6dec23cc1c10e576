"""Every shell command of README.md, docs/*.md and reference/README.md runs, as written, in a fresh
clone of this working tree, with LORITA_BENCH_TINY=1 (bench.frontend.tiny: every preset but the
``ci`` gate shrunk to 2 epochs, one seed, one target) so that the whole walk-through takes about a
minute. How commands are found, run and parse-checked: tests/docs_commands.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docs_commands import ROOT, Command, as_executed, blocks, check_parses, docs, inline

IGNORE = shutil.ignore_patterns(".git", ".tox", "out", "__pycache__", ".benchmarks", ".pytest_cache", ".ruff_cache",
                                ".whl", ".gpudata", "*.egg-info", "build", "dist")


def _fresh_checkout(dest: Path) -> Path:
    """A clone of this repository (so that ``FILE@REV`` finds its commits) with the working tree's
    files, committed or not, copied over it."""
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(dest)], check=True)
    shutil.copytree(ROOT, dest, ignore=IGNORE, dirs_exist_ok=True)
    return dest


def _environment(tmp: Path, work: Path) -> dict[str, str]:
    shims = tmp / "bin"
    shims.mkdir()
    # The code under test, whatever is installed: `lorita-bench`, `pytest` and `python` as this interpreter runs them.
    for name, run in (("lorita-bench", "-m bench.cli "), ("pytest", "-m pytest "), ("python", "")):
        (shims / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {run}"$@"\n')
        (shims / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LORITA_BENCH_", "PYTEST_", "GIT_")) and k != "PYTHONPATH"}
    env.update(PATH=f"{shims}{os.pathsep}{env['PATH']}", PYTHONPATH=str(work), LORITA_BENCH_TINY="1",
               LORITA_BENCH_CACHE=str(tmp / "cache"), LORITA_BENCH_DATA=str(tmp / "data"), MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def run_block(commands: list[Command], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The block's runnable commands as one ``bash -euo pipefail`` script in ``work`` (each traced)."""
    # Each traced command with the time it started, so a slow one can be found in the output (PS4 is
    # set here: bash does not take it from the environment when run as root).
    script = "\n".join(['PS4=\'+ [$(date +%s.%N | cut -c6-13) s] \'',
                        *(as_executed(c.text) for c in commands if not c.parse_only)])
    return subprocess.run(["bash", "-euxo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_every_command_of_the_docs_runs_as_written(tmp_path):
    work = _fresh_checkout(tmp_path / "checkout")
    env = _environment(tmp_path, work)
    timings, trace, ran, parsed = [], [], 0, 0
    for doc in docs():
        for cmd in inline(doc):
            check_parses(cmd)
            parsed += 1
        for block in blocks(doc):
            for cmd in block:
                if cmd.parse_only:
                    check_parses(cmd)
                    parsed += 1
            if not any(not c.parse_only for c in block):
                continue
            start = time.perf_counter()
            done = run_block(block, work, env)
            timings.append((block[0].where, time.perf_counter() - start))
            trace.append(done.stderr)
            assert done.returncode == 0, (f"{block[0].where}: a command of this block failed (exit "
                                          f"{done.returncode}):\n{done.stderr[-4000:]}")
            ran += sum(not c.parse_only for c in block)
    print("\n".join(f"{where}: {s:.1f} s" for where, s in timings))
    print("\n".join(line for t in trace for line in t.splitlines() if line.startswith("+ [")))
    assert ran >= 15 and parsed >= 20  # the docs were read at all: a broken extractor finds nothing


def _doc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_a_broken_flag_fails_a_runnable_block(tmp_path):
    doc = _doc(tmp_path, "Run it:\n\n```bash\nlorita-bench list quick\n"
                         "lorita-bench run --preset quick --no-such-flag 3   # a typo\n```\n")
    (block,) = blocks(doc)
    assert [c.parse_only for c in block] == [False, False]
    done = run_block(block, tmp_path, _environment(tmp_path, ROOT))
    assert done.returncode == 2 and "--no-such-flag" in done.stderr


def test_a_broken_flag_or_preset_fails_a_parse_only_block(tmp_path):
    doc = _doc(tmp_path, '<!-- docs-test: parse-only "lorita-bench run" needs a GPU -->\n'
                         "```bash\nlorita-bench run --preset cifar10-vgg16 --data-dir D \\\n    --gpus-per-job 1\n"
                         "lorita-bench run --preset cifar10-vgg16 --gpu-per-job 1\n"
                         "lorita-bench run --preset cifar10-vgg61\n```\n"
                         "In a table: `lorita-bench run --preset quik`.\n")
    (block,) = blocks(doc)
    assert [c.parse_only for c in block] == [True, True, True]
    assert block[0].text == "lorita-bench run --preset cifar10-vgg16 --data-dir D --gpus-per-job 1"
    check_parses(block[0])
    for cmd in (*block[1:], *inline(doc)):
        with pytest.raises(AssertionError):
            check_parses(cmd)


def test_parse_only_names_its_commands_and_the_rest_of_the_block_runs():
    first = blocks(ROOT / "README.md")[0]
    assert [(c.text, c.parse_only) for c in first] == [("./run quick", False), ("./run tests", True)]
    assert as_executed("./run quick --seeds 0,1") == "lorita-bench run --preset quick --out out/quick --seeds 0,1"
    with pytest.raises(AssertionError, match="accepts"):
        check_parses(Command(text="./run tets", doc="x", line=1, parse_only=True))
    with pytest.raises(AssertionError, match="no extra"):
        check_parses(Command(text="pip install -e '.[slrum]'", doc="x", line=1, parse_only=True))


def test_tiny_shrinks_every_preset_but_the_gate(monkeypatch):
    from bench import frontend
    from bench.records.errors import UsageError

    monkeypatch.setenv(frontend.TINY_ENV, "1")
    quick = frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS, changes={"seeds": (3, 4)})
    assert (quick.budget.epochs, quick.budget.finetune_epochs, quick.seeds, len(quick.targets)) == (2, 1, (3,), 1)
    assert quick.methods == frontend.PRESETS.get("quick").methods
    assert frontend.resolve_preset("ci", flags=frontend.CLI_FLAGS) == frontend.PRESETS.get("ci")
    monkeypatch.setenv(frontend.TINY_ENV, "yes")
    with pytest.raises(UsageError, match="LORITA_BENCH_TINY"):
        frontend.resolve_preset("quick", flags=frontend.CLI_FLAGS)


def test_quick_report_is_what_report_renders_from_its_committed_records(tmp_path, monkeypatch):
    from bench import cli

    committed = ROOT / "docs" / "quick-report"
    folder = tmp_path / "docs" / "quick-report"
    folder.mkdir(parents=True)
    for name in ("results.jsonl", "config.json"):
        shutil.copy(committed / name, folder / name)
    monkeypatch.chdir(tmp_path)  # the command as docs/quick-report/README.md gives it, paths and all
    assert cli.main(["report", "docs/quick-report", "--out", "docs/quick-report"]) == 0
    assert (folder / "report.md").read_text() == (committed / "report.md").read_text()
    tables = sorted(p.name for p in (committed / "tables").iterdir())
    assert tables and sorted(p.name for p in (folder / "tables").iterdir()) == tables
    for name in tables:
        assert (folder / "tables" / name).read_text() == (committed / "tables" / name).read_text(), name
    assert sorted(p.name for p in (folder / "figures").iterdir()) == sorted(
        p.name for p in (committed / "figures").iterdir())


def _record_fields():
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_fields", ROOT / "scripts" / "record_fields.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_record_reference_is_generated_from_the_current_record(monkeypatch):
    fields = _record_fields()
    assert (ROOT / "docs" / "records.md").read_text() == fields.render(), (
        "docs/records.md is stale; regenerate: python scripts/record_fields.py docs/records.md")
    monkeypatch.delitem(fields.NOTES, "dataset")  # a field nobody described fails, by name
    with pytest.raises(ValueError, match="dataset"):
        fields.render()


def _fake_bootstrap(tmp_path: Path, made_from: str) -> tuple[Path, Path]:
    """A copy of ./run beside a stand-in .tox/.bootstrap whose tox only logs how it was called."""
    repo = tmp_path / "repo"
    boot = repo / ".tox" / ".bootstrap"
    (boot / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "run", repo / "run")
    log = tmp_path / "tox.log"
    (boot / "pyvenv.cfg").write_text(f"home = {Path(made_from).parent}\nexecutable = {made_from}\n")
    (boot / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")  # "import tox" succeeds
    (boot / "bin" / "tox").write_text(f'#!/bin/sh\necho "tox $*" >> {log}\n')
    for exe in ("python", "tox"):
        (boot / "bin" / exe).chmod(0o755)
    return repo, log


def test_run_quick_and_run_lorita_bench_call_tox_exec_in_the_tests_env(tmp_path):
    repo, log = _fake_bootstrap(tmp_path, os.path.realpath(sys.executable))
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    done = subprocess.run([str(repo / "run"), "quick", "--seeds", "0,1"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "./run lorita-bench" in done.stderr  # the hint that ends ./run quick
    done = subprocess.run([str(repo / "run"), "lorita-bench", "list", "quick"], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "tox run -q -e tests --notest",
        "tox exec -q -e tests -- lorita-bench run --preset quick --out out/quick --seeds 0,1",
        "tox run -q -e tests --notest",
        "tox exec -q -e tests -- lorita-bench list quick"]


def test_run_rebuilds_a_bootstrap_made_from_another_python(tmp_path):
    repo, _ = _fake_bootstrap(tmp_path, "/no/such/python3.99")
    # A PYTHON without venv support stops right after the bootstrap was removed, before any install.
    fake = tmp_path / "python3"
    fake.write_text('#!/bin/sh\ncase "$*" in *ensurepip*) exit 1;; *executable*) echo /opt/py/python3;; esac\n')
    fake.chmod(0o755)
    done = subprocess.run([str(repo / "run"), "quick"], env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True)
    assert "is not the interpreter .tox/.bootstrap was made from (/no/such/python3.99)" in done.stderr
    assert done.returncode == 2 and "ensurepip" in done.stderr and not (repo / ".tox" / ".bootstrap").exists()
