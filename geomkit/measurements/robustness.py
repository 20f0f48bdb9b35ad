"""``robustness``: clean and corrupted top-1 accuracy (Table 1's top-1 and -C).

:func:`geomkit.geometry.robustness.robustness` on the first ``test_samples`` test examples
(None: the whole split): 8 corruptions × severities 1-5, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, option, register
from geomkit.measurements._common import Options, device, model, seed


@dataclass(frozen=True)
class RobustnessOptions(Options):
    test_samples: int | None = option(None, "test examples for the accuracies (None: the "
                                      "whole test split)", metavar="T", minimum=1,
                                      none_ok=True)
    seed: int = seed()
    device: str | None = device()


def _settings(ck: Any, o: RobustnessOptions) -> dict[str, Any]:
    from geomkit.data import CORRUPTIONS

    return {"test_samples": o.test_samples, "seed": o.seed, "corruptions": list(CORRUPTIONS),
            "severities": [1, 2, 3, 4, 5]}


def _run(ck: Any, o: RobustnessOptions) -> dict[str, Any]:
    from geomkit.geometry.robustness import robustness

    x, y = ck.analysis_data("test", o.test_samples)
    r = robustness(model(ck, o), x, y, normalization=ck.data_spec, seed=o.seed)
    s = r.summary()
    s.pop("seconds")
    return s


def _pct(key: str) -> Any:
    def value(r: Any) -> Any:
        v = r.get(f"robustness.{key}")
        return None if v is None else 100.0 * float(v)

    return value


def _notes(table: int, records: Any) -> list[str]:
    if table != 1 or not records:
        return []
    sources = sorted({str(r.data_spec.get("source", "?")) for r in records})
    counts = sorted({int(n) for r in records if (n := r.get("robustness.n_samples")) is not None})
    on = (f"the first {counts[0]} {'/'.join(sources)} test examples"
          if len(counts) == 1 else f"the {'/'.join(sources)} test split")
    return [f"Accuracy: top-1 on {on}, clean and mean over 8 corruptions × severities 1–5 (-C)."]


def _view(r: Any) -> dict[str, Any]:
    g = r.get
    if g("robustness.clean") is None:
        return {}
    return {"clean": float(g("robustness.clean")),
            "mean_corrupted": float(g("robustness.mean_corrupted")),
            "per_corruption": {k: float(v) for k, v in
                               (g("robustness.per_corruption") or {}).items()}}


MEASUREMENT = register(Measurement(
    name="robustness", description="clean and corrupted test accuracy",
    options=RobustnessOptions, run=_run, settings=_settings, view=_view, notes=_notes,
    order=50,
    schema=("clean", "mean_corrupted", "per_corruption", "accuracy", "severities", "n_samples",
            "seed"),
    entries=(
        TableEntry(1, "top1", "Top-1 (%)", _pct("clean"), 40, kind="pct", paper=r"top-1"),
        TableEntry(1, "top1_c", "-C (%)", _pct("mean_corrupted"), 50, kind="pct",
                   paper=r"-c \(%\)$|-c$"),
    ),
))
