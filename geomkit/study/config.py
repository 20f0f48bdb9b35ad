"""Study configuration: a frozen description of models × optimizers × data × seeds.

A study is read from a named preset (``geomkit/studies/<name>.toml``) or from a TOML
file (YAML too when PyYAML happens to be installed; it is not a dependency)::

    name = "quick"
    description = "digits, three tiny models, vanilla vs SAM"
    models = ["vit-tiny", "mixer-tiny", "resnet-tiny"]
    optimizers = ["vanilla", "sam"]   # also asam, aug, sam-aug (see STUDY_OPTIMIZERS)
    seeds = [0]
    threads = 1           # torch threads while the study runs (0 = torch's default)
    aug = "medium1"       # the AugReg level of the aug / sam-aug runs

    [rho]                 # SAM radius by model name or family (vit / mixer / resnet)
    vit = 0.1
    [lr]                  # peak learning rate by model name or family (else the family's)
    vit = 3e-3
    [vanilla]             # the vanilla optimizer by model name or family
    resnet = "sgd"
    [model_kwargs."vit-tiny"]
    depth = 4

    [data]                # any geomkit.data.DataSpec field, plus `subsets`
    source = "digits"
    augment = false       # the light crop/flip (opt-in, as in `geomkit train`)
    subsets = [1.0]

    [train]               # any geomkit.train.TrainConfig field but model/data/optimizer/seed
    epochs = 30           # or steps = N: the same budget of optimizer steps for every run
    batch_size = 64

    [analysis]            # sample counts of the measurements (see AnalysisSettings)
    hessian_samples = 256

    [landscape]           # the Figure-1 surfaces (see LandscapeSettings)
    x = [-1.0, 1.0, 21]

    [track]               # geometry during training (see TrackSettings)
    every = 25

    [[checkpoints]]       # measured beside the trained runs, never trained (ExternalRun)
    path = "imported/vit-s16-sam.pt"
    model = "vit-s16"
    optimizer = "sam"

Every mistake raises :class:`~geomkit.errors.SpecError` with one line that names the
problem (an unknown preset lists the valid ones).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from geomkit.data import DataSpec
from geomkit.data.spec import SEED_RANGE
from geomkit.errors import GeomkitError, SpecError
from geomkit.train import TrainConfig
from geomkit.train.config import AUGREG, BASE_OPTIMIZERS, FAMILY_DEFAULTS, _type_name

#: Optimizer names a study accepts: ``vanilla`` (the family's base optimizer, or the one
#: named in ``[vanilla]``), ``sam`` and ``asam`` (around the same base optimizer), and the
#: paper's Table 4 methods ``aug`` (vanilla + strong augmentation: RandAugment + Mixup at
#: the study's ``aug`` AugReg level) and ``sam-aug`` (SAM + the same augmentation).
STUDY_OPTIMIZERS: tuple[str, ...] = ("vanilla", "sam", "asam", "aug", "sam-aug")

#: The study optimizers that train with strong augmentation (``TrainConfig.augreg``).
AUG_OPTIMIZERS: tuple[str, ...] = ("aug", "sam-aug")

#: The AugReg level of ``aug`` / ``sam-aug`` when a study names none: ``medium1`` =
#: RandAugment(2, 15) + Mixup(0.2), the middle of the paper's AUG range (AugReg's light2 ..
#: heavy2, the levels that combine RandAugment with Mixup): a clearly strong RandAugment
#: with the lightest Mixup of that range, for models of 0.1-0.2 M parameters that the
#: heavier mixing would under-fit. A choice, not tuned here: set ``aug`` to compare levels.
DEFAULT_AUG = "medium1"

#: TrainConfig fields a study sets itself (so ``[train]`` may not).
_RESERVED_TRAIN = {"model", "model_kwargs", "data", "optimizer", "seed", "label", "rho"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def model_family(name: str) -> str:
    """``vit`` / ``mixer`` / ``resnet`` / ``other`` of a registry name (no model built):
    :func:`geomkit.models.family`, the one place that decides it."""
    from geomkit.models import family

    return family(name)


def subset_tag(subset: float) -> str:
    """Short text for a subset fraction in run names: 0.5 → ``0.5``, 0.1 → ``0.1``."""
    return f"{subset:.4g}"


#: Study defaults that differ from ``geomkit analyze``'s (studies measure on more examples).
STUDY_ANALYSIS_DEFAULTS: dict[str, Any] = {"samples": 256}
_DENSITY = ("density_samples", "density_probes", "density_iter")


@dataclass(frozen=True)
class AnalysisSettings:
    """Stage-2 settings: the measurements' options, which measurements, and the densities.

    ``[analysis]`` takes any option a registered measurement declares (``samples``,
    ``ntk_samples``, ``ntk_repeats``, ``test_samples`` (0 = the whole split),
    ``hessian_tol``, ``hessian_max_iter``, ``trace_probes``, ...; see
    :func:`geomkit.measurements.option_fields`) as a key, read back as an attribute
    (``settings.samples``), plus:

    Attributes:
        options: the measurement options given (unset ones take their defaults; the study
            measures on ``samples = 256`` by default).
        measure: measurement names to run (empty: the registry's defaults).
        density_samples: examples for the Hessian spectral density (0 = no densities).
        density_probes, density_iter: SLQ probes and Lanczos steps per probe.
    """

    options: dict[str, Any] = field(default_factory=dict)
    measure: tuple[str, ...] = ()
    density_samples: int = 128
    density_probes: int = 2
    density_iter: int = 48

    def __post_init__(self) -> None:
        from geomkit import measurements as registry

        if not isinstance(self.options, dict):
            raise SpecError(f"[analysis] options must be a table, got {self.options!r}")
        registry.check_option_names(self.options, "[analysis] ")
        m = self.measure
        if isinstance(m, str) or not isinstance(m, (list, tuple)):
            raise SpecError(f"[analysis] measure must be a list of names, got {m!r}")
        object.__setattr__(self, "measure", tuple(m))
        for name in self.measure:
            if name not in registry.registry():
                raise SpecError(f"[analysis] unknown measurement {name!r}; valid: "
                                f"{', '.join(registry.registry())}")
        for name in _DENSITY:
            v = getattr(self, name)
            lo = 0 if name == "density_samples" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise SpecError(f"[analysis] {name} must be an integer >= {lo}, got {v!r}")
        try:
            self.analyze_options()  # each measurement's options dataclass validates them
        except SpecError as e:
            raise SpecError(f"[analysis] {e}") from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        from geomkit import measurements as registry

        fields = registry.option_fields()
        if name not in fields:
            raise AttributeError(name)
        return self.options.get(name, STUDY_ANALYSIS_DEFAULTS.get(name, fields[name].default))

    def analyze_options(self) -> dict[str, Any]:
        """The options for :func:`geomkit.analyze.analyze` (study defaults applied, and
        ``test_samples = 0`` meaning the whole split)."""
        from geomkit import measurements as registry

        out = STUDY_ANALYSIS_DEFAULTS | dict(self.options)
        if out.get("test_samples") == 0:
            out["test_samples"] = None
        for n in registry.registry():
            registry.build_options(n, out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The flat ``[analysis]`` table (:meth:`from_dict` reads it back)."""
        return {**self.options, "measure": list(self.measure),
                **{k: getattr(self, k) for k in _DENSITY}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalysisSettings:
        d = dict(d)
        options = d.pop("options", {})  # older files: extra analyze() keywords in a sub-table
        if not isinstance(options, dict):
            raise SpecError(f"[analysis] options must be a table, got {options!r}")
        kw = {k: d.pop(k) for k in (*_DENSITY, "measure") if k in d}
        return cls(options={**options, **d}, **kw)


@dataclass(frozen=True)
class TrackSettings:
    """Geometry during training (``geomkit train --track``) for every trained run.

    Attributes:
        every: track λ_max every this many optimizer steps (0: no tracking); the report
            draws "sharpness during training" from the runs' ``track.h5``.
        samples: probe set, the first N training examples.
        test_samples: test loss/accuracy on the first N test examples (0: all).
        tol: Lanczos relative tolerance of the tracked λ_max.
        snapshot_every: keep the weights every E epochs (``snapshots.h5``; 0: none), for
            the report's trajectory landscapes (PCA of the path, Li et al. 2018 §7).
        trajectory_grid: points per axis of those landscapes.
    """

    every: int = 0
    samples: int = 128
    test_samples: int = 256
    tol: float = 1e-2
    snapshot_every: int = 0
    trajectory_grid: int = 21

    def __post_init__(self) -> None:
        for name, lo in (("every", 0), ("samples", 1), ("test_samples", 0),
                         ("snapshot_every", 0), ("trajectory_grid", 2)):
            v = getattr(self, name)
            if not _is_int(v) or v < lo:
                raise SpecError(f"[track] {name} must be an integer >= {lo}, got {v!r} "
                                f"({_type_name(v)})")
        if (isinstance(self.tol, bool) or not isinstance(self.tol, (int, float))
                or not 0 < self.tol < 1):
            raise SpecError(f"[track] tol must be a number in (0, 1), got {self.tol!r} "
                            f"({_type_name(self.tol)})")
        object.__setattr__(self, "tol", float(self.tol))

    @property
    def enabled(self) -> bool:
        return self.every > 0 or self.snapshot_every > 0


@dataclass(frozen=True)
class LandscapeSettings:
    """The stage-3 surfaces: one filter-normalized random 2-D surface per run.

    Attributes:
        enabled: draw landscapes at all.
        x, y: grid axes as ``(min, max, num)``.
        samples: training examples the loss is averaged over.
        seed: seed of the random directions (the same for every run).
        norm, ignore: direction normalization (see ``geomkit landscape``).
        log: log-scaled colour levels in the figures (default: one scale spans losses
            from ~1e-3 at the minima to ~100 at a ResNet's grid corners).
    """

    enabled: bool = True
    x: tuple[float, float, int] = (-1.0, 1.0, 21)
    y: tuple[float, float, int] = (-1.0, 1.0, 21)
    samples: int = 256
    seed: int = 0
    norm: str = "filter"
    ignore: str = "biasbn"
    log: bool = True

    def __post_init__(self) -> None:
        for axis in ("x", "y"):
            v = getattr(self, axis)
            ok = (isinstance(v, (list, tuple)) and len(v) == 3
                  and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in v))
            if ok:
                lo, hi, num = float(v[0]), float(v[1]), v[2]
                ok = (isinstance(num, int) and num >= 1 and math.isfinite(lo)
                      and math.isfinite(hi) and (num == 1 or hi > lo))
            if not ok:
                raise SpecError(f"[landscape] {axis} must be [min, max, num] with min < max, "
                                f"num >= 1, got {v!r}")
            object.__setattr__(self, axis, (float(v[0]), float(v[1]), int(v[2])))
        for name in ("enabled", "log"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise SpecError(f"[landscape] {name} must be true or false, got {v!r} "
                                f"({_type_name(v)})")
        if not _is_int(self.samples) or self.samples < 1:
            raise SpecError(f"[landscape] samples must be an integer >= 1, got "
                            f"{self.samples!r} ({_type_name(self.samples)})")
        if not _is_int(self.seed) or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise SpecError(f"[landscape] seed must be an integer in [{SEED_RANGE[0]}, "
                            f"{SEED_RANGE[1]}], got {self.seed!r} ({_type_name(self.seed)})")
        from geomkit.geometry.landscape import IGNORES, NORMS

        for name, valid in (("norm", NORMS), ("ignore", IGNORES)):
            v = getattr(self, name)
            if v not in valid:
                raise SpecError(f"[landscape] {name} must be one of {', '.join(valid)}, "
                                f"got {v!r}")
        from geomkit.geometry.landscape.grid_check import MAX_FILE_BYTES, MAX_POINTS, grid_cost

        cost = grid_cost(self.x, self.y, samples=self.samples)
        if cost.points > MAX_POINTS or cost.file_bytes > MAX_FILE_BYTES:
            raise SpecError(f"[landscape] x and y are above the limit of {MAX_POINTS:,} points "
                            f"per surface: {cost.describe()}, for every run of the study")


#: Characters a run's model and optimizer label may hold (they name files under the study).
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_FAMILIES = ("vit", "mixer", "resnet", "other")


@dataclass(frozen=True)
class ExternalRun:
    """A checkpoint the study measures but does not train (``[[checkpoints]]``).

    Any checkpoint ``geomkit analyze`` reads: one ``geomkit import`` wrote from a timm or
    user model and its weights, or one ``geomkit train`` wrote elsewhere. Its data is the
    checkpoint's own (the study's ``[data]`` is for the runs it trains)::

        [[checkpoints]]
        path = "imported/vit-sam.pt"   # relative to the study file's folder
        model = "vit-s16"              # the label tables and figures use for the model
        optimizer = "sam"              # ... and for how it was trained (vanilla pairs with sam)
        seed = 0                       # optional (0), as subset (1.0) and family (from the model)

    Attributes:
        path: the checkpoint file (absolute once the study file is read).
        model, optimizer: labels (letters, digits, ``. _ + -``); runs sharing ``model``,
            ``seed`` and ``subset`` are paired vanilla vs SAM like trained runs.
        seed, subset: labels for the mean ± std tables (nothing is trained or subsampled).
        family: ``vit`` / ``mixer`` / ``resnet`` / ``other`` for the paper's comparisons;
            empty: the checkpoint model's own family (:func:`geomkit.models.family`).
    """

    path: str
    model: str
    optimizer: str
    seed: int = 0
    subset: float = 1.0
    family: str = ""

    def __post_init__(self) -> None:
        where = "[[checkpoints]]"
        if not isinstance(self.path, str) or not self.path:
            raise SpecError(f"{where} path must be a non-empty string (a checkpoint file), "
                            f"got {self.path!r} ({_type_name(self.path)})")
        for key in ("model", "optimizer"):
            v = getattr(self, key)
            if not isinstance(v, str) or not _LABEL.fullmatch(v):
                raise SpecError(f"{where} {key} must be a label of letters, digits and . _ + - "
                                f"(it names the run's files), got {v!r} for {self.path}")
        if not _is_int(self.seed) or not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise SpecError(f"{where} seed must be an integer in [{SEED_RANGE[0]}, "
                            f"{SEED_RANGE[1]}], got {self.seed!r} for {self.path}")
        f = self.subset
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
            raise SpecError(f"{where} subset must be a fraction in (0, 1], got {f!r} "
                            f"for {self.path}")
        object.__setattr__(self, "subset", float(f))
        if self.family not in ("", *_FAMILIES):
            raise SpecError(f"{where} family must be one of {', '.join(_FAMILIES)}, got "
                            f"{self.family!r} for {self.path}")

    @classmethod
    def from_dict(cls, d: Any, base: Path | None = None) -> ExternalRun:
        """One ``[[checkpoints]]`` table; a relative ``path`` is taken from ``base``."""
        if not isinstance(d, dict):
            raise SpecError(f"[[checkpoints]] entries must be tables, got {d!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise SpecError(f"unknown [[checkpoints]] key(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(names)}")
        missing = [k for k in ("path", "model", "optimizer") if k not in d]
        if missing:
            raise SpecError(f"[[checkpoints]] entry {d!r} needs {', '.join(missing)}")
        run = cls(**d)
        p = Path(run.path).expanduser()
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        return dataclasses.replace(run, path=str(p.resolve()))  # no ".." kept


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: where it lives and the exact training config, or, for a
    checkpoint trained elsewhere (``[[checkpoints]]``), its file."""

    name: str
    model: str
    optimizer: str
    seed: int
    subset: float
    train_config: TrainConfig | None
    checkpoint: Path | None = None
    known_family: str = ""

    @property
    def external(self) -> bool:
        """A checkpoint the study measures but never trains."""
        return self.train_config is None

    @property
    def family(self) -> str:
        return self.known_family or model_family(self.model)


@dataclass(frozen=True)
class StudyConfig:
    """A study: models × optimizers × subsets × seeds, plus training and analysis settings.

    ``threads``: torch intra-op threads while the study runs (0 = leave torch's setting).
    Tiny models are fastest on one thread, and on a shared machine two OpenMP threads
    can make them several times slower (measured: vit-tiny 25 epochs 68 s on 1 thread,
    160 s on 2, at load 3 on 2 cores).

    ``aug``: the AugReg level (:data:`geomkit.train.config.AUGREG`, not ``none``) of the
    ``aug`` / ``sam-aug`` runs (default :data:`DEFAULT_AUG`); ``[train]`` may not set
    ``augreg`` in a study that has them.

    ``train``: the ``[train]`` table. Its ``steps = N`` gives every run the same budget of
    N optimizer steps (:attr:`geomkit.train.TrainConfig.steps`): the number of epochs then
    follows from each run's training-set size, so ``epochs`` may not be given beside it
    (one or the other, never both).

    Use :func:`load_study_config` to read one; :meth:`runs` expands the grid.
    """

    name: str
    models: tuple[str, ...]
    optimizers: tuple[str, ...] = ("vanilla", "sam")
    seeds: tuple[int, ...] = (0,)
    description: str = ""
    rho: dict[str, float] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=dict)
    vanilla: dict[str, str] = field(default_factory=dict)
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    subsets: tuple[float, ...] = (1.0,)
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 30, "batch_size": 64})
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    landscape: LandscapeSettings = field(default_factory=LandscapeSettings)
    track: TrackSettings = field(default_factory=TrackSettings)
    threads: int = 0
    origin: str = ""
    checkpoints: tuple[ExternalRun, ...] = ()
    aug: str = DEFAULT_AUG

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SpecError(msg)

        need(isinstance(self.name, str) and bool(self.name),
             f"name must be a non-empty string, got {self.name!r} ({_type_name(self.name)})")
        for key in ("description", "origin"):
            v = getattr(self, key)
            need(isinstance(v, str), f"{key} must be a string, got {v!r} ({_type_name(v)})")
        need(_is_int(self.threads) and self.threads >= 0,
             f"threads must be an integer >= 0, got {self.threads!r} "
             f"({_type_name(self.threads)})")
        need(isinstance(self.checkpoints, (list, tuple))
             and all(isinstance(e, ExternalRun) for e in self.checkpoints),
             "checkpoints must be a list of ExternalRun (a [[checkpoints]] table each)")
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        for key in ("models", "optimizers", "seeds", "subsets"):
            v = getattr(self, key)
            # a study of [[checkpoints]] only trains nothing: models = [] is fine then
            empty_ok = key == "models" and bool(self.checkpoints)
            need(isinstance(v, (list, tuple)) and (len(v) > 0 or empty_ok),
                 f"{key} must be a non-empty list, got {v!r} ({_type_name(v)})"
                 + ("; or list [[checkpoints]] to measure" if key == "models" else ""))
            object.__setattr__(self, key, tuple(v))
        from geomkit.models import list_models

        valid = list_models()
        for m in self.models:
            need(m in valid, f"unknown model {m!r} in models; valid: {', '.join(valid)}")
        for o in self.optimizers:
            need(o in STUDY_OPTIMIZERS,
                 f"unknown optimizer {o!r}; valid: {', '.join(STUDY_OPTIMIZERS)}")
        need(len(set(self.models)) == len(self.models), "models are listed twice")
        need(len(set(self.optimizers)) == len(self.optimizers), "optimizers are listed twice")
        for s in self.seeds:
            need(_is_int(s) and SEED_RANGE[0] <= s <= SEED_RANGE[1],
                 f"seeds must be integers in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {s!r} "
                 f"({_type_name(s)})")
        for f in self.subsets:
            need(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1,
                 f"subsets must be fractions in (0, 1], got {f!r} ({_type_name(f)})")
        need(len(set(self.seeds)) == len(self.seeds), "seeds are listed twice")
        need(len({float(f) for f in self.subsets}) == len(self.subsets),
             "subsets are listed twice")
        families = ", ".join(FAMILY_DEFAULTS)
        for table in ("rho", "lr", "vanilla", "model_kwargs"):
            by_family = table != "model_kwargs"  # [model_kwargs] is by model name only
            for k in getattr(self, table):
                need(k in valid or (by_family and k in FAMILY_DEFAULTS),
                     f"{table}.{k} names no registered model"
                     + (f" or family ({families})" if by_family else "")
                     + "; see `geomkit models`")
        for table in ("rho", "lr"):
            for k, v in getattr(self, table).items():
                need(isinstance(v, (int, float)) and not isinstance(v, bool)
                     and math.isfinite(v) and v >= 0,
                     f"{table}.{k} must be a finite number >= 0, got {v!r} ({_type_name(v)})")
        for k, v in self.vanilla.items():
            need(v in BASE_OPTIMIZERS,
                 f"vanilla.{k} must be one of {', '.join(BASE_OPTIMIZERS)}, got {v!r}")
        for k, v in self.model_kwargs.items():
            need(isinstance(v, dict), f"model_kwargs.{k} must be a table, got {v!r}")
        need(isinstance(self.data, DataSpec), "data must be a DataSpec")
        need(isinstance(self.train, dict), "train must be a table")
        need(isinstance(self.aug, str) and self.aug in AUGREG and self.aug != "none",
             f"aug must be an AugReg level, one of {', '.join(a for a in AUGREG if a != 'none')}"
             f", got {self.aug!r} ({_type_name(self.aug)})")
        need(not ("augreg" in self.train and set(self.optimizers) & set(AUG_OPTIMIZERS)),
             "[train] may not set augreg in a study with aug / sam-aug runs (their level is "
             "the top-level aug; the other runs train without strong augmentation)")
        need(not ("steps" in self.train and "epochs" in self.train),
             "[train] sets both steps and epochs; give one: steps = N is the same budget of "
             "optimizer steps for every run (its epochs follow from each training set's size)")
        bad = sorted(set(self.train) & (_RESERVED_TRAIN | ({"lr"} if self.lr else set())))
        need(not bad, f"[train] may not set {', '.join(bad)} (the study sets them)")
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.train) - names)
        need(not unknown, f"unknown [train] key(s) {', '.join(unknown)}; valid: "
             f"{', '.join(sorted(names - _RESERVED_TRAIN))}")
        self._check_sample_counts()
        # validate every TrainConfig now, not halfway through a study
        seen: dict[str, tuple[str, str]] = {}
        for r in self.runs():
            where = str(r.checkpoint) if r.external else "the trained runs"
            key = r.name.lower()  # one file on a case-insensitive file system
            first = seen.get(key)
            need(first is None, f"two runs are named {r.name!r} ({first[1] if first else ''}"
                 f" and {where})" + (f" (also {first[0]!r}, which differs only in case)"
                                     if first and first[0] != r.name else "")
                 + "; give the [[checkpoints]] entries other model, optimizer or seed labels")
            seen[key] = (r.name, where)

    def _check_sample_counts(self) -> None:
        """Sample counts no larger than the splits they are drawn from (when the source's
        size is known without reading it): refused now, not after the training stage."""
        counts = {"train": [("[analysis] samples", self.analysis.samples),
                            ("[analysis] ntk_samples", self.analysis.ntk_samples),
                            ("[analysis] density_samples", self.analysis.density_samples),
                            ("[landscape] samples", self.landscape.samples)]
                 + ([("[track] samples", self.track.samples)] if self.track.every else []),
                  "test": [("[analysis] test_samples", self.analysis.test_samples)]
                 + ([("[track] test_samples", self.track.test_samples)]
                    if self.track.every else [])}
        for split, items in counts.items():
            shape = self.data.replace(subset=1.0).split_shape(split)
            if shape is None:
                continue
            for what, n in items:
                if isinstance(n, int) and n > shape[0]:
                    raise SpecError(f"{what} {n} is more than the {shape[0]} {split} examples "
                                    f"of {self.data.source}")

    # -- lookups -----------------------------------------------------------------------
    def _by_model(self, table: dict[str, Any], model: str) -> Any:
        if model in table:
            return table[model]
        return table.get(model_family(model))

    def rho_for(self, model: str) -> float:
        """SAM's ρ for ``model``: ``[rho]`` by model name, then by family, else the default."""
        v = self._by_model(self.rho, model)
        fam = FAMILY_DEFAULTS.get(model_family(model), FAMILY_DEFAULTS["other"])
        return float(fam["rho"] if v is None else v)

    def base_optimizer_for(self, model: str) -> str:
        """The vanilla optimizer of ``model`` (also the one SAM wraps)."""
        v = self._by_model(self.vanilla, model)
        fam = FAMILY_DEFAULTS.get(model_family(model), FAMILY_DEFAULTS["other"])
        return str(fam["base_optimizer"] if v is None else v)

    def run_name(self, model: str, optimizer: str, seed: int, subset: float) -> str:
        """``<model>-<optimizer>[-subsetF]-s<seed>`` (the run's directory under ``runs/``)."""
        tag = "" if subset == 1 else f"-subset{subset_tag(subset)}"
        return f"{model}-{optimizer}{tag}-s{seed}"

    @property
    def figure_key(self) -> tuple[float, int]:
        """``(subset, seed)`` of the trained runs the report's figures draw: the largest
        subset and the first seed (Figure 1 needs one surface per model and optimizer)."""
        return max(self.subsets), self.seeds[0]

    def in_figures(self, subset: float, seed: int, external: bool) -> bool:
        """Whether the report's figures (and the landscape stage) show a run: trained runs
        at :attr:`figure_key`, and every ``[[checkpoints]]`` entry (each was listed to be
        seen)."""
        return external or (subset, seed) == self.figure_key

    @property
    def model_labels(self) -> tuple[str, ...]:
        """Models of the trained runs, then the ``[[checkpoints]]`` labels, once each."""
        return tuple(dict.fromkeys([*self.models, *(e.model for e in self.checkpoints)]))

    @property
    def optimizer_labels(self) -> tuple[str, ...]:
        """Optimizers of the trained runs, then the ``[[checkpoints]]`` labels."""
        return tuple(dict.fromkeys([*self.optimizers,
                                    *(e.optimizer for e in self.checkpoints)]))

    def runs(self) -> list[RunSpec]:
        """Every run of the study, in a stable order (subset, model, optimizer, seed)."""
        out = []
        for subset in self.subsets:
            data = self.data.replace(subset=float(subset)).to_dict()
            for model in self.models:
                base = self.base_optimizer_for(model)
                for opt in self.optimizers:
                    for seed in self.seeds:
                        kw: dict[str, Any] = dict(self.train)
                        kw.update(
                            model=model,
                            model_kwargs=dict(self.model_kwargs.get(model, {})),
                            data=data,
                            optimizer=base if opt in ("vanilla", "aug")
                            else "sam" if opt == "sam-aug" else opt,
                            base_optimizer=base,
                            seed=int(seed),
                            label=opt,
                        )
                        if opt not in ("vanilla", "aug"):
                            kw["rho"] = self.rho_for(model)
                        if opt in AUG_OPTIMIZERS:
                            kw["augreg"] = self.aug
                        lr = self._by_model(self.lr, model)
                        if lr is not None:
                            kw["lr"] = float(lr)
                        try:
                            cfg = TrainConfig(**kw)
                        except GeomkitError as e:
                            if getattr(e, "param", None) in self.train:
                                raise SpecError(f"[train] {e}") from None
                            raise SpecError(
                                f"bad training settings for {model}/{opt}: {e}") from None
                        out.append(RunSpec(self.run_name(model, opt, seed, subset), model,
                                           opt, int(seed), float(subset), cfg))
        for e in self.checkpoints:
            out.append(RunSpec(self.run_name(e.model, e.optimizer, e.seed, e.subset), e.model,
                               e.optimizer, e.seed, e.subset, None, checkpoint=Path(e.path),
                               known_family=e.family))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``study_config_from_dict(c.to_dict()) == c``)."""
        d = dataclasses.asdict(self)
        d["data"] = self.data.to_dict()
        d["checkpoints"] = [dataclasses.asdict(e) for e in self.checkpoints]
        d["analysis"] = self.analysis.to_dict()
        for k in ("models", "optimizers", "seeds", "subsets"):
            d[k] = list(d[k])
        for k in ("x", "y"):
            d["landscape"][k] = list(d["landscape"][k])
        return d

    def only_seeds(self, seeds: list[int]) -> StudyConfig:
        """The study restricted to some of its seeds (one process per seed; the runs are
        the same as the whole study's, so the whole study reuses them)."""
        unknown = [s for s in seeds if s not in self.seeds]
        if unknown:
            raise SpecError(f"seeds {', '.join(map(str, unknown))} are not the study's; it "
                            f"has {', '.join(map(str, self.seeds))}", param="seeds")
        return self.replace(seeds=tuple(dict.fromkeys(seeds)))

    def replace(self, **changes: Any) -> StudyConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# -- reading -------------------------------------------------------------------------------

def list_presets() -> list[str]:
    """Names of the shipped presets (``geomkit/studies/*.toml``)."""
    root = resources.files("geomkit") / "studies"
    try:
        return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _table(d: dict, key: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise SpecError(f"[{key}] must be a table, got {v!r}")
    return dict(v)


def _settings_table(d: dict[str, Any], key: str, cls: type) -> dict[str, Any]:
    """The table ``[key]``, refused when it names a field ``cls`` does not have."""
    table = _table(d, key)
    names = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(table) - names)
    if bad:
        raise SpecError(f"unknown [{key}] key(s) {', '.join(bad)}; "
                        f"valid: {', '.join(sorted(names))}")
    return table


def study_config_from_dict(d: dict[str, Any], source: str = "") -> StudyConfig:
    """Build a :class:`StudyConfig` from parsed TOML/YAML/JSON; errors are :class:`SpecError`."""
    if not isinstance(d, dict):
        raise SpecError(f"a study file must hold a table at the top, got {type(d).__name__}")
    top = {"name", "description", "models", "optimizers", "seeds", "rho", "lr", "vanilla",
           "model_kwargs", "data", "train", "analysis", "landscape", "subsets", "threads",
           "origin", "checkpoints", "track", "aug"}
    unknown = sorted(set(d) - top)
    if unknown:
        raise SpecError(f"unknown study key(s) {', '.join(unknown)}; "
                        f"valid: {', '.join(sorted(top))}")
    data = _table(d, "data")
    subsets = data.pop("subsets", d.get("subsets", [1.0]))
    try:
        spec = DataSpec.from_dict(data)
    except GeomkitError as e:
        raise SpecError(f"[data]: {e}") from None
    analysis = AnalysisSettings.from_dict(_table(d, "analysis"))
    landscape = _settings_table(d, "landscape", LandscapeSettings)
    track = _settings_table(d, "track", TrackSettings)
    train = _table(d, "train")
    # steps = N is the budget (epochs follow from it); else 30 epochs unless given
    train = ({} if "steps" in train else {"epochs": 30}) | {"batch_size": 64} | train
    entries = d.get("checkpoints", [])
    if not isinstance(entries, list):
        raise SpecError(f"checkpoints must be a list of tables ([[checkpoints]]), got "
                        f"{entries!r}")
    # a relative path is read from the study file's folder (where its author wrote it)
    src = Path(source) if source and not str(source).startswith("preset:") else None
    base = src.parent if src is not None and src.is_file() else None
    externals = [ExternalRun.from_dict(e, base) for e in entries]
    if "models" not in d and not externals:
        raise SpecError("a study needs `models = [...]` (registry names, see `geomkit "
                        "models`), or [[checkpoints]] to measure")
    try:
        return StudyConfig(
            name=(d["name"] if d.get("name") not in (None, "")
                  else Path(source).stem if source else "study"),
            description=d.get("description", ""),
            models=d.get("models", []),
            checkpoints=externals,
            optimizers=d.get("optimizers", ["vanilla", "sam"]),
            seeds=d.get("seeds", [0]),
            rho=_table(d, "rho"),
            lr=_table(d, "lr"),
            vanilla=_table(d, "vanilla"),
            model_kwargs=_table(d, "model_kwargs"),
            data=spec,
            subsets=subsets,
            train=train,
            analysis=analysis,
            landscape=LandscapeSettings(**landscape),
            track=TrackSettings(**track),
            threads=d.get("threads", 0),
            origin=str(source or d.get("origin", "")),
            aug=d.get("aug", DEFAULT_AUG),
        )
    except SpecError:
        raise
    except (TypeError, ValueError, GeomkitError) as e:  # DataSpec/TrainConfig errors too
        raise SpecError(f"bad study {source or ''}: {' '.join(str(e).split())}") from None


def _parse_file(path: Path) -> dict:
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # optional: PyYAML is not a dependency
        except ImportError:
            raise SpecError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                            "or write the study as TOML") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path} is not valid JSON: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from None


def load_study_config(preset_or_path: str | Path) -> StudyConfig:
    """Read a study from a preset name (``quick``, ``fashion``, ``subsets``) or a file.

    A string that names an existing file (``.toml``; ``.yaml`` with PyYAML; ``.json``)
    is read as a file; otherwise it must be a preset name.

    Raises:
        SpecError: unknown preset (the message lists the valid ones) or malformed file.
    """
    text = str(preset_or_path)
    path = Path(text)
    if path.is_file():
        return study_config_from_dict(_parse_file(path), source=str(path))
    presets = list_presets()
    if text in presets:
        res = resources.files("geomkit") / "studies" / f"{text}.toml"
        try:
            d = tomllib.loads(res.read_text())
        except tomllib.TOMLDecodeError as e:  # a broken shipped preset is a bug
            raise RuntimeError(f"preset {text!r} is not valid TOML: {e}") from e
        return study_config_from_dict(d, source=f"preset:{text}")
    looks_like_file = path.suffix.lower() in (".toml", ".yaml", ".yml", ".json") or "/" in text
    what = f"no such study file {text!r}" if looks_like_file else f"unknown study preset {text!r}"
    if path.is_dir():
        what = (f"{text!r} is a directory, not a study file (a study's output directory is "
                "its out; give the preset or the .toml it was run from)")
    raise SpecError(f"{what}; valid presets: {', '.join(presets) or '(none installed)'} "
                    "or a path to a .toml file")
