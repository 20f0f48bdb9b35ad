"""geomkit.data.augment: seeding, Mixup/CutMix targets, op examples, AugMix JSD, specs."""

import pytest
import torch
import torch.nn.functional as F

from geomkit.data import augment as A
from geomkit.errors import SpecError

MEAN1, STD1 = (0.28604,), (0.35302,)
MEAN3, STD3 = (0.49139, 0.48216, 0.44653), (0.24703, 0.24349, 0.26159)


def _batch(c: int, n: int = 6, size: int = 12, device="cpu") -> torch.Tensor:
    """A normalised batch of [0, 1] pixels."""
    x01 = torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(7))
    mean, std = (MEAN1, STD1) if c == 1 else (MEAN3, STD3)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((x01 - m) / s).to(device)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stats(c):
    return dict(mean=MEAN1, std=STD1) if c == 1 else dict(mean=MEAN3, std=STD3)


@pytest.mark.parametrize("c", [1, 3])
def test_randaugment_seeded(device, c):
    x = _batch(c, device=device)
    ra = A.RandAugment(2, 15)
    a = ra(x, _g(1), **_stats(c))
    b = ra(x, _g(1), **_stats(c))
    d = ra(x, _g(2), **_stats(c))
    assert a.shape == x.shape and a.device == x.device and a.dtype == x.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, d)
    assert torch.isfinite(a).all()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = _batch(3)
    cpu = A.RandAugment(2, 15)(x, _g(3), **_stats(3))
    gpu = A.RandAugment(2, 15)(x.cuda(), _g(3), **_stats(3)).cpu()
    # Same draws; only rounding differs (Equalize/Posterize may flip a level).
    assert (cpu - gpu).abs().gt(1e-3).float().mean() < 0.01


@pytest.mark.parametrize("c", [1, 3])
def test_randaugment_m0_identity_ops_is_identity(c):
    x = _batch(c)
    y = A.RandAugment(3, 0, ops=A.IDENTITY_AT_ZERO)(x, _g(0), **_stats(c))
    torch.testing.assert_close(y, x)


def test_generator_must_be_cpu_and_spec_errors():
    with pytest.raises(SpecError, match="unknown RandAugment"):
        A.RandAugment(2, 5, ops=("Invert",))
    with pytest.raises(SpecError, match="channels"):
        A.RandAugment(1, 5)(_batch(3), _g(0), mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(SpecError, match="C = 1 or 3"):
        A.RandAugment(1, 5)(torch.zeros(2, 2, 4, 4), _g(0))


# -- each operation on a hand-computed example (pixels in [0, 1]) -------------------------

def _img(vals) -> torch.Tensor:
    return torch.tensor(vals, dtype=torch.float32).view(1, 1, *torch.tensor(vals).shape)


def _one(v) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.float64)


def test_solarize_posterize_brightness():
    x = _img([[0.2, 0.6], [0.5, 1.0]])
    torch.testing.assert_close(A.solarize(x, _one(0.5)), _img([[0.2, 0.4], [0.5, 0.0]]))
    p = _img([[200 / 255, 37 / 255]])
    # 4 bits: 200 = 0b11001000 -> 192; 37 = 0b00100101 -> 32.
    torch.testing.assert_close(A.posterize(p, _one(4)), _img([[192 / 255, 32 / 255]]))
    torch.testing.assert_close(A.posterize(p, _one(8)), p)
    torch.testing.assert_close(A.brightness(x, _one(0.5)), x * 0.5)
    torch.testing.assert_close(A.brightness(x, _one(1.5)), (x * 1.5).clamp(max=1))


def test_contrast_color_autocontrast_equalize():
    x = _img([[0.2, 0.6], [0.4, 0.8]])  # mean 0.5
    torch.testing.assert_close(A.contrast(x, _one(0.0)), torch.full_like(x, 0.5))
    torch.testing.assert_close(A.contrast(x, _one(2.0)), _img([[0.0, 0.7], [0.3, 1.0]]))
    torch.testing.assert_close(A.color(x, _one(0.0)), x)  # one channel: identity
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(A.color(rgb, _one(0.0)), torch.full_like(rgb, 0.299))
    torch.testing.assert_close(A.autocontrast(x), _img([[0.0, 2 / 3], [1 / 3, 1.0]]))
    # Equalize as PIL: levels 0, 0, 100, 200 -> step (4 - 1) // 255 = 0 -> unchanged;
    # a 16-pixel image with 8 levels spreads them over 0..255.
    e = torch.arange(16, dtype=torch.float32).div(2).floor().mul(30 / 255).view(1, 1, 4, 4)
    out = A.equalize(e)
    assert out.min() == 0 and out.unique().numel() == 8
    assert (out.flatten().diff() >= 0).all()
    flat = _img([[0.0, 0.0], [100 / 255, 200 / 255]])
    torch.testing.assert_close(A.equalize(flat), flat)


def test_sharpness_blends_with_smooth():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    deg = x.clone()
    deg[0, 0, 1, 1] = 5 / 13
    torch.testing.assert_close(A.sharpness(x, _one(0.0)), deg)
    torch.testing.assert_close(A.sharpness(x, _one(1.0)), x)


def test_geometric_ops():
    x = torch.arange(20, dtype=torch.float32).view(1, 1, 4, 5) / 20
    fill = torch.full((1, 1, 1, 1), 0.5)
    torch.testing.assert_close(A.rotate(x, _one(0.0), fill), x)
    torch.testing.assert_close(A.shear(x, _one(0.0), "x", fill), x)
    right = A.translate(x, _one(2.0), "x", fill)
    exp = torch.full_like(x, 0.5)
    exp[..., 2:] = x[..., :3]
    torch.testing.assert_close(right, exp)
    down = A.translate(x, _one(-1.0), "y", fill)
    exp = torch.full_like(x, 0.5)
    exp[..., :3, :] = x[..., 1:, :]
    torch.testing.assert_close(down, exp)
    sq = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    # 90° clockwise as displayed: the top row becomes the right column.
    torch.testing.assert_close(A.rotate(sq, _one(90.0), fill), torch.rot90(sq, -1, (2, 3)),
                               atol=1e-5, rtol=0)


def test_op_table_values():
    x = _batch(1)
    f, s = torch.full((6,), 0.5, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    fill = torch.zeros(1, 1, 1, 1)
    x01 = x.clamp(0, 1)
    torch.testing.assert_close(A._apply("Brightness", x01, f, s, fill),
                               (x01 * 1.45).clamp(0, 1))
    torch.testing.assert_close(A._apply("Posterize", x01, f, s, fill),
                               A.posterize(x01, torch.full((6,), 6.0)))


# -- Mixup / CutMix ------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_mixup_targets(device, c):
    x, y = _batch(c, n=8, device=device), torch.arange(8) % 4
    xm, t, lam, perm = A.Mixup(0.4)(x, y, 4, _g(5), smoothing=0.1)
    ya = A.one_hot(y, 4, 0.1).to(device)
    torch.testing.assert_close(t.sum(1), torch.ones(8, device=device))
    torch.testing.assert_close(t, lam * ya + (1 - lam) * ya[perm.to(device)])
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm.to(device)])
    assert 0 <= lam <= 1
    xm2, t2, lam2, _ = A.Mixup(0.4)(x, y, 4, _g(5), smoothing=0.1)
    assert lam2 == lam and torch.equal(xm, xm2)


def test_cutmix_lambda_is_area_fraction():
    x = torch.zeros(4, 1, 10, 10)
    x += torch.arange(4).view(4, 1, 1, 1)  # image i is constant i
    y = torch.arange(4)
    for seed in range(5):
        out, t, lam, perm = A.CutMix(1.0)(x, y, 4, _g(seed))
        kept = (out == x).float().mean((1, 2, 3))
        moved = perm != torch.arange(4)
        torch.testing.assert_close(kept[moved], torch.full_like(kept[moved], lam),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(t.sum(1), torch.ones(4))
        ya = F.one_hot(y, 4).float()
        torch.testing.assert_close(t, lam * ya + (1 - lam) * ya[perm])


# -- losses --------------------------------------------------------------------------------

def test_soft_losses_match_hard():
    z, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    torch.testing.assert_close(A.soft_cross_entropy(z, y), F.cross_entropy(z, y))
    torch.testing.assert_close(A.soft_cross_entropy(z, A.one_hot(y, 4, 0.1)),
                               F.cross_entropy(z, y, label_smoothing=0.1))
    torch.testing.assert_close(A.soft_bce(z, y),
                               F.binary_cross_entropy_with_logits(z, F.one_hot(y, 4).float()))
    t = 0.3 * A.one_hot(y, 4) + 0.7 * A.one_hot(y.flip(0), 4)
    torch.testing.assert_close(A.soft_cross_entropy(z, t),
                               0.3 * F.cross_entropy(z, y) + 0.7 * F.cross_entropy(z, y.flip(0)))


def test_jsd_zero_for_equal_views_positive_otherwise():
    z = torch.randn(6, 10)
    assert A.jsd_loss(z, z, z).abs() < 1e-6
    assert A.jsd_loss(z, z + torch.randn(6, 10), z) > 1e-3


# -- AugMix --------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_augmix_seeded_views(device, c):
    x = _batch(c, device=device)
    am = A.AugMix(severity=3)
    clean, v1, v2 = am.views(x, _g(4), **_stats(c))
    assert clean is x and v1.shape == x.shape and not torch.equal(v1, v2)
    torch.testing.assert_close(am(x, _g(9), **_stats(c)), am(x, _g(9), **_stats(c)),
                               rtol=0, atol=0)
    assert torch.isfinite(v1).all()


# -- specs ---------------------------------------------------------------------------------

def test_augreg_levels_and_roundtrip():
    assert list(A.AUGREG_LEVELS) == ["none", "light1", "light2", "medium1", "medium2",
                                     "heavy1", "heavy2"]
    s = A.augreg("medium2")
    assert (s.randaug_n, s.randaug_m, s.mixup_alpha) == (2, 15.0, 0.5)
    assert A.AugmentSpec.from_dict(s.to_dict()) == s
    with pytest.raises(SpecError, match="valid: none, light1"):
        A.augreg("strong")
    with pytest.raises(SpecError, match="unknown augmentation field"):
        A.AugmentSpec.from_dict({"levle": "none"})
    with pytest.raises(dataclasses_frozen_error()):
        s.mixup_alpha = 0.1


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("name", ["none", "light1", "heavy2"])
def test_augment_levels(name):
    x, y = _batch(1, n=8), torch.arange(8) % 10
    xa, t = A.augment(A.augreg(name), x, y, 10, _g(0), mean=MEAN1, std=STD1)
    xb, tb = A.augment(A.augreg(name), x, y, 10, _g(0), mean=MEAN1, std=STD1)
    assert torch.equal(xa, xb) and torch.equal(t, tb)
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    if name == "none":
        assert xa is x and torch.equal(t, F.one_hot(y, 10).float())
    cut = A.augment(A.AugmentSpec(cutmix_alpha=1.0), x, y, 10, _g(0))[1]
    torch.testing.assert_close(cut.sum(1), torch.ones(8))
