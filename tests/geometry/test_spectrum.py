"""Hutchinson trace and SLQ density against dense float64 Hessians.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): dense Hessians
come from the CPU case, the estimators run on ``case.to(device)``. Probes are drawn on the
CPU and moved, so they are the same on every device; results are CPU tensors and floats.
"""

import math

import pytest
import torch

from geomkit.errors import SpecError
from geomkit.geometry.spectrum import hutchinson_trace, spectral_density
from tests.cases import make_case
from tests.geometry._hessian_oracle import cached_block_hessians


@pytest.mark.parametrize("name", ["vit1", "cnn_bn"])
def test_trace_unbiased_within_three_standard_errors(name, device):
    dev = make_case(name, n=10).to(device)
    dense = cached_block_hessians(name, 10)
    res = hutchinson_trace(dev.model, dev.inputs, dev.targets, blocks=("paper",),
                           n_probes=120, chunk=40, seed=1)
    for b, H in dense.items():
        r = res[b]
        exact = float(torch.trace(H))
        assert r.n_probes == 120 and r.n_params == H.shape[0] and r.n_hvps == 120
        assert r.stderr > 0
        assert abs(r.trace - exact) < 3 * r.stderr, (b, r.trace, exact, r.stderr)
        assert r.samples.shape == (120,)


def test_trace_samples_are_exact_quadratic_forms_and_seeded(device):
    dev = make_case("mlp", n=10).to(device)
    H = cached_block_hessians("mlp", 10)["whole"]
    a = hutchinson_trace(dev.model, dev.inputs, dev.targets, n_probes=3, seed=4)["whole"]
    b = hutchinson_trace(dev.model, dev.inputs, dev.targets, n_probes=3, seed=4,
                         strategy="stream", chunk=1)["whole"]
    assert a.samples.device.type == "cpu"
    g = torch.Generator().manual_seed(4)
    from geomkit.geometry.spectrum import rademacher

    zs = [rademacher(H.shape[0], g) for _ in range(3)]
    want = torch.tensor([float(z @ H @ z) for z in zs], dtype=torch.float64)
    torch.testing.assert_close(a.samples, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.samples, want, rtol=1e-10, atol=1e-12)
    one = hutchinson_trace(dev.model, dev.inputs, dev.targets, n_probes=1)["whole"]
    assert math.isnan(one.stderr)


@pytest.mark.parametrize("name", ["vit1", "mixer1"])
def test_density_integrates_to_one_and_mean_is_trace_over_n(name, device):
    dev = make_case(name, n=10).to(device)
    H = cached_block_hessians(name, 10)["whole"]
    n = H.shape[0]
    P = 3
    d = spectral_density(dev.model, dev.inputs, dev.targets, n_probes=P, n_iter=40, seed=2)
    d = d["whole"]
    assert d.grid.device.type == "cpu" and d.nodes.device.type == "cpu"
    assert abs(float(torch.trapezoid(d.density, d.grid)) - 1) < 1e-6
    assert abs(float(d.weights.sum()) - 1) < 1e-12
    # the density's mean is the probes' Hutchinson estimate / n (same seed, same probes)
    t = hutchinson_trace(dev.model, dev.inputs, dev.targets, n_probes=P, seed=2)["whole"]
    assert abs(d.mean - t.trace / n) < 1e-9 * abs(t.trace / n)
    mean_num = float(torch.trapezoid(d.grid * d.density, d.grid))
    assert abs(mean_num - d.mean) < 1e-6 * float(d.grid.abs().max())
    # and near the exact tr(H)/n, within the estimator's spread
    assert abs(d.mean - float(torch.trace(H)) / n) < 4 * t.stderr / n + 1e-12
    # extreme nodes bracket the spectrum from inside (Ritz values interlace)
    ev = torch.linalg.eigvalsh(H)
    assert float(d.nodes.max()) <= float(ev[-1]) + 1e-8 * float(ev.abs().max())
    assert float(d.nodes.min()) >= float(ev[0]) - 1e-8 * float(ev.abs().max())
    assert abs(float(d.nodes.max()) - float(ev[-1])) < 1e-6 * float(ev[-1])
    assert d.n_hvps <= P * 40


def test_density_full_krylov_recovers_spectrum_moments(device):
    dev = make_case("cnn_bn", n=10).to(device)
    H = cached_block_hessians("cnn_bn", 10)["whole"]
    n = H.shape[0]
    d = spectral_density(dev.model, dev.inputs, dev.targets, n_probes=2, n_iter=n,
                         sigma=1e-3, n_grid=20000)["whole"]
    # with m = n the quadrature is exact per probe: Σ τθ² = qᵀH²q
    from geomkit.geometry.spectrum import rademacher

    g = torch.Generator().manual_seed(0)
    qs = [rademacher(n, g) / math.sqrt(n) for _ in range(2)]
    want = sum(float(q @ H @ H @ q) for q in qs) / 2
    assert abs(float((d.weights * d.nodes**2).sum()) - want) < 1e-8 * want
    assert d.sigma == 1e-3


def test_bad_arguments():
    case = make_case("mlp")
    with pytest.raises(SpecError):
        hutchinson_trace(case.model, case.inputs, case.targets, n_probes=0)
    with pytest.raises(SpecError):
        spectral_density(case.model, case.inputs, case.targets, sigma=-1.0)
