"""``--round-to K``: LoRITa's deployed ranks and the baselines' pruned widths are multiples of K, and the
target search still lands on the target (through the registered methods, as a run compresses)."""

import pytest
import torch
from torch import nn

import lorita
from bench.catalog.budget import Target
from bench.catalog.models import build, head_of
from bench.catalog.protocol import Calib
from bench.catalog.registry import METHODS
from bench.records.results import TARGET_TOLERANCE

K = 8


def _model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "fcn":  # the quick preset's FCN on digits
        return build("fcn", 10, (64,), {"depth": 4, "width": 128}).eval(), (64,)
    return build("vgg16", 10, (1, 32, 32), {"width": 0.25}).eval(), (1, 32, 32)


def _calib(model: nn.Module, shape: tuple[int, ...], round_to: int) -> Calib:
    x = torch.randn(16, *shape)
    return Calib(example=x[:1], batch_x=x, batch_y=torch.arange(16) % 10, num_classes=10,
                 head=head_of(model, 10), protected=(head_of(model, 10),), allocation="global", round_to=round_to)


def _drop(dense: nn.Module, deployed: nn.Module, x: torch.Tensor, kind: str) -> float:
    (m0, p0), (m1, p1) = lorita.count_macs_params(dense, x), lorita.count_macs_params(deployed, x)
    return 1 - (p1 / p0 if kind == "params" else m1 / m0)


@pytest.mark.parametrize("model_kind, target", [("fcn", Target(kind="params", drop=0.5)),
                                                ("conv", Target(kind="flops", drop=0.5))], ids=["fcn", "conv"])
def test_lorita_ranks_are_multiples_of_k_and_land_on_the_target(model_kind, target):
    model, shape = _model(model_kind)
    calib = _calib(model, shape, K)
    out = METHODS.get("lorita-n1").compress(model, target, calib)
    factored = {n: r for n, r in out.layers.items() if r < out.full[n]}
    assert factored and all(r % K == 0 for r in factored.values()), factored
    assert any(r % K for r in METHODS.get("lorita-n1").compress(model, target, _calib(model, shape, 1)).layers.values())
    assert abs(_drop(model, out.model, calib.example, target.kind) - target.drop) <= TARGET_TOLERANCE


@pytest.mark.parametrize("method, model_kind, target", [
    ("group-l2", "fcn", Target(kind="params", drop=0.5)), ("group-l2", "conv", Target(kind="flops", drop=0.5)),
    # Layer-local: one ratio moves all three equal hidden widths by K at once (47.8 % or 51.1 % here).
    ("l1-filter", "fcn", Target(kind="params", drop=0.5))], ids=["group-l2-fcn", "group-l2-conv", "l1-filter-fcn"])
def test_pruned_widths_are_multiples_of_k_and_land_on_the_target(method, model_kind, target):
    model, shape = _model(model_kind)
    calib = _calib(model, shape, K)
    out = METHODS.get(method).compress(model, target, calib)
    pruned = {n: w for n, w in out.layers.items() if n not in calib.ignored}
    assert pruned and all(w % K == 0 for w in pruned.values()), pruned
    assert any(w < out.full[n] for n, w in pruned.items())
    assert abs(_drop(model, out.model, calib.example, target.kind) - target.drop) <= TARGET_TOLERANCE


def test_round_to_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        lorita.TargetParamsDrop(drop=0.5, round_to=0)
    assert lorita.policies.round_rank(3, 100, 8) == 8 and lorita.policies.round_rank(97, 100, 8) == 100


def test_preset_refuses_bad_round_to_latency_modes_and_sweep():
    from dataclasses import replace

    from bench.catalog.registry import PRESETS
    from bench.records.errors import UsageError

    quick = PRESETS.get("quick")
    for change, message in (({"round_to": 0}, "bad round-to 0"), ({"latency_modes": ("eager",)}, "bad latency modes"),
                            ({"latency_modes": ()}, "bad latency modes none"),
                            ({"latency_sweep": (16, 0)}, "bad latency sweep")):
        with pytest.raises(UsageError, match=message):
            replace(quick, **change)
    assert replace(quick, latency_sweep=(1024, 16), throughput_batch=64).latency_batches() == (1, 16, 64, 1024)


@pytest.mark.parametrize("flag, value, message", [("--round-to", "0", "bad round-to 0"),
                                                  ("--latency-modes", "eager-fp32,tensorrt", "bad latency modes"),
                                                  ("--latency-sweep", "16,x", "bad latency sweep")])
def test_cli_refuses_bad_deploy_options_in_one_line(flag, value, message, tmp_path, capsys):
    from bench.cli import main

    assert main(["run", "--preset", "quick", "--out", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
