"""Dataset loaders against small files written in the real on-disk formats.

IDX files (MNIST, Fashion-MNIST) and CIFAR pickles are written byte for byte as the
official ones are laid out, then read through torchvision's own dataset classes. Every
image carries its index in the file in pixel (0, 0, 0), so each loaded sample can be
traced back to where it came from.
"""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from realformat import idx_bytes, idx_set, trust_written_cifar, write_cifar, write_idx

from bench.catalog import data
from bench.records.errors import UsageError

REAL_DEBIAN_FASHION_MNIST = data.DEBIAN_FASHION_MNIST  # before any test patches it
SPECS = {"mnist": data.MNIST_SPEC, "fashion-mnist": data.FASHION_MNIST_SPEC,
         "cifar10": data.CIFAR10_SPEC, "cifar100": data.CIFAR100_SPEC}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    # Nothing here may read or write the user's cache or the system's Debian copy.
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    monkeypatch.setattr(data, "VAL_SIZE", 10)


def _expected(u8, spec):
    """What the loader must return for uint8 (N, C, H, W) images: scaled to [0, 1], then normalized."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (torch.from_numpy(u8).float() / 255 - mean) / std


def _origin(x, spec):
    """Index in its file of each loaded image, read back from pixel (0, 0, 0)."""
    return torch.round((x[:, 0, 0, 0] * spec.std[0] + spec.mean[0]) * 255).long().tolist()


def _check_splits(d, spec, raw, channels, val_size=10):
    train_x, train_y, test_x, test_y = raw
    n_train = len(train_y)
    assert d.name == spec.name and d.num_classes == spec.num_classes and d.augment == spec.augment
    assert d.input_shape == ((1, 28, 28) if channels == 1 else (3, 32, 32))
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (n_train - val_size, val_size, len(test_y))
    assert all(t.dtype == torch.float32 for t in (d.train_x, d.val_x, d.test_x))
    assert all(t.dtype == torch.int64 for t in (d.train_y, d.val_y, d.test_y))
    # Test split: the official one, in file order, normalized with the published constants.
    torch.testing.assert_close(d.test_x, _expected(test_x, spec), rtol=0, atol=1e-5)
    assert d.test_y.tolist() == test_y.tolist()
    # Train and val: disjoint, together exactly the official train split, labels kept with images.
    tr, va = _origin(d.train_x, spec), _origin(d.val_x, spec)
    assert not set(tr) & set(va) and sorted(tr + va) == list(range(n_train))
    torch.testing.assert_close(d.val_x, _expected(train_x[va], spec), rtol=0, atol=1e-5)
    assert d.train_y.tolist() == train_y[tr].tolist() and d.val_y.tolist() == train_y[va].tolist()


@pytest.mark.parametrize(("name", "cls"), [("mnist", tvd.MNIST), ("fashion-mnist", tvd.FashionMNIST)])
def test_idx_files_load_through_torchvision(tmp_path, name, cls):
    arrays = write_idx(tmp_path / cls.__name__ / "raw", idx_set(np.random.default_rng(0)))
    d = data.load(name, data_dir=tmp_path)
    raw = tuple(arrays[f][:, None] if "images" in f else arrays[f] for f in arrays)
    _check_splits(d, SPECS[name], raw, channels=1)
    assert d.val_y.bincount().tolist() == [1] * 10  # stratified: every class in val


@pytest.mark.parametrize(("name", "cls", "num_classes"), [("cifar10", tvd.CIFAR10, 10),
                                                          ("cifar100", tvd.CIFAR100, 100)])
def test_cifar_pickles_load_through_torchvision(tmp_path, monkeypatch, name, cls, num_classes):
    # Stratification needs a validation split with at least one image per class.
    monkeypatch.setattr(data, "VAL_SIZE", num_classes)
    raw = write_cifar(tmp_path, num_classes, np.random.default_rng(1))
    trust_written_cifar(monkeypatch, cls, tmp_path)
    d = data.load(name, data_dir=tmp_path)
    # Channel order survives torchvision's CHW rows → HWC → our CHW: checked per channel.
    _check_splits(d, SPECS[name], (raw["train_x"], raw["train_y"], raw["test_x"], raw["test_y"]),
                  channels=3, val_size=num_classes)
    assert d.val_y.bincount(minlength=num_classes).tolist() == [1] * num_classes  # stratified


def test_val_split_is_fixed_across_calls(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", idx_set(np.random.default_rng(3)))
    a, b = data.load("mnist", data_dir=str(tmp_path)), data.load("mnist", data_dir=tmp_path)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)


def test_cifar_files_that_fail_the_official_md5_are_refused(tmp_path):
    # Same files, no test-only md5 patch: production code must reject them.
    write_cifar(tmp_path, 10, np.random.default_rng(4))
    with pytest.raises(UsageError) as err:
        data.load("cifar10", data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "corrupted" in msg and str(tmp_path) in msg
    assert tvd.CIFAR10.train_list[0][1] == "c99cafc152244af753f735de768cd75f"  # patches were undone


@pytest.mark.parametrize("name", SPECS)
def test_missing_dataset_error_is_one_line_with_both_fixes(tmp_path, name):
    with pytest.raises(UsageError) as err:
        data.load(name, data_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "\n" not in msg
    assert name in msg and str(tmp_path / "empty") in msg
    assert "--data-dir" in msg and "--download" in msg


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    assert data.default_data_dir() == tmp_path / "cache"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.default_data_dir() == Path.home() / ".cache" / "lorita-bench" / "data"


def test_no_data_dir_reads_the_default_folder(tmp_path):
    write_idx(tmp_path / "cache" / "MNIST" / "raw", idx_set(np.random.default_rng(8)))
    assert len(data.load("mnist").test_y) == 20


def test_download_passes_through_to_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(self):  # writes what the real download would leave behind
        calls.append(self.root)
        write_idx(tmp_path / "new" / "MNIST" / "raw", idx_set(np.random.default_rng(5)))

    monkeypatch.setattr(tvd.MNIST, "download", fake_download)
    d = data.load("mnist", data_dir=tmp_path / "new", download=True)
    assert calls and calls[0] == str(tmp_path / "new") and len(d.test_y) == 20


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def no_internet(self):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_internet)
    with pytest.raises(UsageError, match="could not download dataset 'cifar10'") as err:
        data.load("cifar10", data_dir=tmp_path, download=True)
    assert "\n" not in str(err.value) and "name resolution" in str(err.value)


def test_fashion_mnist_uses_debian_copy_decompressed_into_cache(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = write_idx(debian, idx_set(np.random.default_rng(6)), compress=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    before = sorted(p.name for p in debian.iterdir())
    d = data.load("fashion-mnist")
    assert sorted(p.name for p in debian.iterdir()) == before  # nothing written beside the system files
    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(arrays)  # no temporary files left
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == idx_bytes(arrays["t10k-labels-idx1-ubyte"])
    assert d.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_without_debian_package_names_both_places(tmp_path):
    with pytest.raises(UsageError) as err:
        data.load("fashion-mnist")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cache") in msg and "no-debian-package" in msg
    assert "--data-dir" in msg and "--download" in msg


def test_data_dir_without_fashion_mnist_takes_the_debian_copy_into_it(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    arrays = write_idx(debian, idx_set(np.random.default_rng(7)), compress=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    (tmp_path / "mine").mkdir()
    d = data.load("fashion-mnist", data_dir=tmp_path / "mine")
    assert d.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert sorted(p.name for p in (tmp_path / "mine" / "FashionMNIST" / "raw").iterdir()) == sorted(arrays)
    assert not (tmp_path / "cache").exists()


def test_data_dir_with_its_own_fashion_mnist_ignores_the_debian_copy(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    write_idx(debian, idx_set(np.random.default_rng(7)), compress=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    mine = write_idx(tmp_path / "mine" / "FashionMNIST" / "raw", idx_set(np.random.default_rng(8)))
    d = data.load("fashion-mnist", data_dir=tmp_path / "mine")
    assert d.test_y.tolist() == mine["t10k-labels-idx1-ubyte"].tolist()


@pytest.mark.skipif(not (REAL_DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", REAL_DEBIAN_FASHION_MNIST)
    monkeypatch.setattr(data, "VAL_SIZE", 5_000)
    d = data.load("fashion-mnist")
    assert (d.train_x.shape, d.val_x.shape, d.test_x.shape) == (
        (55_000, 1, 28, 28), (5_000, 1, 28, 28), (10_000, 1, 28, 28))
    assert d.val_y.bincount().tolist() == [500] * 10 and d.test_y.bincount().tolist() == [1_000] * 10
    # The published constants are those of the official train split: it comes out standardized.
    assert abs(float(d.train_x.mean())) < 0.01 and abs(float(d.train_x.std()) - 1) < 0.01


def test_fashion_mnist_32_pads_the_same_images_with_background(tmp_path):
    arrays = write_idx(tmp_path / "FashionMNIST" / "raw", idx_set(np.random.default_rng(8)))
    plain = data.load("fashion-mnist", data_dir=tmp_path)
    padded = data.load("fashion-mnist-32", data_dir=tmp_path)
    assert padded.input_shape == (1, 32, 32) and padded.test_y.tolist() == plain.test_y.tolist()
    torch.testing.assert_close(padded.test_x[:, :, 2:30, 2:30], plain.test_x, rtol=0, atol=0)
    # The border is a black (0) pixel under the unpadded images' normalization.
    background = (0 - data.FASHION_MNIST_SPEC.mean[0]) / data.FASHION_MNIST_SPEC.std[0]
    border = padded.test_x.clone()
    border[:, :, 2:30, 2:30] = background
    assert torch.allclose(border, torch.full_like(border, background))
    assert len(arrays["t10k-images-idx3-ubyte"]) == len(padded.test_x)
