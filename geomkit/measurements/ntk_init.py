"""``ntk_init``: NTK κ at initialization of the checkpoint's architecture (Table 1).

:func:`geomkit.geometry.ntk.ntk_at_init` in ``sum`` mode with BatchNorm in train mode
(TE-NAS), float64, on the first ``ntk_samples`` training examples, mean over
``ntk_repeats`` seeds; shared by checkpoints of one architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomkit.measurements import Measurement, TableEntry, option, register
from geomkit.measurements._common import Options, device, seed


@dataclass(frozen=True)
class NTKInitOptions(Options):
    ntk_samples: int = option(64, "examples for the NTK at initialization (kernel M x M)",
                              metavar="M", minimum=1)
    ntk_repeats: int = option(3, "initializations averaged for kappa", metavar="R", minimum=1)
    seed: int = seed()
    device: str | None = device()


def _settings(ck: Any, o: NTKInitOptions) -> dict[str, Any]:
    return {
        "model": ck.model_name, "model_kwargs": ck.model_kwargs,
        "data": ck.data_spec.replace(augment=False, subset=1.0).to_dict(),
        "samples": o.ntk_samples, "repeats": o.ntk_repeats, "seed": o.seed,
        "mode": "sum", "bn": "train", "dtype": "float64",
    }


def _run(ck: Any, o: NTKInitOptions) -> dict[str, Any]:
    import torch

    from geomkit.geometry.ntk import ntk_at_init

    x, _ = ck.analysis_data("train", o.ntk_samples)

    def factory(seed: int) -> Any:
        from geomkit.device import resolve_device

        m = ck.fresh_model(seed)
        return m if o.device is None else m.to(resolve_device(o.device))

    # float64: the kernels of small models are too ill-conditioned for float32 (κ ~ 1e6,
    # λ_min at float32 round-off of λ_max gives κ = inf); see docs/benchmarks/ntk.md.
    r = ntk_at_init(factory, x, repeats=o.ntk_repeats, seed=o.seed, mode="sum", bn="train",
                    dtype=torch.float64)
    return {
        "kappa": r.kappa, "kappa_std": r.kappa_std, "lambda_max": r.lambda_max,
        "lambda_min": r.lambda_min, "kappas": [float(x.kappa) for x in r.results],
        "seeds": list(r.seeds), "samples": r.n_samples,
    }


def _view(r: Any) -> dict[str, Any]:
    k = r.get("ntk_init.kappa")
    return {} if k is None else {"kappa_init": float(k)}


MEASUREMENT = register(Measurement(
    name="ntk_init", description="NTK condition number at initialization",
    options=NTKInitOptions, run=_run, settings=_settings, per_architecture=True, order=20,
    schema=("kappa", "kappa_std", "lambda_max", "lambda_min", "kappas", "seeds", "samples"),
    view=_view,
    entries=(TableEntry(1, "kappa", "NTK κ (at init)", lambda r: r.get("ntk_init.kappa"), 20,
                        paper=r"ntk"),),
))
