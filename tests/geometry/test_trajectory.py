"""Trajectory-PCA directions against exact answers: numpy's SVD (uncentered), sklearn's PCA
(centered), a path built inside a plane (zero residual, true loss = surface)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geomkit.errors import CheckpointError, ResultFileError, SpecError
from geomkit.geometry.landscape import (
    Grid,
    bilinear,
    loss_landscape,
    snapshot_losses,
    trajectory_grid,
    trajectory_pca,
)
from geomkit.io.snapshots import read_snapshots, write_snapshots
from geomkit.train.snapshots import flat_parameters
from tests.cases import plane_basis

NAMES = ["w", "b", "v"]
SHAPES = [(3, 4), (3,), (2, 3)]  # 12 + 3 + 6 = 21 parameters; b is 1-D (a "bias")


def _write(path, rows, names=NAMES, shapes=SHAPES):
    n = len(rows)
    return write_snapshots(path, [np.asarray(r, np.float32) for r in rows], list(range(n)),
                           list(range(n)), names=names, shapes=shapes)


def _center(flat):
    out, i = {}, 0
    for name, shape in zip(NAMES, SHAPES, strict=True):
        k = int(np.prod(shape))
        out[name] = torch.from_numpy(np.asarray(flat[i:i + k], np.float32)).reshape(shape)
        i += k
    return out


def _flat(direction):
    return np.concatenate([direction[n].numpy().reshape(-1) for n in NAMES]).astype(float)


def _case(tmp_path, n=7, seed=0):
    rng = np.random.default_rng(seed)
    center = rng.normal(size=21).astype(np.float32)
    # a drifting path: a mean far from the centre makes centering matter
    rows = center + np.cumsum(rng.normal(size=(n, 21)) + 0.7, axis=0).astype(np.float32)
    rows[-1] = center  # the final snapshot is the checkpoint
    path = _write(tmp_path / "s.h5", rows)
    d = rows.astype(np.float64) - center.astype(np.float64)
    return path, _center(center), d


def _same_up_to_sign(a, b, tol=1e-5):
    s = np.sign(np.dot(a, b))
    np.testing.assert_allclose(a, s * b, atol=tol)


def test_uncentered_is_the_svd_of_the_differences(tmp_path):
    path, center, d = _case(tmp_path)
    pca = trajectory_pca(path, center, ignore="none", block_columns=5)  # blocks cut params
    _, s, vt = np.linalg.svd(d, full_matrices=False)
    for k in range(2):
        _same_up_to_sign(_flat(pca.directions[k]), vt[k])
        assert np.linalg.norm(_flat(pca.directions[k])) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(pca.singular_values, s[:2], rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio, s[:2] ** 2 / (s ** 2).sum(),
                               rtol=1e-9)
    v = np.stack([_flat(pca.directions[k]) for k in range(2)])
    np.testing.assert_allclose(pca.coords, d @ v.T, atol=1e-4)  # uncentered projection
    np.testing.assert_allclose(pca.residual, np.linalg.norm(d - pca.coords @ v, axis=1),
                               atol=1e-4)
    np.testing.assert_allclose(pca.distance, np.linalg.norm(d, axis=1), rtol=1e-9)


def test_centered_is_sklearn_pca_and_differs_from_uncentered(tmp_path):
    from sklearn.decomposition import PCA

    path, center, d = _case(tmp_path)
    pca = trajectory_pca(path, center, centered=True, ignore="none", block_columns=4)
    ref = PCA(n_components=2).fit(d)
    for k in range(2):
        _same_up_to_sign(_flat(pca.directions[k]), ref.components_[k])
    np.testing.assert_allclose(pca.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=1e-8)
    # the points are the raw differences projected (the plane passes through the centre)
    v = np.stack([_flat(pca.directions[k]) for k in range(2)])
    np.testing.assert_allclose(pca.coords, d @ v.T, atol=1e-4)
    plain = trajectory_pca(path, center, ignore="none")
    c = abs(np.dot(_flat(plain.directions[0]), _flat(pca.directions[0])))
    assert c < 0.999  # a wrong centering would make the two agree
    # uncentered: the plane through the centre with the smallest total squared residual
    assert (plain.residual ** 2).sum() < (pca.residual ** 2).sum()


def test_biasbn_leaves_1d_parameters_out_but_counts_them_off_plane(tmp_path):
    path, center, d = _case(tmp_path)
    pca = trajectory_pca(path, center)  # default ignore="biasbn"
    assert pca.included == ("w", "v")
    assert not pca.directions[0]["b"].any() and not pca.directions[1]["b"].any()
    dk = d.copy()
    dk[:, 12:15] = 0.0  # the bias columns
    _, _, vt = np.linalg.svd(dk, full_matrices=False)
    _same_up_to_sign(_flat(pca.directions[0]), vt[0])
    _same_up_to_sign(_flat(pca.directions[1]), vt[1])
    v = np.stack([_flat(pca.directions[k]) for k in range(2)])
    # the distance from the plane is over all parameters, the biases' moves included
    np.testing.assert_allclose(pca.residual, np.linalg.norm(d - pca.coords @ v, axis=1),
                               atol=1e-4)
    assert (pca.residual > np.linalg.norm(d[:, 12:15], axis=1) - 1e-4).all()


def _plane_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _in_plane(tmp_path, model, ab):
    """Snapshots theta_c + a u + b v, u and v orthonormal (zero on the biases)."""
    names, shapes, theta = flat_parameters(model)
    u, v = plane_basis(shapes, seed=1)
    rows = [theta + a * u + b * v for a, b in ab]
    path = write_snapshots(tmp_path / "p.h5", rows, list(range(len(ab))),
                           list(range(len(ab))), names=names, shapes=shapes)
    return path, u, v


def test_a_path_in_a_plane_has_zero_residual_and_its_losses_are_the_surface(tmp_path):
    model = _plane_model()
    # sum a*b = 0 and sum a^2 > sum b^2: the principal axes are exactly u and v
    ab = [(-2.0, 0.0), (-1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]
    path, u, v = _in_plane(tmp_path, model, ab)
    pca = trajectory_pca(path, model)
    assert pca.residual.max() < 1e-6
    # orientation: the path arrives from the negative side of each axis
    np.testing.assert_allclose(pca.coords, [(-2, 0), (-1, -1), (1, -1), (0, 0)], atol=1e-6)
    _same_up_to_sign(_flat_model(pca.directions[0], model), u)
    assert pca.explained_variance_ratio == pytest.approx([6 / 8, 2 / 8], rel=1e-6)
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    surf = loss_landscape(model, x, y, list(pca.directions), Grid((-2, 1, 4), (-1, 1, 3)))
    true, _ = snapshot_losses(model, path, x, y)
    interp = bilinear(surf.xcoordinates, surf.ycoordinates, surf.loss,
                      pca.coords[:, 0], pca.coords[:, 1])
    np.testing.assert_allclose(true, interp, rtol=1e-5)
    # the weights are restored after the snapshots were evaluated
    _, _, theta = flat_parameters(model)
    _, _, theta2 = flat_parameters(_plane_model())
    np.testing.assert_array_equal(theta, theta2)


def _flat_model(direction, model):
    return np.concatenate([direction[n].numpy().reshape(-1)
                           for n, _ in model.named_parameters()]).astype(float)


def test_bilinear_is_exact_on_a_plane_and_nan_outside():
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 2, 3)
    z = 2 * x[None, :] + 3 * y[:, None] + 1
    a, b = np.array([-0.3, 1.0, 0.77, 1.5]), np.array([0.2, 2.0, 1.3, 1.0])
    out = bilinear(x, y, z, a, b)
    np.testing.assert_allclose(out[:3], 2 * a[:3] + 3 * b[:3] + 1)
    assert np.isnan(out[3])
    z2 = z.copy()
    z2[0, 0] = np.nan
    assert np.isnan(bilinear(x, y, z2, [-0.9], [0.1])[0])


def test_default_grid_covers_the_path_and_the_centre():
    coords = np.array([[-3.0, 0.4], [-1.0, -0.5], [0.0, 0.0]])
    gx, gy = trajectory_grid(coords)
    assert gx[0] <= -3.0 - 0.2 * 3.0 + 1e-12 and gx[1] >= 0.0 + 0.6 - 1e-12 and gx[2] == 51
    assert gy[0] <= -0.5 - 0.18 + 1e-12 and gy[1] >= 0.4 + 0.18 - 1e-12


def test_bad_snapshots_are_one_line_errors(tmp_path):
    path, center, d = _case(tmp_path, n=4)
    with pytest.raises(ResultFileError, match="no such snapshots file"):
        trajectory_pca(tmp_path / "missing.h5", center)
    one = _write(tmp_path / "one.h5", [np.zeros(21)])
    with pytest.raises(ResultFileError, match="one snapshot only"):
        trajectory_pca(one, center)
    empty = write_snapshots(tmp_path / "empty.h5", [], [], [], names=NAMES, shapes=SHAPES)
    with pytest.raises(ResultFileError, match="no snapshots"):
        read_snapshots(empty)
    other = dict(center)
    other["u"] = other.pop("v")
    with pytest.raises(CheckpointError, match="other parameters"):
        trajectory_pca(path, other)
    flat = _flat(center)
    line = _write(tmp_path / "line.h5", [flat + 1.0, flat + 2.0, flat])
    with pytest.raises(SpecError, match="fewer than two directions"):
        trajectory_pca(line, center, ignore="none")
    with pytest.raises(SpecError, match="ignore"):
        trajectory_pca(path, center, ignore="bn")
