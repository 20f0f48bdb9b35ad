"""Data sources by name, eval preprocessing, training augmentation and corruptions.

>>> from geomkit.data import DataSpec, info, load_split
>>> spec = DataSpec("digits", image_size=16)
>>> info(spec)
DataInfo(num_classes=10, in_chans=1, image_size=16, class_names=('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'))
>>> x, y = load_split(spec, "train")
>>> tuple(x.shape), y.dtype
((1437, 1, 16, 16), torch.int64)

The sources, their fixed splits and normalization constants are documented in
:mod:`geomkit.data.sources`; folders of image files (``DataSpec("imagefolder", root=DIR)``)
in :mod:`geomkit.data.imagefolder`, whose :class:`ImageFolderBatches` streams them. The
analysis-data rule: the first N examples of ``load_split(spec, split)``.
"""  # noqa: E501

from __future__ import annotations

import math

import numpy as np
import torch

from geomkit.data.corruptions import CORRUPTIONS, corrupt, corrupt_normalized
from geomkit.data.imagefolder import ImageFolderBatches, decode_bar
from geomkit.data.sources import CIFAR10_CLASSES, DIGITS_CLASSES, FASHION_MNIST_CLASSES, raw_data
from geomkit.data.spec import SOURCES, SPLITS, DataInfo, DataSpec
from geomkit.data.transforms import augment_batch, resize
from geomkit.errors import DataError

__all__ = [
    "CORRUPTIONS",
    "DataInfo",
    "DataSpec",
    "ImageFolderBatches",
    "SOURCES",
    "SPLITS",
    "augment_batch",
    "corrupt",
    "corrupt_normalized",
    "info",
    "list_sources",
    "load_split",
    "subset_indices",
]

# Sources whose shape is known without reading any file: (classes, chans, native size, names).
_FIXED = {
    "digits": (1, 8, DIGITS_CLASSES),
    "fashion-mnist": (1, 28, FASHION_MNIST_CLASSES),
    "cifar10": (3, 32, CIFAR10_CLASSES),
}


def list_sources() -> list[str]:
    """The names accepted as ``DataSpec.source``."""
    return list(SOURCES)


def info(spec: DataSpec) -> DataInfo:
    """Classes, channels, output image size and class names of ``spec``.

    Reads no file for ``digits``, ``fashion-mnist``, ``cifar10`` and ``synthetic``;
    ``cifar100`` and ``npz`` load (and cache) their data; ``imagefolder`` lists its folders
    (3 channels: every image is decoded to RGB; ``image_size`` is the spec's).
    """
    _check_spec(spec)
    if spec.source == "imagefolder":
        names = raw_data(spec).class_names
        return DataInfo(len(names), 3, int(spec.image_size), tuple(names))
    if spec.source in _FIXED:
        chans, size, names = _FIXED[spec.source]
    elif spec.source == "synthetic":
        chans, size = spec.synthetic_chans, spec.synthetic_size
        names = tuple(f"class {i}" for i in range(spec.synthetic_classes))
    else:
        raw = raw_data(spec)
        chans, h, w = raw.x_train.shape[1:]
        size = spec.image_size or _native_size(spec, h, w)
        names = raw.class_names
    return DataInfo(len(names), chans, spec.image_size or size, tuple(names))


def load_split(spec: DataSpec, split: str, *,
               progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``split`` with eval preprocessing, in the source's canonical order.

    Preprocessing: values scaled to [0, 1]; resized to ``spec.image_size`` (bilinear,
    antialiased when shrinking; ``imagefolder``: shorter side, then centre crop); if
    ``spec.normalize``, standardised per channel with the source's training-split mean and
    std (or ``spec.mean_std``'s). No augmentation. For ``split="train"`` with
    ``spec.subset < 1`` only the :func:`subset_indices` examples are kept (still in
    canonical order). Raw arrays are cached per process; each call returns new tensors.

    Args:
        spec: the data spec.
        split: ``"train"`` or ``"test"``.
        progress: ``imagefolder`` only, which decodes every file now: a tqdm bar on stderr
            (``None``: :func:`~geomkit.data.imagefolder.decode_bar`). Larger folders stream instead:
            :class:`ImageFolderBatches`.

    Returns:
        ``(x, y)``: float32 N×C×H×W images and int64 labels of length N.

    Raises:
        DataError: unknown split, missing / corrupt / malformed source files, or (for
            ``imagefolder``) a split that would not fit in the memory available now.
    """
    _check_spec(spec)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if spec.source == "imagefolder":
        return ImageFolderBatches(spec, split, progress=decode_bar(progress)).tensors()
    raw = raw_data(spec)
    x_np, y_np = (raw.x_train, raw.y_train) if split == "train" else (raw.x_test, raw.y_test)
    size = spec.image_size or _native_size(spec, *x_np.shape[2:])
    if split == "train" and spec.subset < 1.0:
        keep = subset_indices(y_np, spec.subset, spec.subset_seed)
        x_np, y_np = x_np[keep], y_np[keep]
    # One float32 copy, then in-place arithmetic: no further 4-byte-per-pixel temporaries.
    x = torch.from_numpy(np.array(x_np, dtype=np.float32))
    y = torch.from_numpy(np.array(y_np, dtype=np.int64))
    if raw.scale != 1.0:
        x.div_(raw.scale)
    x = resize(x, size)
    if spec.normalize:
        mean = torch.tensor(raw.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(raw.std, dtype=x.dtype).view(1, -1, 1, 1)
        x.sub_(mean).div_(std)
    return x.contiguous(), y


def subset_indices(labels: np.ndarray | torch.Tensor, fraction: float, seed: int) -> np.ndarray:
    r"""Sorted indices of a class-balanced random ``fraction`` of ``labels``.

    From each class with :math:`n_c` examples, :math:`k_c = \max(1, \lfloor f n_c + 1/2
    \rfloor)` are drawn without replacement by a ``torch.Generator`` seeded with ``seed``
    (classes in increasing label order, one ``randperm`` each); the union is returned in
    increasing order, so the canonical order is kept.
    """
    y = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"subset must be a fraction in (0, 1], got {fraction!r}")
    if fraction == 1.0:
        return np.arange(len(y))
    g = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, math.floor(fraction * len(idx) + 0.5))
        pick = torch.randperm(len(idx), generator=g)[:k].numpy()
        keep.append(idx[pick])
    return np.sort(np.concatenate(keep))


def _check_spec(spec: DataSpec) -> None:
    if not isinstance(spec, DataSpec):
        raise DataError(
            f"expected a geomkit.data.DataSpec, got {type(spec).__name__}; "
            "build one with DataSpec(source=...) or DataSpec.from_dict(d)"
        )


def _native_size(spec: DataSpec, h: int, w: int) -> int:
    if h != w:
        raise DataError(
            f"{spec.source} images are {h}×{w}, not square; set image_size to resize them"
        )
    return int(h)
