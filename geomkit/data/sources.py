"""Raw data sources: each returns both splits as numpy arrays, cached per process.

Every loader returns a :class:`RawData`: images N×C×H×W (uint8, or float32 already in
[0, 1]), int64 labels, class names, the divisor ``scale`` that maps the stored values to
[0, 1], and the per-channel mean and standard deviation of the *training* split in [0, 1]
units (population statistics over all training pixels at native resolution), used by
``normalize=True``. The arrays are read-only; callers convert (and thereby copy) them.

Sources and their fixed facts:

- ``digits``: scikit-learn's ``load_digits`` (1797 real 8×8 grey images, values 0..16,
  scaled by 1/16). Fixed split, independent of any random number generator version: the
  360 indices ``i`` with the largest ``splitmix64(i)`` form the test split, the other 1437
  the training split, both in scikit-learn's original order.
  Normalization: mean 0.30600, std 0.37601.
- ``fashion-mnist``: the four IDX files (``.gz`` or uncompressed) from a directory,
  default ``/usr/share/datasets/fashion-mnist``; the MD5 of each uncompressed payload is
  checked (the same payload as the upstream ``.gz`` files, whose published MD5s only match
  the original archives, not re-compressed copies such as Debian's). 60000 train / 10000
  test 28×28 images. Normalization: mean 0.28604, std 0.35302.
- ``cifar10`` / ``cifar100``: the official python-pickle directories
  ``cifar-10-batches-py`` / ``cifar-100-python`` (``root`` is that directory or its
  parent), 50000 / 10000 32×32 RGB images; CIFAR-100 uses the 100 fine labels. The files
  are unpickled, so only pass the official files. Normalization: CIFAR-10 mean
  (0.49139, 0.48216, 0.44653), std (0.24703, 0.24349, 0.26159); CIFAR-100 mean
  (0.50707, 0.48655, 0.44092), std (0.26733, 0.25644, 0.27615).
- ``npz``: a ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and
  optionally ``class_names``); images N×H×W, N×H×W×C or N×C×H×W (the channel axis is
  the one of length ≤ 4), uint8 (0..255) or float in [0, 1]. Normalization statistics
  are computed from ``x_train``.
- ``synthetic``: seeded random class prototypes plus noise, for tests; statistics
  computed from its training split.
- ``imagefolder``: a directory of class sub-folders of JPEG/PNG/BMP/WebP files, decoded
  with Pillow one batch at a time (:mod:`geomkit.data.imagefolder`; :func:`raw_data`
  returns its :class:`~geomkit.data.imagefolder.FolderIndex`, the file lists, not the
  pixels). Normalization: ImageNet's mean (0.485, 0.456, 0.406), std (0.229, 0.224,
  0.225) unless ``mean_std`` says otherwise.

Any source normalizes with ``DataSpec.mean_std`` instead when it is set: :func:`raw_data`
returns those constants as ``mean``/``std``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geomkit.data.idx import parse_idx, payload_md5, read_bytes
from geomkit.data.spec import DataSpec, parse_mean_std
from geomkit.errors import DataError

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

#: MD5 of the uncompressed Fashion-MNIST IDX files: the payload of the published ``.gz``
#: archives (whose own MD5s, 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd... in the
#: zalandoresearch/fashion-mnist README, change whenever a file is re-compressed).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
_FMNIST_FIX = (
    "install the Debian package dataset-fashion-mnist "
    "(apt-get install -y dataset-fashion-mnist) or pass root DIR"
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
DIGITS_CLASSES = tuple(str(i) for i in range(10))

DIGITS_TEST_SIZE = 360

#: Per-channel (mean, std) of the training split, in [0, 1] units.
NORM_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.30600,), (0.37601,)),
    "fashion-mnist": ((0.28604,), (0.35302,)),
    "cifar10": ((0.49139, 0.48216, 0.44653), (0.24703, 0.24349, 0.26159)),
    "cifar100": ((0.50707, 0.48655, 0.44092), (0.26733, 0.25644, 0.27615)),
}

#: Whether a horizontal flip is a label-preserving augmentation for the source.
HFLIP_DEFAULT = {
    "digits": False,
    "fashion-mnist": True,
    "cifar10": True,
    "cifar100": True,
    "npz": False,
    "synthetic": False,
    "imagefolder": True,
}


@dataclass(frozen=True)
class RawData:
    """Both splits of a source at native resolution (arrays are read-only)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def raw_data(spec: DataSpec) -> Any:
    """The cached :class:`RawData` of ``spec``'s source (the ``imagefolder`` source: its
    :class:`~geomkit.data.imagefolder.FolderIndex`); preprocessing options are ignored but
    ``mean_std``, whose constants replace ``mean``/``std``.

    Raises:
        DataError: missing or corrupt files, or a ``mean_std`` with another number of
            channels than the images.
    """
    raw = _raw_data(spec)
    if spec.mean_std is None:
        return raw
    mean, std = parse_mean_std(spec.mean_std)
    chans = 3 if spec.source == "imagefolder" else raw.x_train.shape[1]
    if len(mean) == 1 and chans > 1:
        mean, std = mean * chans, std * chans
    if len(mean) != chans:
        raise DataError(f"mean_std {spec.mean_std!r} has {len(mean)} channels but the "
                        f"{spec.source} images have {chans}", param="mean_std")
    return dataclasses.replace(raw, mean=mean, std=std)


def _raw_data(spec: DataSpec) -> Any:
    s = spec.source
    if s == "digits":
        return _digits()
    if s == "fashion-mnist":
        return _fashion_mnist(os.path.abspath(spec.root or FASHION_MNIST_DEFAULT_ROOT))
    if s in ("cifar10", "cifar100"):
        if spec.root is None:
            raise DataError(
                f"{s} needs its data directory: pass root DIR (the official "
                f"{'cifar-10-batches-py' if s == 'cifar10' else 'cifar-100-python'} folder)",
                param="root",
            )
        return _cifar(s, os.path.abspath(spec.root))
    if s == "npz":
        if spec.root is None:
            raise DataError("the npz source needs a file: pass root FILE.npz", param="root")
        path = os.path.abspath(spec.root)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            raise DataError(f"npz file {path} not found; pass root FILE.npz",
                            param="root") from None
        return _npz(path, mtime)
    if s == "synthetic":
        return _synthetic(
            spec.synthetic_classes,
            spec.synthetic_chans,
            spec.synthetic_size,
            spec.synthetic_train,
            spec.synthetic_test,
            spec.synthetic_seed,
        )
    if s == "imagefolder":
        from geomkit.data.imagefolder import folder_index

        return folder_index(spec)
    raise AssertionError(f"unhandled source {s}")  # DataSpec validated the name


def clear_cache() -> None:
    """Forget every cached source (e.g. after replacing files on disk)."""
    from geomkit.data import imagefolder

    for f in (_digits, _fashion_mnist, _cifar, _npz, _synthetic):
        f.cache_clear()
    imagefolder.clear_cache()


# -- helpers -----------------------------------------------------------------------------


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def _channel_stats(x: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel population mean and std of N×C×H×W ``x / scale``."""
    mean, std = [], []
    for c in range(x.shape[1]):
        xc = x[:, c].astype(np.float64) / scale
        mean.append(float(xc.mean()))
        std.append(float(xc.std()))
    return tuple(mean), tuple(std)


def _splitmix64(i: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of uint64 ``i`` (a fixed, portable hash)."""
    z = i.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# -- digits ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits() -> RawData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.ascontiguousarray(d.images.astype(np.uint8)[:, None])  # N×1×8×8, values 0..16
    y = d.target.astype(np.int64)
    order = np.argsort(_splitmix64(np.arange(len(y))), kind="stable")
    test = np.sort(order[-DIGITS_TEST_SIZE:])
    train = np.sort(order[:-DIGITS_TEST_SIZE])
    mean, std = NORM_STATS["digits"]
    out = RawData(x[train], y[train], x[test], y[test], DIGITS_CLASSES, 16.0, mean, std)
    _readonly(out.x_train, out.y_train, out.x_test, out.y_test)
    return out


# -- Fashion-MNIST -----------------------------------------------------------------------


def _fmnist_file(root: str, name: str) -> np.ndarray:
    for path in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if os.path.isfile(path):
            break
    else:
        raise DataError(f"Fashion-MNIST file {name}[.gz] not found in {root}; {_FMNIST_FIX}",
                        param="root")
    data = read_bytes(path)
    digest = payload_md5(path, data)
    if digest != FASHION_MNIST_MD5[name]:
        raise DataError(
            f"Fashion-MNIST file {path} is corrupt: MD5 {digest} of its contents, expected "
            f"{FASHION_MNIST_MD5[name]}; {_FMNIST_FIX}", param="root")
    return parse_idx(data, path)


@functools.lru_cache(maxsize=2)
def _fashion_mnist(root: str) -> RawData:
    if not os.path.isdir(root):
        raise DataError(f"Fashion-MNIST directory {root} does not exist; {_FMNIST_FIX}",
                        param="root")
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        x = _fmnist_file(root, f"{prefix}-images-idx3-ubyte")
        y = _fmnist_file(root, f"{prefix}-labels-idx1-ubyte")
        xs.append(x[:, None])  # N×1×28×28 view, read-only
        ys.append(y.astype(np.int64))
    mean, std = NORM_STATS["fashion-mnist"]
    out = RawData(xs[0], ys[0], xs[1], ys[1], FASHION_MNIST_CLASSES, 255.0, mean, std)
    _readonly(out.y_train, out.y_test)
    return out


# -- CIFAR -------------------------------------------------------------------------------


def _unpickle(path: str, fix: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"CIFAR file {path} not found; {fix}", param="root")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # official files supplied by the user
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise DataError(f"CIFAR file {path} is unreadable ({type(e).__name__}); {fix}",
                        param="root") from None
    if not isinstance(d, dict):
        raise DataError(f"CIFAR file {path} does not hold a batch dict; {fix}", param="root")
    return d


def _cifar_batch(path: str, label_key: bytes, fix: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path, fix)
    if b"data" not in d or label_key not in d:
        raise DataError(f"CIFAR file {path} lacks the keys data/{label_key.decode()}; {fix}",
                        param="root")
    x = np.asarray(d[b"data"])
    y = np.asarray(d[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
        raise DataError(
            f"CIFAR file {path} has data {x.dtype}{list(x.shape)} and {len(y)} labels, "
            f"expected uint8[N, 3072] and N labels; {fix}", param="root")
    return x.reshape(-1, 3, 32, 32), y


@functools.lru_cache(maxsize=2)
def _cifar(source: str, root: str) -> RawData:
    folder = "cifar-10-batches-py" if source == "cifar10" else "cifar-100-python"
    fix = f"pass root the official {folder} directory"
    if not os.path.isdir(root):
        raise DataError(f"{source} directory {root} does not exist; {fix}", param="root")
    if os.path.isdir(os.path.join(root, folder)):
        root = os.path.join(root, folder)
    if source == "cifar10":
        parts = [_cifar_batch(os.path.join(root, f"data_batch_{i}"), b"labels", fix)
                 for i in range(1, 6)]  # fmt: skip
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = _cifar_batch(os.path.join(root, "test_batch"), b"labels", fix)
        names = CIFAR10_CLASSES
        meta_path = os.path.join(root, "batches.meta")
        if os.path.isfile(meta_path):
            names = _names(_unpickle(meta_path, fix), b"label_names", names)
        num = 10
    else:
        x_train, y_train = _cifar_batch(os.path.join(root, "train"), b"fine_labels", fix)
        x_test, y_test = _cifar_batch(os.path.join(root, "test"), b"fine_labels", fix)
        meta = _unpickle(os.path.join(root, "meta"), fix)
        names = _names(meta, b"fine_label_names", tuple(f"class {i}" for i in range(100)))
        num = 100
    for y, what in ((y_train, "training"), (y_test, "test")):
        if len(y) and (y.min() < 0 or y.max() >= num):
            raise DataError(f"{source} {what} labels outside 0..{num - 1} in {root}; {fix}",
                            param="root")
    if len(names) != num:
        raise DataError(f"{source} metadata in {root} names {len(names)} classes, not {num}")
    mean, std = NORM_STATS[source]
    out = RawData(x_train, y_train, x_test, y_test, names, 255.0, mean, std)
    _readonly(out.x_train, out.y_train, out.x_test, out.y_test)
    return out


def _names(meta: dict, key: bytes, default: tuple[str, ...]) -> tuple[str, ...]:
    names = meta.get(key)
    if names is None:
        return default
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# -- npz ---------------------------------------------------------------------------------


def _npz_images(x: np.ndarray, key: str, path: str) -> tuple[np.ndarray, float]:
    """Validate one image array; return it as N×C×H×W and its scale to [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        first, last = x.shape[1], x.shape[3]
        if last <= 4 < first:
            x = x.transpose(0, 3, 1, 2)
        elif not first <= 4 < last:
            raise DataError(
                f"{key} in {path} has shape {list(x.shape)}: cannot tell the channel axis; "
                "store N×H×W, N×H×W×C or N×C×H×W with C ≤ 4 and H, W > 4"
            )
    else:
        raise DataError(
            f"{key} in {path} has shape {list(x.shape)}; store N×H×W, N×H×W×C or N×C×H×W"
        )
    if x.shape[0] == 0:
        raise DataError(f"{key} in {path} is empty")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x), 255.0
    if np.issubdtype(x.dtype, np.floating):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{key} in {path} contains NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{key} in {path} has float values in [{lo:.3g}, {hi:.3g}]; store floats "
                "in [0, 1] or uint8 in 0..255 (unnormalized)"
            )
        return x, 1.0
    raise DataError(f"{key} in {path} has dtype {x.dtype}; store uint8 or float images")


def _npz_labels(y: np.ndarray, key: str, path: str, n: int) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{key} in {path} has dtype {y.dtype} and shape {list(y.shape)}; "
            "store a 1-D integer array of class indices"
        )
    if len(y) != n:
        raise DataError(f"{key} in {path} has {len(y)} labels for {n} images")
    if y.min() < 0:
        raise DataError(f"{key} in {path} has negative labels; use class indices 0..K-1")
    return y.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _npz(path: str, mtime_ns: int) -> RawData:
    del mtime_ns  # part of the cache key only
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(
                    f"npz file {path} lacks {', '.join(missing)}; it needs arrays {', '.join(keys)}"
                )
            arrays = {k: f[k] for k in keys}
            names = f["class_names"] if "class_names" in f.files else None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/format/pickle errors all mean a bad file
        raise DataError(f"cannot read npz file {path} ({type(e).__name__}: {e})") from None
    x_train, s_train = _npz_images(arrays["x_train"], "x_train", path)
    x_test, s_test = _npz_images(arrays["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:] or s_train != s_test:
        raise DataError(
            f"npz file {path}: x_train {x_train.dtype}{list(x_train.shape[1:])} and x_test "
            f"{x_test.dtype}{list(x_test.shape[1:])} differ in image shape or dtype"
        )
    y_train = _npz_labels(arrays["y_train"], "y_train", path, len(x_train))
    y_test = _npz_labels(arrays["y_test"], "y_test", path, len(x_test))
    num = int(max(y_train.max(), y_test.max())) + 1
    if names is not None:
        if names.ndim != 1 or len(names) != num:
            raise DataError(
                f"class_names in {path} has {names.size} entries but the labels need {num}"
            )
        class_names = tuple(str(n) for n in names)
    else:
        class_names = tuple(str(i) for i in range(num))
    mean, std = _channel_stats(x_train, s_train)
    out = RawData(x_train, y_train, x_test, y_test, class_names, s_train, mean, std)
    _readonly(out.x_train, out.y_train, out.x_test, out.y_test)
    return out


# -- synthetic ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _synthetic(classes: int, chans: int, size: int, n_train: int, n_test: int,
               seed: int) -> RawData:  # fmt: skip
    """Class prototypes (uniform noise) mixed 60/40 with per-example noise, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, chans, size, size, generator=g)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
        x = 0.6 * protos[y] + 0.4 * torch.rand(n, chans, size, size, generator=g)
        return x.numpy().astype(np.float32), y.numpy().astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    mean, std = _channel_stats(x_train, 1.0)
    names = tuple(f"class {i}" for i in range(classes))
    out = RawData(x_train, y_train, x_test, y_test, names, 1.0, mean, std)
    _readonly(out.x_train, out.y_train, out.x_test, out.y_test)
    return out
