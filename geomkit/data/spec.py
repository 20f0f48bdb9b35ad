"""The data specification (:class:`DataSpec`) and the description of a source (:class:`DataInfo`).

A :class:`DataSpec` names a data source and its preprocessing; it is stored in every
checkpoint (``to_dict``) so that the analysis tools rebuild exactly the same examples
(``from_dict``). It holds only plain values, is hashable and validates itself on
construction, raising :class:`~geomkit.errors.DataError` for bad values.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, fields
from typing import Any

from geomkit.errors import DataError

#: Source names accepted by :class:`DataSpec` (``list_sources()`` returns them).
SOURCES: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "npz", "synthetic",
                            "imagefolder")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "sklearn-digits": "digits",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
}

SPLITS: tuple[str, ...] = ("train", "test")

#: Largest ``image_size`` and ``synthetic_size`` accepted, in pixels: one float32 image
#: channel of 4096×4096 is 64 MiB, a batch of 64 RGB images 12 GiB before any model runs.
MAX_IMAGE_SIZE = 4096

#: Largest synthetic source (prototypes plus both splits, float32) that may be generated.
MAX_SYNTHETIC_BYTES = 16 << 30

#: Examples per (train, test) split and channels of the sources whose shape is fixed
#: (the facts documented in :mod:`geomkit.data.sources`): enough to size a split
#: before reading it.
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "digits": (1437, 360),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
}
_CHANS = {"digits": 1, "fashion-mnist": 1, "cifar10": 3, "cifar100": 3}
_NATIVE_SIZE = {"digits": 8, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32}

_FLOAT32 = 4

#: ``image_size`` of the ``imagefolder`` source when none is given (its images have no
#: common native size): the ImageNet evaluation size.
IMAGEFOLDER_SIZE = 224

#: Named per-channel (mean, std) constants of :attr:`DataSpec.mean_std`, in [0, 1] units.
MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

#: Seeds torch's generators accept (``torch.manual_seed`` overflows outside).
SEED_RANGE = (-(2**63), 2**63 - 1)


def format_bytes(n: float) -> str:
    """``123 B``, ``1.5 KiB``, ``37 GiB``, ``7.2 TiB``: two significant digits below 10."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            break
        n /= 1024
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.2g} {unit}" if abs(n) < 10 else f"{n:.0f} {unit}"


def available_memory() -> int | None:
    """Bytes of RAM available to a new allocation now (Linux ``MemAvailable``, else the
    free physical pages); ``None`` where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def check_fits(nbytes: int, what: str, *, param: str | None = None,
               available: int | None = None) -> None:
    """Raise :class:`DataError` when ``nbytes`` exceeds the memory available now.

    ``what`` completes "``what`` needs ~X": it names the value and what it sizes
    (``"image_size 2048 (1437 float32 train images of 1×2048×2048)"``).
    """
    avail = available_memory() if available is None else available
    if avail is not None and nbytes > avail:
        raise DataError(
            f"{what} needs ~{format_bytes(nbytes)} of memory, more than the "
            f"{format_bytes(avail)} available now; choose a smaller size",
            param=param,
        )


@dataclass(frozen=True)
class DataSpec:
    """A data source plus its preprocessing, JSON-able and hashable.

    Attributes:
        source: one of :data:`SOURCES` (``digits`` is the embedded default).
        root: directory (``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder``) or
            file (``npz``); ``None`` = the source's default (only ``fashion-mnist`` has
            one: ``/usr/share/datasets/fashion-mnist``).
        image_size: output side length in pixels (square); ``None`` = native. At most
            :data:`MAX_IMAGE_SIZE`; :meth:`check_memory` also refuses a size whose split
            would not fit in the memory available.
        normalize: subtract a per-channel mean and divide by a per-channel standard
            deviation: :attr:`mean_std`'s, else those of the source's training split (see
            ``geomkit.data.sources``; ``imagefolder``: ImageNet's). False: values in [0, 1].
        augment: apply :func:`geomkit.data.augment_batch` during training (never in
            :func:`geomkit.data.load_split`).
        subset: fraction in (0, 1] of the training split kept, class-balanced.
        subset_seed: seed choosing the kept training examples.
        hflip: horizontal flip in the augmentation; ``None`` = the source's default
            (on for ``fashion-mnist``/``cifar*``/``imagefolder``, off for
            ``digits``/``npz``/``synthetic``).
        synthetic_classes, synthetic_chans, synthetic_size, synthetic_train,
        synthetic_test, synthetic_seed: shape and seed of the ``synthetic`` source
            (ignored by the others).
        mean_std: the normalization constants when ``normalize`` is true, any source:
            ``None`` = the source's own (training-split statistics; ``imagefolder``:
            ``imagenet``), ``"imagenet"`` (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225),
            ``"inception"`` 0.5 / 0.5, explicit ``"M1,M2,M3/S1,S2,S3"`` (or a
            ``(means, stds)`` pair, stored as that string: a timm model's
            ``pretrained_cfg`` mean/std), one value or one per channel. ``"none"`` is
            ``normalize=False`` (stored so: ``normalize`` false, ``mean_std`` None).
        split_dirs: ``imagefolder`` only (see :mod:`geomkit.data.imagefolder`): the
            sub-folders of ``root`` holding the train and the test split, e.g.
            ``("train", "val")``; ``()`` = ``root`` itself holds the class folders and
            serves both splits; ``None`` = detect: ``("train", "val")`` or ``("train",
            "test")`` when those are exactly ``root``'s sub-folders, else ``()``.

    ``image_size`` of ``imagefolder`` defaults to :data:`IMAGEFOLDER_SIZE` (224), stored
    in the spec: its images are resized (shorter side) and centre-cropped to it.
    """

    source: str = "digits"
    root: str | None = None
    image_size: int | None = None
    normalize: bool = True
    augment: bool = False
    subset: float = 1.0
    subset_seed: int = 0
    hflip: bool | None = None
    synthetic_classes: int = 10
    synthetic_chans: int = 1
    synthetic_size: int = 8
    synthetic_train: int = 256
    synthetic_test: int = 64
    synthetic_seed: int = 0
    mean_std: str | None = None
    split_dirs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        src = str(self.source).strip().lower()
        src = _ALIASES.get(src, src)
        if src not in SOURCES:
            raise DataError(
                f"unknown data source {self.source!r}; valid sources: {', '.join(SOURCES)}",
                param="source",
            )
        object.__setattr__(self, "source", src)
        if self.root is not None:
            if not isinstance(self.root, (str, os.PathLike)):
                raise DataError(f"data root must be a path, got {self.root!r}")
            object.__setattr__(self, "root", os.fspath(self.root))
        if self.image_size is None and src == "imagefolder":
            object.__setattr__(self, "image_size", IMAGEFOLDER_SIZE)
        if self.image_size is not None:
            self._set_int("image_size", minimum=1)
            _check_side("image_size", self.image_size)
        for name in ("normalize", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"{name} must be true or false, got {getattr(self, name)!r}",
                                param=name)
        if self.hflip is not None and not isinstance(self.hflip, bool):
            raise DataError(f"hflip must be true, false or null, got {self.hflip!r}", param="hflip")
        real = isinstance(self.subset, numbers.Real) and not isinstance(self.subset, bool)
        subset = float(self.subset) if real else math.nan  # "0.5" (a string) is refused too
        if not 0.0 < subset <= 1.0:
            raise DataError(f"subset must be a fraction in (0, 1], got {self.subset!r}",
                            param="subset")
        object.__setattr__(self, "subset", subset)
        self._set_int("subset_seed", *SEED_RANGE)
        self._set_int("synthetic_classes", minimum=2)
        self._set_int("synthetic_chans", minimum=1)
        self._set_int("synthetic_size", minimum=1)
        self._set_int("synthetic_train", minimum=1)
        self._set_int("synthetic_test", minimum=1)
        self._set_int("synthetic_seed", *SEED_RANGE)
        _check_side("synthetic_size", self.synthetic_size)
        self._set_mean_std()
        self._set_split_dirs(src)
        if src == "synthetic":
            n = self.synthetic_classes + self.synthetic_train + self.synthetic_test
            per = self.synthetic_chans * self.synthetic_size**2 * _FLOAT32
            if n * per > MAX_SYNTHETIC_BYTES:
                raise DataError(
                    f"synthetic_train {self.synthetic_train} + synthetic_test "
                    f"{self.synthetic_test} (+ {self.synthetic_classes} prototypes) images of "
                    f"{self.synthetic_chans}×{self.synthetic_size}×{self.synthetic_size} need "
                    f"~{format_bytes(n * per)} of float32 memory, above the limit of "
                    f"{format_bytes(MAX_SYNTHETIC_BYTES)} for the synthetic source",
                    param="synthetic_train",
                )

    def _set_mean_std(self) -> None:
        value = self.mean_std
        if value is None:
            return
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "none":
                object.__setattr__(self, "normalize", False)
                object.__setattr__(self, "mean_std", None)
                return
            if text in MEAN_STD:
                canon = text
            else:
                canon = _format_mean_std(*parse_mean_std(value))
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            canon = _format_mean_std(*_mean_std_pair(value[0], value[1], value))
        else:
            raise DataError(f"mean_std must be a name ({', '.join([*MEAN_STD, 'none'])}), "
                            f"'M1,M2,M3/S1,S2,S3' or a (means, stds) pair, got {value!r}",
                            param="mean_std")
        if not self.normalize:
            raise DataError(f"mean_std {canon!r} normalizes, but normalize is false; drop one "
                            "of them", param="mean_std")
        object.__setattr__(self, "mean_std", canon)

    def _set_split_dirs(self, src: str) -> None:
        value = self.split_dirs
        if value is None:
            return
        if src != "imagefolder":
            raise DataError(f"split_dirs applies to the imagefolder source only, not {src}",
                            param="split_dirs")
        if isinstance(value, str):
            value = () if value.strip().lower() in ("", "flat", "none") else value.split(",")
        if not isinstance(value, (tuple, list)) or len(value) not in (0, 2):
            raise DataError(f"split_dirs must be two folder names (train, test), e.g. "
                            f"('train', 'val'), or () for one folder serving both splits; got "
                            f"{self.split_dirs!r}", param="split_dirs")
        names = []
        for v in value:
            v = os.fspath(v).strip() if isinstance(v, (str, os.PathLike)) else v
            if not isinstance(v, str) or not v or os.path.isabs(v) or ".." in v.split("/"):
                raise DataError(f"split_dirs holds {v!r}: give folder names relative to "
                                "root, e.g. ('train', 'val')", param="split_dirs")
            names.append(v)
        object.__setattr__(self, "split_dirs", tuple(names))

    def _set_int(self, name: str, minimum: int | None = None,
                 maximum: int | None = None) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise DataError(f"{name} must be an integer, got {value!r}", param=name)
        if minimum is not None and value < minimum:
            raise DataError(f"{name} must be at least {minimum}, got {value}", param=name)
        if maximum is not None and value > maximum:
            raise DataError(f"{name} must be at most {maximum}, got {value}", param=name)
        object.__setattr__(self, name, int(value))

    def split_shape(self, split: str = "train") -> tuple[int, int, int] | None:
        """``(examples, channels, side)`` that :func:`geomkit.data.load_split` returns for
        ``split``, known without reading any file for every source but ``npz`` (``None``;
        ``imagefolder`` lists its folders, opening no image)."""
        if self.source == "imagefolder":
            from geomkit.data.imagefolder import folder_index

            n, chans, native = len(folder_index(self).split(split)), 3, self.image_size
        elif self.source == "synthetic":
            n = self.synthetic_train if split == "train" else self.synthetic_test
            chans, native = self.synthetic_chans, self.synthetic_size
        elif self.source in SPLIT_SIZES:
            n = SPLIT_SIZES[self.source][0 if split == "train" else 1]
            chans, native = _CHANS[self.source], _NATIVE_SIZE[self.source]
        else:
            return None
        if split == "train" and self.subset < 1.0:
            n = max(1, round(self.subset * n))  # class-balanced: about this many
        return n, chans, self.image_size or native

    def check_memory(self, split: str = "train", available: int | None = None) -> None:
        """Refuse, before anything is read or built, a spec whose ``split`` would not fit in
        the memory available now (the images :func:`geomkit.data.load_split` returns, in
        float32).

        Raises:
            DataError: with the size and the memory it needs (``param`` names the field).
        """
        shape = self.split_shape(split)
        if shape is None:
            return
        n, chans, side = shape
        if self.image_size is not None:
            what, param = f"image_size {self.image_size}", "image_size"
        else:
            what, param = f"the {self.source} source", None
            if self.source == "synthetic":
                what, param = f"synthetic_{split} {n}", f"synthetic_{split}"
        check_fits(n * chans * side * side * _FLOAT32,
                   f"{what} ({n} float32 {split} images of {chans}×{side}×{side})",
                   param=param, available=available)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict (``DataSpec.from_dict(s.to_dict()) == s``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """Rebuild a spec from :meth:`to_dict` output; missing keys take their defaults.

        Raises:
            DataError: ``d`` is not a dict or has keys that are not fields.
        """
        if not isinstance(d, dict):
            raise DataError(f"a data spec must be a dict, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise DataError(
                f"unknown data spec key(s) {', '.join(map(str, unknown))}; "
                f"valid keys: {', '.join(names)}"
            )
        return cls(**d)

    def replace(self, **changes: Any) -> DataSpec:
        """A copy with some fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


def parse_mean_std(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(means, stds)`` of a :attr:`DataSpec.mean_std` value: a name of :data:`MEAN_STD`
    or ``"M1,M2,M3/S1,S2,S3"``.

    Raises:
        DataError: an unknown name, unparsable numbers, counts that differ, a std <= 0.
    """
    key = text.strip().lower()
    if key in MEAN_STD:
        return MEAN_STD[key]
    mean, sep, std = text.partition("/")
    try:
        if not sep:
            raise ValueError
        m = [float(v) for v in mean.split(",")]
        s = [float(v) for v in std.split(",")]
    except ValueError:
        raise DataError(f"unknown mean_std {text!r}; valid: {', '.join([*MEAN_STD, 'none'])} "
                        "or explicit 'M1,M2,M3/S1,S2,S3'", param="mean_std") from None
    return _mean_std_pair(m, s, text)


def _mean_std_pair(mean: Any, std: Any, given: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        m = tuple(float(v) for v in (mean if isinstance(mean, (tuple, list)) else [mean]))
        s = tuple(float(v) for v in (std if isinstance(std, (tuple, list)) else [std]))
    except (TypeError, ValueError):
        m = s = ()
    if not m or len(m) != len(s) or not all(math.isfinite(v) for v in m + s) or min(s) <= 0:
        raise DataError(f"mean_std {given!r} must hold as many finite means as positive stds "
                        "(one, or one per channel)", param="mean_std")
    return m, s


def _format_mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    return ",".join(map(repr, mean)) + "/" + ",".join(map(repr, std))


def _check_side(name: str, side: int) -> None:
    if side > MAX_IMAGE_SIZE:
        one = side * side * _FLOAT32
        raise DataError(
            f"{name} {side} needs ~{format_bytes(one)} per float32 image channel "
            f"(~{format_bytes(64 * 3 * one)} for a batch of 64 RGB images), above the limit of "
            f"{MAX_IMAGE_SIZE} px ({format_bytes(MAX_IMAGE_SIZE**2 * _FLOAT32)} per channel)",
            param=name,
        )


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a source after preprocessing.

    Attributes:
        num_classes: number of classes (labels are ``0 .. num_classes - 1``).
        in_chans: image channels.
        image_size: side length of the (square) images returned by ``load_split``.
        class_names: one name per class.
    """

    num_classes: int
    in_chans: int
    image_size: int
    class_names: tuple[str, ...]
