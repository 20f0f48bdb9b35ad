"""``hessian``: λ_max of the Table-3 diagonal Hessian blocks and of the whole Hessian.

:func:`geomkit.geometry.hessian.hessian_eigs` with blocks ``paper`` on the first
``samples`` training examples (Lanczos, BatchNorm in eval mode). Feeds Table 1's
"Hessian λ_max" (the whole model) and Table 3's block columns (Block first / mid / last are
blocks ``paper_block_indices(depth)``: 1, 6, 12 of a 12-block model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, option, register
from geomkit.measurements import _common as common
from geomkit.measurements._common import Options, model, with_loss


@dataclass(frozen=True)
class HessianOptions(Options):
    samples: int = common.samples()
    loss: str = common.loss()
    hessian_tol: float = option(1e-3, "Lanczos relative tolerance for lambda_max",
                                flag="--tol", minimum=0)
    hessian_max_iter: int = option(100, "Lanczos steps per block at most", flag="--max-iter",
                                   minimum=1)
    batch_size: int | None = common.batch_size()
    seed: int = common.seed()
    device: str | None = common.device()


def _settings(ck: Any, o: HessianOptions) -> dict[str, Any]:
    return with_loss({"samples": o.samples, "blocks": "paper", "tol": o.hessian_tol,
                      "max_iter": o.hessian_max_iter, "seed": o.seed, "bn": "eval"}, o)


def _run(ck: Any, o: HessianOptions) -> dict[str, Any]:
    from geomkit.geometry.blocks import block_depth
    from geomkit.geometry.hessian import hessian_eigs

    x, y = ck.analysis_data("train", o.samples)
    m = model(ck, o)
    r = hessian_eigs(m, x, y, loss=o.loss, blocks=("paper",), tol=o.hessian_tol,
                     max_iter=o.hessian_max_iter, batch_size=o.batch_size, seed=o.seed)
    names = list(r.blocks)
    return {
        "blocks": names,
        "depth": block_depth(m),
        "lambda_max": {b: r.blocks[b].lambda_max for b in names},
        "residual": {b: r.blocks[b].residual for b in names},
        "n_hvps": {b: r.blocks[b].n_hvps for b in names},
        "converged": {b: bool(r.blocks[b].converged) for b in names},
        "n_params": {b: r.blocks[b].n_params for b in names},
        "strategy": r.strategy,
    }


def _lam(r: Any) -> dict[str, float]:
    return r.get("hessian.lambda_max", {}) or {}


def _block(which: int) -> Any:
    """Block first (0), mid (1) or last (2) of the paper's Table 3."""

    def value(r: Any) -> Any:
        from geomkit.geometry.blocks import paper_block_indices

        depth = int(r.get("hessian.depth") or 0)
        return _lam(r).get(f"block{paper_block_indices(depth)[which]}") if depth else None

    return value


def _notes(table: int, records: Any) -> list[str]:
    if table != 3:
        return []
    from geomkit.geometry.blocks import paper_block_indices

    depths: dict[str, str] = {}
    for r in records:
        d = int(r.get("hessian.depth") or r.get("activations.depth") or 0)
        if d:
            depths.setdefault(r.model, "/".join(map(str, paper_block_indices(d))))
    if not depths:
        return []
    return ["Block 1/mid/last (and a_1/a_mid/a_last): "
            + "; ".join(f"{m} {b}" for m, b in depths.items())
            + ". a_k = mean over examples of ‖block k output‖₂."]


def _view(r: Any) -> dict[str, Any]:
    lam = r.get("hessian.lambda_max")
    if not isinstance(lam, dict):
        return {}
    return {"lambda_max": {k: float(v) for k, v in lam.items()},
            "hessian_depth": int(r.get("hessian.depth", 0) or 0)}


MEASUREMENT = register(Measurement(
    name="hessian", description="Hessian lambda_max per Table-3 block", options=HessianOptions,
    run=_run, settings=_settings, view=_view, notes=_notes, order=30,
    schema=("blocks", "depth", "lambda_max", "residual", "n_hvps", "converged", "n_params",
            "strategy"),
    entries=(
        TableEntry(1, "lambda_max", "Hessian λ_max", lambda r: _lam(r).get("whole"), 30,
                   paper=r"hessian"),
        *(TableEntry(3, key, label, value, order, paper=col, group="lambda_max")
          for key, label, value, order, col in (
              ("embedding", "Embedding", lambda r: _lam(r).get("embedding"), 10, 1),
              ("attn", "MSA / Token MLP",
               lambda r: _lam(r).get("attn", _lam(r).get("token_mlp")), 20, 2),
              ("mlp", "MLP / Channel MLP",
               lambda r: _lam(r).get("mlp", _lam(r).get("channel_mlp")), 30, 3),
              ("block_first", "Block1", _block(0), 40, 4),
              ("block_mid", "Block mid", _block(1), 50, 5),
              ("block_last", "Block last", _block(2), 60, 6),
              ("whole", "Whole", lambda r: _lam(r).get("whole"), 70, 7))),
    ),
))
