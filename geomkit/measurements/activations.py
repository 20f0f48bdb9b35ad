"""``activations``: ‖w‖₂, block output norms ‖a_k‖₂ and activation sparsity (Table 3).

:func:`geomkit.geometry.activations.activation_stats` on the first ``samples`` training
examples; ‖a_k‖₂ of the first / middle / last block (``paper_block_indices``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, register
from geomkit.measurements._common import Options, device, model, samples


@dataclass(frozen=True)
class ActivationOptions(Options):
    samples: int = samples()
    device: str | None = device()


def _run(ck: Any, o: ActivationOptions) -> dict[str, Any]:
    from geomkit.geometry.activations import activation_stats
    from geomkit.geometry.blocks import paper_block_indices

    x, _ = ck.analysis_data("train", o.samples)
    s = activation_stats(model(ck, o), x)
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
        idx = dict(zip(("first", "mid", "last"), paper_block_indices(len(blocks)), strict=True))
        out["a_index"] = idx
        out["a"] = {k: blocks[i - 1].output_norm for k, i in idx.items()}
    return out


def _a(which: str) -> Any:
    return lambda r: (r.get("activations.a", {}) or {}).get(which)


def _view(r: Any) -> dict[str, Any]:
    g = r.get
    if g("activations.weight_norm") is None:
        return {}
    return {
        "weight_norm": float(g("activations.weight_norm")),
        "a": {k: float(v) for k, v in (g("activations.a") or {}).items()},
        "a_index": {k: int(v) for k, v in (g("activations.a_index") or {}).items()},
        "block_active_fraction": [float(v) for v in
                                  list(g("activations.block_active_fraction", []) or [])],
        "active_fraction": g("activations.active_fraction"),
    }


MEASUREMENT = register(Measurement(
    name="activations", description="weight norm, block output norms, sparsity",
    options=ActivationOptions, run=_run, settings=lambda ck, o: {"samples": o.samples},
    view=_view, order=40,
    schema=("weight_norm", "active_fraction", "dead", "neurons", "depth", "blocks",
            "block_output_norm", "block_active_fraction", "block_dead", "block_weight_norm",
            "a_index", "a"),
    entries=(
        TableEntry(3, "w", "‖w‖₂", lambda r: r.get("activations.weight_norm"), 80, paper=8),
        TableEntry(3, "a_first", "‖a_1‖₂", _a("first"), 90, paper=9),
        TableEntry(3, "a_mid", "‖a_mid‖₂", _a("mid"), 100, paper=10),
        TableEntry(3, "a_last", "‖a_last‖₂", _a("last"), 110, paper=11),
    ),
))
