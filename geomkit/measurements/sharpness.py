"""``sharpness``: L_train, L^N_train and adaptive worst-case m-sharpness beside λ_max.

:func:`geomkit.geometry.sharpness.sharpness` on the first ``samples`` training examples
(the Hessian's examples, BatchNorm in eval mode, the same seed):

- L_train and L^N_train = E_δ L(w+δ), δ ~ N(0, σ² I) (``noise_sigma``, ``noise_draws``
  draws per batch of ``sharpness_m``), the paper's Table 1 pair;
- S_max: adaptive (c = |w|) worst-case m-sharpness, ℓ2 or ℓ∞ (``sharpness_p``), radius
  ``sharpness_rho``, ``sharpness_steps`` Auto-PGD steps (Andriushchenko et al. 2023).

``sharpness_blocks = "paper"`` measures S_max per Table-3 block too (a Table-3-style
sharpness row; ``geomkit sharpness --blocks paper`` prints it). Table 1 gains the rows
L_train, L^N_train and S_max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.errors import SpecError
from geomkit.measurements import Measurement, TableEntry, option, register
from geomkit.measurements import _common as common
from geomkit.measurements._common import Options, model, with_loss


def _check_p(v: Any) -> None:
    if str(v) not in ("2", "inf"):
        raise SpecError(f"sharpness_p must be 2 or inf, got {v!r}", param="sharpness_p")


def _positive(name: str) -> Any:
    def check(v: Any) -> None:
        if v is None:
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
            raise SpecError(f"{name} must be a number > 0, got {v!r}", param=name)

    return check


def _check_blocks(v: Any) -> None:
    if v not in ("whole", "paper"):
        raise SpecError(f"sharpness_blocks must be whole or paper, got {v!r}",
                        param="sharpness_blocks")


@dataclass(frozen=True)
class SharpnessOptions(Options):
    samples: int = common.samples()
    loss: str = common.loss()
    sharpness_m: int = option(128, "examples per set S of m-sharpness (the first samples, "
                              "in batches of M)", metavar="M", minimum=1)
    sharpness_rho: float | None = option(
        None, "radius of the adaptive worst case, ‖δ/|w|‖_p <= RHO (default: 0.5 for p 2, "
        "1e-3 for inf)", metavar="RHO", none_ok=True, check=_positive("sharpness_rho"))
    sharpness_p: str = option("2", "norm of the worst case: 2 or inf", metavar="P",
                              check=_check_p)
    sharpness_steps: int = option(20, "Auto-PGD steps of the worst case", metavar="K",
                                  minimum=1)
    noise_sigma: float = option(0.01, "standard deviation of the weight noise of L^N_train",
                                metavar="SIGMA", check=_positive("noise_sigma"))
    noise_draws: int = option(8, "noise draws per batch for L^N_train", metavar="D",
                              minimum=1)
    sharpness_blocks: str = option("whole", "whole, or paper (also each Table-3 block)",
                                   check=_check_blocks)
    seed: int = common.seed()
    device: str | None = common.device()


def _rho(o: SharpnessOptions) -> float:
    from geomkit.geometry.sharpness import default_rho

    return float(o.sharpness_rho if o.sharpness_rho is not None
                 else default_rho("worst", True, str(o.sharpness_p)))


def _settings(ck: Any, o: SharpnessOptions) -> dict[str, Any]:
    return with_loss({"samples": o.samples, "m": o.sharpness_m, "rho": _rho(o),
                      "p": str(o.sharpness_p), "steps": o.sharpness_steps,
                      "sigma": o.noise_sigma, "draws": o.noise_draws,
                      "blocks": o.sharpness_blocks, "seed": o.seed, "bn": "eval",
                      "adaptive": True}, o)


def _run(ck: Any, o: SharpnessOptions) -> dict[str, Any]:
    from geomkit.geometry.sharpness import sharpness

    x, y = ck.analysis_data("train", o.samples)
    net = model(ck, o)
    m = min(o.sharpness_m, len(x))
    kw = dict(m=m, loss=o.loss, seed=o.seed)
    noise = sharpness(net, x, y, kind="avg", rho=o.noise_sigma, draws=o.noise_draws, **kw)
    blocks = ("paper", "whole") if o.sharpness_blocks == "paper" else ("whole",)
    worst = sharpness(net, x, y, kind="worst", adaptive=True, rho=_rho(o),
                      p=str(o.sharpness_p), steps=o.sharpness_steps, blocks=blocks, **kw)
    w = noise.blocks["whole"]
    names = list(worst.blocks)
    return {
        "blocks": names,
        "loss": w.loss,
        "noise_loss": w.perturbed_loss,
        "noise_gap_stderr": w.stderr,  # of L^N − L (the noise draws' spread)
        "worst": {b: worst.blocks[b].value for b in names},
        "worst_stderr": {b: worst.blocks[b].stderr for b in names},
        "n_params": {b: worst.blocks[b].n_params for b in names},
        "n_samples": worst.n_samples,
        "m": m,
    }


def _get(r: Any, key: str) -> Any:
    return r.get(f"sharpness.{key}")


def _view(r: Any) -> dict[str, Any]:
    worst = _get(r, "worst")
    if not isinstance(worst, dict):
        return {}
    return {"l_train": float(_get(r, "loss")), "l_noise": float(_get(r, "noise_loss")),
            "sharpness": {k: float(v) for k, v in worst.items()}}


def _notes(table: int, records: Any) -> list[str]:
    if table != 1:
        return []
    for r in records:
        if _get(r, "worst") is not None:
            s = r.measurements["sharpness"].settings
            return [f"L^N_train: loss under N(0, {s.get('sigma'):g}²) weight noise; "
                    f"S_max: adaptive ℓ{'∞' if s.get('p') == 'inf' else '2'} worst-case "
                    f"m-sharpness, ρ = {s.get('rho'):g}, m = {s.get('m')}, "
                    f"{s.get('steps')} Auto-PGD steps (Andriushchenko et al. 2023)."]
    return []


MEASUREMENT = register(Measurement(
    name="sharpness", description="L_train, L^N_train and adaptive worst-case sharpness",
    options=SharpnessOptions, run=_run, settings=_settings, view=_view, notes=_notes,
    order=32,
    schema=("blocks", "loss", "noise_loss", "noise_gap_stderr", "worst", "worst_stderr",
            "n_params", "n_samples", "m"),
    entries=(
        TableEntry(1, "l_train", "L_train", lambda r: _get(r, "loss"), 32, optional=True),
        TableEntry(1, "l_noise", "L^N_train", lambda r: _get(r, "noise_loss"), 33,
                   optional=True),
        TableEntry(1, "sharpness", "S_max (adaptive)",
                   lambda r: (_get(r, "worst") or {}).get("whole"), 34, optional=True),
    ),
))
