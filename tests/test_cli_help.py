"""``--help`` and ``list`` say what every option does, its default, and the names it accepts."""

import argparse
import re

import pytest

from bench.catalog import DATASETS, METHODS, MODELS, PRESETS
from bench.catalog.budget import OPTIMIZERS, SCHEDULES
from bench.cli import main, parser


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["list", "run", "report", "compare", "history"])
def test_every_option_has_a_description_and_a_default(command):
    for action in _subparser(command)._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        assert "default" in action.help or "required" in action.help, (command, action.option_strings[0])


def test_run_help_lists_every_preset_method_dataset_and_model(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    # argparse wraps lines at hyphens: compare with the whitespace taken out.
    text = "".join(capsys.readouterr().out.split())
    for name in (*PRESETS.names(), *METHODS.names(), *DATASETS.names(), *MODELS.names(), *OPTIMIZERS, *SCHEDULES):
        assert f"{name}," in text or f"{name}." in text or f"{name}(" in text or f"{name};" in text, name
    assert "(default:quick)" in text and "(default:out/PRESET" in text


def test_defaults_the_help_states_are_the_real_ones():
    args = parser().parse_args(["run"])
    assert args.preset == "quick" and args.executor == "local" and args.out is None  # out: out/PRESET
    cmp = parser().parse_args(["compare", "a", "b"])
    assert cmp.acc_tol == 0.01
    quick = PRESETS.get("quick")
    assert quick.latency_rounds == 30 and quick.throughput_batch == 256 and quick.seeds == (0,)
    assert PRESETS.get("ci").latency_rounds == 20
    cpu = ("quick", "ci", "fashion-mnist-cpu-vgg16")
    assert {p.device for n, p in ((e.name, e.obj) for e in PRESETS) if n in cpu or n.endswith("-fcn")} == {"cpu"}
    assert {e.obj.device for e in PRESETS if e.name not in cpu and not e.name.endswith("-fcn")} == {"cuda"}
    assert not any(e.obj.compile for e in PRESETS)
    assert {e.name for e in PRESETS if not e.obj.amp} == {e.name for e in PRESETS if e.name.startswith("repro-")}


def test_list_says_how_long_the_cpu_presets_take(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name in ("quick", "ci", "mnist-fcn", "fashion-mnist-fcn", "fashion-mnist-cpu-vgg16"):
        assert re.search(r"CPU, about \d+ (s|min|h) on 2 cores", lines[name]), lines[name]


def test_list_preset_shows_every_field(capsys):
    assert main(["list", "quick"]) == 0
    out = capsys.readouterr().out
    for needle in ("dataset  digits", "model    fcn (depth=4, width=128)", "epochs=40", "params:0.9",
                   "run it: lorita-bench run --preset quick"):
        assert needle in out
