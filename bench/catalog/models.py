"""Model builders: ``fn(num_classes, input_shape, **options) -> nn.Module``, registered by name.

Every builder works at any number of classes and any input size (C, H, W): convolutional
nets end in an adaptive global average pool, the ViT takes its image size from
``input_shape``. ``timm:<name>`` builds any timm architecture (random init, no download).
Every conv here has groups=1 and every classifier is one ``nn.Linear``, so LoRITa can
over-parameterize and factorize all of them and torch-pruning can prune them.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from torch import nn

from bench.catalog.registry import MODELS
from bench.records.errors import UsageError

TIMM_PREFIX = "timm:"


@MODELS.register("fcn", description="the paper's fully connected net: depth Linear layers of "
                 "width units with ReLU (options: depth, width)")
def fcn(num_classes: int, input_shape: tuple[int, ...], depth: int = 4, width: int = 128) -> nn.Module:
    """Flatten → (Linear → ReLU) × (depth-1) → Linear(width, num_classes)."""
    if depth < 1 or width < 1:
        raise UsageError(f"fcn needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth - 1):
        layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape):
        raise UsageError(f"{model} needs an image input shape (C, H, W) of positive integers, "
                         f"got {tuple(input_shape)!r}")
    c, h, w = input_shape
    return c, h, w


def _channels(model: str, base: int, width: float) -> int:
    if not isinstance(width, int | float) or isinstance(width, bool) or not width > 0:
        raise UsageError(f"{model} needs a width multiplier > 0 (1.0 is the paper's size), got width={width!r}")
    return max(1, round(base * width))


def _init_conv_net(model: nn.Module) -> None:
    # torchvision's ResNet/VGG initialization (He et al. fan-out for convs, unit BN), so the
    # CIFAR variants train like their ImageNet siblings under the same budget.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512, "M")


@MODELS.register("vgg16", description="VGG-16 with BatchNorm, CIFAR variant: 13 conv3x3+BN+ReLU, "
                 "5 max-pools, global average pool, Linear(512, classes) (option: width)")
def vgg16(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """VGG-16-BN for small images: ``features`` (13 convs) → ``pool`` → ``classifier`` (one Linear).

    Channels are the standard 64…512 times ``width`` (at least 1). Input (N, C, H, W) of any
    size ≥ 1×1; output (N, num_classes) logits. Raises ``UsageError`` for width ≤ 0 or a
    non-image ``input_shape``.
    """
    c, _, _ = _image_shape("vgg16", input_shape)
    layers: list[nn.Module] = []
    for v in VGG16_CONFIG:
        if v == "M":
            # ceil_mode: five floor-mode halvings reach 0×0 on 28×28 (MNIST) inputs; rounding
            # up keeps every map ≥ 1×1 and is identical to floor mode on 32×32 (CIFAR).
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            out = _channels("vgg16", int(v), width)
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("classifier", nn.Linear(c, num_classes))
    _init_conv_net(model)
    return model


class BasicBlock(nn.Module):
    """He et al.'s basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    The shortcut is the identity when the shape is kept, else a 1×1 conv (stride s) + BN
    (option B of the paper): option A's zero-padded identity has no weights, so a
    pruned or factorized block could not keep its channels consistent with it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016, §4.2) CIFAR ResNet-(6n+2): stem conv, 3 stages of n basic blocks, pool, fc.

    Stages have 16, 32, 64 channels (times ``width``); stages 2 and 3 halve the spatial size
    in their first block. Input (N, C, H, W) of any size; output (N, num_classes) logits.
    """

    def __init__(self, n: int, num_classes: int, in_channels: int, width: float = 1.0, name: str = "resnet") -> None:
        super().__init__()
        widths = [_channels(name, base, width) for base in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = [BasicBlock(c if j == 0 else w, w, stride=2 if (i > 0 and j == 0) else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        _init_conv_net(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@MODELS.register("resnet20", description="He et al. CIFAR ResNet-20: 3 stages (16/32/64 ch) of 3 basic "
                 "blocks, 1x1 conv+BN projection shortcuts (option: width)")
def resnet20(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """ResNet-20 (n=3, 0.27 M params at width 1, 10 classes); see ``CifarResNet``."""
    c, _, _ = _image_shape("resnet20", input_shape)
    return CifarResNet(3, num_classes, c, width, name="resnet20")


@MODELS.register("resnet56", description="He et al. CIFAR ResNet-56: 3 stages (16/32/64 ch) of 9 basic "
                 "blocks, 1x1 conv+BN projection shortcuts (option: width)")
def resnet56(num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """ResNet-56 (n=9, 0.86 M params at width 1, 10 classes); see ``CifarResNet``."""
    c, _, _ = _image_shape("resnet56", input_shape)
    return CifarResNet(9, num_classes, c, width, name="resnet56")


@MODELS.register("vit", description="timm VisionTransformer for small images: patch 4, embed_dim 192, "
                 "depth 6, 3 heads, mlp_ratio 2 (options: those, plus any VisionTransformer keyword)",
                 options_to="timm.models.vision_transformer:VisionTransformer")
def vit(num_classes: int, input_shape: tuple[int, ...], patch_size: int = 4, embed_dim: int = 192,
        depth: int = 6, num_heads: int = 3, mlp_ratio: float = 2.0, **options: Any) -> nn.Module:
    """timm's ``VisionTransformer`` with image size and channels taken from ``input_shape``.

    Defaults are a ViT-Tiny width (192, 3 heads of 64) at half its depth and MLP ratio: a
    1.8 M-parameter model that trains on 32×32 images (8×8 = 64 tokens + class token) in a
    CIFAR budget, where ViT-Tiny's 5.4 M would need far more data or augmentation. Extra
    ``options`` go to ``VisionTransformer`` unchanged. Raises ``UsageError`` if the image is not
    divisible into patches or ``embed_dim`` is not divisible by ``num_heads``.
    """
    from timm.models.vision_transformer import VisionTransformer

    c, h, w = _image_shape("vit", input_shape)
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise UsageError(f"vit needs a patch_size that divides the image size {h}x{w}, got patch_size={patch_size}")
    if num_heads < 1 or embed_dim % num_heads:
        raise UsageError(f"vit needs embed_dim divisible by num_heads, got embed_dim={embed_dim}, "
                         f"num_heads={num_heads}")
    return VisionTransformer(img_size=(h, w), patch_size=patch_size, in_chans=c, num_classes=num_classes,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, **options)


@MODELS.register(f"{TIMM_PREFIX}<name>", description="any timm architecture by name, e.g. timm:resnet18 "
                 "(random init, never downloads weights; options go to timm.create_model)")
def timm_placeholder(num_classes: int, input_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """Documentation entry for ``lorita-bench list``; ``build`` handles real ``timm:`` names."""
    raise UsageError(f"replace <name> in {TIMM_PREFIX}<name> with a timm architecture, e.g. "
                     f"{TIMM_PREFIX}resnet18 (timm.list_models() lists them)")


def _check_timm_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
        raise UsageError(f"unknown timm model {TIMM_PREFIX}{arch}{hint}; accepted: {TIMM_PREFIX}<name> "
                         f"for any name in timm.list_models(), e.g. timm.list_models('*{arch[:8]}*')")


def timm_model(arch: str, num_classes: int, input_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, ...)`` sized for ``input_shape`` and ``num_classes``.

    ``img_size`` is passed when the architecture accepts it (transformers), so positional
    embeddings match the input; convolutional nets adapt by global pooling. Weights are
    never fetched. Raises ``UsageError`` naming close matches when timm has no ``arch``.
    """
    import timm

    _check_timm_arch(arch)
    c, h, w = _image_shape(TIMM_PREFIX + arch, input_shape)
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": c, **options}
    if "img_size" not in kwargs:
        try:
            return timm.create_model(arch, img_size=(h, w), **kwargs)
        except TypeError as err:
            # timm has no flag for "accepts img_size": CNN constructors reject the keyword.
            if "img_size" not in str(err):
                raise
    return timm.create_model(arch, **kwargs)


def resolve(name: str) -> Callable[..., nn.Module]:
    """The builder for ``name``: a registered model or ``timm:<arch>``; ``UsageError`` if unknown.

    Use it to validate a model name early (a preset) without building the model; a
    ``timm:<arch>`` name is checked against timm's model list.
    """
    if name.startswith(TIMM_PREFIX) and name not in MODELS:
        arch = name[len(TIMM_PREFIX):]
        _check_timm_arch(arch)
        return functools.partial(timm_model, arch)
    return MODELS.get(name)


# Set by the suite from the data set and the run, never by a model option.
SUITE_SET = ("num_classes", "input_shape", "img_size", "in_chans", "pretrained", "device", "dtype")


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    try:  # this module's annotations are strings (``from __future__ import annotations``)
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        return inspect.signature(fn)


def option_parameters(name: str) -> dict[str, inspect.Parameter] | None:
    """The options model ``name`` accepts, by name, or ``None`` where they cannot be listed.

    A builder's keyword parameters are its options; a builder that passes ``**options`` on
    names the callable that receives them in its registration (``options_to="module:attr"``),
    whose parameters count too. ``timm:<arch>`` builders take whatever timm's entry point
    does, which its signature does not say: ``None``. Parameters the suite sets itself
    (``SUITE_SET``) are not options.
    """
    if name.startswith(TIMM_PREFIX) and name not in MODELS:
        return None
    entry = MODELS.entry(name)
    params = dict(_signature(entry.obj).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        target = entry.meta.get("options_to")
        if target is None:
            return None
        module, _, attr = target.partition(":")
        params = {**_signature(getattr(importlib.import_module(module), attr)).parameters, **params}
    return {k: p for k, p in params.items() if k not in SUITE_SET and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def _accepts(annotation: Any, value: object) -> bool:
    """Whether ``value`` (an int, float, bool or string from the command line) fits ``annotation``;
    ``True`` where the annotation is missing or not one this can judge (the build decides)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list, type) or annotation in (tuple, list, type):
        return isinstance(value, origin or annotation)
    return True


def _describe(annotation: Any) -> str:
    """``annotation`` in words, for an error message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is type or annotation is type:
        return "a class (not settable from the command line)"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "none"}
    return words.get(annotation, getattr(annotation, "__name__", str(annotation).replace("typing.", "")))


def check_options(name: str, options: dict[str, Any] | None) -> None:
    """Raise ``UsageError`` for an option model ``name`` does not take, or of a type it does not accept.

    Names are checked against ``option_parameters`` (with close matches and every accepted
    name), values against the parameter's annotation. Ranges and combinations (a width ≤ 0,
    heads that do not divide the embedding) are the builder's own checks: build the model to
    run them (``bench.frontend`` builds it once on the meta device).
    """
    params = option_parameters(name)
    if params is None:
        return
    for key, value in (options or {}).items():
        if key in SUITE_SET:
            raise UsageError(f"model option {key!r} is set by the suite from the data set and the run; "
                             f"accepted for model {name!r}: {', '.join(params) or 'no options'}")
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UsageError(f"unknown option {key!r} for model {name!r}{hint}; accepted: "
                             f"{', '.join(params) or 'no options'}")
        annotation = params[key].annotation
        if not _accepts(annotation, value):
            raise UsageError(f"bad option {key}={value!r} for model {name!r}; accepted: {_describe(annotation)}")


def build(name: str, num_classes: int, input_shape: tuple[int, ...], options: dict[str, Any] | None = None
          ) -> nn.Module:
    """The model ``name`` (registered, or ``timm:<arch>``) with ``options``.

    Raises ``UsageError`` for an unknown name (with close matches) or options the builder rejects.
    """
    factory = resolve(name)
    try:
        return factory(num_classes, tuple(input_shape), **(options or {}))
    except TypeError as err:
        raise UsageError(f"bad options {options!r} for model {name!r}: {err}") from None


# The token for "this model's classifier" in a list of protected layers (``--protect``).
HEAD = "@head"
# Protected by default, for every method alike: the classifier. Cutting a 10-class head to rank 1
# saves 0.03 % of VGG-16's parameters and leaves every logit on one line (issue 18); pruning
# never removes its outputs (they are the classes).
DEFAULT_PROTECT = (HEAD,)


def protected_layers(model: nn.Module, num_classes: int, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The qualified names of the layers of ``model`` that ``patterns`` protect, in model order.

    ``patterns`` are glob patterns on the names of the model's ``nn.Linear`` / ``nn.Conv2d``
    layers (``features.0``, ``blocks.*.attn.qkv``), and ``HEAD`` for the classifier
    (``head_of``). No method changes a protected layer: LoRITa keeps it at full rank, pruning
    passes it as an ignored layer. Raises ``UsageError`` for a pattern that names no layer.
    """
    import fnmatch

    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == HEAD:
            head = head_of(model, num_classes)
            chosen |= {head} if head is not None else set()
            continue
        hits = {name for name in layers if fnmatch.fnmatchcase(name, pattern)}
        if not hits:
            shown = ", ".join(layers[:8]) + (", …" if len(layers) > 8 else "")
            raise UsageError(f"protected layer pattern {pattern!r} names no Linear or Conv2d layer of this model; "
                             f"accepted: {HEAD} (the classifier) or glob patterns on layer names such as {shown}")
        chosen |= hits
    return tuple(name for name in layers if name in chosen)


def head_of(model: nn.Module, num_classes: int) -> str | None:
    """Qualified name of the classifier (last Linear with ``num_classes`` outputs), or ``None``."""
    head = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            head = name
    return head


# The builders that apply ``_init_conv_net``; every other model keeps its layers' own initialization.
CONV_NET_INIT = ("vgg16", "resnet20", "resnet56")


def reinitialize(name: str, model: nn.Module) -> nn.Module:
    """``model`` (built by ``name``'s builder, then possibly pruned or factorized) with fresh weights drawn
    as that builder draws them, at the widths it has now; in place, returned.

    Every submodule with ``reset_parameters`` is reset (BatchNorm's running statistics too); a model with
    its own ``init_weights`` (timm's ViT: its position embedding and class token) re-runs it; the suite's
    conv nets get their He initialization again. A low-rank factor pair (``lorita.LowRankLinear`` /
    ``LowRankConv2d``) gets the spectral initialization of a freshly initialized dense layer of its shape
    (Khodak et al.): the truncated SVD at its rank, √σ in each factor.
    """
    import torch

    from lorita.layers import LowRankConv2d, LowRankLinear
    from lorita.lowrank import spectral_init_

    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if callable(getattr(model, "init_weights", None)):
        model.init_weights()
    conv_net = name in CONV_NET_INIT
    if conv_net:
        _init_conv_net(model)
    for m in model.modules():
        if isinstance(m, LowRankLinear | LowRankConv2d):
            first, second = m[0], m[1]
            with torch.device(second.weight.device):
                dense = (nn.Linear(m.in_features, m.out_features) if isinstance(m, LowRankLinear) else
                         nn.Conv2d(m.in_channels, m.out_channels, first.kernel_size, bias=False))
            if conv_net:
                _init_conv_net(dense)
            spectral_init_(m, dense.weight.to(second.weight.dtype))
    return model
