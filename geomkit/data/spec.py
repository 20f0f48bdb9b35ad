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
SOURCES: tuple[str, ...] = ("digits", "fashion-mnist", "cifar10", "cifar100", "npz", "synthetic")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "sklearn-digits": "digits",
}

SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class DataSpec:
    """A data source plus its preprocessing, JSON-able and hashable.

    Attributes:
        source: one of :data:`SOURCES` (``digits`` is the embedded default).
        root: directory (``fashion-mnist``, ``cifar10``, ``cifar100``) or file (``npz``);
            ``None`` = the source's default (only ``fashion-mnist`` has one:
            ``/usr/share/datasets/fashion-mnist``).
        image_size: output side length in pixels (square); ``None`` = native.
        normalize: subtract the per-channel mean and divide by the per-channel standard
            deviation of the source's training split (see ``geomkit.data.sources``).
        augment: apply :func:`geomkit.data.augment_batch` during training (never in
            :func:`geomkit.data.load_split`).
        subset: fraction in (0, 1] of the training split kept, class-balanced.
        subset_seed: seed choosing the kept training examples.
        hflip: horizontal flip in the augmentation; ``None`` = the source's default
            (on for ``fashion-mnist``/``cifar*``, off for ``digits``/``npz``/``synthetic``).
        synthetic_classes, synthetic_chans, synthetic_size, synthetic_train,
        synthetic_test, synthetic_seed: shape and seed of the ``synthetic`` source
            (ignored by the others).
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

    def __post_init__(self) -> None:
        src = str(self.source).strip().lower()
        src = _ALIASES.get(src, src)
        if src not in SOURCES:
            raise DataError(
                f"unknown data source {self.source!r}; valid sources: {', '.join(SOURCES)}"
            )
        object.__setattr__(self, "source", src)
        if self.root is not None:
            if not isinstance(self.root, (str, os.PathLike)):
                raise DataError(f"data root must be a path, got {self.root!r}")
            object.__setattr__(self, "root", os.fspath(self.root))
        if self.image_size is not None:
            self._set_int("image_size", minimum=1)
        for name in ("normalize", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise DataError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.hflip is not None and not isinstance(self.hflip, bool):
            raise DataError(f"hflip must be true, false or null, got {self.hflip!r}")
        try:
            subset = float(self.subset)
        except (TypeError, ValueError):
            subset = math.nan
        if isinstance(self.subset, bool) or not 0.0 < subset <= 1.0:
            raise DataError(f"subset must be a fraction in (0, 1], got {self.subset!r}")
        object.__setattr__(self, "subset", subset)
        self._set_int("subset_seed")
        self._set_int("synthetic_classes", minimum=2)
        self._set_int("synthetic_chans", minimum=1)
        self._set_int("synthetic_size", minimum=1)
        self._set_int("synthetic_train", minimum=1)
        self._set_int("synthetic_test", minimum=1)
        self._set_int("synthetic_seed")

    def _set_int(self, name: str, minimum: int | None = None) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise DataError(f"{name} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise DataError(f"{name} must be at least {minimum}, got {value}")
        object.__setattr__(self, name, int(value))

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
