"""Tests of geomkit.data.corruptions: identity at severity 0, monotone severities, range,
determinism, and closed-form checks of the individual corruptions."""

import math

import pytest
import torch

from geomkit.data import DataSpec, load_split
from geomkit.data.corruptions import (
    CORRUPTIONS,
    SEVERITY_PARAMS,
    corrupt,
    corrupt_normalized,
    disk_kernel,
    jpeg_table,
    pixelate_sizes,
)
from geomkit.data.transforms import normalize
from geomkit.errors import DataError

NOISY = ("gaussian_noise", "shot_noise", "impulse_noise")


@pytest.fixture(scope="module")
def digits():
    """A fixed batch of 64 real test digits, un-normalized, 8×8."""
    return load_split(DataSpec(normalize=False), "test")[0][:64]


@pytest.fixture(scope="module")
def digits28():
    """32 of the digits resized to 28×28 (not a multiple of 8: exercises JPEG padding)."""
    return load_split(DataSpec(normalize=False, image_size=28), "test")[0][:32]


def test_names_and_table():
    assert set(CORRUPTIONS) >= {
        "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
        "contrast", "brightness", "pixelate", "jpeg",
    }  # fmt: skip
    assert all(len(SEVERITY_PARAMS[n]) == 5 for n in CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_identity(digits, name):
    assert corrupt(digits, name, 0) is digits
    xn = normalize(digits, (0.3,), (0.4,))
    assert corrupt_normalized(xn, name, 0, ((0.3,), (0.4,))) is xn


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("which", ["digits", "digits28"])
def test_change_grows_with_severity(request, name, which):
    x = request.getfixturevalue(which)
    change = [
        float((corrupt(x, name, s, torch.Generator().manual_seed(0)) - x).abs().mean())
        for s in range(6)
    ]
    assert change[0] == 0.0
    assert all(a < b for a, b in zip(change, change[1:], strict=False)), change


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_outputs_stay_in_range_and_keep_shape(name):
    g = torch.Generator().manual_seed(3)
    batches = [
        torch.rand(4, 3, 20, 12, generator=g),
        torch.zeros(2, 1, 8, 8),
        torch.ones(2, 3, 9, 9, dtype=torch.float64),
        (torch.rand(3, 1, 5, 5, generator=g) > 0.5).float(),
    ]
    for x in batches:
        for s in (1, 3, 5):
            out = corrupt(x, name, s)
            assert out.shape == x.shape and out.dtype == x.dtype
            assert torch.isfinite(out).all()
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_given_the_seed(digits, name):
    a = corrupt(digits, name, 3, torch.Generator().manual_seed(7))
    b = corrupt(digits, name, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(corrupt(digits, name, 3), corrupt(digits, name, 3))  # default seed 0
    if name in NOISY:
        c = corrupt(digits, name, 3, torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)


def test_errors_name_the_fix(digits):
    with pytest.raises(DataError, match="unknown corruption 'fog'; valid corruptions: "
                                        "gaussian_noise, shot_noise, impulse_noise"):  # fmt: skip
        corrupt(digits, "fog", 1)
    for bad in (6, -1, 2.0, True):
        with pytest.raises(DataError, match="severity must be an integer 0..5"):
            corrupt(digits, "contrast", bad)
    with pytest.raises(DataError, match="use corrupt_normalized"):
        corrupt(normalize(digits, (0.3,), (0.4,)), "contrast", 1)
    with pytest.raises(DataError, match=r"float N×C×H×W tensor, got \[8, 8\]"):
        corrupt(digits[0, 0], "contrast", 1)
    with pytest.raises(DataError, match="unknown corruption"):
        corrupt_normalized(digits, "fog", 0, DataSpec())
    with pytest.raises(DataError, match="mean/std have 3/3 channels"):
        corrupt_normalized(digits, "contrast", 1, ((0, 0, 0), (1, 1, 1)))
    with pytest.raises(DataError, match="DataSpec or a \\(mean, std\\) pair"):
        corrupt_normalized(digits, "contrast", 1, 0.5)


def test_corrupt_normalized_matches_the_manual_route(digits):
    spec = DataSpec()  # digits, normalized with the documented constants
    xn = load_split(spec, "test")[0][:64]
    for name in ("gaussian_noise", "defocus_blur"):
        got = corrupt_normalized(xn, name, 2, spec, torch.Generator().manual_seed(1))
        want = normalize(corrupt(digits, name, 2, torch.Generator().manual_seed(1)),
                         (0.30600,), (0.37601,))  # fmt: skip
        assert torch.allclose(got, want, atol=1e-5)
    raw_spec = DataSpec(normalize=False)
    assert torch.equal(corrupt_normalized(digits, "jpeg", 4, raw_spec), corrupt(digits, "jpeg", 4))


# -- the individual corruptions against closed forms -------------------------------------


def test_gaussian_noise_has_the_tabled_sigma():
    x = torch.full((8, 1, 32, 32), 0.5)
    for s in range(1, 6):
        sigma = SEVERITY_PARAMS["gaussian_noise"][s - 1]
        std = float((corrupt(x, "gaussian_noise", s) - x).std())
        assert abs(std - sigma) < 0.05 * sigma


def test_shot_noise_is_unbiased_with_poisson_variance():
    x = torch.full((16, 1, 32, 32), 0.4)
    lam = SEVERITY_PARAMS["shot_noise"][2]
    out = corrupt(x, "shot_noise", 3)
    assert abs(float(out.mean()) - 0.4) < 0.01
    assert abs(float(out.var()) - 0.4 / lam) < 0.1 * 0.4 / lam
    assert torch.allclose(out * lam, torch.round(out * lam), atol=1e-4)  # counts / λ


def test_impulse_noise_hits_the_tabled_fraction():
    x = torch.full((16, 3, 32, 32), 0.5)
    for s in (1, 5):
        p = SEVERITY_PARAMS["impulse_noise"][s - 1]
        out = corrupt(x, "impulse_noise", s)
        hit = out != 0.5
        assert abs(float(hit.float().mean()) - p) < 0.2 * p
        assert set(out[hit].unique().tolist()) == {0.0, 1.0}


def test_disk_kernel():
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1.0
    assert torch.equal(disk_kernel(0.4), delta)  # inside the centre pixel: no blur
    for r in (0.6, 1.0, 1.7, 3.2):
        k = disk_kernel(r)
        assert k.shape == (2 * math.ceil(r) + 1,) * 2
        assert abs(float(k.sum()) - 1.0) < 1e-12
        assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    # Large radius: weights approach area fractions, total area π r².
    k = disk_kernel(6.0, supersample=32)
    raw_area = float((k / k.max()).sum())
    assert abs(raw_area - math.pi * 36) < 0.01 * math.pi * 36


def test_blur_contrast_pixelate_keep_constant_images():
    x = torch.full((2, 3, 10, 10), 0.3)
    for name in ("defocus_blur", "contrast", "pixelate"):
        for s in range(1, 6):
            assert torch.allclose(corrupt(x, name, s), x, atol=1e-6), name


def test_contrast_scales_around_the_mean():
    x = 0.25 + 0.5 * torch.rand(3, 1, 6, 6)
    c = SEVERITY_PARAMS["contrast"][1]
    out = corrupt(x, "contrast", 2)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, (x - m) * c + m, atol=1e-6)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), m.flatten(), atol=1e-6)


def test_brightness_raises_hsv_value_and_keeps_hue():
    b = SEVERITY_PARAMS["brightness"][0]
    grey = torch.tensor([0.0, 0.3, 0.99]).view(1, 1, 1, 3)
    assert torch.allclose(corrupt(grey, "brightness", 1), (grey + b).clamp(max=1), atol=1e-6)
    rgb = torch.tensor([0.4, 0.2, 0.1]).view(1, 3, 1, 1)
    out = corrupt(rgb, "brightness", 1).flatten()
    assert abs(float(out.max()) - (0.4 + b)) < 1e-6
    assert torch.allclose(out / out[0], rgb.flatten() / 0.4, atol=1e-6)  # same hue/sat
    black = torch.zeros(1, 3, 1, 1)
    assert torch.allclose(corrupt(black, "brightness", 1), torch.full_like(black, b))


def test_pixelate_makes_blocks():
    assert pixelate_sizes(8) == (6, 5, 4, 3, 2)
    assert pixelate_sizes(2) == (1, 1, 1, 1, 1)
    assert pixelate_sizes(32) == (27, 22, 17, 14, 11)
    x = torch.rand(1, 1, 8, 8)
    out = corrupt(x, "pixelate", 3)  # 4 bins of 2 pixels per axis
    want = x.view(1, 1, 4, 2, 4, 2).mean(dim=(3, 5)).repeat_interleave(2, 2)
    assert torch.allclose(out, want.repeat_interleave(2, 3), atol=1e-6)
    assert torch.allclose(out.mean(), x.mean(), atol=1e-6)  # bins partition the image


def test_jpeg_tables_and_limits():
    assert jpeg_table(50)[0, 0] == 16 and jpeg_table(50, chroma=True)[0, 0] == 17
    assert torch.all(jpeg_table(100) == 1)
    assert torch.all(jpeg_table(10) >= jpeg_table(50))
    # Quality 100 keeps 8-bit images (almost) exactly; constants survive any quality.
    x8 = torch.randint(0, 256, (2, 3, 16, 16)).float() / 255
    near = (corrupt_at_quality(x8, 100) - x8).abs().max()
    assert float(near) <= 2 / 255 + 1e-6
    const = torch.full((1, 1, 16, 16), 128 / 255)
    assert torch.allclose(corrupt(const, "jpeg", 5), const, atol=1e-6)


def corrupt_at_quality(x, quality):
    from geomkit.data import corruptions

    return corruptions._jpeg(x, quality, 1, None).clamp(0, 1)


def test_jpeg_blocks_are_independent():
    # Changing one 8×8 block leaves the others' reconstruction unchanged.
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[..., :8, :8] = torch.rand(8, 8, generator=torch.Generator().manual_seed(1))
    a, b = corrupt(x, "jpeg", 4), corrupt(y, "jpeg", 4)
    assert torch.equal(a[..., 8:, :], b[..., 8:, :]) and torch.equal(a[..., :8, 8:], b[..., :8, 8:])
