"""Tensor transforms: resize, normalization and the training augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geomkit.data.sources import HFLIP_DEFAULT
from geomkit.data.spec import DataSpec, check_fits

#: Random resized crop ranges of :func:`augment_batch`: kept area fraction and aspect ratio.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an N×C×H×W batch to ``size``×``size`` (bilinear, antialiased when shrinking).

    Returns ``x`` itself when it already has that size.

    Raises:
        DataError: the resized batch would not fit in the memory available now (checked
            before anything is allocated; ``param="image_size"``).
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    n, c = (x.shape[0], x.shape[1]) if x.dim() == 4 else (1, 1)
    check_fits(n * c * size * size * x.element_size(),
               f"image_size {size} (resizing {n} images of {c}×{h}×{w} to {c}×{size}×{size})",
               param="image_size")
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False,
        antialias=size < h or size < w,
    )  # fmt: skip


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    r"""Per-channel standardisation :math:`(x_c - \mu_c) / \sigma_c` of an N×C×H×W batch."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    r"""Inverse of :func:`normalize`: :math:`x_c \sigma_c + \mu_c`."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m


def hflip_enabled(spec: DataSpec) -> bool:
    """Whether :func:`augment_batch` flips: ``spec.hflip``, else the source's default."""
    return HFLIP_DEFAULT[spec.source] if spec.hflip is None else spec.hflip


def augment_batch(
    x: torch.Tensor, spec: DataSpec, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""The light Inception-like training augmentation, vectorised over the batch.

    Each image independently gets a random resized crop -- area fraction
    :math:`s \sim U(0.5, 1)`, aspect ratio :math:`r` log-uniform in [3/4, 4/3], crop
    width :math:`\min(1, \sqrt{s r})` and height :math:`\min(1, \sqrt{s / r})` of the
    image, centre uniform among positions inside the image -- resampled bilinearly to the
    input size (one ``affine_grid``/``grid_sample``), and, when :func:`hflip_enabled`,
    a horizontal flip with probability 1/2. Works on normalized or raw batches.

    Args:
        x: float batch N×C×H×W (any device).
        spec: the data spec; returns ``x`` unchanged when ``spec.augment`` is False.
        generator: a CPU ``torch.Generator``; the same state gives the same output.
            ``None`` draws from torch's global generator.

    Returns:
        A new batch of the same shape, dtype and device.
    """
    if not spec.augment or x.shape[0] == 0:
        return x
    n = x.shape[0]
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, 0]
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    # Normalised coordinates span [-1, 1]; a crop of half-width cw has centre in ±(1 - cw).
    tx = (1.0 - cw) * (2.0 * u[:, 2] - 1.0)
    ty = (1.0 - ch) * (2.0 * u[:, 3] - 1.0)
    sign = torch.ones(n, dtype=torch.float64)
    if hflip_enabled(spec):
        sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cw * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = ty
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
