"""The method on real computations: merge and compress exactness, policies, counting."""

import copy
import math

import pytest
import timm
import torch
import torchvision
from torch import nn

import lorita
from lorita.counting import count_macs_params


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                         nn.Linear(96, 10)), torch.randn(4, 1, 8, 8)


def _cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=2, dilation=2, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise: never touched
        nn.Conv2d(32, 48, (1, 3), padding=(0, 1)), nn.BatchNorm2d(48), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10)), torch.randn(4, 3, 16, 16)


def _resnet18():
    return torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32)


def _vit():
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=10)
    return model, torch.randn(2, 3, 32, 32)


FAMILIES = {"mlp": _mlp, "cnn_bn": _cnn, "resnet18": _resnet18, "vit": _vit}


def _double(factory):
    model, x = factory()
    model = model.double().eval()
    # Non-trivial BatchNorm statistics so the check covers what follows each conv.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model, x.double()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_merge_preserves_function(family, n):
    model, x = _double(FAMILIES[family])
    dense_shapes = {k: v.shape for k, v in model.state_dict().items()}
    over = lorita.overparameterize(model, n)
    _perturb(over)  # factors no longer orthogonal: the merge must fold real products
    assert any(isinstance(m, lorita.LinearComposition | lorita.ConvComposition) for m in over.modules())
    with torch.no_grad():
        y = over(x)
        merged = lorita.merge(copy.deepcopy(over))
        assert _rel(merged(x), y) <= 1e-5
    assert {k: v.shape for k, v in merged.state_dict().items()} == dense_shapes


def test_overparameterize_shapes_follow_the_paper():
    model = nn.Sequential(nn.Linear(8, 5), nn.Conv2d(3, 6, 3, bias=False))
    lorita.overparameterize(model, 3)
    lin, conv = model[0], model[1]
    assert [tuple(f.weight.shape) for f in lin] == [(8, 8), (8, 8), (5, 8)]
    assert [f.bias is None for f in lin] == [True, True, False]
    assert [tuple(f.weight.shape) for f in conv] == [(6, 3, 3, 3), (6, 6, 1, 1), (6, 6, 1, 1)]
    assert all(f.bias is None for f in conv)


def test_n1_is_the_identity():
    model, _x = _mlp()
    before = copy.deepcopy(model.state_dict())
    assert lorita.overparameterize(model, 1) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, lorita.LinearComposition) for m in model.modules())


def test_grouped_convs_are_left_alone_and_filters_apply():
    model, _ = _cnn()
    lorita.overparameterize(model, 2, exclude=["12"])
    assert isinstance(model[6], nn.Conv2d) and model[6].groups == 32
    assert isinstance(model[12], nn.Linear)
    assert isinstance(model[0], lorita.ConvComposition)
    model, _ = _vit()
    lorita.overparameterize(model, 2, include=["blocks.*.attn.qkv"])
    comps = [n for n, m in model.named_modules() if isinstance(m, lorita.LinearComposition)]
    assert comps == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]


def test_bad_n_is_refused():
    with pytest.raises(ValueError, match="n must be"):
        lorita.overparameterize(nn.Linear(2, 2), 0)


def test_extra_factors_keep_the_singular_values_of_the_original_layer():
    # Why this init: the product starts with exactly the spectrum of a standard layer.
    layer = nn.Linear(32, 16)
    expected = torch.linalg.svdvals(layer.weight.detach().double())
    comp = lorita.overparameterize(nn.Sequential(layer), 4)
    got = lorita.spectra(comp)["0"]
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_spectra_reshapes_conv_weights():
    conv = nn.Conv2d(4, 6, 3)
    s = lorita.spectra(nn.Sequential(conv))["0"]
    assert torch.allclose(s, torch.linalg.svdvals(conv.weight.detach().double().reshape(6, 36)))


def _truncated_reference(model, plan):
    ref = copy.deepcopy(model)
    for lp in plan.layers:
        layer = ref.get_submodule(lp.name)
        w = layer.weight.detach().flatten(1)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        with torch.no_grad():
            layer.weight.copy_(((u[:, :lp.rank] * s[:lp.rank]) @ vh[:lp.rank]).view_as(layer.weight))
    return ref


@pytest.mark.parametrize("family", FAMILIES)
def test_compress_equals_the_rank_truncated_merged_model(family):
    model, x = _double(FAMILIES[family])
    plan = lorita.truncate(model, lorita.RankRatio(ratio=0.25))
    deployed = lorita.factorize(model, plan).eval()
    assert any(lp.factored for lp in plan.layers)
    assert any(isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d) for m in deployed.modules())
    with torch.no_grad():
        assert _rel(deployed(x), _truncated_reference(model, plan)(x)) <= 1e-5
    # Layers are factored exactly where that saves parameters.
    for lp in plan.layers:
        m = deployed.get_submodule(lp.name)
        assert isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d) == lp.factored


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_compress_changes_nothing(family):
    model, x = _double(FAMILIES[family])
    deployed = lorita.compress(model, lorita.RankRatio(ratio=1.0)).eval()
    assert not any(isinstance(m, lorita.LowRankLinear | lorita.LowRankConv2d) for m in deployed.modules())
    assert count_macs_params(deployed, x) == count_macs_params(model, x)
    with torch.no_grad():
        assert _rel(deployed(x), model(x)) <= 1e-10


def test_compress_merges_an_overparameterized_model_first():
    model, x = _double(_cnn)
    over = lorita.overparameterize(copy.deepcopy(model), 3)
    _perturb(over)
    merged = lorita.merge(copy.deepcopy(over))
    policy = lorita.RankRatio(ratio=0.5)
    with torch.no_grad():
        a = lorita.compress(over, policy).eval()(x)
        b = lorita.compress(merged, policy).eval()(x)
    assert _rel(a, b) <= 1e-8


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["params", "flops"])
@pytest.mark.parametrize("drop", [0.5, 0.7])
def test_target_policies_land_within_one_point_on_the_deployed_model(family, kind, drop):
    model, x = FAMILIES[family]()
    model.eval()
    policy = lorita.TargetParamsDrop(drop=drop) if kind == "params" else lorita.TargetFlopsDrop(drop=drop)
    deployed = lorita.compress(model, policy, x)
    macs0, params0 = count_macs_params(model, x)
    macs1, params1 = count_macs_params(deployed, x)
    achieved = 1 - (params1 / params0 if kind == "params" else macs1 / macs0)
    assert abs(achieved - drop) <= 0.01, f"{kind} drop {achieved:.4f} vs target {drop}"


def test_flops_target_without_inputs_is_a_clear_error():
    model, _ = _mlp()
    with pytest.raises(ValueError, match="example_inputs"):
        lorita.compress(model, lorita.TargetFlopsDrop(drop=0.5))


def test_policies_validate_their_arguments():
    for bad in (0, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="ratio"):
            lorita.RankRatio(ratio=bad)
    with pytest.raises(ValueError, match="drop"):
        lorita.TargetParamsDrop(drop=1.0)


def test_energy_and_global_threshold_pick_the_documented_ranks():
    # A wide 4×64 layer, so that every rank below 4 is worth factoring and the plan shows
    # the policy's choice (a layer kept dense would keep all 4).
    w = torch.zeros(4, 64)
    w[:, :4] = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5]))
    model = nn.Sequential(nn.Linear(64, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w)
    # energies: 16, 4, 1, 0.25 of 21.25 -> cumulative 0.753, 0.941, 0.988, 1
    assert lorita.truncate(model, lorita.Energy(keep=0.9)).ranks == {"0": 2}
    assert lorita.truncate(model, lorita.Energy(keep=0.95)).ranks == {"0": 3}
    assert lorita.truncate(model, lorita.GlobalThreshold(tau=0.25)).ranks == {"0": 3}
    assert lorita.truncate(model, lorita.GlobalThreshold(tau=0.3)).ranks == {"0": 2}
    assert lorita.truncate(model, lorita.RankRatio(ratio=0.5)).ranks == {"0": 2}


def test_counter_matches_torch_pruning_on_dense_vit_and_counts_factorized_attention():
    import torch_pruning as tp

    model, x = _vit()
    model.eval()
    assert count_macs_params(model, x)[0] == pytest.approx(tp.utils.count_ops_and_params(model, x)[0])
    # torch-pruning alone counts a factorized qkv as dense; ours must see the saving.
    deployed = lorita.compress(model, lorita.RankRatio(ratio=0.2))
    assert isinstance(deployed.blocks[0].attn.qkv, lorita.LowRankLinear)
    assert count_macs_params(deployed, x)[0] < 0.6 * count_macs_params(model, x)[0]


def test_a_layer_not_worth_factoring_keeps_its_full_rank_and_weight():
    # At 3/4 of full rank: conv 3→16 (in 27) rank 12 costs 12·43 ≥ 27·16, Linear(64, 64) rank 48
    # costs 48·128 ≥ 64²: both stay dense, so they keep every singular value. Linear(576, 64) at
    # 48 and Linear(64, 8) at 6 save parameters and are factored.
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Flatten(), nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 64),
                          nn.ReLU(), nn.Linear(64, 8)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for over in (model, _perturb_and_return(lorita.overparameterize(copy.deepcopy(model), 2))):
        plan = lorita.truncate(over, lorita.RankRatio(ratio=0.75))
        assert plan.ranks == {"0": 16, "2": 48, "4": 64, "6": 6}
        assert [lp.factored for lp in plan.layers] == [False, True, False, True]
        deployed = lorita.factorize(over, plan)
        dense = lorita.merge(copy.deepcopy(over))
        for name in ("0", "4"):
            assert type(deployed.get_submodule(name)) is type(model.get_submodule(name))
            assert torch.equal(deployed.get_submodule(name).weight, dense.get_submodule(name).weight)
            assert torch.equal(deployed.get_submodule(name).bias, dense.get_submodule(name).bias)
        assert [deployed.get_submodule(n).rank for n in ("2", "6")] == [48, 6]
        with torch.no_grad():
            assert _rel(deployed(x), _truncated_reference(dense, plan)(x)) <= 1e-10


def _perturb_and_return(model):
    _perturb(model)
    return model


def test_a_plan_cannot_truncate_a_layer_it_keeps_dense():
    with pytest.raises(ValueError, match="full rank"):
        lorita.LayerPlan(name="fc", full_rank=64, rank=48, factored=False)
    with pytest.raises(ValueError, match="rank must be in"):
        lorita.LayerPlan(name="fc", full_rank=64, rank=0, factored=True)


def _with_spectrum(layer, sigma):
    w = layer.weight.detach().flatten(1)
    u, _, vh = torch.linalg.svd(torch.randn(w.shape, dtype=torch.float64), full_matrices=False)
    with torch.no_grad():
        layer.weight.copy_(((u * sigma) @ vh).view_as(layer.weight))


def _shaped(model, slow):
    """Give the named layers a slow spectrum (nine tenths at 1, a tail at 1e-3) and the others 0.8^i.

    Like a trained LoRITa model: most layers decay fast, a few keep nearly full rank. A global
    threshold above 1e-3 cuts the slow layers' tail, which leaves them above break-even.
    """
    for name, m in lorita.compressible_layers(model).items():
        full = min(m.weight.shape[0], m.weight[0].numel())
        if name in slow:
            sigma = torch.full((full,), 1e-3, dtype=torch.float64)
            sigma[:math.ceil(0.9 * full)] = 1.0
        else:
            sigma = 0.8 ** torch.arange(full, dtype=torch.float64)
        _with_spectrum(m, sigma)
    return model


def _vgg_like():
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    model = nn.Sequential(*block(3, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64),
                          nn.MaxPool2d(2), *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    # slow: the first conv (break-even 10 of 16), 16→32 (26 of 32), 64→64 (57 of 64)
    return model, torch.randn(2, 3, 16, 16), {"0", "3", "10"}, ("7", "14")


def _fcn():
    model = nn.Sequential(nn.Flatten(), nn.Linear(196, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, torch.randn(2, 1, 14, 14), {"3"}, ("1", "5")


@pytest.mark.parametrize(("family", "kind", "drop"), [
    (_vgg_like, "params", 0.55), (_vgg_like, "flops", 0.3), (_fcn, "params", 0.5), (_fcn, "flops", 0.5)])
def test_target_lands_with_layers_kept_dense_at_their_full_weight(family, kind, drop):
    model, x, slow, fast = family()
    model = _shaped(model.double().eval(), slow)
    x = x.double()
    policy = lorita.TargetParamsDrop(drop=drop) if kind == "params" else lorita.TargetFlopsDrop(drop=drop)
    plan = lorita.truncate(model, policy, x)
    deployed = lorita.factorize(model, plan)
    macs0, params0 = count_macs_params(model, x)
    macs1, params1 = count_macs_params(deployed, x)
    achieved = 1 - (params1 / params0 if kind == "params" else macs1 / macs0)
    assert abs(achieved - drop) <= 0.01, f"{kind} drop {achieved:.4f} vs target {drop}"
    # The threshold landed above 0.8^30 > 1e-3 (fast layers keep at most 30), so it cut the
    # slow layers' tails: the policy picked them a rank above break-even but below full.
    assert all(plan.ranks[name] <= 30 for name in fast)
    for lp in plan.layers:
        layer = deployed.get_submodule(lp.name)
        assert not (lp.factored and lp.name in slow)
        if lp.factored:
            assert layer.rank == lp.rank < lp.full_rank
        else:
            assert lp.rank == lp.full_rank
            assert torch.equal(layer.weight, model.get_submodule(lp.name).weight)
