r"""Strong training augmentation on tensor batches: RandAugment, Mixup, CutMix, AugMix.

Every function works on a float batch N×C×H×W (C = 1 or 3) on any device, draws its
random numbers from an explicit CPU :class:`torch.Generator` (the same generator state
gives the same output on CPU and CUDA; ``None`` uses torch's global generator), and
never imports torchvision.

**Value range.** The package's batches are usually standardised per channel
(:func:`geomkit.data.transforms.normalize`, ``(x - mean) / std`` of pixels in [0, 1]).
The pixel operations (Solarize, Posterize, Equalize, ...) are defined on pixels in
[0, 1], so :class:`RandAugment` and :class:`AugMix` take the batch's ``mean`` and
``std`` (the :class:`~geomkit.data.sources.RawData` constants): they un-normalise,
apply the operations in [0, 1] and normalise again. ``mean=None`` means the batch is
already in [0, 1]. Mixup and CutMix are linear, so they work in either range.

**RandAugment** (Cubuk et al. 2020): for each of ``n`` layers every image draws one of
the 14 operations of :data:`RANDAUG_OPS` uniformly and independently of the other
images. The magnitude ``m`` is on the 0-30 scale: an operation's strength is the
fraction ``f = m / magnitude_max`` (``magnitude_max`` = 30 by default) of its maximum,
reached at ``m = magnitude_max``; the signed operations take a random sign per image:

=============  ==========================================  =================
operation      value at fraction ``f``                     at ``f`` = 0
=============  ==========================================  =================
Rotate         ±30·f degrees                               identity
ShearX/Y       ±0.3·f (shear factor, about the centre)     identity
TranslateX/Y   ±0.45·f of the width / height               identity
Solarize       invert pixels ≥ (256 − 256·f)/255           identity
Posterize      keep 8 − ⌊4·f⌋ bits                         identity
Color          factor 1 ± 0.9·f (saturation)               identity
Contrast       factor 1 ± 0.9·f                            identity
Brightness     factor 1 ± 0.9·f                            identity
Sharpness      factor 1 ± 0.9·f                            identity
Identity       --                                          identity
AutoContrast   no magnitude                                --
Equalize       no magnitude (PIL's histogram equalisation) --
=============  ==========================================  =================

These are timm's "increasing" maxima, so ``m = 0`` leaves every operation with a
magnitude unchanged (``light1`` = RA(2, 0) applies only AutoContrast/Equalize, and the
identity on the others). Pixels that geometric operations uncover are filled with the
dataset mean (``mean``; 0.5 without it), i.e. zero after normalisation, as timm fills
with the ImageNet mean. Color has no meaning for one channel: it is the identity there
(the gray image of a gray image is itself), and Contrast uses the luminance (the image
itself for C = 1).

*Scale caveat.* AugReg's own code (big_vision, forked from TF's ``autoaugment.py``) uses
``_MAX_LEVEL = 10`` with magnitudes 10-20, i.e. beyond its maxima (Rotate 45° at M = 15),
and its Solarize / Posterize / enhance mappings are not the identity at M = 0. The 0-30
scale here is milder; ``magnitude_max=10`` reproduces big_vision's Rotate, Shear and
Translate values (Translate 0.45 of the side ≈ its 100 px of 224).

**Mixup / CutMix** pair each image with a random permutation of the batch and one
λ ~ Beta(α, α) per batch; targets are one-hot (optionally label-smoothed) mixed with the
same λ, so rows sum to one. CutMix pastes one box of area fraction ≈ 1 − λ and reports
the exact λ = 1 − (pasted area)/(H·W) after clipping to the image.

**AugMix** (Hendrycks et al. 2020): ``width`` chains of depth 1-3 (random per image
and chain) of the operations of :data:`AUGMIX_OPS` (those that do not overlap the
ImageNet-C corruptions), level U(0.1, severity)/10 per operation, mixed with weights
w ~ Dirichlet(α) and skip weight m ~ Beta(α, α) per image:
``(1 − m)·x + m·Σ_i w_i chain_i(x)``. Train with
``loss(clean) + λ·jsd_loss(clean, aug1, aug2)``, λ = 12 as the paper, the caller's
weight.

Why hand-written (the project hand-writes only what no maintained library does):
kornia 0.9 has RandAugment and MixUp/CutMix on tensors, but (benchmarks/augment.py,
docs/benchmarks/augment.md) it (1) cannot take an explicit generator -- its randomness
goes through torch's global RNG, and ``generator=`` is rejected/dropped (its own
convention notes, issue #4427); (2) its RandAugment draws the ``n`` operations once
per *batch*, not per image, and rejects ``m = 0`` (``m`` must be in (0, 30)), so
``light1`` = RA(2, 0) cannot be expressed; (3) its MixUp draws λ uniformly from a range,
not from Beta(α, α), and returns (label, paired label, λ) rather than soft targets;
(4) it has no AugMix and no JSD loss. Beta/Dirichlet draws use a NumPy generator seeded
from the torch generator, because torch's distributions take no generator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geomkit.errors import SpecError

#: RandAugment's operations (Cubuk et al. 2020's list as timm and AugReg use it, without
#: Invert/SolarizeAdd/Cutout), drawn uniformly per image.
RANDAUG_OPS: tuple[str, ...] = (
    "Identity", "AutoContrast", "Equalize", "Rotate", "Solarize", "Color", "Posterize",
    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip
#: The operations that are the identity at magnitude 0.
IDENTITY_AT_ZERO: tuple[str, ...] = tuple(
    op for op in RANDAUG_OPS if op not in ("AutoContrast", "Equalize"))
#: AugMix's operations (Hendrycks et al. 2020: no Color/Contrast/Brightness/Sharpness,
#: which overlap the ImageNet-C corruptions it is evaluated on).
AUGMIX_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Posterize", "Rotate", "Solarize",
    "ShearX", "ShearY", "TranslateX", "TranslateY",
)  # fmt: skip
#: Each operation's value at full strength (fraction 1 of the magnitude scale).
OP_MAX = {"Rotate": 30.0, "Shear": 0.3, "Translate": 0.45, "Enhance": 0.9, "Posterize": 4}

_LUMA = (0.299, 0.587, 0.114)


# -- random numbers ------------------------------------------------------------------------

def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise SpecError(f"augmentation needs a CPU torch.Generator, got one on "
                        f"{generator.device}; draw on the CPU, the batch may live anywhere",
                        param="generator")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded by one draw of ``generator`` (for Beta/Dirichlet)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def _signs(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)


# -- value range ---------------------------------------------------------------------------

def _stats(x: torch.Tensor, v: Sequence[float] | None, default: float) -> torch.Tensor:
    c = x.shape[1]
    t = torch.full((c,), default) if v is None else torch.as_tensor(v, dtype=torch.float64)
    if t.numel() == 1 and c > 1:
        t = t.expand(c)
    if t.numel() != c:
        raise SpecError(f"mean/std have {t.numel()} channels but the batch has {c}",
                        param="mean_std")
    return t.to(device=x.device, dtype=x.dtype).view(1, c, 1, 1)


class _Range:
    """Un-normalise to [0, 1] and back (the identity when ``mean`` is None)."""

    def __init__(self, x: torch.Tensor, mean, std, fill) -> None:
        self.on = mean is not None
        self.mean = _stats(x, mean, 0.0)
        self.std = _stats(x, std if mean is not None else None, 1.0)
        if fill is not None:
            self.fill = _stats(x, fill if not isinstance(fill, (int, float)) else [fill], 0.5)
        else:
            self.fill = self.mean if self.on else _stats(x, None, 0.5)

    def to01(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean if self.on else x

    def back(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.on else x


# -- operations on pixels in [0, 1]; f is the per-image strength, shape (n,) --------------

def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + factor·(x − degenerate)``, clipped to [0, 1]."""
    f = _col(factor.to(device=x.device, dtype=x.dtype))
    return (degenerate + f * (x - degenerate)).clamp(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luminance (ITU-R 601, as PIL's "L"), N×1×H×W; the image itself for C = 1."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _affine(x: torch.Tensor, a: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Resample with the output→input map ``a`` (n×2×3, pixel units, origin at the image
    centre); bilinear, uncovered pixels = ``fill``."""
    h, w = x.shape[-2:]
    s = torch.tensor([w / 2.0, h / 2.0], dtype=a.dtype)
    theta = a.clone()
    theta[:, :, :2] = a[:, :, :2] * s.view(1, 1, 2) / s.view(1, 2, 1)
    theta[:, :, 2] = a[:, :, 2] / s.view(1, 2)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def _eye(n: int) -> torch.Tensor:
    a = torch.zeros(n, 2, 3, dtype=torch.float64)
    a[:, 0, 0] = a[:, 1, 1] = 1.0
    return a


def rotate(x: torch.Tensor, degrees: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Rotate each image by ``degrees`` (n,) about its centre (positive: clockwise as
    displayed, y pointing down)."""
    t = degrees.to(torch.float64) * math.pi / 180.0
    a = _eye(len(t))
    a[:, 0, 0], a[:, 0, 1] = torch.cos(t), torch.sin(t)
    a[:, 1, 0], a[:, 1, 1] = -torch.sin(t), torch.cos(t)
    return _affine(x, a, fill)


def shear(x: torch.Tensor, factor: torch.Tensor, axis: str, fill: torch.Tensor) -> torch.Tensor:
    """Shear along ``axis`` ("x" or "y") by ``factor`` (n,) about the centre: for "x"
    the output pixel (u, v) reads the input at (u + factor·v, v), as PIL's affine."""
    a = _eye(len(factor))
    if axis == "x":
        a[:, 0, 1] = factor.to(torch.float64)
    else:
        a[:, 1, 0] = factor.to(torch.float64)
    return _affine(x, a, fill)


def translate(x: torch.Tensor, pixels: torch.Tensor, axis: str, fill: torch.Tensor) -> torch.Tensor:
    """Shift the content by ``pixels`` (n,) right ("x") or down ("y"); whole pixels are an
    exact shift."""
    a = _eye(len(pixels))
    a[:, 0 if axis == "x" else 1, 2] = -pixels.to(torch.float64)
    return _affine(x, a, fill)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert (1 − x) the pixels ≥ ``threshold`` (n,)."""
    return torch.where(x >= _col(threshold), 1.0 - x, x)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top ``bits`` (n,) of each 8-bit pixel; images with 8 bits are unchanged."""
    q = torch.round(x.clamp(0.0, 1.0) * 255.0)
    step = _col(torch.pow(2.0, 8.0 - bits.to(x.dtype)))
    out = torch.floor(q / step) * step / 255.0
    return torch.where(_col(bits) >= 8, x, out)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Color (saturation); the identity for one channel."""
    return x if x.shape[1] == 1 else _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Contrast: blend with the mean luminance of each image."""
    return _blend(_gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Brightness: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Sharpness: blend with the SMOOTH-filtered image (border pixels kept)."""
    if min(x.shape[-2:]) < 3:
        return x
    c = x.shape[1]
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    deg = x.clone()
    deg[..., 1:-1, 1:-1] = F.conv2d(x, k, groups=c)
    return _blend(deg, x, factor)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to [0, 1] (unchanged where it is constant)."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    ok = hi > lo
    return torch.where(ok, (x - lo) / torch.where(ok, hi - lo, 1.0), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation of each channel of each image, on 256 levels."""
    n, c, h, w = x.shape
    q = torch.round(x.clamp(0.0, 1.0) * 255.0).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    last_bin = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last_bin)) // 255
    lut = (torch.cumsum(hist, 1) - hist + step // 2) // step.clamp(min=1)
    out = lut.clamp(0, 255).gather(1, q).to(x.dtype) / 255.0
    return torch.where(step > 0, out, x.reshape(n * c, h * w)).view(n, c, h, w)


def _apply(name: str, x: torch.Tensor, f: torch.Tensor, sign: torch.Tensor,
           fill: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` at strength ``f`` (n,) with signs ``sign`` (n,), CPU tensors."""
    h, w = x.shape[-2:]
    dev = x.device
    if name == "Identity":
        return x
    if name == "AutoContrast":
        return autocontrast(x)
    if name == "Equalize":
        return equalize(x)
    if name == "Rotate":
        return rotate(x, OP_MAX["Rotate"] * f * sign, fill)
    if name in ("ShearX", "ShearY"):
        return shear(x, OP_MAX["Shear"] * f * sign, name[-1].lower(), fill)
    if name in ("TranslateX", "TranslateY"):
        side = w if name == "TranslateX" else h
        return translate(x, OP_MAX["Translate"] * side * f * sign, name[-1].lower(), fill)
    if name == "Solarize":
        return solarize(x, ((256.0 - 256.0 * f) / 255.0).to(dev, x.dtype))
    if name == "Posterize":
        bits = (8 - torch.floor(OP_MAX["Posterize"] * f)).clamp(0, 8)
        return posterize(x, bits.to(dev))
    factor = (1.0 + OP_MAX["Enhance"] * f * sign).clamp(min=0.0).to(dev, x.dtype)
    fn = {"Color": color, "Contrast": contrast, "Brightness": brightness,
          "Sharpness": sharpness}[name]
    return fn(x, factor)


def apply_ops(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor, sign: torch.Tensor,
              ops: Sequence[str], fill: torch.Tensor) -> torch.Tensor:
    """Apply to image i operation ``ops[op[i]]`` at strength ``f[i]``, sign ``sign[i]``
    (``op``, ``f``, ``sign``: CPU tensors of length N; ``op[i] < 0`` skips image i)."""
    out = x.clone()
    for k, name in enumerate(ops):
        hit = op == k
        if name in IDENTITY_AT_ZERO:
            hit &= f > 0  # exactly the identity at strength 0
        idx = hit.nonzero().flatten()
        if len(idx) == 0 or name == "Identity":
            continue
        di = idx.to(x.device)
        out[di] = _apply(name, x[di], f[idx].double(), sign[idx].double(), fill)
    return out


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise SpecError(f"augmentation needs a float batch N×C×H×W with C = 1 or 3, got "
                        f"{x.dtype} {tuple(x.shape)}", param="x")


# -- RandAugment ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RandAugment:
    """RandAugment(N, M) with per-image operations (see the module docstring's table).

    Args:
        n: operations per image (layers).
        m: magnitude on the 0-``magnitude_max`` scale.
        ops: the operation list (a subset of :data:`RANDAUG_OPS`).
        magnitude_max: the magnitude at which every operation reaches its maximum.
    """

    n: int = 2
    m: float = 10.0
    ops: tuple[str, ...] = RANDAUG_OPS
    magnitude_max: float = 30.0

    def __post_init__(self) -> None:
        bad = [o for o in self.ops if o not in RANDAUG_OPS]
        if bad or not self.ops:
            raise SpecError(f"unknown RandAugment operation(s) {bad}; valid: "
                            f"{', '.join(RANDAUG_OPS)}", param="ops")
        if self.n < 0 or self.m < 0 or self.magnitude_max <= 0:
            raise SpecError(f"RandAugment needs n ≥ 0, m ≥ 0, magnitude_max > 0, got "
                            f"n={self.n}, m={self.m}, magnitude_max={self.magnitude_max}",
                            param="randaug")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 fill: Sequence[float] | float | None = None) -> torch.Tensor:
        """Augment ``x`` (normalised with ``mean``/``std``, or in [0, 1] without them);
        returns a new batch, same shape, dtype and device. ``fill`` ([0, 1] units)
        overrides the value of uncovered pixels (default: ``mean``, else 0.5)."""
        _check_image(x)
        _check_generator(generator)
        if self.n == 0 or x.shape[0] == 0:
            return x
        b = x.shape[0]
        # Every draw has a fixed shape, so the generator advances the same way whatever
        # operations are chosen.
        op = torch.randint(0, len(self.ops), (self.n, b), generator=generator)
        sign = torch.stack([_signs(b, generator) for _ in range(self.n)])
        f = torch.full((b,), self.m / self.magnitude_max, dtype=torch.float64)
        rng = _Range(x, mean, std, fill)
        y = rng.to01(x)
        for layer in range(self.n):
            y = apply_ops(y, op[layer], f, sign[layer], self.ops, rng.fill)
        return rng.back(y)


# -- Mixup / CutMix and soft targets -------------------------------------------------------

def one_hot(y: torch.Tensor, num_classes: int, smoothing: float = 0.0,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot targets (N, K), label-smoothed: ``(1 − ε)·onehot + ε/K``. Soft targets
    (a float (N, K) tensor) are passed through (smoothed too when ε > 0)."""
    if y.is_floating_point() and y.dim() == 2:
        t = y.to(dtype)
    else:
        t = F.one_hot(y.long(), num_classes).to(dtype)
    return t * (1.0 - smoothing) + smoothing / t.shape[1] if smoothing else t


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    return float(_numpy_rng(generator).beta(alpha, alpha))


@dataclasses.dataclass(frozen=True)
class Mixup:
    """Mixup (Zhang et al. 2018): ``λ·x + (1 − λ)·x[perm]``, λ ~ Beta(α, α) per batch."""

    alpha: float = 0.2

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 generator: torch.Generator | None = None, *, smoothing: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Returns (mixed x, soft targets (N, K), λ, the permutation) -- targets
        ``λ·y + (1 − λ)·y[perm]`` of the (smoothed) one-hot ``y``; rows sum to one."""
        _check_generator(generator)
        lam = _beta(self.alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator)
        pd = perm.to(x.device)
        t = one_hot(y, num_classes, smoothing).to(x.device)
        return lam * x + (1.0 - lam) * x[pd], lam * t + (1.0 - lam) * t[pd], lam, perm


@dataclasses.dataclass(frozen=True)
class CutMix:
    """CutMix (Yun et al. 2019): paste one box of ``x[perm]``, area ≈ (1 − λ)·H·W,
    λ ~ Beta(α, α); the returned λ is the exact unpasted fraction after clipping."""

    alpha: float = 1.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 generator: torch.Generator | None = None, *, smoothing: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
        """Returns (x with the box pasted, soft targets, λ, the permutation)."""
        _check_generator(generator)
        h, w = x.shape[-2:]
        lam = _beta(self.alpha, generator)
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        perm = torch.randperm(x.shape[0], generator=generator)
        r = math.sqrt(1.0 - lam)
        ch, cw = int(h * r), int(w * r)
        cy, cx = int(u[0] * h), int(u[1] * w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        pd = perm.to(x.device)
        out = x.clone()
        out[..., y0:y1, x0:x1] = x[pd][..., y0:y1, x0:x1]
        t = one_hot(y, num_classes, smoothing).to(x.device)
        return out, lam * t + (1.0 - lam) * t[pd], lam, perm


# -- losses --------------------------------------------------------------------------------

def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       reduction: str = "mean") -> torch.Tensor:
    r"""Cross-entropy with soft targets, :math:`-\sum_k t_k \log \mathrm{softmax}(z)_k`
    per row (integer targets are one-hot); equals ``F.cross_entropy`` on one-hot rows."""
    t = one_hot(targets, logits.shape[1]).to(logits.dtype)
    loss = -(t * F.log_softmax(logits, dim=1)).sum(1)
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def soft_bce(logits: torch.Tensor, targets: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of each logit against the (soft) target of its class, as
    timm's ``BinaryCrossEntropy``; ``mean`` averages over all N·K entries."""
    t = one_hot(targets, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, t, reduction=reduction)


def jsd_loss(logits_clean: torch.Tensor, logits_aug1: torch.Tensor,
             logits_aug2: torch.Tensor) -> torch.Tensor:
    r"""AugMix's Jensen-Shannon consistency, averaged over the batch:
    :math:`\tfrac13 \sum_v \mathrm{KL}(p_v \,\|\, M)` with :math:`M = \tfrac13 \sum_v p_v`
    (the mixture clamped at 1e-7 before the log, as the paper's code). Zero when the
    three views agree; the paper adds it with weight λ = 12 (the caller's choice)."""
    ps = [F.softmax(z.float(), dim=1) for z in (logits_clean, logits_aug1, logits_aug2)]
    log_m = torch.clamp((ps[0] + ps[1] + ps[2]) / 3.0, 1e-7, 1.0).log()
    return sum(F.kl_div(log_m, p, reduction="batchmean") for p in ps) / 3.0


# -- AugMix --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AugMix:
    """AugMix (Hendrycks et al. 2020) on a batch; see the module docstring.

    Args:
        severity: 1-10; each operation's level is U(0.1, severity)/10 of its maximum.
        width: number of chains mixed.
        depth: chain depth; ``-1`` draws 1-3 per image and chain.
        alpha: Dirichlet / Beta concentration.
    """

    severity: int = 3
    width: int = 3
    depth: int = -1
    alpha: float = 1.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 fill: Sequence[float] | float | None = None) -> torch.Tensor:
        """One AugMix view of ``x`` (same conventions as :class:`RandAugment`)."""
        _check_image(x)
        _check_generator(generator)
        b = x.shape[0]
        if b == 0:
            return x
        nops, steps = len(AUGMIX_OPS), 3 if self.depth < 0 else self.depth
        op = torch.randint(0, nops, (self.width, steps, b), generator=generator)
        sign = torch.where(torch.rand(self.width, steps, b, generator=generator) < 0.5,
                           -1.0, 1.0)
        lvl = 0.1 + (self.severity - 0.1) * torch.rand(self.width, steps, b,
                                                       generator=generator,
                                                       dtype=torch.float64)
        depth = (torch.randint(1, 4, (self.width, b), generator=generator) if self.depth < 0
                 else torch.full((self.width, b), self.depth))
        nrng = _numpy_rng(generator)
        ws = torch.from_numpy(nrng.dirichlet([self.alpha] * self.width, size=b))
        m = torch.from_numpy(nrng.beta(self.alpha, self.alpha, size=b))
        rng = _Range(x, mean, std, fill)
        x01 = rng.to01(x)
        mix = torch.zeros_like(x01)
        for i in range(self.width):
            y = x01
            for d in range(steps):
                o = torch.where(depth[i] > d, op[i, d], -1)
                y = apply_ops(y, o, lvl[i, d] / 10.0, sign[i, d], AUGMIX_OPS, rng.fill)
            mix = mix + _col(ws[:, i].to(x.device, x.dtype)) * y
        mm = _col(m.to(x.device, x.dtype))
        return rng.back((1.0 - mm) * x01 + mm * mix)

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None, **kw: Any
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clean, augmix view 1, augmix view 2), for :func:`jsd_loss`."""
        return x, self(x, generator, **kw), self(x, generator, **kw)


# -- AugReg levels and the spec a checkpoint records ---------------------------------------

@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """The strong augmentation of a training run (JSON-able via :meth:`to_dict`).

    ``randaug_n = 0`` turns RandAugment off, ``mixup_alpha``/``cutmix_alpha`` = 0 turn
    Mixup/CutMix off (both on: one of them per batch, CutMix with probability
    ``switch_prob``); ``augmix`` adds AugMix views with the JSD loss weighted
    ``jsd_weight``.
    """

    level: str = "none"
    randaug_n: int = 0
    randaug_m: float = 0.0
    magnitude_max: float = 30.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    augmix: bool = False
    augmix_severity: int = 3
    augmix_width: int = 3
    augmix_depth: int = -1
    augmix_alpha: float = 1.0
    jsd_weight: float = 12.0

    def __post_init__(self) -> None:
        for k in ("mixup_alpha", "cutmix_alpha", "label_smoothing"):
            if getattr(self, k) < 0:
                raise SpecError(f"{k} must be ≥ 0, got {getattr(self, k)}", param=k)
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.switch_prob <= 1:
            raise SpecError("label_smoothing must be in [0, 1) and switch_prob in [0, 1]",
                            param="label_smoothing")
        if not 1 <= self.augmix_severity <= 10:
            raise SpecError(f"augmix_severity must be 1-10, got {self.augmix_severity}",
                            param="augmix_severity")
        self.randaugment()  # validates n, m, magnitude_max

    @property
    def mixes(self) -> bool:
        """Whether targets are mixed (Mixup or CutMix on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def randaugment(self) -> RandAugment:
        return RandAugment(self.randaug_n, self.randaug_m, magnitude_max=self.magnitude_max)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise SpecError(f"unknown augmentation field(s) {bad}; valid: "
                            f"{', '.join(sorted(names))}", param="augment")
        return cls(**d)


#: AugReg's augmentation levels (Steiner et al. 2021): name → (RA n, RA m, mixup α).
AUGREG_LEVELS: dict[str, tuple[int, float, float]] = {
    "none": (0, 0.0, 0.0),
    "light1": (2, 0.0, 0.0),
    "light2": (2, 10.0, 0.2),
    "medium1": (2, 15.0, 0.2),
    "medium2": (2, 15.0, 0.5),
    "heavy1": (2, 20.0, 0.5),
    "heavy2": (2, 20.0, 0.8),
}


def augreg(name: str, **overrides: Any) -> AugmentSpec:
    """The :class:`AugmentSpec` of AugReg level ``name`` (``none``, ``light1`` ...
    ``heavy2``), with any field overridden, e.g. ``augreg("medium2", label_smoothing=0.1)``.

    Raises:
        SpecError: an unknown level, listing the valid ones.
    """
    if name not in AUGREG_LEVELS:
        raise SpecError(f"unknown augmentation level {name!r}; valid: "
                        f"{', '.join(AUGREG_LEVELS)}", param="augment")
    n, m, a = AUGREG_LEVELS[name]
    return AugmentSpec(level=name, randaug_n=n, randaug_m=m, mixup_alpha=a, **overrides)


def augment(spec: AugmentSpec, x: torch.Tensor, y: torch.Tensor, num_classes: int,
            generator: torch.Generator | None = None, *,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``spec``'s RandAugment then Mixup/CutMix to a training batch.

    Returns ``(x, targets)`` with ``targets`` always soft, float (N, K) on ``x``'s
    device (one-hot, smoothed by ``spec.label_smoothing``, mixed when ``spec.mixes``),
    for :func:`soft_cross_entropy` / :func:`soft_bce`. Call it once per optimizer step:
    both SAM passes must see the same ``(x, targets)``. AugMix (``spec.augmix``) is not
    applied here: use :meth:`AugMix.views` on the result and :func:`jsd_loss`.
    """
    _check_generator(generator)
    x = spec.randaugment()(x, generator, mean=mean, std=std)
    use_cut = spec.cutmix_alpha > 0 and (
        spec.mixup_alpha == 0
        or float(torch.rand(1, generator=generator)) < spec.switch_prob)
    eps = spec.label_smoothing
    if use_cut:
        x, t, _, _ = CutMix(spec.cutmix_alpha)(x, y, num_classes, generator, smoothing=eps)
    elif spec.mixup_alpha > 0:
        x, t, _, _ = Mixup(spec.mixup_alpha)(x, y, num_classes, generator, smoothing=eps)
    else:
        t = one_hot(y, num_classes, eps).to(x.device)
    return x, t


def augmix_of(spec: AugmentSpec) -> AugMix:
    """The :class:`AugMix` that ``spec`` configures."""
    return AugMix(spec.augmix_severity, spec.augmix_width, spec.augmix_depth,
                  spec.augmix_alpha)
