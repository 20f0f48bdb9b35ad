r"""Image corruptions in the spirit of CIFAR-10-C / ImageNet-C, on tensors.

Every corruption maps an *un-normalized* float batch N×C×H×W with values in [0, 1] to a
batch of the same shape, dtype and device, clipped to [0, 1]. Corrupt before normalizing:
for a batch from ``load_split(spec, ...)`` with ``spec.normalize=True`` use
:func:`corrupt_normalized`, which un-normalizes, corrupts, clips and re-normalizes.

Severity 0 is the identity; severities 1..5 take their parameters from
:data:`SEVERITY_PARAMS` (our own numbers, modelled on CIFAR-10-C's and scaled for small
images such as 8×8 digits and 28×28 Fashion-MNIST):

=================  ======================================================================
``gaussian_noise``  :math:`x + \sigma\,\varepsilon`, :math:`\varepsilon \sim N(0, 1)`; σ
``shot_noise``      :math:`\mathrm{Poisson}(\lambda x) / \lambda`; photons λ
``impulse_noise``   each value set to 0 or 1 (equally likely) with probability p
``defocus_blur``    convolution with an antialiased disk of radius
                    :math:`r \cdot \max(1, H/32)` pixels; r
``contrast``        :math:`(x - \bar x) c + \bar x`, :math:`\bar x` the image mean; c
``brightness``      HSV value :math:`V \to \min(1, V + b)` with hue and saturation kept
                    (grey images: :math:`x + b`); b
``pixelate``        each axis cut into :math:`\lfloor f H \rfloor` contiguous bins (at least
                    one fewer per severity), every bin×bin cell replaced by its mean; f
``jpeg``            8×8 block DCT of :math:`255x - 128` (YCbCr for RGB, no chroma
                    subsampling), quantised with the JPEG Annex K tables at quality q
                    (IJG scaling), inverse DCT, rounded to 8-bit pixels
=================  ======================================================================

Noise is drawn on the CPU from ``generator`` (default: a new generator seeded with 0), so
results are deterministic and the same on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geomkit.data.spec import DataSpec
from geomkit.errors import DataError

__all__ = ["CORRUPTIONS", "SEVERITY_PARAMS", "corrupt", "corrupt_normalized"]

#: Parameter of each corruption at severities 1..5 (see the module docstring).
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.07, 0.10, 0.14, 0.20),  # σ
    "shot_noise": (250.0, 100.0, 50.0, 25.0, 12.0),  # λ, photons at full intensity
    "impulse_noise": (0.01, 0.03, 0.06, 0.10, 0.15),  # p, fraction of values hit
    "defocus_blur": (0.6, 0.8, 1.0, 1.3, 1.7),  # r, disk radius in pixels per 32 px
    "contrast": (0.75, 0.55, 0.40, 0.30, 0.20),  # c, contrast kept
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),  # b, added to the HSV value
    "pixelate": (0.85, 0.70, 0.55, 0.45, 0.35),  # f, fraction of the side kept
    "jpeg": (75.0, 50.0, 30.0, 20.0, 10.0),  # q, JPEG quality
}

#: Names accepted by :func:`corrupt`.
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY_PARAMS)


def corrupt(
    x: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (0 = identity, 1..5) to a batch in [0, 1].

    Args:
        x: float N×C×H×W batch with values in [0, 1] (un-normalized).
        name: one of :data:`CORRUPTIONS`.
        severity: 0..5.
        generator: CPU ``torch.Generator`` for the noise corruptions; ``None`` = a new
            generator seeded with 0 (so the result is reproducible).

    Returns:
        A new batch of the same shape, dtype and device, clipped to [0, 1] (``x`` itself
        for severity 0).

    Raises:
        DataError: unknown name, severity outside 0..5, or ``x`` not a float N×C×H×W
            batch in [0, 1].
    """
    _check_name_and_severity(name, severity)
    _check_batch(x)
    if severity == 0:
        return x
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    param = SEVERITY_PARAMS[name][severity - 1]
    out = _IMPLS[name](x, param, severity, generator)
    return out.clamp(0.0, 1.0).to(dtype=x.dtype)


def corrupt_normalized(
    x: torch.Tensor,
    name: str,
    severity: int,
    spec_or_mean_std: DataSpec | tuple[Sequence[float], Sequence[float]],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Corrupt a normalized batch: un-normalize, :func:`corrupt`, clip, re-normalize.

    Args:
        x: float N×C×H×W batch normalized as :math:`(x - \mu) / \sigma` per channel.
        name, severity, generator: as for :func:`corrupt`.
        spec_or_mean_std: the :class:`~geomkit.data.DataSpec` that produced ``x`` (its
            source's normalization constants, or none when ``spec.normalize`` is False),
            or an explicit ``(mean, std)`` pair of per-channel sequences.
    """
    from geomkit.data.transforms import denormalize, normalize

    _check_name_and_severity(name, severity)
    if isinstance(spec_or_mean_std, DataSpec):
        if not spec_or_mean_std.normalize:
            return corrupt(x, name, severity, generator)
        from geomkit.data.sources import raw_data

        raw = raw_data(spec_or_mean_std)
        mean, std = raw.mean, raw.std
    else:
        try:
            mean, std = spec_or_mean_std
            mean, std = [float(m) for m in mean], [float(s) for s in std]
        except (TypeError, ValueError):
            raise DataError(
                "spec_or_mean_std must be a DataSpec or a (mean, std) pair of per-channel lists"
            ) from None
    if x.ndim != 4 or not len(mean) == len(std) == x.shape[1]:
        raise DataError(
            f"mean/std have {len(mean)}/{len(std)} channels but the batch has shape "
            f"{list(x.shape)}; pass the constants of the data that produced it"
        )
    _check_name_and_severity(name, severity)
    if severity == 0:
        return x
    raw01 = denormalize(x, mean, std).clamp(0.0, 1.0)
    return normalize(corrupt(raw01, name, severity, generator), mean, std)


# -- checks ------------------------------------------------------------------------------


def _check_name_and_severity(name: str, severity: int) -> None:
    if name not in SEVERITY_PARAMS:
        raise DataError(f"unknown corruption {name!r}; valid corruptions: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise DataError(f"corruption severity must be an integer 0..5, got {severity!r}")


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"corruptions take a float N×C×H×W tensor, got {shape}")
    if x.numel() and (float(x.min()) < -1e-4 or float(x.max()) > 1 + 1e-4):
        raise DataError(
            "corruptions take un-normalized images in [0, 1]; for normalized batches use "
            "corrupt_normalized(x, name, severity, spec)"
        )


# -- implementations ---------------------------------------------------------------------


def _cpu_draw(x: torch.Tensor, draw) -> torch.Tensor:
    """Draw noise shaped like ``x`` on the CPU (device-independent), return it on x's device."""
    return draw().to(device=x.device, dtype=x.dtype)


def _gaussian_noise(x, sigma, severity, g):
    eps = _cpu_draw(x, lambda: torch.randn(x.shape, generator=g, dtype=torch.float64))
    return x + sigma * eps


def _shot_noise(x, lam, severity, g):
    rate = (x.detach().to("cpu", torch.float64) * lam).clamp(min=0.0)
    return _cpu_draw(x, lambda: torch.poisson(rate, generator=g)) / lam


def _impulse_noise(x, p, severity, g):
    u = _cpu_draw(x, lambda: torch.rand(x.shape, generator=g, dtype=torch.float64))
    out = torch.where(u < p / 2, torch.zeros_like(x), x)
    return torch.where((u >= p / 2) & (u < p), torch.ones_like(x), out)


def disk_kernel(radius: float, supersample: int = 16) -> torch.Tensor:
    r"""Normalised 2-D disk of ``radius`` pixels, each weight the pixel area inside the disk.

    The pixel at offset (i, j) gets the fraction of its unit square within
    :math:`u^2 + v^2 \le r^2`, estimated on a ``supersample``² grid, so sub-pixel radii
    blur smoothly (a radius < 0.5 gives the identity).
    """
    half = math.ceil(radius)
    k = 2 * half + 1
    s = supersample
    offs = (torch.arange(s, dtype=torch.float64) + 0.5) / s - 0.5
    centres = torch.arange(-half, half + 1, dtype=torch.float64)
    coords = (centres[:, None] + offs[None, :]).reshape(-1)  # k·s sub-pixel centres
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2 <= radius**2).to(torch.float64)
    kernel = inside.reshape(k, s, k, s).mean(dim=(1, 3))
    return kernel / kernel.sum()


def _defocus_blur(x, r, severity, g):
    n, c, h, w = x.shape
    radius = r * max(1.0, max(h, w) / 32.0)
    kernel = disk_kernel(radius).to(device=x.device, dtype=x.dtype)
    pad = kernel.shape[0] // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = kernel.expand(c, 1, *kernel.shape).contiguous()
    return F.conv2d(xp, weight, groups=c)


def _contrast(x, c, severity, g):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x, b, severity, g):
    v = x.amax(dim=1, keepdim=True)  # HSV value
    v_new = (v + b).clamp(max=1.0)
    scaled = x * (v_new / v.clamp(min=1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


def pixelate_sizes(side: int) -> tuple[int, ...]:
    """Side lengths of :func:`corrupt` ``pixelate`` at severities 1..5 for a ``side``-px image."""
    sizes, prev = [], side
    for f in SEVERITY_PARAMS["pixelate"]:
        prev = max(1, min(math.floor(f * side), prev - 1))
        sizes.append(prev)
    return tuple(sizes)


def _block_average(side: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """side×side matrix averaging over ``bins`` contiguous bins (pixel p in bin ⌊p·bins/side⌋)."""
    which = torch.arange(side) * bins // side
    onehot = (which[:, None] == torch.arange(bins)[None, :]).to(torch.float64)  # side×bins
    proj = onehot @ (onehot / onehot.sum(0, keepdim=True)).T
    return proj.to(device=like.device, dtype=like.dtype)


def _pixelate(x, f, severity, g):
    h, w = x.shape[-2:]
    ah = _block_average(h, pixelate_sizes(h)[severity - 1], x)
    aw = _block_average(w, pixelate_sizes(w)[severity - 1], x)
    return ah @ x @ aw.T


# JPEG (ITU-T T.81, Annex K) quantisation tables for quality 50.
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def jpeg_table(quality: float, chroma: bool = False) -> torch.Tensor:
    """The 8×8 JPEG quantisation table at ``quality`` (1..100), with the IJG scaling."""
    base = torch.tensor(_JPEG_CHROMA if chroma else _JPEG_LUMA, dtype=torch.float64)
    q = min(max(float(quality), 1.0), 100.0)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    return torch.floor((base * scale + 50.0) / 100.0).clamp(min=1.0)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (rows = frequencies): coefficients = D · block · Dᵀ."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=torch.float64,
)


def _jpeg(x, quality, severity, g):
    n, c, h, w = x.shape
    dev = x.device
    y = x.to(torch.float64) * 255.0
    colour = c == 3
    if colour:
        y = torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR.to(dev), y)
        y[:, 1:] += 128.0
    y = y - 128.0
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        y = F.pad(y, (0, pw, 0, ph), mode="replicate")
    hh, ww = y.shape[-2:]
    blocks = y.reshape(n, c, hh // 8, 8, ww // 8, 8).transpose(3, 4)  # n,c,bh,bw,8,8
    d = _dct_matrix().to(dev)
    coef = d @ blocks @ d.T
    tables = torch.stack([jpeg_table(quality, chroma=colour and ch > 0) for ch in range(c)]).to(
        dev
    )[None, :, None, None]
    coef = torch.round(coef / tables) * tables
    blocks = d.T @ coef @ d
    y = blocks.transpose(3, 4).reshape(n, c, hh, ww)[..., :h, :w] + 128.0
    if colour:
        y[:, 1:] -= 128.0
        y = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YCBCR).to(dev), y)
    return (torch.round(y).clamp(0.0, 255.0) / 255.0).to(x.dtype)  # 8-bit pixels again


_IMPLS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
}
