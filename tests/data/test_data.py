"""Tests of geomkit.data: specs, sources, splits, subsets, preprocessing, augmentation."""

import gzip
import json
import os
import pickle

import numpy as np
import pytest
import torch

from geomkit.data import (
    DataInfo,
    DataSpec,
    augment_batch,
    info,
    list_sources,
    load_split,
    subset_indices,
)
from geomkit.data.sources import FASHION_MNIST_DEFAULT_ROOT, NORM_STATS, clear_cache
from geomkit.errors import DataError

# -- DataSpec ----------------------------------------------------------------------------


def test_spec_dict_round_trip_through_json():
    spec = DataSpec("fashion-mnist", root="/data/fm", image_size=32, normalize=False,
                    augment=True, subset=0.25, subset_seed=7, hflip=False)  # fmt: skip
    d = json.loads(json.dumps(spec.to_dict()))
    assert DataSpec.from_dict(d) == spec
    assert hash(DataSpec.from_dict(d)) == hash(spec)


def test_spec_from_dict_defaults_and_unknown_keys():
    assert DataSpec.from_dict({"source": "digits"}) == DataSpec()
    with pytest.raises(DataError, match="unknown data spec key.*colour.*valid keys: source"):
        DataSpec.from_dict({"source": "digits", "colour": True})
    with pytest.raises(DataError, match="must be a dict"):
        DataSpec.from_dict(["digits"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"source": "mnist"}, "unknown data source 'mnist'; valid sources: digits, fashion-mnist"),
        ({"subset": 0.0}, r"subset must be a fraction in \(0, 1\]"),
        ({"subset": 1.5}, r"subset must be a fraction in \(0, 1\]"),
        ({"subset": "half"}, r"subset must be a fraction"),
        ({"image_size": 0}, "image_size must be at least 1"),
        ({"image_size": 8.5}, "image_size must be an integer"),
        ({"normalize": "yes"}, "normalize must be true or false"),
        ({"root": 3}, "data root must be a path"),
    ],
)
def test_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(DataError, match=message):
        DataSpec(**kwargs)


def test_spec_aliases_and_paths():
    assert DataSpec("FMNIST").source == "fashion-mnist"
    assert DataSpec("cifar-10").source == "cifar10"
    from pathlib import Path

    assert DataSpec("npz", root=Path("/tmp/a.npz")).root == "/tmp/a.npz"


def test_list_sources():
    assert list_sources() == ["digits", "fashion-mnist", "cifar10", "cifar100", "npz", "synthetic",
                              "imagefolder"]


def test_unknown_split_lists_valid_ones():
    with pytest.raises(DataError, match="unknown split 'val'; valid splits: train, test"):
        load_split(DataSpec(), "val")
    with pytest.raises(DataError, match="expected a geomkit.data.DataSpec"):
        load_split({"source": "digits"}, "train")


# -- digits ------------------------------------------------------------------------------


def test_digits_split_sizes_fixed_and_disjoint():
    from sklearn.datasets import load_digits

    spec = DataSpec("digits", normalize=False)
    x_tr, y_tr = load_split(spec, "train")
    x_te, y_te = load_split(spec, "test")
    assert x_tr.shape == (1437, 1, 8, 8) and x_te.shape == (360, 1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    # The documented split is fixed: a change of these labels changes every result.
    assert y_te[:10].tolist() == [0, 3, 9, 5, 0, 8, 9, 7, 3, 7]
    assert y_tr[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert set(y_tr.tolist()) == set(y_te.tolist()) == set(range(10))
    # Train and test partition scikit-learn's 1797 images, each in the original order.
    d = load_digits()
    full = torch.from_numpy(d.images).float()[:, None] / 16
    idx_tr = [_find_row(full, row) for row in x_tr[:50]]
    assert idx_tr == sorted(idx_tr)
    both = torch.cat([x_tr, x_te]).flatten(1)
    assert torch.equal(_sorted_rows(both), _sorted_rows(full.flatten(1)))
    # Deterministic, also after the cache is dropped.
    clear_cache()
    x2, y2 = load_split(spec, "test")
    assert torch.equal(x2, x_te) and torch.equal(y2, y_te)


def _find_row(full, row):
    hits = (full == row).flatten(1).all(1).nonzero().flatten().tolist()
    return hits[0]


def _sorted_rows(x):
    x = x.double()
    key = (x * torch.arange(1, x.shape[1] + 1, dtype=torch.float64).sqrt()).sum(1)
    return x[torch.argsort(key)]


def test_digits_info_is_cheap_and_correct():
    assert info(DataSpec()) == DataInfo(10, 1, 8, tuple("0123456789"))
    assert info(DataSpec(image_size=24)).image_size == 24


def test_repeated_loads_return_fresh_tensors():
    x1, y1 = load_split(DataSpec(), "train")
    x1.zero_()
    y1.zero_()
    x2, y2 = load_split(DataSpec(), "train")
    assert x2.abs().sum() > 0 and y2.sum() > 0


# -- subsets -----------------------------------------------------------------------------


def test_subset_is_class_balanced_seeded_and_ordered():
    full_x, full_y = load_split(DataSpec(normalize=False), "train")
    spec = DataSpec(normalize=False, subset=0.25, subset_seed=3)
    x, y = load_split(spec, "train")
    counts_full = torch.bincount(full_y)
    counts = torch.bincount(y, minlength=10)
    assert torch.equal(counts, torch.floor(0.25 * counts_full + 0.5).long())
    idx = subset_indices(full_y, 0.25, 3)
    assert np.all(np.diff(idx) > 0)  # canonical order kept
    assert torch.equal(x, full_x[idx]) and torch.equal(y, full_y[idx])
    # Same seed, same subset; another seed, another subset.
    x_again, _ = load_split(spec, "train")
    assert torch.equal(x_again, x)
    assert not np.array_equal(subset_indices(full_y, 0.25, 4), idx)
    # The test split is never subsetted.
    assert load_split(spec, "test")[0].shape[0] == 360


def test_subset_keeps_at_least_one_per_class():
    y = np.array([0] * 50 + [1] * 3 + [2])
    idx = subset_indices(y, 0.1, 0)
    assert np.bincount(y[idx]).tolist() == [5, 1, 1]
    assert subset_indices(y, 1.0, 0).tolist() == list(range(len(y)))


# -- preprocessing -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 8, 16, 32])
def test_resize_shapes(size):
    x, y = load_split(DataSpec(image_size=size), "test")
    assert x.shape == (360, 1, size, size) and y.shape == (360,)
    assert info(DataSpec(image_size=size)).image_size == size


def test_resize_keeps_constant_images_constant():
    from geomkit.data.transforms import resize

    x = torch.full((2, 3, 28, 28), 0.7)
    for size in (7, 28, 56):
        out = resize(x, size)
        assert out.shape == (2, 3, size, size)
        assert torch.allclose(out, torch.full_like(out, 0.7), atol=1e-6)


def test_normalize_gives_zero_mean_unit_std_on_train():
    x, _ = load_split(DataSpec(), "train")
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3
    # The constants are those of the native resolution: resizing keeps the mean (bilinear
    # weights sum to one) but smoothing lowers the spread a little.
    x16, _ = load_split(DataSpec(image_size=16), "train")
    assert abs(float(x16.mean())) < 1e-2
    assert 0.8 < float(x16.std()) < 1.0


def test_digits_normalization_constants_match_the_data():
    x, _ = load_split(DataSpec(normalize=False), "train")
    (mean,), (std,) = NORM_STATS["digits"]
    assert abs(float(x.double().mean()) - mean) < 1e-5
    assert abs(float(x.double().std(unbiased=False)) - std) < 1e-5


# -- synthetic ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_described_by_info():
    spec = DataSpec("synthetic", synthetic_classes=3, synthetic_chans=2, synthetic_size=6,
                    synthetic_train=30, synthetic_test=12, synthetic_seed=5)  # fmt: skip
    clear_cache()
    x, y = load_split(spec, "train")
    clear_cache()
    x2, y2 = load_split(spec, "train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (30, 2, 6, 6) and torch.bincount(y).tolist() == [10, 10, 10]
    assert abs(float(x.mean())) < 1e-5
    assert info(spec) == DataInfo(3, 2, 6, ("class 0", "class 1", "class 2"))
    other = load_split(spec.replace(synthetic_seed=6), "train")[0]
    assert not torch.equal(other, x)


# -- npz ---------------------------------------------------------------------------------


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_round_trip(tmp_path, layout, dtype):
    rng = np.random.default_rng(0)
    chans = 1 if layout == "nhw" else 3
    imgs = rng.integers(0, 256, size=(10, chans, 6, 6)).astype(np.uint8)  # N×C×H×W truth
    stored = {"nhw": imgs[:, 0], "nhwc": imgs.transpose(0, 2, 3, 1), "nchw": imgs}[layout]
    if dtype == "float32":
        stored = stored.astype(np.float32) / 255
    y = np.arange(10) % 4
    path = _save_npz(tmp_path / "d.npz", x_train=stored[:7], y_train=y[:7],
                     x_test=stored[7:], y_test=y[7:],
                     class_names=np.array(["a", "b", "c", "d"]))  # fmt: skip
    spec = DataSpec("npz", root=path, normalize=False)
    x, yy = load_split(spec, "train")
    assert torch.allclose(x, torch.from_numpy(imgs[:7]).float() / 255, atol=1e-6)
    assert yy.tolist() == y[:7].tolist()
    assert load_split(spec, "test")[0].shape == (3, chans, 6, 6)
    assert info(spec) == DataInfo(4, chans, 6, ("a", "b", "c", "d"))
    xn, _ = load_split(spec.replace(normalize=True), "train")
    assert torch.allclose(xn.mean(dim=(0, 2, 3)), torch.zeros(chans), atol=1e-5)


def test_npz_non_square_needs_image_size(tmp_path):
    x = np.zeros((4, 6, 9), np.uint8)
    path = _save_npz(tmp_path / "r.npz", x_train=x, y_train=np.arange(4), x_test=x,
                     y_test=np.arange(4))  # fmt: skip
    with pytest.raises(DataError, match="6×9, not square; set image_size"):
        load_split(DataSpec("npz", root=path), "train")
    assert load_split(DataSpec("npz", root=path, image_size=5), "train")[0].shape == (4, 1, 5, 5)


_GOOD = {
    "x_train": np.zeros((4, 8, 8), np.uint8),
    "y_train": np.array([0, 1, 0, 1]),
    "x_test": np.zeros((2, 8, 8), np.uint8),
    "y_test": np.array([0, 1]),
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"y_test": None}, "lacks y_test; it needs arrays x_train, y_train, x_test, y_test"),
        ({"y_train": np.array([0, 1, 0])}, "y_train .* has 3 labels for 4 images"),
        ({"y_train": np.array([0.0, 1, 0, 1])}, "y_train .* store a 1-D integer array"),
        ({"y_train": np.array([0, -1, 0, 1])}, "negative labels"),
        ({"x_train": np.full((4, 8, 8), 2.0)}, r"float values in \[2, 2\]; store floats in"),
        ({"x_train": np.full((4, 8, 8), np.nan)}, "NaN or inf"),
        ({"x_train": np.zeros((4, 8), np.uint8)}, "x_train .* has shape \\[4, 8\\]"),
        ({"x_train": np.zeros((4, 3, 8, 3), np.uint8)}, "cannot tell the channel axis"),
        ({"x_train": np.zeros((4, 8, 8), np.int32)}, "dtype int32; store uint8 or float"),
        ({"x_test": np.zeros((2, 9, 9), np.uint8)}, "differ in image shape or dtype"),
        ({"class_names": np.array(["a", "b", "c"])}, "class_names .* has 3 entries .* need 2"),
    ],
)
def test_npz_malformed_files_raise_data_error(tmp_path, change, message):
    arrays = {**_GOOD, **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_split(DataSpec("npz", root=path), "train")


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(DataError, match="not found; pass root FILE.npz"):
        load_split(DataSpec("npz", root=str(tmp_path / "none.npz")), "train")
    with pytest.raises(DataError, match="needs a file"):
        load_split(DataSpec("npz"), "train")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="cannot read npz file"):
        load_split(DataSpec("npz", root=str(junk)), "train")


# -- CIFAR -------------------------------------------------------------------------------


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _fake_cifar10(parent, per_batch=3):
    d = parent / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8)
        _dump(d / f"data_batch_{i}", {b"data": data, b"labels": [i % 10] * per_batch})
    _dump(d / "test_batch", {b"data": np.full((2, 3072), 255, np.uint8), b"labels": [3, 4]})
    names = [n.encode() for n in ("plane", "car", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")]  # fmt: skip
    _dump(d / "batches.meta", {b"label_names": names})
    return d


def test_fake_cifar10_directory(tmp_path):
    d = _fake_cifar10(tmp_path)
    for root in (tmp_path, d):  # the folder itself or its parent
        spec = DataSpec("cifar10", root=str(root), normalize=False)
        x, y = load_split(spec, "train")
        assert x.shape == (15, 3, 32, 32) and y.tolist() == [1] * 3 + [2] * 3 + [3] * 3 + [
            4] * 3 + [5] * 3  # fmt: skip
        with open(d / "data_batch_1", "rb") as f:
            first = pickle.load(f)[b"data"][0]
        # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32×32.
        assert torch.equal(x[0], torch.from_numpy(first.reshape(3, 32, 32)).float() / 255)
        x_te, y_te = load_split(spec, "test")
        assert torch.all(x_te == 1.0) and y_te.tolist() == [3, 4]
    assert info(DataSpec("cifar10", root=str(d))).in_chans == 3
    assert info(DataSpec("cifar10", root=str(d))).num_classes == 10
    xn, _ = load_split(DataSpec("cifar10", root=str(d)), "test")
    m, s = NORM_STATS["cifar10"][0][0], NORM_STATS["cifar10"][1][0]
    assert torch.allclose(xn[:, 0], torch.full_like(xn[:, 0], (1 - m) / s))


def test_fake_cifar100_directory(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, size=(6, 3072)).astype(np.uint8)
    _dump(d / "train", {b"data": data, b"fine_labels": [0, 99, 5, 5, 7, 1],
                        b"coarse_labels": [0] * 6})  # fmt: skip
    _dump(d / "test", {b"data": data[:2], b"fine_labels": [3, 4]})
    _dump(d / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    spec = DataSpec("cifar100", root=str(tmp_path), image_size=16)
    x, y = load_split(spec, "train")
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 99, 5, 5, 7, 1]
    i = info(spec)
    assert (i.num_classes, i.in_chans, i.image_size, i.class_names[99]) == (100, 3, 16, "c99")


def test_cifar_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError, match="cifar10 needs its data directory: pass root"):
        load_split(DataSpec("cifar10"), "train")
    with pytest.raises(DataError, match="does not exist"):
        load_split(DataSpec("cifar10", root=str(tmp_path / "nope")), "train")
    d = _fake_cifar10(tmp_path)
    os.remove(d / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3 not found; pass root the official"):
        load_split(DataSpec("cifar10", root=str(d)), "train")
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3 is unreadable"):
        load_split(DataSpec("cifar10", root=str(d)), "train")
    _dump(d / "data_batch_3", {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 0, 0]})
    with pytest.raises(DataError, match=r"expected uint8\[N, 3072\]"):
        load_split(DataSpec("cifar10", root=str(d)), "train")


# -- Fashion-MNIST -----------------------------------------------------------------------

_FM_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
needs_fmnist = pytest.mark.skipif(
    not all(
        os.path.exists(os.path.join(FASHION_MNIST_DEFAULT_ROOT, f + ext))
        for f in _FM_FILES
        for ext in [".gz"]
    ),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DEFAULT_ROOT} "
    "(apt-get install -y dataset-fashion-mnist)",
)


@needs_fmnist
def test_fashion_mnist_loads_real_data():
    spec = DataSpec("fashion-mnist", normalize=False)
    x, y = load_split(spec, "train")
    x_te, y_te = load_split(spec, "test")
    assert x.shape == (60000, 1, 28, 28) and x_te.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(y_te).tolist() == [1000] * 10
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    (mean,), (std,) = NORM_STATS["fashion-mnist"]
    assert abs(float(x.double().mean()) - mean) < 1e-5
    assert abs(float(x.double().std(unbiased=False)) - std) < 1e-5
    i = info(spec)
    assert (i.num_classes, i.in_chans, i.image_size) == (10, 1, 28)
    assert i.class_names[0] == "T-shirt/top" and i.class_names[9] == "Ankle boot"


@needs_fmnist
def test_fashion_mnist_corrupt_copy_reports_md5(tmp_path):
    # Real image files (symlinked) and an uncompressed label file with one byte changed.
    for f in _FM_FILES:
        src = os.path.join(FASHION_MNIST_DEFAULT_ROOT, f + ".gz")
        if f == "train-labels-idx1-ubyte":
            with open(src, "rb") as fh:
                data = bytearray(gzip.decompress(fh.read()))
            data[100] = (data[100] + 1) % 10
            (tmp_path / f).write_bytes(bytes(data))
        else:
            os.symlink(src, tmp_path / (f + ".gz"))
    spec = DataSpec("fashion-mnist", root=str(tmp_path))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is corrupt: MD5 [0-9a-f]{32}"
                                        r".*expected 9018921c.*apt-get install -y "
                                        r"dataset-fashion-mnist.*pass root DIR"):  # fmt: skip
        load_split(spec, "train")
    # A truncated gzip archive is a corrupt file too.
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    src = os.path.join(FASHION_MNIST_DEFAULT_ROOT, "train-labels-idx1-ubyte.gz")
    with open(src, "rb") as fh:
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(fh.read()[:-100])
    with pytest.raises(DataError, match="not a valid gzip file"):
        load_split(spec, "train")


def test_fashion_mnist_missing_files_say_what_to_install(tmp_path):
    msg = r"apt-get install -y dataset-fashion-mnist\) or pass root DIR"
    with pytest.raises(DataError, match="does not exist; install the Debian package.*" + msg):
        load_split(DataSpec("fashion-mnist", root=str(tmp_path / "nope")), "train")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[.gz\] not found.*" + msg):
        load_split(DataSpec("fashion-mnist", root=str(tmp_path)), "train")


def test_idx_parser_rejects_bad_headers():
    from geomkit.data.idx import parse_idx

    good = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    assert parse_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(DataError, match="needs 18"):
        parse_idx(good[:-1])
    with pytest.raises(DataError, match="unknown IDX type code 0x07"):
        parse_idx(good[:2] + b"\x07" + good[3:])


# -- augmentation ------------------------------------------------------------------------


def test_augment_is_identity_when_off():
    x = torch.rand(4, 1, 8, 8)
    assert augment_batch(x, DataSpec(augment=False), torch.Generator()) is x


def test_augment_is_deterministic_given_the_generator():
    x, _ = load_split(DataSpec(image_size=16), "train")
    x = x[:32]
    spec = DataSpec(image_size=16, augment=True)
    a = augment_batch(x, spec, torch.Generator().manual_seed(1))
    b = augment_batch(x, spec, torch.Generator().manual_seed(1))
    c = augment_batch(x, spec, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    # Crops stay inside the image: no value outside the input's range appears.
    assert float(a.min()) >= float(x.min()) - 1e-5 and float(a.max()) <= float(x.max()) + 1e-5
    a64 = augment_batch(x.double(), spec, torch.Generator().manual_seed(1))
    assert a64.dtype == torch.float64 and torch.allclose(a64.float(), a, atol=1e-5)


def _ramp_directions(spec):
    """+1 where an augmented left-to-right ramp still increases, -1 where it was flipped."""
    ramp = torch.linspace(0, 1, 16).expand(64, 1, 16, 16).contiguous()
    out = augment_batch(ramp, spec, torch.Generator().manual_seed(0))
    return torch.sign(out[:, 0, 8, -1] - out[:, 0, 8, 0])


def test_augment_flips_only_where_meaningful():
    assert torch.all(_ramp_directions(DataSpec("digits", augment=True)) == 1)
    flips = _ramp_directions(DataSpec("fashion-mnist", augment=True))
    assert 10 < int((flips == -1).sum()) < 54
    assert torch.all(_ramp_directions(DataSpec("cifar10", augment=True, hflip=False)) == 1)
    assert (_ramp_directions(DataSpec("npz", augment=True, hflip=True)) == -1).any()


def test_augment_crop_area_in_range():
    # A ramp of slope 1 per image width becomes a ramp of slope ~crop width: check scale.
    ramp = torch.linspace(-1, 1, 64).expand(256, 1, 64, 64).contiguous()
    spec = DataSpec("digits", augment=True)
    out = augment_batch(ramp, spec, torch.Generator().manual_seed(0))
    width = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / (ramp[0, 0, 0, -1] - ramp[0, 0, 0, 0])
    ramp_t = ramp.transpose(-1, -2).contiguous()
    out_t = augment_batch(ramp_t, spec, torch.Generator().manual_seed(0))
    height = (out_t[:, 0, -1, 0] - out_t[:, 0, 0, 0]) / 2
    area = width * height
    assert float(area.min()) > 0.5 - 0.03 and float(area.max()) <= 1.0 + 1e-4
    aspect = width / height
    assert float(aspect.min()) > 0.75 - 0.03 and float(aspect.max()) < 4 / 3 + 0.03
