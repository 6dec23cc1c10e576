"""Model builders on real computations: forward at any class count, LoRITa exactness, pruning."""

import copy

import pytest
import torch
from torch import nn

import lorita
from baselines.pruning import l1_filter_importance, prune_to_target
from bench.catalog.models import build, head_of
from bench.catalog.registry import MODELS
from bench.records.errors import UsageError

# Tiny widths and inputs: each builder still has its full depth and every layer type.
# Widths are chosen so that uniform L1 pruning can land within 1 pp of a 30 % params drop
# (at 4–8 channels a layer loses 12–25 % per removed filter and the drop jumps past it).
TINY = {
    "fcn": ({"depth": 3, "width": 32}, (1, 8, 8)),
    "vgg16": ({"width": 0.25}, (3, 8, 8)),
    "resnet20": ({"width": 0.5}, (3, 8, 8)),
    "resnet56": ({"width": 0.5}, (3, 8, 8)),
    "vit": ({"embed_dim": 24, "depth": 2, "num_heads": 3}, (3, 8, 8)),
}
PRUNABLE = ["fcn", "vgg16", "resnet20", "resnet56"]  # ViT head pruning belongs to baselines/


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core runner
    # OpenMP workers spinning against other processes made these tests ~50x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(name, num_classes=10, dtype=torch.float32):
    options, shape = TINY[name]
    model = build(name, num_classes, shape, options).to(dtype).eval()
    # Non-trivial BatchNorm statistics, so exactness checks cover what follows each conv.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(3, *shape, dtype=dtype)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_every_registered_model_is_tested():
    assert set(MODELS.names()) - {"timm:<name>"} == set(TINY)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_builds_and_runs_at_any_class_count(name, num_classes):
    model, x = _tiny(name, num_classes)
    with torch.no_grad():
        assert model(x).shape == (len(x), num_classes)
    head = head_of(model, num_classes)
    assert head is not None and model.get_submodule(head).out_features == num_classes


@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 5, 7)])
def test_conv_nets_take_any_input_size(name, shape):
    model = build(name, 10, shape, {"width": 0.125}).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_paper_sizes_at_width_one():
    # He et al. report 0.27 M (ResNet-20) and 0.85 M (ResNet-56) params; option-B
    # projections add 3 k. VGG-16-BN with one Linear head on CIFAR-10 is 14.7 M.
    def params(name):
        return sum(p.numel() for p in build(name, 10, (3, 32, 32)).parameters())

    assert round(params("resnet20") / 1e6, 2) == 0.27
    assert round(params("resnet56") / 1e6, 2) == 0.86
    assert round(params("vgg16") / 1e6, 1) == 14.7


def test_resnet_uses_projection_shortcuts_only_where_shape_changes():
    model = build("resnet20", 10, (3, 32, 32))
    projections = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert projections == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19 + 2


def test_vit_takes_image_size_and_channels_from_input_shape():
    model = build("vit", 100, (1, 28, 28), {"patch_size": 7, "embed_dim": 24, "depth": 1, "num_heads": 2})
    assert model.patch_embed.proj.in_channels == 1
    assert model.patch_embed.num_patches == 16
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 100)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_lorita_merge_preserves_function(name, n):
    model, x = _tiny(name, dtype=torch.float64)
    dense_shapes = {k: v.shape for k, v in model.state_dict().items()}
    over = lorita.overparameterize(model, n)
    with torch.no_grad():
        for p in over.parameters():  # the merge must fold real, non-orthogonal products
            p.add_(0.05 * torch.randn_like(p))
        y = over(x)
        merged = lorita.merge(copy.deepcopy(over))
        assert _rel(merged(x), y) <= 1e-5
    assert {k: v.shape for k, v in merged.state_dict().items()} == dense_shapes


@pytest.mark.parametrize("name", TINY)
def test_lorita_compress_halves_params(name):
    model, x = _tiny(name)
    deployed = lorita.compress(model, lorita.TargetParamsDrop(drop=0.5), x[:1])
    with torch.no_grad():
        assert deployed(x).shape == (len(x), 10)
    _, dense = lorita.count_macs_params(model, x[:1])
    _, kept = lorita.count_macs_params(deployed, x[:1])
    assert kept < dense


@pytest.mark.parametrize("name", PRUNABLE)
def test_l1_pruning_reaches_params_target(name):
    model, x = _tiny(name)
    head = model.get_submodule(head_of(model, 10))
    pruned, got = prune_to_target(model, x[:1], kind="params", drop=0.3,
                                  importance_factory=l1_filter_importance, ignored=[head])
    _, dense = lorita.count_macs_params(model, x[:1])
    _, kept = lorita.count_macs_params(pruned, x[:1])
    assert abs(got - 0.3) <= 0.01
    assert abs((1 - kept / dense) - 0.3) <= 0.01
    with torch.no_grad():
        assert pruned(x).shape == (len(x), 10)
    assert pruned.get_submodule(head_of(model, 10)).out_features == 10


def test_timm_prefix_builds_any_timm_architecture():
    model = build("timm:resnet18", 7, (1, 16, 16))
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    vit = build("timm:vit_tiny_patch16_224", 10, (3, 32, 32), {"patch_size": 8, "depth": 1})
    assert vit.patch_embed.num_patches == 16  # img_size came from input_shape
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_timm_name_suggests_close_matches():
    with pytest.raises(UsageError, match=r"timm:resnet1\b.*did you mean .*timm:resnet18"):
        build("timm:resnet1", 10, (3, 32, 32))


def test_timm_placeholder_is_listed_but_not_buildable():
    assert "timm:<name>" in MODELS
    with pytest.raises(UsageError, match="timm:resnet18"):
        build("timm:<name>", 10, (3, 32, 32))


@pytest.mark.parametrize(("name", "options", "shape", "pattern"), [
    ("vgg16", {"width": 0}, (3, 32, 32), r"width=0\b"),
    ("resnet20", {"width": -1.0}, (3, 32, 32), "width=-1.0"),
    ("resnet56", {}, (32, 32), r"\(32, 32\)"),
    ("vit", {"patch_size": 5}, (3, 32, 32), "patch_size=5"),
    ("vit", {"embed_dim": 10, "num_heads": 3}, (3, 32, 32), "embed_dim=10"),
    ("vgg16", {"depth": 3}, (3, 32, 32), "depth"),
])
def test_bad_options_name_the_value(name, options, shape, pattern):
    with pytest.raises(UsageError, match=pattern):
        build(name, 10, shape, options)
