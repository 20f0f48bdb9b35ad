"""Running a study: train → analyze → landscapes → report, everything under one directory.

Layout of ``DIR``::

    study.json                 the resolved study config and the accuracy table
    runs/<run>/last.pt         one checkpoint per run (<model>-<optimizer>[-subsetF]-s<seed>)
    results.h5                 stage 2: geomkit.analyze results (resumable per measurement)
    density/<run>.h5           stage 2: Hessian spectral density of the whole model
    landscapes/<run>.h5        stage 3: filter-normalized 2-D surface of each run Figure 1 shows
                               (first seed, largest subset; resumable per point)
    figures/*.png|pdf          stage 4: landscape grid, λ_max bars, sparsity, densities, -C
    report.md, report.html     stage 4: tables side by side with the paper, findings

Every stage reuses finished work: a run whose checkpoint reached its last epoch is not
retrained (an interrupted one resumes), a measurement already in ``results.h5`` is not
recomputed, a landscape continues at the first missing grid point. ``force=True`` redoes
the selected stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geomkit.errors import CheckpointError, SpecError
from geomkit.study import stages as _stages
from geomkit.study._log import log as _log
from geomkit.study.config import RunSpec, StudyConfig, load_study_config, model_family

#: The stages of a study, in order.
STAGES: tuple[str, ...] = ("train", "analyze", "landscape", "report")

#: Training-config fields that must match for a stored checkpoint to count as the run's.
_MATCH_KEYS = ("model", "optimizer", "base_optimizer", "lr", "weight_decay", "momentum", "rho",
               "epochs", "batch_size", "warmup_epochs", "schedule", "label_smoothing",
               "grad_clip", "seed", "steps", "warmup_steps", "augreg", "augmix",
               "augmix_severity", "jsd_weight", "loss")


@dataclass(frozen=True)
class RunRecord:
    """One run of a study after stage 1.

    Attributes:
        spec: the run's definition.
        checkpoint: ``DIR/runs/<run>/last.pt``.
        status: ``trained`` (this call, from scratch), ``resumed`` (continued an
            interrupted run), ``reused`` (finished before), ``missing`` (not trained:
            the train stage was not selected) or ``external`` (a ``[[checkpoints]]``
            entry: measured where it lies, never trained).
        test_acc, train_loss: final metrics (NaN when missing).
        epochs: epochs completed.
        train_seconds: training wall time (over all sessions of the run).
    """

    spec: RunSpec
    checkpoint: Path
    status: str
    test_acc: float = float("nan")
    train_loss: float = float("nan")
    epochs: int = 0
    train_seconds: float = float("nan")

    @property
    def name(self) -> str:
        return self.spec.name

    def row(self) -> dict[str, Any]:
        """A flat, JSON-able row of the accuracy table."""
        return {"run": self.name, "model": self.spec.model, "family": self.spec.family,
                "optimizer": self.spec.optimizer,
                "subset": self.spec.subset, "seed": self.spec.seed, "epochs": self.epochs,
                "test_acc": self.test_acc, "train_loss": self.train_loss,
                "train_seconds": self.train_seconds, "status": self.status}


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` did and where everything is.

    Attributes:
        config: the study.
        out_dir: its directory.
        runs: one :class:`RunRecord` per run, in the study's order.
        stages: the stages run by this call.
        results: ``DIR/results.h5`` when stage 2 has produced it, else None.
        landscapes: run name → surface file, for the runs that have one.
        figures: figure name → PNG path.
        report: ``DIR/report.md`` when written, else None.
        seconds: wall time per stage of this call.
    """

    config: StudyConfig
    out_dir: Path
    runs: tuple[RunRecord, ...]
    stages: tuple[str, ...]
    results: Path | None = None
    landscapes: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def accuracy_rows(self) -> list[dict[str, Any]]:
        """The accuracy table: one row per run."""
        return [r.row() for r in self.runs]


def parse_stages(stages: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"train,analyze"`` or a list → the stages in canonical order (None = all)."""
    if stages is None:
        return STAGES
    items = stages.split(",") if isinstance(stages, str) else list(stages)
    items = [s.strip() for s in items if s.strip()]
    bad = [s for s in items if s not in STAGES]
    if bad or not items:
        raise SpecError(f"unknown stage(s) {', '.join(bad) or '(none)'}; "
                        f"valid: {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in items)


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Valid JSON, written atomically (:func:`geomkit.io.write_json`: NaN as null)."""
    from geomkit.io import write_json

    write_json(path, obj, indent=1)


# -- stage 1: training ---------------------------------------------------------------------

def _mismatch(run: RunSpec, ck: Any) -> str | None:
    """Why a stored checkpoint is not this run's (None if it is)."""
    from geomkit.data import DataSpec
    from geomkit.train import TrainConfig

    want = run.train_config.resolved(model_family(run.model)).to_dict()
    # a checkpoint from before a field existed was trained with its default
    have = TrainConfig().to_dict() | ck.config
    for k in _MATCH_KEYS:
        if k == "epochs" and want.get("steps") is not None:
            continue  # a step budget's epochs follow from the data (the stored ones count)
        a, b = have.get(k), want.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if float(a) != float(b):
                return f"{k}={a} (the study asks for {b})"
        elif a != b:
            return f"{k}={a!r} (the study asks for {b!r})"
    stored_kw = ck.model_kwargs
    for k, v in run.train_config.model_kwargs.items():
        if stored_kw.get(k) != v:
            return f"model argument {k}={stored_kw.get(k)!r} (the study asks for {v!r})"
    if ck.data_spec != DataSpec.from_dict(run.train_config.data):
        return "another data spec"
    return None


def _finished(run: RunSpec, ck: Any) -> bool:
    """Whether a stored checkpoint (of this run, see :func:`_mismatch`) reached its end: the
    study's epochs, or under a step budget the epochs that budget resolved to when the run
    started (``ck.config["epochs"]``; the study cannot know them without the data)."""
    assert run.train_config is not None
    if run.train_config.steps is not None:
        return ck.epoch >= int(ck.config.get("epochs", 0)) > 0
    return ck.epoch >= run.train_config.epochs


def _record(run: RunSpec, path: Path, status: str, ck: Any) -> RunRecord:
    m = ck.metrics
    return RunRecord(run, path, status, test_acc=float(m.get("test_acc", float("nan"))),
                     train_loss=float(m.get("train_loss", float("nan"))), epochs=int(ck.epoch),
                     train_seconds=float(m.get("train_seconds", float("nan"))))


def train_stage(config: StudyConfig, out_dir: str | Path, *, force: bool = False,
                train: bool = True, progress: bool = True) -> list[RunRecord]:
    """Stage 1: make sure every run has a finished checkpoint under ``out_dir/runs``.

    A checkpoint that reached its last epoch is reused; an interrupted one is resumed
    (``geomkit.train.train(..., resume=True)``); ``force`` retrains from scratch. With
    ``train=False`` nothing is trained and the runs are only inspected.

    Raises:
        SpecError: a stored checkpoint was trained with other settings than the study's
            (retrain with ``force`` or use another directory).
    """
    from geomkit.checkpoint import load_checkpoint
    from geomkit.train import train as train_run

    out_dir = Path(out_dir)
    runs = config.runs()
    # every [[checkpoints]] file is read before anything trains: a typo costs nothing, and
    # a file the study would write itself (a trained run's last.pt) is refused
    own = {(out_dir / "runs" / r.name / "last.pt").resolve(): r.name
           for r in runs if not r.external}
    external = {}
    for run in runs:
        if run.external:
            assert run.checkpoint is not None
            if run.checkpoint.resolve() in own:
                raise SpecError(f"[[checkpoints]] {run.checkpoint} is the checkpoint of the "
                                f"study's own run {own[run.checkpoint.resolve()]}, which "
                                "training writes; list only checkpoints trained elsewhere")
            external[run.name] = _external_record(run)
    records = []
    for i, run in enumerate(runs):
        if run.external:
            records.append(external[run.name])
            continue
        rdir = out_dir / "runs" / run.name
        path = rdir / "last.pt"
        # --force retrains over the old run, which stays whole until each new checkpoint
        # atomically replaces it (deleting it first loses it on a full disk)
        retrain = force and train
        ck = None
        if path.exists() and not retrain:
            try:
                ck = load_checkpoint(path)
            except CheckpointError:
                if not train:
                    raise
                _log(progress, f"{run.name}: unreadable checkpoint, training again")
                retrain = True
        if ck is not None:
            why = _mismatch(run, ck)
            if why:
                raise SpecError(f"{path} was trained with {why}; pass force to retrain or "
                                "use another output directory", param="force")
            if _finished(run, ck):
                records.append(_record(run, path, "reused", ck))
                continue
        if not train:
            records.append(_record(run, path, "missing", ck) if ck is not None
                           else RunRecord(run, path, "missing"))
            continue
        status = "resumed" if ck is not None else "trained"
        _log(progress, f"train {i + 1}/{len(runs)}: {run.name}"
             + (f" (resuming at epoch {ck.epoch})" if ck is not None else ""))
        # no mkdir here: the checkpoint writer makes the directory (and removes it again
        # when the first write fails)
        train_run(run.train_config, rdir, resume=not retrain, overwrite=retrain,
                  progress=progress, callbacks=track_callbacks(config, rdir))
        records.append(_record(run, path, status, load_checkpoint(path)))
    return records


def track_callbacks(config: StudyConfig, run_dir: Path) -> list:
    """The ``[track]`` callbacks of one trained run: the sharpness tracker
    (``run_dir/track.h5``) and the snapshot writer (``run_dir/snapshots.h5``)."""
    t = config.track
    out: list = []
    if t.every:
        from geomkit.geometry.track import SharpnessTracker

        out.append(SharpnessTracker(t.samples, every=t.every, test=t.test_samples,
                                    out=run_dir / "track.h5", tol=t.tol))
    if t.snapshot_every:
        from geomkit.train.snapshots import SnapshotWriter

        out.append(SnapshotWriter(run_dir, t.snapshot_every))
    return out


def _external_record(run: RunSpec) -> RunRecord:
    """A ``[[checkpoints]]`` entry, read (so a missing or broken file stops the study before
    any measurement) and never written: its family is the model's own unless labelled."""
    from geomkit.checkpoint import load_checkpoint
    from geomkit.models import family

    assert run.checkpoint is not None
    if not run.checkpoint.is_file():
        raise SpecError(f"[[checkpoints]] {run.checkpoint}: no such checkpoint file")
    try:
        ck = load_checkpoint(run.checkpoint)
    except CheckpointError as e:
        raise SpecError(f"[[checkpoints]] {e}") from None
    if not run.known_family:
        run = replace(run, known_family=family(ck.model))
    return _record(run, run.checkpoint, "external", ck)


def _stored_path(path: Path, out_dir: Path) -> str:
    """A run's checkpoint as study.json keeps it: relative inside the study directory (it
    can move), absolute outside (a ``[[checkpoints]]`` file)."""
    try:
        return str(path.relative_to(out_dir))
    except ValueError:
        return str(path.resolve())


# -- the study -----------------------------------------------------------------------------

def _save_state(config: StudyConfig, out_dir: Path, records: Sequence[RunRecord]) -> None:
    from geomkit.provenance import provenance

    _write_json_atomic(out_dir / "study.json", {
        "format": "geomkit-study/1",
        "config": config.to_dict(),
        "runs": [r.row() | {"checkpoint": _stored_path(r.checkpoint, out_dir)}
                 for r in records],
        "provenance": provenance(),
    })


def run_study(
    config: StudyConfig | str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    stages: str | Sequence[str] | None = None,
    progress: bool = True,
) -> StudyResult:
    """Run a study into ``out_dir``: train, analyze, draw landscapes, write the report.

    Args:
        config: a :class:`StudyConfig`, a preset name or a study file.
        out_dir: the study directory (created).
        force: redo the selected stages instead of reusing finished work.
        stages: subset of :data:`STAGES` (a list or ``"train,analyze"``); None = all.
            Later stages use whatever earlier stages left in ``out_dir``.
        progress: progress bars and stage messages on stderr.

    ``config.threads`` (when not 0) sets torch's intra-op threads for the call and
    restores them afterwards.

    Returns:
        A :class:`StudyResult` (accuracy table in :meth:`StudyResult.accuracy_rows`).
    """
    if not isinstance(config, StudyConfig):
        config = load_study_config(config)
    selected = parse_stages(stages)
    if config.threads:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            return _run(config, out_dir, force, selected, progress)
        finally:
            torch.set_num_threads(before)
    return _run(config, out_dir, force, selected, progress)


def _run(config: StudyConfig, out_dir: str | Path, force: bool, selected: tuple[str, ...],
         progress: bool) -> StudyResult:
    out_dir = Path(out_dir)  # made by its first write (nothing left when that fails)
    seconds: dict[str, float] = {}
    extra: dict[str, Any] = {}

    t = time.perf_counter()
    records = train_stage(config, out_dir, force=force, train="train" in selected,
                          progress=progress)
    if "train" in selected:
        seconds["train"] = time.perf_counter() - t
    _save_state(config, out_dir, records)
    ready = [r for r in records if r.status != "missing"]


    stage_fns: dict[str, Callable[..., dict[str, Any]]] = {
        "analyze": _stages.analyze_stage, "landscape": _stages.landscape_stage,
        "report": _stages.report_stage}
    for name in ("analyze", "landscape", "report"):
        if name not in selected:
            continue
        t = time.perf_counter()
        extra.update(stage_fns[name](config, out_dir, ready, force=force, progress=progress))
        seconds[name] = time.perf_counter() - t

    return StudyResult(
        config=config, out_dir=out_dir, runs=tuple(records), stages=selected,
        results=extra.get("results"), landscapes=dict(extra.get("landscapes", {})),
        figures=dict(extra.get("figures", {})), report=extra.get("report"), seconds=seconds,
    )
