"""Model builders: ``fn(num_classes, input_shape, **options) -> nn.Module``, registered by name."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from bench.errors import UsageError
from bench.registry import MODELS


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


def build(name: str, num_classes: int, input_shape: tuple[int, ...], options: dict[str, Any] | None = None
          ) -> nn.Module:
    """The registered model ``name`` with ``options``; ``UsageError`` for unknown names/options."""
    factory = MODELS.get(name)
    try:
        return factory(num_classes, tuple(input_shape), **(options or {}))
    except TypeError as err:
        raise UsageError(f"bad options {options!r} for model {name!r}: {err}") from None


def head_of(model: nn.Module, num_classes: int) -> str | None:
    """Qualified name of the classifier (last Linear with ``num_classes`` outputs), or ``None``."""
    head = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            head = name
    return head
