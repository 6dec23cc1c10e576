"""Datasets as whole tensors with a fixed train/val/test split.

The test split is only ever used for the final numbers; anything chosen is chosen on
the validation split, carved from train with a fixed seed (independent of the run seed,
so every method and seed sees the same three splits).

MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 are read by torchvision's own dataset
classes from a folder in torchvision's layout (``MNIST/raw/…``, ``FashionMNIST/raw/…``,
``cifar-10-batches-py/…``, ``cifar-100-python/…``): the ``data_dir`` argument, else
``default_data_dir()``. Their test split is the official one, untouched; the validation
split is ``VAL_SIZE`` images of the official train split.
"""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.catalog.registry import DATASETS
from bench.records.errors import UsageError

SPLIT_SEED = 20240503  # fixed: the splits never depend on the run's seed
VAL_SIZE = 5_000  # images carved from each official train split for validation
DATA_DIR_ENV = "LORITA_BENCH_DATA"
# Where Debian's ``dataset-fashion-mnist`` package installs the gzipped IDX files (read-only).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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


def default_data_dir() -> Path:
    """The data root used when no ``data_dir`` is given.

    ``$LORITA_BENCH_DATA`` when set, else ``~/.cache/lorita-bench/data``; never created here
    (torchvision creates it on ``download``, the Fashion-MNIST Debian copy on first use).
    """
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorita-bench" / "data"


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchvisionSpec:
    """How one torchvision dataset becomes ``Splits``: its class, classes, normalization, augmentation."""

    name: str
    torchvision_class: str  # looked up in ``torchvision.datasets`` at load time
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the [0, 1]-scaled official train split
    std: tuple[float, ...]
    augment: str | None
    # Zero (background) border added to every image before normalizing: 28×28 digits padded to
    # 32×32 (LeNet-5's convention) so that the CIFAR conv nets and ViT see their usual size.
    pad: int = 0
    # Train on a fixed, stratified subset of this many of the training images (after the
    # validation split is carved; seeded by SPLIT_SEED); validation and test stay whole.
    train_subset: int | None = None


# The published per-channel statistics of each official train split. CIFAR's std is the
# per-pixel one (0.247, 0.243, 0.261); the often-copied (0.2023, 0.1994, 0.2010) is the
# mean of per-image stds and leaves inputs with std ≈ 1.2 instead of 1.
MNIST_SPEC = TorchvisionSpec(name="mnist", torchvision_class="MNIST", num_classes=10,
                             mean=(0.1307,), std=(0.3081,), augment=None)
FASHION_MNIST_SPEC = TorchvisionSpec(name="fashion-mnist", torchvision_class="FashionMNIST", num_classes=10,
                                     mean=(0.2860,), std=(0.3530,), augment=None)
# The same files and statistics (those of the unpadded images, so the border is the usual
# normalized background value -0.81, not 0): inputs (1, 32, 32) for VGG, ResNet and ViT.
FASHION_MNIST_32_SPEC = TorchvisionSpec(name="fashion-mnist-32", torchvision_class="FashionMNIST", num_classes=10,
                                        mean=(0.2860,), std=(0.3530,), augment=None, pad=2)
# The conv verdict that runs on a laptop (the fashion-mnist-cpu-vgg16 preset): 10,000 of the
# 55,000 training images, 1,000 per class; the same 5k validation and 10k test images.
FASHION_MNIST_32_10K_SPEC = replace(FASHION_MNIST_32_SPEC, name="fashion-mnist-32-10k", train_subset=10_000)
CIFAR10_SPEC = TorchvisionSpec(name="cifar10", torchvision_class="CIFAR10", num_classes=10,
                               mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), augment="crop-flip")
CIFAR100_SPEC = TorchvisionSpec(name="cifar100", torchvision_class="CIFAR100", num_classes=100,
                                mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), augment="crop-flip")


def _expected_files(cls: type) -> tuple[str, list[str]]:
    """(folder, file names) torchvision's ``cls`` reads, relative to the data root."""
    from torchvision.datasets import MNIST

    if issubclass(cls, MNIST):
        # torchvision reads the decompressed IDX files: the resource names without ".gz".
        return f"{cls.__name__}/raw", [Path(f).stem for f, _ in cls.resources]
    return cls.base_folder, [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _not_found(spec: TorchvisionSpec, cls: type, root: Path, also: str = "") -> UsageError:
    folder, files = _expected_files(cls)
    missing = [f for f in files if not (root / folder / f).is_file()] or files
    more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
    return UsageError(
        f"dataset {spec.name!r} not found: looked for {folder}/{missing[0]}{more} in {root}{also}; "
        f"pass --data-dir pointing at a folder with torchvision's layout ({folder}/…), "
        "or add --download (needs internet)")


def _u8_images(data) -> torch.Tensor:
    """torchvision's ``.data`` as uint8 (N, C, H, W): MNIST's is (N, H, W), CIFAR's is (N, H, W, C) numpy."""
    if isinstance(data, np.ndarray):
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return data.unsqueeze(1).contiguous()


def _normalize(u8: torch.Tensor, spec: TorchvisionSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return u8.to(torch.float32).div_(255).sub_(mean).div_(std)


def _carve_val(y: np.ndarray, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: a stratified random ``val_size`` subset, seeded by ``SPLIT_SEED``."""
    from sklearn.model_selection import train_test_split

    # Stratified so every class has its share of validation images (50 per class on
    # CIFAR-100, where a plain permutation leaves some classes with as few as ~35).
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=val_size, stratify=y,
                                          random_state=SPLIT_SEED)
    return np.sort(train_idx), np.sort(val_idx)


def _subset(idx: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Sorted: a stratified random ``size`` of the indices ``idx`` into labels ``y``, seeded by ``SPLIT_SEED``."""
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(idx, train_size=size, stratify=y[idx], random_state=SPLIT_SEED)
    return np.sort(keep)


def _load_torchvision(spec: TorchvisionSpec, data_dir: Path | str | None, download: bool, also: str = "") -> Splits:
    """Read ``spec``'s official train/test splits with torchvision and carve the validation split.

    ``UsageError`` (one line) when the files are missing, fail torchvision's checks (CIFAR's
    md5), cannot be downloaded, or hold too few train images for ``VAL_SIZE``.
    """
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.torchvision_class)
    root = (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()).absolute()
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        folder, files = _expected_files(cls)
        if not download and not all((root / folder / f).is_file() for f in files):
            raise _not_found(spec, cls, root, also) from None
        reason = " ".join(str(err).split())  # torchvision's messages span lines; the CLI prints one
        if download:
            raise UsageError(f"could not download dataset {spec.name!r} into {root}: {reason}; check the "
                             "internet connection, or pass --data-dir pointing at a folder with torchvision's "
                             f"layout ({folder}/…)") from None
        raise UsageError(f"could not read dataset {spec.name!r} from {root / folder}: {reason} (torchvision "
                         "accepts only the official files, md5-checked for CIFAR); pass --data-dir pointing at "
                         "a folder with the official files in torchvision's layout, or delete these and add "
                         "--download (needs internet)") from None
    train_u8, test_u8 = _u8_images(train.data), _u8_images(test.data)
    if spec.pad:
        train_u8, test_u8 = (torch.nn.functional.pad(u8, (spec.pad,) * 4) for u8 in (train_u8, test_u8))
    train_y = torch.as_tensor(np.asarray(train.targets), dtype=torch.int64)
    test_y = torch.as_tensor(np.asarray(test.targets), dtype=torch.int64)
    if len(train_y) <= VAL_SIZE:
        raise UsageError(f"dataset {spec.name!r} in {root} has {len(train_y)} train images; the validation "
                         f"split alone needs {VAL_SIZE}: replace the files with the official ones")
    tr, va = _carve_val(train_y.numpy(), VAL_SIZE)
    if spec.train_subset is not None and spec.train_subset < len(tr):
        tr = _subset(tr, train_y.numpy(), spec.train_subset)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    return Splits(name=spec.name, num_classes=spec.num_classes, augment=spec.augment,
                  train_x=_normalize(train_u8[tr_t], spec), train_y=train_y[tr_t],
                  val_x=_normalize(train_u8[va_t], spec), val_y=train_y[va_t],
                  test_x=_normalize(test_u8, spec), test_y=test_y)


@DATASETS.register("mnist", description="MNIST handwritten digits via torchvision (28×28 gray, 10 classes); "
                   "55k/5k/10k train/val/test, val carved from the official train split")
def mnist(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """MNIST from ``data_dir/MNIST/raw/`` (default ``default_data_dir()``); shapes (N, 1, 28, 28).

    Normalized with the published mean/std (0.1307, 0.3081); no augmentation. Raises
    ``UsageError`` when the files are missing and ``download`` is False.
    """
    return _load_torchvision(MNIST_SPEC, data_dir, download)


def _fashion_mnist_from_debian(root: Path) -> bool:
    """Decompress Debian's Fashion-MNIST into ``root/FashionMNIST/raw/``; False if the package is absent.

    torchvision reads decompressed IDX files and the package folder is read-only system
    data, so the copy goes to the suite's own folder. Each file is written to a temporary
    name in the same folder and renamed into place, so a reader never sees half a file.
    """
    from torchvision.datasets import FashionMNIST

    gz_names = [f for f, _ in FashionMNIST.resources]
    if not all((DEBIAN_FASHION_MNIST / f).is_file() for f in gz_names):
        return False
    raw = root / "FashionMNIST" / "raw"
    for gz_name in gz_names:
        target = raw / Path(gz_name).stem
        if target.is_file():
            continue
        # Not mkstemp: its 0600 mode would make a shared cache unreadable to other users.
        tmp = raw / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            raw.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as out, gzip.open(DEBIAN_FASHION_MNIST / gz_name, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp, target)
        except (OSError, EOFError) as err:
            raise UsageError(f"could not decompress {DEBIAN_FASHION_MNIST / gz_name} into {raw}: {err}; "
                             "pass --data-dir pointing at a folder with torchvision's layout "
                             "(FashionMNIST/raw/…), or add --download (needs internet)") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return True


@DATASETS.register("fashion-mnist", description="Fashion-MNIST via torchvision (28×28 gray, 10 classes; also "
                   "found in Debian's dataset-fashion-mnist); 55k/5k/10k train/val/test")
def fashion_mnist(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """Fashion-MNIST from ``data_dir/FashionMNIST/raw/``; shapes (N, 1, 28, 28).

    Files missing from ``data_dir`` (default ``default_data_dir()``) are first taken from
    Debian's ``dataset-fashion-mnist`` package (``DEBIAN_FASHION_MNIST``), decompressed into
    ``data_dir/FashionMNIST/raw/``; only then is ``download`` used. Normalized with
    the published mean/std (0.2860, 0.3530); no augmentation. Raises ``UsageError`` when the
    files are found nowhere and ``download`` is False.
    """
    return _fashion_mnist(FASHION_MNIST_SPEC, data_dir, download)


@DATASETS.register("fashion-mnist-32", description="Fashion-MNIST padded to 32×32 (1 channel) for the CIFAR "
                   "conv nets and the ViT; same files and splits as fashion-mnist")
def fashion_mnist_32(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """As ``fashion_mnist``, every image zero-padded by 2 pixels (before normalizing): shapes (N, 1, 32, 32)."""
    return _fashion_mnist(FASHION_MNIST_32_SPEC, data_dir, download)


def _fashion_mnist(spec: TorchvisionSpec, data_dir: Path | str | None, download: bool) -> Splits:
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    from torchvision.datasets import FashionMNIST

    folder, files = _expected_files(FashionMNIST)
    also = ""
    # A --data-dir that lacks the files gets Debian's copy as the default folder would: the
    # paper presets pass --data-dir for their other data sets, and a folder without
    # Fashion-MNIST in it is no reason to ignore the copy installed on this machine.
    if not all((root / folder / f).is_file() for f in files) and not _fashion_mnist_from_debian(root):
        also = f" or in {DEBIAN_FASHION_MNIST} (Debian package dataset-fashion-mnist)"
    return _load_torchvision(spec, data_dir, download, also)


@DATASETS.register("fashion-mnist-32-10k", description="fashion-mnist-32 training on a fixed stratified 10k of "
                   "its 55k train images (1k per class), for conv nets on a CPU; same 5k val, 10k test")
def fashion_mnist_32_10k(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """As ``fashion_mnist_32``, with the train split cut to a fixed stratified 10,000 images."""
    return _fashion_mnist(FASHION_MNIST_32_10K_SPEC, data_dir, download)


@DATASETS.register("cifar10", description="CIFAR-10 via torchvision (32×32 RGB, 10 classes, md5-checked); "
                   "45k/5k/10k train/val/test; crop-flip augmentation")
def cifar10(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py/``; shapes (N, 3, 32, 32).

    torchvision verifies the md5 of every official file. Normalized per channel with the
    published mean/std; ``augment="crop-flip"``. Raises ``UsageError`` when the files are
    missing (and ``download`` is False) or fail the md5 check.
    """
    return _load_torchvision(CIFAR10_SPEC, data_dir, download)


@DATASETS.register("cifar100", description="CIFAR-100 via torchvision (32×32 RGB, 100 fine classes, md5-checked); "
                   "45k/5k/10k train/val/test; crop-flip augmentation")
def cifar100(data_dir: Path | str | None = None, download: bool = False) -> Splits:
    """CIFAR-100 (fine labels) from ``data_dir/cifar-100-python/``; shapes (N, 3, 32, 32).

    As ``cifar10``: md5-checked official files, per-channel published mean/std, ``augment="crop-flip"``.
    """
    return _load_torchvision(CIFAR100_SPEC, data_dir, download)


def load(name: str, data_dir: Path | None = None, download: bool = False) -> Splits:
    """The registered dataset ``name``; ``UsageError`` for an unknown name or missing files."""
    return DATASETS.get(name)(data_dir=data_dir, download=download)
