"""Perturbation directions for loss landscapes, keyed by parameter name.

A direction ``d`` is a ``dict[str, Tensor]`` with one entry per trainable
parameter, named exactly as in ``model.state_dict()`` (``named_parameters``
names).  Buffers (BatchNorm running statistics, ...) never appear in a direction,
so they are never perturbed.

Filter normalization (Li et al., 2018, "Visualizing the Loss Landscape of Neural
Nets", Sec. 4, and ``net_plotter.normalize_direction`` of the reference tool): for a
weight ``W`` with at least two dimensions and a Gaussian direction ``D`` of the same
shape, every filter -- every slice along dim 0 -- is rescaled to the norm of the
same filter of the weights::

    D[i] <- D[i] * ||W[i]||_F / (||D[i]||_F + 1e-10)

Parameters with at most one dimension (biases, norm-layer scales and shifts) are
zeroed under ``ignore="biasbn"`` (the default) or, under ``ignore="none"``, kept
and rescaled as a whole, ``D <- D * ||W|| / (||D|| + 1e-10)`` -- one "filter".
(The reference copies ``W`` itself into ``D`` there; we keep a random direction
with ``W``'s norm, as Li et al. describe.)  ``norm="layer"`` rescales each whole
tensor, ``norm="none"`` keeps the raw Gaussian (the reference's default, a known
source of exploding / NaN surfaces for deep networks).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from geomkit.errors import CheckpointError, SpecError

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
EPS = 1e-10

Direction = dict[str, torch.Tensor]


def _check_options(norm: str, ignore: str) -> None:
    if norm not in NORMS:
        raise SpecError(f"unknown normalization {norm!r}; choose one of {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise SpecError(f"unknown ignore option {ignore!r}; choose one of {', '.join(IGNORES)}")


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters by state_dict name (detached views, not copies)."""
    return {name: p.detach() for name, p in model.named_parameters()}


def normalize_direction(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Direction:
    """Return a normalized copy of ``direction`` (see the module docstring).

    Args:
        direction: raw direction, one tensor per parameter name.
        weights: the weights ``W`` it is normalized against (same names and shapes).
        norm: ``filter`` (per dim-0 slice), ``layer`` (per tensor) or ``none``.
        ignore: ``biasbn`` zeroes parameters with ``dim <= 1``; ``none`` keeps them,
            rescaled as one filter (or left raw under ``norm="none"``).
    """
    _check_options(norm, ignore)
    out: Direction = {}
    for name, d in direction.items():
        # the result lives where the direction does (weights may be on another device)
        w = weights[name].to(d.device, d.dtype)
        if d.shape != w.shape:
            raise SpecError(
                f"direction {name!r} has shape {tuple(d.shape)}, weights {tuple(w.shape)}"
            )
        d = d.clone()
        if d.dim() <= 1:
            if ignore == "biasbn":
                d.zero_()
            elif norm != "none":
                d.mul_(w.norm() / (d.norm() + EPS))
        elif norm == "filter":
            dims = tuple(range(1, d.dim()))
            wn = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
            dn = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
            d.mul_(wn / (dn + EPS))
        elif norm == "layer":
            d.mul_(w.norm() / (d.norm() + EPS))
        out[name] = d
    return out


def random_direction(
    model: nn.Module,
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> Direction:
    """A seeded Gaussian direction, normalized against the model's weights.

    Entries are drawn from N(0, 1) on the CPU, in ``named_parameters`` order, for
    every parameter (also those later zeroed, so ``ignore`` does not change the
    other entries), then cast to each parameter's dtype and device and passed to
    :func:`normalize_direction`.  Either ``seed`` or a ``generator`` (for drawing
    several directions from one stream) decides the draw.
    """
    _check_options(norm, ignore)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    weights = model_weights(model)
    raw = {
        name: torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.device, w.dtype)
        for name, w in weights.items()
    }
    return normalize_direction(raw, weights, norm=norm, ignore=ignore)


def random_directions(
    model: nn.Module, count: int = 2, *, seed: int = 0, norm: str = "filter", ignore: str = "biasbn"
) -> list[Direction]:
    """``count`` directions drawn one after another from one generator seeded with ``seed``.

    The first equals ``random_direction(model, seed=seed, ...)``; in high dimension
    two of them are nearly orthogonal (cosine ~ 1/sqrt(#params)).
    """
    g = torch.Generator().manual_seed(int(seed))
    return [random_direction(model, generator=g, norm=norm, ignore=ignore) for _ in range(count)]


def interpolation_direction(model: nn.Module, target: nn.Module) -> Direction:
    """The straight line ``d = theta_target - theta`` between two models of one architecture.

    ``theta + 1 * d`` is the target's parameters; BatchNorm running statistics stay
    the first model's (buffers are never perturbed).  Raises
    :class:`~geomkit.errors.CheckpointError` when the parameter names or shapes differ.
    """
    w1, w2 = model_weights(model), model_weights(target)
    if list(w1) != list(w2):
        missing = sorted(set(w1) ^ set(w2))[:3]
        raise CheckpointError(
            f"the two checkpoints have different parameters (e.g. {missing}); "
            "interpolate between checkpoints of the same architecture"
        )
    out: Direction = {}
    for name, a in w1.items():
        b = w2[name]
        if a.shape != b.shape:
            raise CheckpointError(
                f"parameter {name!r} has shape {tuple(a.shape)} vs {tuple(b.shape)}; "
                "interpolate between checkpoints of the same architecture"
            )
        out[name] = b.to(a.device, a.dtype) - a
    return out


def hessian_directions(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, k: int = 2, **options
) -> list[Direction]:
    """The top-``k`` Hessian eigenvectors of the whole model as directions.

    Calls :func:`geomkit.geometry.hessian.hessian_eigs` (block ``whole``, Lanczos,
    ``return_vectors=True``; ``options`` such as ``seed`` and ``batch_size`` are passed
    on).  The vectors are unit-norm in the full parameter space and are *not* filter
    normalized (that would destroy the eigen-structure), so a grid ``-r:r`` moves the
    weights by at most ``r*sqrt(2)`` in Euclidean norm.  Parameters outside the block
    (none for ``whole``) get zero entries.
    """
    from geomkit.geometry import hessian

    res = hessian.hessian_eigs(
        model, inputs, targets, blocks=("whole",), top_k=k, return_vectors=True, **options
    )
    block = res.blocks["whole"]
    names = res.params["whole"]
    if block.vectors is None or len(block.vectors) < k:
        raise ValueError(
            f"hessian_eigs returned {0 if block.vectors is None else len(block.vectors)} "
            f"eigenvectors, {k} needed"
        )
    return [_split_flat(model, names, block.vectors[i]) for i in range(k)]


def _split_flat(model: nn.Module, names: list[str], flat: torch.Tensor) -> Direction:
    """A flat vector over the parameters ``names`` (in order) as a full named direction."""
    weights = model_weights(model)
    flat = flat.detach().flatten()
    out: Direction = {n: torch.zeros_like(w) for n, w in weights.items()}
    i = 0
    for n in names:
        w = weights[n]
        out[n] = flat[i : i + w.numel()].reshape(w.shape).to(w)
        i += w.numel()
    if i != flat.numel():
        raise ValueError(f"eigenvector has {flat.numel()} entries, its block {i} parameters")
    return out


def cosine(d1: Mapping[str, torch.Tensor], d2: Mapping[str, torch.Tensor]) -> float:
    """Cosine similarity <d1, d2> / (||d1|| ||d2||) over all entries (float64).

    The two may live on different devices (e.g. one read back from a file on the CPU).
    """
    dot = sum(float((d1[n].double() * d2[n].to(d1[n].device).double()).sum()) for n in d1)
    n1 = sum(float(d1[n].double().pow(2).sum()) for n in d1) ** 0.5
    n2 = sum(float(d2[n].double().pow(2).sum()) for n in d2) ** 0.5
    return dot / (n1 * n2) if n1 > 0 and n2 > 0 else 0.0
