"""The ``imagefolder`` source: a directory of class sub-folders of image files.

>>> from geomkit.data import DataSpec
>>> spec = DataSpec("imagefolder", root="imgs", image_size=224)  # doctest: +SKIP
>>> x, y = ImageFolderBatches(spec, "train", n=4096, batch_size=64).tensors()  # doctest: +SKIP

**Layout.** ``root/<class>/<file>`` with files ending ``.jpg``, ``.jpeg``, ``.png``,
``.bmp`` or ``.webp`` (any case; nested folders inside a class folder count, names
starting with ``.`` are skipped, other files ignored) serves both splits; or one
sub-folder per split, ``root/train/<class>/...`` and ``root/val/<class>/...``
(``DataSpec.split_dirs``; ``None`` detects it when ``root``'s only sub-folders are
``train`` and ``val``, or ``train`` and ``test``). The classes are the sorted names of the
train split's class folders; a test-split class that the train split lacks is an error,
as are a missing folder, a folder without class sub-folders, an empty class folder and a
single class.

**Canonical order** (the order of :func:`geomkit.data.load_split` and hence "the first N
examples"): each class's files sorted by their path inside the class folder, then
round-robin over the classes in label order: the first file of every class, then the
second of every class, ... (a class with fewer files drops out when it runs out). The
first K examples of a K-class folder are K different classes.

**Preprocessing** (evaluation): Pillow decodes each file (the first frame; no EXIF
rotation) to RGB: grey, palette, alpha (dropped), CMYK, ... by Pillow's ``convert``,
16-bit grey (``I;16``/``I``) scaled by 1/65535, so every image has 3 channels. Values in
[0, 1] (float32), resized with torch (bilinear, antialiased when shrinking) so that the
shorter side is ``image_size`` (the longer one rounded half up), then centre-cropped to
``image_size`` × ``image_size`` (offset ``(side - image_size) // 2``). Normalized with
``DataSpec.mean_std``'s constants, ImageNet's by default (``normalize=False``: [0, 1]).
A file Pillow cannot decode raises :class:`~geomkit.errors.DataError` naming it.

**Memory.** :func:`geomkit.data.load_split` decodes a whole split into one tensor,
refused up front when it would not fit in the memory available. :class:`ImageFolderBatches`
streams the same examples, decoded batch by batch on a few threads (one batch decoded
ahead), so a pass holds about two batches whatever N; :func:`analysis_data` -- what
:meth:`geomkit.checkpoint.Checkpoint.analysis_data` returns -- gives tensors up to
:data:`STREAM_ABOVE_BYTES` of float32 images and the stream above. Streaming costs time,
not memory: every pass over the data (each Hessian-vector product, each landscape point)
decodes the files again, and a measurement counts the examples of an iterable with one
pass of its own first (about 4.7 ms per 400×300 JPEG at 224 px on one CPU core).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geomkit.data.spec import MEAN_STD, SPLITS, DataSpec, check_fits
from geomkit.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "STREAM_ABOVE_BYTES",
    "STREAM_BATCH",
    "FolderIndex",
    "FolderSplit",
    "ImageFolderBatches",
    "analysis_data",
    "decode_bar",
    "decode_image",
    "decode_progress",
    "folder_index",
]

#: File name endings read as images (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".webp")

#: :func:`analysis_data` returns tensors while the N float32 images take at most this many
#: bytes (1 GiB: 1783 RGB images at 224 px), the batch stream above. A fixed bound, not
#: the memory free now, so one command makes the same choice (and the same numbers) on
#: every machine.
STREAM_ABOVE_BYTES = 1 << 30

#: Examples per batch of the stream :func:`analysis_data` returns (37 MiB at 224 px).
STREAM_BATCH = 64

#: Decoding threads when none are given (Pillow and torch release the GIL while they work).
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

_FIX = "pass root a directory holding one sub-folder of images per class"


# -- the file lists --------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderSplit:
    """One split's files in canonical order and their labels.

    Attributes:
        directory: the folder holding the class folders.
        files: absolute paths, in canonical order.
        labels: int64 class indices (read-only), one per file.
    """

    directory: str
    files: tuple[str, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class FolderIndex:
    """What :func:`geomkit.data.sources.raw_data` returns for ``imagefolder``: the file lists
    of both splits (no pixels), the class names and the normalization constants.

    Attributes:
        root: the absolute ``root``.
        split_dirs: the split sub-folders used, ``()`` when ``root`` serves both splits.
        class_names: sorted class folder names of the train split (label order).
        train, test: the splits (the same object for a single folder).
        mean, std: per-channel normalization constants ([0, 1] units).
        scale: 1 (decoded values are already in [0, 1]).
    """

    root: str
    split_dirs: tuple[str, ...]
    class_names: tuple[str, ...]
    train: FolderSplit
    test: FolderSplit
    mean: tuple[float, ...] = MEAN_STD["imagenet"][0]
    std: tuple[float, ...] = MEAN_STD["imagenet"][1]
    scale: float = 1.0

    def split(self, name: str) -> FolderSplit:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return self.train if name == "train" else self.test


def folder_index(spec: DataSpec) -> FolderIndex:
    """The :class:`FolderIndex` of an ``imagefolder`` spec, from directory listings only
    (no image is opened); cached until a listed folder changes (or :func:`clear_cache`).

    Raises:
        DataError: a missing root or split folder, no class folders, an empty class folder,
            one class, or a test class the train split lacks.
    """
    if spec.source != "imagefolder":
        raise DataError(f"folder_index needs an imagefolder spec, not {spec.source}")
    if spec.root is None:
        raise DataError(f"the imagefolder source needs its directory; {_FIX}", param="root")
    root = os.path.abspath(spec.root)
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DataError(f"imagefolder directory {root} {what}; {_FIX}", param="root")
    dirs = _split_dirs(root, spec.split_dirs)
    signature = tuple(_signature(os.path.join(root, d)) for d in (dirs or ("",)))
    return _index(root, dirs, signature)


def clear_cache() -> None:
    """Forget the cached folder listings."""
    _index.cache_clear()


def _visible_dirs(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return sorted((e for e in it if not e.name.startswith(".") and e.is_dir()),
                          key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list {directory} ({e.strerror or type(e).__name__})",
                        param="root") from None


def _split_dirs(root: str, given: tuple[str, ...] | None) -> tuple[str, ...]:
    if given is None:
        names = {e.name for e in _visible_dirs(root)}
        for test in ("val", "test"):
            if names == {"train", test}:
                return ("train", test)
        if "train" in names:  # train/ beside val/ and test/: which is the test split?
            raise DataError(f"{root} holds split folders ({', '.join(sorted(names))}), not "
                            "only train and val or test: name them with split_dirs (e.g. "
                            "train,val), or pass split_dirs () if these are class folders",
                            param="split_dirs")
        return ()
    for d in given:
        path = os.path.join(root, d)
        if not os.path.isdir(path):
            raise DataError(f"split folder {path} does not exist (split_dirs "
                            f"{','.join(given)}); name {root}'s train and test sub-folders, "
                            "or pass split_dirs () when root holds the class folders",
                            param="split_dirs")
    return tuple(given)


def _signature(directory: str) -> tuple[Any, ...]:
    """Modification times of ``directory`` and its class folders: a new or removed file or
    class changes one of them (files deeper in a class folder need :func:`clear_cache`)."""
    try:
        own = os.stat(directory).st_mtime_ns
        return (own, *((e.name, e.stat().st_mtime_ns) for e in _visible_dirs(directory)))
    except OSError as e:
        raise DataError(f"cannot list {directory} ({e.strerror or type(e).__name__})",
                        param="root") from None


def _images_under(folder: str) -> list[str]:
    """Image files anywhere under ``folder``, sorted by their path relative to it."""
    found = []
    for here, subdirs, files in os.walk(folder, onerror=_raise_listing):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for f in files:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(here, f), folder))
    found.sort(key=lambda p: p.split(os.sep))
    return [os.path.join(folder, p) for p in found]


def _raise_listing(e: OSError) -> None:
    raise DataError(f"cannot list {e.filename} ({e.strerror or type(e).__name__})",
                    param="root")


def _scan(directory: str, known: tuple[str, ...] | None) -> tuple[tuple[str, ...], FolderSplit]:
    classes = [e.name for e in _visible_dirs(directory)]
    exts = "/".join(IMAGE_EXTENSIONS)
    if not classes:
        loose = _images_under(directory)
        held = f"{len(loose)} images but no class folders" if loose else "no class folders"
        raise DataError(f"{directory} holds {held}; put each class's images ({exts}) in "
                        f"{directory}/<class>/", param="root")
    per_class = []
    for c in classes:
        files = _images_under(os.path.join(directory, c))
        if not files:
            raise DataError(f"class folder {os.path.join(directory, c)} holds no images "
                            f"({exts}); add some or remove the folder", param="root")
        per_class.append(files)
    if known is None:
        if len(classes) < 2:
            raise DataError(f"{directory} has one class folder ({classes[0]}); a classifier "
                            "needs at least 2 classes", param="root")
        names = tuple(classes)
        label_of = list(range(len(classes)))
    else:
        index = {c: i for i, c in enumerate(known)}
        missing = [c for c in classes if c not in index]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(f"class {missing[0]!r}{more} of {directory} is not among the "
                            f"{len(known)} classes of the train split; a test class needs "
                            "a train folder of the same name", param="root")
        names = known
        label_of = [index[c] for c in classes]
    files, labels = [], []
    for r in range(max(len(f) for f in per_class)):  # round-robin over the classes
        for lab, f in zip(label_of, per_class, strict=True):
            if r < len(f):
                files.append(f[r])
                labels.append(lab)
    y = np.asarray(labels, dtype=np.int64)
    y.setflags(write=False)
    return names, FolderSplit(directory, tuple(files), y)


@functools.lru_cache(maxsize=8)
def _index(root: str, dirs: tuple[str, ...], signature: tuple[Any, ...]) -> FolderIndex:
    del signature  # part of the cache key only
    if not dirs:
        names, split = _scan(root, None)
        return FolderIndex(root, dirs, names, split, split)
    names, train = _scan(os.path.join(root, dirs[0]), None)
    _, test = _scan(os.path.join(root, dirs[1]), names)
    return FolderIndex(root, dirs, names, train, test)


# -- decoding --------------------------------------------------------------------------------


def decode_image(path: str, size: int) -> torch.Tensor:
    """One file as a float32 3×``size``×``size`` tensor in [0, 1]: decoded to RGB, shorter
    side resized to ``size``, centre-cropped (the module's preprocessing, before
    normalization).

    Raises:
        DataError: Pillow cannot open, decode or convert the file (the message names it).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            rgb = _rgb(img, path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any Pillow failure is an unreadable file
        text = " ".join(str(e).split())[:120]
        raise DataError(f"cannot decode image {path} ({type(e).__name__}"
                        f"{': ' + text if text else ''}); replace or remove the file") from None
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    h, w = x.shape[1:]
    if h <= w:
        nh, nw = size, max(size, (w * size + h // 2) // h)
    else:
        nh, nw = max(size, (h * size + w // 2) // w), size
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=nh < h or nw < w)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size]


def _rgb(img: Any, path: str) -> np.ndarray:
    """H×W×3 pixels: uint8 for 8-bit modes, float32 in [0, 1] for 16-bit grey."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.array(img, dtype=np.float32) / 65535.0
        np.clip(a, 0.0, 1.0, out=a)
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow's own advice for palette transparency
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as e:
            raise DataError(f"cannot convert image {path} of mode {img.mode} to RGB ({e}); "
                            "save it as RGB or greyscale") from None
    return np.array(img, dtype=np.uint8)


def _decode_chunks(paths: Sequence[str], size: int, chunk: int,
                   workers: int) -> Iterator[list[torch.Tensor]]:
    """The decoded images of ``paths`` in chunks of ``chunk``, the next chunk decoding on
    ``workers`` threads while the caller uses this one."""
    if workers <= 1:
        for s in range(0, len(paths), chunk):
            yield [decode_image(p, size) for p in paths[s : s + chunk]]
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geomkit-decode")
    try:
        def submit(s: int) -> list[Any]:
            return [pool.submit(decode_image, p, size) for p in paths[s : s + chunk]]

        pending = submit(0)
        for s in range(0, len(paths), chunk):
            ahead = submit(s + chunk) if s + chunk < len(paths) else []
            yield [f.result() for f in pending]
            pending = ahead
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- the examples ----------------------------------------------------------------------------


class ImageFolderBatches:
    """The first ``n`` examples of ``load_split(spec, split)`` as decoded ``(x, y)`` batches.

    Re-iterable (every pass decodes the files again, so memory stays at about two batches
    whatever ``n``); ``len()`` is the number of examples (labels are known without
    decoding). Any geomkit measurement takes it as its data (an iterable of batches), and
    :meth:`tensors` gives the same examples as one pair of tensors.

    Args:
        spec: an ``imagefolder`` :class:`~geomkit.data.DataSpec` (its ``subset`` applies
            to the train split, as in ``load_split``; ``augment`` never does).
        split: ``"train"`` or ``"test"``.
        n: the first ``n`` examples; ``None`` = the whole split.
        batch_size: examples per batch (the last one may be smaller).
        workers: decoding threads (default :data:`DEFAULT_WORKERS`; 0 or 1 = this thread).
        progress: a tqdm bar on stderr per pass.

    Raises:
        DataError: bad layout (see :func:`folder_index`), ``n`` < 1 or larger than the split.
    """

    def __init__(self, spec: DataSpec, split: str = "train", n: int | None = None,
                 batch_size: int = STREAM_BATCH, *, workers: int | None = None,
                 progress: bool = False) -> None:
        if not isinstance(spec, DataSpec) or spec.source != "imagefolder":
            raise DataError("ImageFolderBatches needs a DataSpec of the imagefolder source")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}",
                            param="batch_size")
        part = folder_index(spec).split(split)
        files, labels = part.files, part.labels
        if split == "train" and spec.subset < 1.0:
            from geomkit.data import subset_indices

            keep = subset_indices(labels, spec.subset, spec.subset_seed)
            files, labels = tuple(files[i] for i in keep), labels[keep]
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise DataError(f"the number of examples must be an integer >= 1, got {n!r}",
                                param="n")
            if n > len(files):
                raise DataError(f"asked for {n} {split} examples but {part.directory} has "
                                f"only {len(files)}", param="n")
            files, labels = files[:n], labels[:n]
        self.spec = spec
        self.split = split
        self.files: tuple[str, ...] = tuple(files)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.workers = DEFAULT_WORKERS if workers is None else max(int(workers), 0)
        self.progress = bool(progress)
        self._stats = _normalization(spec)

    @property
    def num_examples(self) -> int:
        """The number of examples (also ``len()``)."""
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = int(self.spec.image_size)
        return (3, size, size)

    @property
    def nbytes(self) -> int:
        """Bytes of all the examples as one float32 tensor (:meth:`tensors`)."""
        c, h, w = self.image_shape
        return len(self.files) * c * h * w * 4

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"ImageFolderBatches({self.spec.root!r}, split={self.split!r}, "
                f"n={len(self)}, batch_size={self.batch_size}, image_size={self.spec.image_size})")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bar = self._bar()
        chunks = _decode_chunks(self.files, self.image_shape[1], self.batch_size, self.workers)
        try:
            s = 0
            for imgs in chunks:
                x = self._normalize(torch.stack(imgs))
                y = self.labels[s : s + len(imgs)]
                s += len(imgs)
                bar.update(len(imgs))
                yield x, y
        finally:  # a consumer that stops early (the first-N cut) stops the decoding now
            chunks.close()
            bar.close()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All the examples as float32 N×3×S×S images and int64 labels (new tensors).

        Raises:
            DataError: they would not fit in the memory available now (checked first).
        """
        c, h, w = self.image_shape
        n = len(self.files)
        check_fits(self.nbytes, f"image_size {h} ({n} float32 {self.split} images of "
                   f"{c}×{h}×{w})", param="image_size")
        x = torch.empty(n, c, h, w, dtype=torch.float32)
        bar = self._bar()
        try:
            i = 0
            for imgs in _decode_chunks(self.files, h, self.batch_size, self.workers):
                for img in imgs:
                    x[i].copy_(img)
                    i += 1
                bar.update(len(imgs))
        finally:
            bar.close()
        return self._normalize(x), self.labels.clone()

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self._stats is not None:
            mean, std = self._stats
            x.sub_(mean).div_(std)
        return x

    def _bar(self) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=len(self.files), desc=f"decode {self.split}", unit="img",
                    leave=False, file=sys.stderr, disable=not self.progress)


def _normalization(spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not spec.normalize:
        return None
    from geomkit.data.sources import raw_data

    raw = raw_data(spec)  # mean_std's constants, else ImageNet's
    return (torch.tensor(raw.mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(raw.std, dtype=torch.float32).view(1, -1, 1, 1))


#: The decoding bar's setting inside :func:`decode_progress` (None: no block is active).
_DECODE_PROGRESS: ContextVar[bool | None] = ContextVar("geomkit_decode_progress", default=None)


@contextmanager
def decode_progress(enabled: bool) -> Iterator[None]:
    """Within the block, image decoding shows its bar only if ``enabled``, also where the
    decode happens deep inside a measurement (``ck.analysis_data``): how ``--no-progress``
    reaches it."""
    token = _DECODE_PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _DECODE_PROGRESS.reset(token)


def decode_bar(progress: bool | None) -> bool:
    """Whether to draw the decoding bar: ``progress`` when given, else the active
    :func:`decode_progress` block's setting, else whether stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    active = _DECODE_PROGRESS.get()
    return sys.stderr.isatty() if active is None else active


def analysis_data(spec: DataSpec, split: str = "train", n: int | None = None, *,
                  max_bytes: int | None = None, batch_size: int | None = None,
                  progress: bool | None = None) -> tuple[Any, torch.Tensor | None]:
    """The first ``n`` examples of ``split`` as measurements take them: ``(x, y)`` tensors
    while their float32 images take at most ``max_bytes`` (default
    :data:`STREAM_ABOVE_BYTES`), else ``(ImageFolderBatches, None)`` -- a data source plus
    no separate targets, the ``(data, targets)`` pair every measurement accepts; ``len()``
    of its first element is the number of examples either way.

    ``batch_size``: of the stream (default :data:`STREAM_BATCH`); ``progress``: a decoding
    bar on stderr (``None``: as :func:`decode_bar` decides).
    """
    batches = ImageFolderBatches(spec, split, n, batch_size or STREAM_BATCH,
                                 progress=decode_bar(progress))
    bound = STREAM_ABOVE_BYTES if max_bytes is None else max_bytes
    if batches.nbytes <= bound:
        return batches.tensors()
    return batches, None

