"""Turn checkpoints into the measurements of the paper's Tables 1 and 3, into one HDF5 file.

:func:`analyze` runs every registered measurement (:data:`MEASUREMENTS`) on every
checkpoint and writes each one to the results file (:mod:`geomkit.results`) as soon as it
is finished.  A measurement already in the file with the same settings is skipped, so an
interrupted job resumes where it stopped; ``force=True`` recomputes.  A measurement in
the file computed with *other* settings is refused (one table never mixes settings).

=================  =====================================================================
``params``         number of parameters (all, trainable)
``ntk_init``       NTK κ at initialization of the checkpoint's architecture
                   (:func:`geomkit.geometry.ntk.ntk_at_init`, ``sum`` mode, BatchNorm in
                   train mode as TE-NAS) on the first ``ntk_samples`` training examples,
                   mean over ``ntk_repeats`` seeds; shared by checkpoints of one
                   architecture (computed once, reused from the file)
``hessian``        λ_max of the Table-3 diagonal Hessian blocks and of the whole Hessian
                   (:func:`geomkit.geometry.hessian.hessian_eigs`, blocks ``paper``) on the
                   first ``samples`` training examples
``activations``    ‖w‖₂, per-block output norms ‖a_k‖₂ (first / middle / last block:
                   1, 6, 12 for 12 blocks, ``mid = (depth + 1) // 2``) and the fraction of
                   active neurons per block, on the first ``samples`` training examples
``robustness``     clean and corrupted top-1 accuracy on the first ``test_samples`` test
                   examples (:func:`geomkit.geometry.robustness.robustness`)
=================  =====================================================================

A new measurement is a function ``(checkpoint, options) -> dict`` registered with
:func:`register_measurement`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geomkit.checkpoint import Checkpoint, load_checkpoint
from geomkit.errors import CheckpointError, ResultFileError, SpecError
from geomkit.results import Results, ResultsFile, checkpoint_id

__all__ = [
    "AnalyzeOptions",
    "AnalyzeResult",
    "MEASUREMENTS",
    "MeasurementSpec",
    "analyze",
    "register_measurement",
]


@dataclass(frozen=True)
class AnalyzeOptions:
    """Settings of an :func:`analyze` job (each measurement records the ones it uses).

    Attributes:
        samples: analysis examples (first N of the training split) for the Hessian and the
            activations.
        ntk_samples: examples for the NTK at initialization (the kernel is N×N).
        ntk_repeats: initializations averaged for κ.
        test_samples: test examples for the accuracies (None: the whole test split).
        hessian_tol: Lanczos relative tolerance.
        hessian_max_iter: Lanczos steps per block at most.
        batch_size: analysis mini-batch for the Hessian (None: automatic).
        seed: seeds Lanczos start vectors, NTK initializations and corruption noise.
        device: compute device (None: CPU, where checkpoints load).
    """

    samples: int = 128
    ntk_samples: int = 64
    ntk_repeats: int = 3
    test_samples: int | None = None
    hessian_tol: float = 1e-3
    hessian_max_iter: int = 100
    batch_size: int | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("samples", "ntk_samples", "ntk_repeats", "hessian_max_iter"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.test_samples is not None and self.test_samples < 1:
            raise SpecError(f"test_samples must be >= 1 or None, got {self.test_samples}")
        if not self.hessian_tol >= 0:
            raise SpecError(f"hessian_tol must be >= 0, got {self.hessian_tol}")


MeasureFn = Callable[[Checkpoint, AnalyzeOptions], dict[str, Any]]
SettingsFn = Callable[[Checkpoint, AnalyzeOptions], dict[str, Any]]


@dataclass(frozen=True)
class MeasurementSpec:
    """A registered measurement: its name, function, settings and whether it is shareable.

    ``settings(checkpoint, options)`` returns the options the result depends on (stored
    with it; a stored result with other settings is not reused).  ``per_architecture``:
    the result depends only on the architecture and data (``settings`` must then identify
    them), so one computed for another checkpoint with equal settings is reused.
    """

    name: str
    fn: MeasureFn
    settings: SettingsFn
    description: str
    per_architecture: bool = False


#: Registered measurements in run order (name → spec).
MEASUREMENTS: dict[str, MeasurementSpec] = {}


def register_measurement(
    name: str, settings: SettingsFn, description: str, per_architecture: bool = False
) -> Callable[[MeasureFn], MeasureFn]:
    """Decorator registering ``fn(checkpoint, options) -> values`` under ``name``."""

    def deco(fn: MeasureFn) -> MeasureFn:
        MEASUREMENTS[name] = MeasurementSpec(name, fn, settings, description, per_architecture)
        return fn

    return deco


# -- the measurements ----------------------------------------------------------------------


def _model(ck: Checkpoint, o: AnalyzeOptions) -> Any:
    return ck.model if o.device is None else ck.model.to(o.device)


@register_measurement("params", lambda ck, o: {}, "number of parameters")
def _params(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    ps = list(ck.model.parameters())
    return {
        "num_params": sum(p.numel() for p in ps),
        "trainable": sum(p.numel() for p in ps if p.requires_grad),
    }


def _ntk_settings(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    return {
        "model": ck.model_name, "model_kwargs": ck.model_kwargs,
        "data": ck.data_spec.replace(augment=False, subset=1.0).to_dict(),
        "samples": o.ntk_samples, "repeats": o.ntk_repeats, "seed": o.seed,
        "mode": "sum", "bn": "train", "dtype": "float64",
    }


@register_measurement("ntk_init", _ntk_settings, "NTK condition number at initialization",
                      per_architecture=True)
def _ntk_init(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    import torch

    from geomkit.geometry.ntk import ntk_at_init

    x, _ = ck.analysis_data("train", o.ntk_samples)

    def factory(seed: int) -> Any:
        m = ck.fresh_model(seed)
        return m if o.device is None else m.to(o.device)

    # float64: the kernels of small models are too ill-conditioned for float32 (κ ~ 1e6,
    # λ_min at float32 round-off of λ_max gives κ = inf); see docs/benchmarks/ntk.md.
    r = ntk_at_init(factory, x, repeats=o.ntk_repeats, seed=o.seed, mode="sum", bn="train",
                    dtype=torch.float64)
    return {
        "kappa": r.kappa, "kappa_std": r.kappa_std, "lambda_max": r.lambda_max,
        "lambda_min": r.lambda_min, "kappas": [float(x.kappa) for x in r.results],
        "seeds": list(r.seeds), "samples": r.n_samples,
    }


def _hessian_settings(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    return {"samples": o.samples, "blocks": "paper", "tol": o.hessian_tol,
            "max_iter": o.hessian_max_iter, "seed": o.seed, "bn": "eval"}


@register_measurement("hessian", _hessian_settings, "Hessian lambda_max per Table-3 block")
def _hessian(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    from geomkit.geometry.blocks import block_depth
    from geomkit.geometry.hessian import hessian_eigs

    x, y = ck.analysis_data("train", o.samples)
    model = _model(ck, o)
    r = hessian_eigs(model, x, y, blocks=("paper",), tol=o.hessian_tol,
                     max_iter=o.hessian_max_iter, batch_size=o.batch_size, seed=o.seed)
    names = list(r.blocks)
    return {
        "blocks": names,
        "depth": block_depth(model),
        "lambda_max": {b: r.blocks[b].lambda_max for b in names},
        "residual": {b: r.blocks[b].residual for b in names},
        "n_hvps": {b: r.blocks[b].n_hvps for b in names},
        "converged": {b: bool(r.blocks[b].converged) for b in names},
        "n_params": {b: r.blocks[b].n_params for b in names},
        "strategy": r.strategy,
    }


def _act_settings(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    return {"samples": o.samples}


@register_measurement("activations", _act_settings, "weight norm, block output norms, sparsity")
def _activations(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    from geomkit.geometry.activations import activation_stats

    x, _ = ck.analysis_data("train", o.samples)
    s = activation_stats(_model(ck, o), x)
    blocks = list(s.blocks.values())
    out: dict[str, Any] = {
        "weight_norm": s.weight_norm,
        "active_fraction": s.active_fraction,
        "dead": s.dead,
        "neurons": s.neurons,
        "depth": len(blocks),
        "blocks": [b.name for b in blocks],
        "block_output_norm": [b.output_norm for b in blocks],
        "block_active_fraction": [b.active_fraction for b in blocks],
        "block_dead": [b.dead for b in blocks],
        "block_weight_norm": [b.weight_norm for b in blocks],
    }
    if blocks:
        d = len(blocks)
        idx = {"first": 1, "mid": (d + 1) // 2, "last": d}
        out["a_index"] = idx
        out["a"] = {k: blocks[i - 1].output_norm for k, i in idx.items()}
    return out


def _rob_settings(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    from geomkit.data import CORRUPTIONS

    return {"test_samples": o.test_samples, "seed": o.seed, "corruptions": list(CORRUPTIONS),
            "severities": [1, 2, 3, 4, 5]}


@register_measurement("robustness", _rob_settings, "clean and corrupted test accuracy")
def _robustness(ck: Checkpoint, o: AnalyzeOptions) -> dict[str, Any]:
    from geomkit.geometry.robustness import robustness

    x, y = ck.analysis_data("test", o.test_samples)
    r = robustness(_model(ck, o), x, y, normalization=ck.data_spec, seed=o.seed)
    s = r.summary()
    s.pop("seconds")
    return s


# -- the job -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzeResult:
    """What :func:`analyze` did.

    Attributes:
        out: the results file.
        results: its contents afterwards (:class:`geomkit.results.Results`).
        computed: ``(checkpoint id, measurement)`` pairs computed by this call.
        reused: pairs copied from another checkpoint of the same architecture.
        skipped: pairs already in the file.
        options: the settings used.
        seconds: wall time.
    """

    out: Path
    results: Results
    computed: tuple[tuple[str, str], ...]
    reused: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...]
    options: AnalyzeOptions
    seconds: float


def _meta(ck: Checkpoint) -> dict[str, Any]:
    label = ck.label
    return {
        "id": checkpoint_id(ck.sha256(), label),
        "label": label,
        "model": ck.model_name,
        "optimizer": str(ck.config.get("optimizer", "")),
        "checkpoint_path": str(ck.path),
        "checkpoint_sha256": ck.sha256(),
        "config": ck.config,
        "data_spec": ck.data_spec.to_dict(),
        "model_kwargs": ck.model_kwargs,
    }


def _normalized(d: Mapping[str, Any]) -> Any:
    import json

    from geomkit.results import _jsonable

    return json.loads(json.dumps(_jsonable(d), sort_keys=True))


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in keys
                     if old.get(k) != new.get(k))


def analyze(
    checkpoints: Iterable[str | Path],
    out: str | Path,
    *,
    samples: int = 128,
    ntk_samples: int = 64,
    ntk_repeats: int = 3,
    test_samples: int | None = None,
    hessian_tol: float = 1e-3,
    hessian_max_iter: int = 100,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    measurements: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> AnalyzeResult:
    """Measure every checkpoint and write the results to ``out`` (HDF5) as they finish.

    Args:
        checkpoints: checkpoint files (or run directories holding ``last.pt``).
        out: results file; created if missing, resumed if present.
        samples, ntk_samples, ntk_repeats, test_samples, hessian_tol, hessian_max_iter,
            batch_size, seed, device: see :class:`AnalyzeOptions`.
        measurements: names from :data:`MEASUREMENTS` (None: all, in registry order).
        force: recompute measurements already in the file (and replace ones stored with
            other settings).
        progress: one tqdm bar on stderr over every (checkpoint, measurement).

    Returns:
        An :class:`AnalyzeResult`.

    Raises:
        CheckpointError: a missing or unreadable checkpoint (checked before any work).
        ResultFileError: ``out`` is not a results file, or holds a measurement of one of
            these checkpoints computed with other settings (use ``force``).
        SpecError: bad options or an unknown measurement name.
    """
    t0 = time.perf_counter()
    opts = AnalyzeOptions(samples=samples, ntk_samples=ntk_samples, ntk_repeats=ntk_repeats,
                          test_samples=test_samples, hessian_tol=hessian_tol,
                          hessian_max_iter=hessian_max_iter, batch_size=batch_size, seed=seed,
                          device=device)
    names = list(MEASUREMENTS) if measurements is None else list(dict.fromkeys(measurements))
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown or not names:
        raise SpecError(f"unknown measurement(s) {unknown or '(none)'}; valid: "
                        f"{', '.join(MEASUREMENTS)}")
    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise CheckpointError("no checkpoints given")
    for p in paths:
        if not p.exists():
            raise CheckpointError(f"no such checkpoint: {p}")
    rf = ResultsFile(out)

    computed: list[tuple[str, str]] = []
    reused: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths) * len(names), desc="analyze", unit="step", disable=not progress)
    try:
        for p in paths:
            ck = load_checkpoint(p)
            meta = _meta(ck)
            cid = meta["id"]
            for name in names:
                spec = MEASUREMENTS[name]
                bar.set_postfix_str(f"{ck.label}: {name}")
                settings = _normalized(spec.settings(ck, opts))
                have = rf.get(cid, name)
                if have is not None and not force:
                    if have.settings != settings:
                        raise ResultFileError(
                            f"{rf.path} holds {name} of {ck.label} computed with other "
                            f"settings ({_differences(have.settings, settings)}); use --force "
                            f"to recompute or another --out"
                        )
                    skipped.append((cid, name))
                    bar.update(1)
                    continue
                found = rf.find(name, settings) if spec.per_architecture and not force else None
                if found is not None:
                    src, m = found
                    rf.put(meta, name, m.values, settings=settings, seconds=0.0,
                           provenance_extra={"reused_from": src})
                    reused.append((cid, name))
                else:
                    t1 = time.perf_counter()
                    values = spec.fn(ck, opts)
                    rf.put(meta, name, values, settings=settings,
                           seconds=time.perf_counter() - t1)
                    computed.append((cid, name))
                bar.update(1)
    finally:
        bar.close()
    return AnalyzeResult(
        out=rf.path.resolve(), results=rf.load(), computed=tuple(computed), reused=tuple(reused),
        skipped=tuple(skipped), options=opts, seconds=time.perf_counter() - t0,
    )


def options_dict(o: AnalyzeOptions) -> dict[str, Any]:
    """The options as plain values."""
    return asdict(o)
