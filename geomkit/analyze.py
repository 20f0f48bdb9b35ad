"""Turn checkpoints into the measurements of the paper's Tables 1 and 3, into one HDF5 file.

:func:`analyze` runs the registered measurements (:mod:`geomkit.measurements`: ``params``,
``ntk_init``, ``hessian``, ``activations``, ``robustness`` by default, and any other module
there when named) on every checkpoint and writes each one to the results file
(:mod:`geomkit.results`) as soon as it is finished.  A measurement already in the file with
the same settings is skipped, so an interrupted job resumes where it stopped;
``force=True`` recomputes.  A measurement in the file computed with *other* settings is
refused (one table never mixes settings).  The options (``samples``, ``hessian_tol``, ...)
are the measurements' own (:func:`geomkit.measurements.option_fields`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomkit import measurements as registry
from geomkit.checkpoint import Checkpoint, load_checkpoint
from geomkit.errors import CheckpointError, ResultFileError, SpecError
from geomkit.io import probe_writable
from geomkit.results import Results, ResultsFile, checkpoint_id

__all__ = ["AnalyzeResult", "analyze"]


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
        options: the options used, by name (defaults filled in).
        seconds: wall time.
    """

    out: Path
    results: Results
    computed: tuple[tuple[str, str], ...]
    reused: tuple[tuple[str, str], ...]
    skipped: tuple[tuple[str, str], ...]
    options: dict[str, Any]
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
    checkpoints: Iterable[str | Path | Checkpoint],
    out: str | Path,
    *,
    measurements: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
    **options: Any,
) -> AnalyzeResult:
    """Measure every checkpoint and write the results to ``out`` (HDF5) as they finish.

    Args:
        checkpoints: checkpoint files (or run directories holding ``last.pt``).
        out: results file; created with the first finished measurement if missing (a
            job that fails before leaves nothing behind), resumed if present.
        measurements: registered names (None: the default ones, in run order).
        force: recompute measurements already in the file (and replace ones stored with
            other settings).
        progress: one tqdm bar on stderr over every (checkpoint, measurement).
        **options: the measurements' options by name (``samples``, ``ntk_samples``,
            ``ntk_repeats``, ``test_samples``, ``hessian_tol``, ``hessian_max_iter``,
            ``batch_size``, ``seed``, ``device``, ...); unset ones take their defaults.

    Returns:
        An :class:`AnalyzeResult`.

    Raises:
        CheckpointError: a missing or unreadable checkpoint (checked before any work).
        ResultFileError: ``out`` is not a results file, or holds a measurement of one of
            these checkpoints computed with other settings (use ``force``); ``out``
            cannot be written (read-only, full disk: before the first measurement is
            computed where that shows, else when it is written, the file as it was).
        SpecError: bad options, an unknown option or measurement name.
    """
    t0 = time.perf_counter()
    reg = registry.registry()
    names = (registry.default_measurements() if measurements is None
             else list(dict.fromkeys(measurements)))
    unknown = [n for n in names if n not in reg]
    if unknown or not names:
        raise SpecError(f"unknown measurement(s) {unknown or '(none)'}; valid: "
                        f"{', '.join(reg)}")
    registry.check_option_names(options)
    # validate every option before any work (each measurement's dataclass checks its own)
    opts = {n: registry.build_options(n, options) for n in names}
    resolved = {k: v for n in names for k, v in vars(opts[n]).items()}
    # paths, or checkpoints already in memory (geomkit.imported.import_weights)
    paths = [p if isinstance(p, Checkpoint) else Path(p) for p in checkpoints]
    if not paths:
        raise CheckpointError("no checkpoints given")
    for p in paths:
        if isinstance(p, Path) and not p.exists():
            raise CheckpointError(f"no such checkpoint: {p}")
    rf = ResultsFile(out, create=False)  # validates an existing out; writes nothing yet
    for p in paths:  # every checkpoint readable before any work (and before out exists)
        load_checkpoint(p)
    probed = False

    def writable() -> None:  # before the first result is computed: fail fast, not after it
        nonlocal probed
        if not probed:
            probe_writable(rf.path)
            probed = True

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
                spec = reg[name]
                bar.set_postfix_str(f"{ck.label}: {name}")
                settings = _normalized(spec.settings(ck, opts[name]))
                have = rf.get(cid, name)
                if have is not None and not force:
                    if have.settings != settings:
                        raise ResultFileError(
                            f"{rf.path} holds {name} of {ck.label} computed with other "
                            f"settings ({_differences(have.settings, settings)}); force "
                            f"recomputes it, another results file keeps both", param="force")
                    skipped.append((cid, name))
                    bar.update(1)
                    continue
                found = rf.find(name, settings) if spec.per_architecture and not force else None
                writable()
                if found is not None:
                    src, m = found
                    rf.put(meta, name, m.values, settings=settings, seconds=0.0,
                           provenance_extra={"reused_from": src})
                    reused.append((cid, name))
                else:
                    t1 = time.perf_counter()
                    values = spec.run(ck, opts[name])
                    spec.check_values(values)
                    rf.put(meta, name, values, settings=settings,
                           seconds=time.perf_counter() - t1)
                    computed.append((cid, name))
                bar.update(1)
    finally:
        bar.close()
    return AnalyzeResult(
        out=rf.path.resolve(), results=rf.load(), computed=tuple(computed), reused=tuple(reused),
        skipped=tuple(skipped), options=resolved, seconds=time.perf_counter() - t0,
    )
