"""Datasets as whole tensors with a fixed train/val/test split.

The test split is only ever used for the final numbers; anything chosen is chosen on
the validation split, carved from train with a fixed seed (independent of the run seed,
so every method and seed sees the same three splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.registry import DATASETS

SPLIT_SEED = 20240503  # fixed: the splits never depend on the run's seed


@dataclass(frozen=True, slots=True, kw_only=True)
class Splits:
    """Normalized float32 inputs (N, C, H, W) and int64 labels for each split."""

    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # Train-time augmentation the training loop applies as batched tensor ops on the device:
    # None, or "crop-flip" (random crop with 4-pixel zero padding + horizontal flip, CIFAR's).
    augment: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def to(self, device: str | torch.device) -> Splits:
        return Splits(name=self.name, num_classes=self.num_classes, augment=self.augment,
                      **{f: getattr(self, f).to(device) for f in
                         ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})


def _split(x: np.ndarray, y: np.ndarray, test_frac: float, val_frac: float
           ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_frac, stratify=y, random_state=SPLIT_SEED)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_frac, stratify=y_rest, random_state=SPLIT_SEED)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


@DATASETS.register("digits", description="scikit-learn's bundled 8×8 handwritten digits "
                   "(1,797 real images, 10 classes; no download); 60/20/20 train/val/test")
def digits(data_dir: Path | None = None, download: bool = False) -> Splits:
    """UCI handwritten digits as shipped inside scikit-learn: real data, no network."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    y = bunch.target.astype(np.int64)
    (xtr, ytr), (xva, yva), (xte, yte) = _split(x, y, test_frac=0.2, val_frac=0.25)
    # Normalization statistics come from the training split only.
    mean, std = float(xtr.mean()), float(xtr.std())

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std)

    return Splits(name="digits", num_classes=10, train_x=t(xtr), train_y=torch.from_numpy(ytr),
                  val_x=t(xva), val_y=torch.from_numpy(yva), test_x=t(xte), test_y=torch.from_numpy(yte))


def load(name: str, data_dir: Path | None = None, download: bool = False) -> Splits:
    """The registered dataset ``name``; ``UsageError`` for an unknown name or missing files."""
    return DATASETS.get(name)(data_dir=data_dir, download=download)
