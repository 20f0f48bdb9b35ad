"""geomkit: loss-geometry analysis for PyTorch.

Train with SAM or a vanilla optimizer, then measure how sharp the minimum is and why:
Hessian λ_max per parameter block (:mod:`geomkit.geometry.hessian`), the NTK condition
number (:mod:`geomkit.geometry.ntk`), activation sparsity and norms
(:mod:`geomkit.geometry.activations`), accuracy under corruption
(:mod:`geomkit.geometry.robustness`) and filter-normalized loss landscapes
(:mod:`geomkit.geometry.landscape`).

>>> import geomkit
>>> ck = geomkit.load_checkpoint("runs/quick/runs/vit-tiny-sam-s0/last.pt")  # doctest: +SKIP
>>> x, y = ck.analysis_data("train", n=512)                                  # doctest: +SKIP
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import geomkit` stays cheap and free of torch until something is used
    if name in ("load_checkpoint", "save_checkpoint", "Checkpoint"):
        from geomkit import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'geomkit' has no attribute {name!r}")


__all__ = ["__version__", "load_checkpoint", "save_checkpoint", "Checkpoint"]
