"""``hessian_trace``: Hutchinson estimates of tr(H_BB) for the Table-3 blocks.

:func:`geomkit.geometry.spectrum.hutchinson_trace` on the first ``samples`` training
examples, ``trace_probes`` Rademacher probes per block, BatchNorm in eval mode:
tr(H_BB) ≈ (1/P) Σ_p z_pᵀ H_BB z_p, with its standard error. Not run by default
(``geomkit analyze --measure hessian_trace``, or ``measure`` in a study's ``[analysis]``);
when measured, Table 3 gains a "tr(H) whole" column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, option, register
from geomkit.measurements import _common as common
from geomkit.measurements._common import Options, model, with_loss


@dataclass(frozen=True)
class TraceOptions(Options):
    samples: int = common.samples()
    loss: str = common.loss()
    trace_probes: int = option(32, "Rademacher probes per block for the Hessian trace",
                               metavar="P", minimum=1)
    batch_size: int | None = common.batch_size()
    seed: int = common.seed()
    device: str | None = common.device()


def _run(ck: Any, o: TraceOptions) -> dict[str, Any]:
    from geomkit.geometry.spectrum import hutchinson_trace

    x, y = ck.analysis_data("train", o.samples)
    r = hutchinson_trace(model(ck, o), x, y, loss=o.loss, blocks=("paper",),
                         n_probes=o.trace_probes,
                         batch_size=o.batch_size, seed=o.seed)
    return {"blocks": list(r), "trace": {b: t.trace for b, t in r.items()},
            "stderr": {b: t.stderr for b, t in r.items()},
            "n_params": {b: t.n_params for b, t in r.items()}, "probes": o.trace_probes}


def _view(r: Any) -> dict[str, Any]:
    t = r.get("hessian_trace.trace")
    return {"trace": {k: float(v) for k, v in t.items()}} if isinstance(t, dict) else {}


MEASUREMENT = register(Measurement(
    name="hessian_trace", description="Hessian trace per Table-3 block (Hutchinson)",
    options=TraceOptions, run=_run, view=_view, default=False, order=35,
    settings=lambda ck, o: with_loss({"samples": o.samples, "blocks": "paper",
                                      "probes": o.trace_probes, "seed": o.seed, "bn": "eval"}, o),
    schema=("blocks", "trace", "stderr", "n_params", "probes"),
    entries=(TableEntry(3, "trace_whole", "tr(H) whole",
                        lambda r: (r.get("hessian_trace.trace", {}) or {}).get("whole"), 75,
                        optional=True),),
))
