"""The shell commands of the docs, read out of their Markdown, and how each is checked.

Every fenced ``bash``/``sh``/``shell`` block of a doc is run, in the order the docs are read, as
one ``bash -euo pipefail`` script (so a block may set a variable that a later line uses). A
marker right before a block, ``<!-- docs-test: parse-only "PREFIX" REASON -->``, says that its
commands starting with PREFIX (every command, without a PREFIX) need what a test machine lacks
(a GPU, SLURM, a data set, the network) or would run this very test: those are checked for
parsing only (``check_parses``), the rest of the block still runs. Inline code spans that are a
``lorita-bench …`` command (the preset table of ``docs/reproduce.md``) are parse-checked too.

Two ``./run`` jobs are run as the command ``./run`` itself executes in its tox environment,
read out of the script (``RUN_QUICK``): ``./run quick ARGS`` is ``lorita-bench run --preset quick
--out out/quick ARGS``, ``./run lorita-bench ARGS`` is ``lorita-bench ARGS``. Running ``./run``
itself inside a test that tox runs would rebuild the very environment it runs in.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARKER = re.compile(r'^<!--\s*docs-test:\s*parse-only(?:\s+"([^"]+)")?\s*(.*?)\s*-->\s*$')
SHELL = ("bash", "sh", "shell", "console")
INLINE = re.compile(r"`((?:\./run )?lorita-bench [^`]+)`")


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One command of a doc: its text (continuations joined, comment dropped) and where it is."""

    text: str
    doc: str
    line: int
    parse_only: bool
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def docs() -> list[Path]:
    """The docs whose commands are run, in order: README, docs/*.md, the READMEs of docs/' example
    folders (how each was made), reference/README.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs").glob("*/README.md")),
            ROOT / "reference" / "README.md"]


def _commands(lines: list[str], start: int, doc: str, prefix: str | None, reason: str | None) -> list[Command]:
    out, pending, first = [], "", 0
    for i, raw in enumerate(lines, start):
        line = raw.rstrip()
        if not pending:
            first = i
        if pending:
            line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = _drop_comment(pending + line)
        pending = ""
        if not text:
            continue
        parse_only = reason is not None and (prefix is None or text.startswith(prefix))
        out.append(Command(text=text, doc=doc, line=first, parse_only=parse_only, reason=reason or ""))
    return out


def _drop_comment(line: str) -> str:
    """``line`` without its trailing shell comment (a ``#`` outside quotes after a blank)."""
    quote, prev = None, " "
    for j, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and prev.isspace():
            return line[:j].strip()
        prev = c
    return line.strip()


def blocks(path: Path) -> list[list[Command]]:
    """The commands of each shell block of ``path`` (blocks in order, commands in order)."""
    lines = path.read_text().splitlines()
    doc = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    found, i, marker = [], 0, None
    while i < len(lines):
        if m := MARKER.match(lines[i].strip()):
            marker = (m.group(1), m.group(2) or "parse-only")
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                marker = None  # a marker binds to the block right after it
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in SHELL:
            prefix, reason = marker if marker else (None, None)
            found.append(_commands(lines[i + 1:end], i + 2, doc, prefix, reason))
        marker, i = None, end + 1
    return found


def inline(path: Path) -> list[Command]:
    """``lorita-bench …`` commands written as inline code or as an indented code line, outside fenced
    blocks (checked by parsing: they record how a committed folder was made, often at full size)."""
    out, in_fence = [], False
    doc = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.startswith("    lorita-bench "):
            out.append(Command(text=_drop_comment(line), doc=doc, line=n, parse_only=True, reason="indented"))
            continue
        out += [Command(text=m.group(1), doc=doc, line=n, parse_only=True, reason="inline")
                for m in INLINE.finditer(line)]
    return out


def run_quick() -> list[str]:
    """The command ``./run quick`` executes, read out of the script (its ``quick=(…)`` line)."""
    m = re.search(r"^quick=\((.*)\)$", (ROOT / "run").read_text(), re.M)
    assert m, "./run has no quick=(…) line"
    return shlex.split(m.group(1))


def run_jobs() -> list[str]:
    """The jobs ``./run`` accepts (its ``case $job in …`` line)."""
    m = re.search(r"^case \$job in (.*?)\) ;;", (ROOT / "run").read_text(), re.M)
    assert m, "./run has no case $job line"
    return [j.strip() for j in m.group(1).split("|")]


def as_executed(text: str) -> str:
    """``text`` with ``./run quick`` / ``./run lorita-bench`` replaced by what ``./run`` executes."""
    if text.startswith("./run quick"):
        return shlex.join(run_quick()) + text[len("./run quick"):]
    if text.startswith("./run lorita-bench"):
        return "lorita-bench" + text[len("./run lorita-bench"):]
    if text.startswith("./run"):
        raise AssertionError(f"{text!r}: ./run's other jobs run tox, which this test runs under; "
                             'mark the block <!-- docs-test: parse-only "./run …" REASON -->')
    return text


def check_parses(cmd: Command) -> None:
    """Raise ``AssertionError`` unless ``cmd`` would be accepted as written, short of running it.

    ``lorita-bench`` (also behind ``./run`` or ``torchrun -m bench.cli``): argparse accepts the
    options, and the preset and methods of a ``run`` are registered. ``pip install``: the extra
    it names is one of pyproject.toml's. Scripts: they exist and ``bash -n`` reads them.
    """
    argv = shlex.split(cmd.text)
    where = f"{cmd.where}: {cmd.text}"
    if argv[:1] == ["./run"]:
        assert len(argv) > 1 and argv[1] in run_jobs(), f"{where}: ./run accepts {run_jobs()}"
        if argv[1] == "quick":
            argv = run_quick() + argv[2:]
        elif argv[1] == "lorita-bench":
            argv = argv[1:]
        else:
            return  # ./run tests ARGS: tox options, tox's to check
    if argv[:1] == ["torchrun"]:
        assert "-m" in argv and argv[argv.index("-m") + 1] == "bench.cli", f"{where}: torchrun -m bench.cli …"
        argv = ["lorita-bench", *argv[argv.index("-m") + 2:]]
    if argv[:2] == ["pip", "install"]:
        extras = _extras()
        for spec in argv[2:]:
            if m := re.fullmatch(r"(?:\.|lorita-bench)\[([\w,-]+)\]", spec):
                missing = set(m.group(1).split(",")) - set(extras)
                assert not missing, f"{where}: no extra {sorted(missing)} in pyproject.toml ({sorted(extras)})"
        return
    if argv[0].startswith("scripts/"):
        import subprocess

        assert (ROOT / argv[0]).is_file(), f"{where}: no {argv[0]}"
        subprocess.run(["bash", "-n", str(ROOT / argv[0])], check=True)
        return
    assert argv[0] == "lorita-bench", f"{where}: no parse check for {argv[0]!r}; run it or add one"
    if cmd.reason == "inline" and ("…" in argv or len(argv) <= 2):
        # Prose naming a command (`lorita-bench report`, `lorita-bench …`): the name must exist.
        argv = [a for a in argv if a != "…"][:2]
        _parse_cli([*argv[1:], "--help"] if len(argv) == 2 else ["--help"], where)
        return
    _parse_cli(argv[1:], where)


def _extras() -> set[str]:
    """The extras pyproject.toml declares (read as text: tomllib is Python 3.11+, the project 3.10+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def _parse_cli(argv: list[str], where: str) -> None:
    from bench import cli
    from bench.catalog.registry import METHODS, PRESETS

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help prints; only its exit code matters
            args = cli.parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code == 0 and "--help" in argv, f"{where}: lorita-bench rejects these options"
        return
    if args.command == "run":
        assert args.preset in PRESETS, f"{where}: no preset {args.preset!r}"
        for m in (args.methods or "").split(","):
            assert not m or m in METHODS, f"{where}: no method {m!r}"
