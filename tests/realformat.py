"""Writers of small data sets in the real on-disk formats (IDX files, CIFAR python pickles).

Every image carries its index in its file in pixel (0, 0, 0), so loaded samples can be
traced back to where they came from.
"""

import gzip
import hashlib
import pickle
import struct

import numpy as np


def images(rng, n, shape):
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    x.reshape(n, -1)[:, 0] = np.arange(n)  # the sample's index in its file
    return x


def labels(rng, n, num_classes):
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def idx_bytes(a):
    # IDX: two zero bytes, type 0x08 (uint8), number of dims, big-endian uint32 sizes, payload.
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def idx_set(rng, n_train=60, n_test=20):
    """{file name: array} of a 10-class MNIST-format data set (6 train and 2 test images per class)."""
    return {"train-images-idx3-ubyte": images(rng, n_train, (28, 28)),
            "train-labels-idx1-ubyte": labels(rng, n_train, 10),
            "t10k-images-idx3-ubyte": images(rng, n_test, (28, 28)),
            "t10k-labels-idx1-ubyte": labels(rng, n_test, 10)}


def write_idx(folder, arrays, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(a)))
        else:
            (folder / name).write_bytes(idx_bytes(a))
    return arrays


def write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root, num_classes, rng):
    """The official CIFAR python layout: rows of 3072 bytes (1024 R, 1024 G, 1024 B), labels lists."""
    per_class_train, n_test = 2 if num_classes == 100 else 6, 20
    n_train = per_class_train * num_classes
    train_x, test_x = images(rng, n_train, (3, 32, 32)), images(rng, n_test, (3, 32, 32))
    train_y, test_y = labels(rng, n_train, num_classes), labels(rng, n_test, num_classes)
    names = [f"class{i}" for i in range(num_classes)]
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for b, rows in enumerate(np.array_split(np.arange(n_train), 5)):
            write_pickle(folder / f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5",
                    "data": train_x[rows].reshape(len(rows), -1), "labels": train_y[rows].tolist()})
        write_pickle(folder / "test_batch", {"data": test_x.reshape(n_test, -1), "labels": test_y.tolist()})
        write_pickle(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": n_train // 5})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            write_pickle(folder / split, {"data": x.reshape(len(x), -1), "fine_labels": y.tolist(),
                                     "coarse_labels": (y // 5).tolist()})
        write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": names[:20]})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_written_cifar(monkeypatch, cls, root):
    """Point ``cls``'s md5 lists at the files just written, for this test only.

    torchvision checks every CIFAR file against the official md5; the tiny files here
    cannot match it. Patching the class attributes (undone after the test) keeps the
    whole parsing path real while production code goes on checking the official sums.
    """
    folder = root / cls.base_folder
    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(cls, attr, [[f, md5(folder / f)] for f, _ in getattr(cls, attr)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
