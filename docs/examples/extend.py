"""The worked example of docs/extending.md: a data set, a model, a method and a preset added from a
file of your own, then run by the suite's own command line.

    python docs/examples/extend.py run --preset example --out out/example

This file is lorita-bench plus four registrations: every `lorita-bench` command works through it
(`python docs/examples/extend.py list example`). In the package itself the same registrations sit in
bench/catalog/{data,models,methods,presets}.py (or baselines/pruning.py), which the catalog imports.
"""

from __future__ import annotations

import sys

import torch
import torch_pruning as tp
from torch import nn

from baselines.pruning import Baseline
from bench import cli
from bench.catalog import DATASETS, METHODS, MODELS, PRESETS
from bench.catalog.budget import Budget, Target
from bench.catalog.data import Splits, digits
from bench.catalog.methods import TorchPruning
from bench.catalog.presets import Preset


# A data set: a function (data_dir, download) -> Splits of whole tensors, with a validation split
# carved from train. Here scikit-learn's digits, upsampled to 16×16 (real data, no download).
@DATASETS.register("digits-16", description="scikit-learn's digits upsampled to 16×16 (docs/extending.md)")
def digits_16(data_dir=None, download: bool = False) -> Splits:
    d = digits()

    def up(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)

    return Splits(name="digits-16", num_classes=d.num_classes, train_x=up(d.train_x), train_y=d.train_y,
                  val_x=up(d.val_x), val_y=d.val_y, test_x=up(d.test_x), test_y=d.test_y)


# A model: a builder (num_classes, input_shape, **options) -> nn.Module; its keyword options are what
# --model-options may set, checked against this signature.
@MODELS.register("tiny-cnn", description="two 3×3 convs and a linear head (option: width)")
def tiny_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 16) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), num_classes))


# A method: a pruning baseline is a pairing (importance, global or per-layer ranking) run by
# torch-pruning. Torch-Pruning's own "Group-L1": L1 group magnitude, ranked across layers.
GROUP_L1 = TorchPruning(name="group-l1", baseline=Baseline(
    importance=lambda: tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True))
METHODS.add(GROUP_L1.name, GROUP_L1, family=GROUP_L1.family, paper="Fang et al., DepGraph, CVPR 2023",
            description="group L1 magnitude, global ranking (docs/extending.md)")

# A preset: a frozen Preset under a name; every field is checked against the tables above.
PRESETS.add("example", Preset(
    dataset="digits-16", model="tiny-cnn", model_options={"width": 16},
    methods=("lorita-n1", "lorita-n2", "group-l1", "l1-filter"),
    targets=(Target(kind="params", drop=0.5), Target(kind="flops", drop=0.5)),
    budget=Budget(epochs=8, finetune_epochs=2, batch_size=64, lr=0.02, finetune_lr=0.002, weight_decay=0.005),
    latency_rounds=10), description="docs/extending.md's example: tiny CNN on digits-16, CPU, seconds")

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
