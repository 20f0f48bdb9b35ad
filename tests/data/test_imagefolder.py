"""The imagefolder source: layout, canonical order, decoding and preprocessing, one-line
errors, the batch stream (equal to the tensors, bitwise) and the commands end to end."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from geomkit.data import DataSpec, ImageFolderBatches, info, load_split
from geomkit.data import imagefolder as ifm
from geomkit.data.spec import MEAN_STD
from geomkit.errors import DataError

IMAGENET = MEAN_STD["imagenet"]


def _pixels(seed: int, h: int = 10, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _folder(root, classes=("cat", "dog", "emu", "fox"), per=5, ext=("png", "jpg")):
    """``root/<class>/<i>.<ext>``: 12×10 RGB images, PNG and JPEG alternating; returns the
    pixels of each file by path."""
    pixels = {}
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per):
            a = _pixels(100 * c + i)
            path = root / name / f"{i:02d}.{ext[i % len(ext)]}"
            Image.fromarray(a).save(path)
            pixels[str(path)] = a
    return pixels


def _expected(a: np.ndarray, size: int) -> torch.Tensor:
    """The documented preprocessing, written out: [0, 1], shorter side to size, centre crop."""
    x = torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)
    h, w = x.shape[1:]
    nh, nw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=nh < h)[0]
    t, left = (nh - size) // 2, (nw - size) // 2
    return x[:, t : t + size, left : left + size]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- layout, order, info ------------------------------------------------------------------


def test_info_lists_folders_without_decoding(tmp_path, monkeypatch):
    _folder(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(Image, "open", refuse)
    spec = DataSpec("imagefolder", root=tmp_path, image_size=16)
    d = info(spec)
    assert (d.num_classes, d.in_chans, d.image_size) == (4, 3, 16)
    assert d.class_names == ("cat", "dog", "emu", "fox")
    assert spec.split_shape("test") == (20, 3, 16)
    assert DataSpec("image-folder", root=tmp_path).image_size == 224  # the documented default
    assert len(ImageFolderBatches(spec, "train", n=7)) == 7


def test_first_examples_interleave_the_classes(tmp_path):
    names = [f"c{k}" for k in range(10)]
    for k, name in enumerate(names):
        os.makedirs(tmp_path / name)
        for i in range(3 if k % 2 else 2):  # uneven classes: 2 or 3 files
            Image.fromarray(_pixels(k * 10 + i, 4, 4)).save(tmp_path / name / f"f{i}.png")
    b = ImageFolderBatches(DataSpec("imagefolder", root=tmp_path, image_size=4), "train")
    y = b.labels.tolist()
    assert sorted(y[:10]) == list(range(10))  # the first 10 are the 10 classes
    assert y == list(range(10)) * 2 + [1, 3, 5, 7, 9]  # round-robin; short classes drop out
    assert [os.path.basename(f) for f in b.files[:2]] == ["f0.png", "f0.png"]
    assert b.files[10].endswith(os.path.join("c0", "f1.png"))


def test_decoding_and_normalizations(tmp_path):
    pixels = _folder(tmp_path, ext=("png",))  # lossless: exact pixels
    base = DataSpec("imagefolder", root=tmp_path, image_size=5)
    files = ImageFolderBatches(base, "train").files
    raw = torch.stack([_expected(pixels[f], 5) for f in files])
    x, y = load_split(base.replace(normalize=False), "train")
    assert x.shape == (20, 3, 5, 5) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, raw, rtol=0, atol=1e-6)
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    torch.testing.assert_close(load_split(base, "train")[0], (raw - m) / s, rtol=0, atol=1e-5)
    inc = load_split(base.replace(mean_std="inception"), "train")[0]
    torch.testing.assert_close(inc, (raw - 0.5) / 0.5, rtol=0, atol=1e-5)
    assert torch.equal(load_split(base.replace(mean_std="none"), "train")[0], x)
    own = base.replace(mean_std=((0.1, 0.2, 0.3), (0.5, 0.25, 2.0)))
    assert own.mean_std == "0.1,0.2,0.3/0.5,0.25,2.0" and DataSpec.from_dict(own.to_dict()) == own
    want = (raw - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(load_split(own, "train")[0], want, rtol=0, atol=1e-5)
    # robustness/corruptions read the constants through raw_data
    from geomkit.data.sources import raw_data

    assert raw_data(base).mean == IMAGENET[0] and raw_data(own).std == (0.5, 0.25, 2.0)
    # an upscale of a tall image: the width becomes the size, the crop is vertical
    tall = _pixels(7, 9, 4)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    torch.testing.assert_close(ifm.decode_image(str(tmp_path / "tall.png"), 8),
                               _expected(tall, 8), rtol=0, atol=1e-6)


def test_modes_all_become_rgb(tmp_path):
    g = np.random.default_rng(1).integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "grey.png")
    x = ifm.decode_image(str(tmp_path / "grey.png"), 6)
    assert x.shape == (3, 6, 6) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    torch.testing.assert_close(x[0], torch.from_numpy(g / 255.0).float(), rtol=0, atol=1e-7)
    g16 = (np.arange(36, dtype=np.uint16).reshape(6, 6) * 1800)
    Image.fromarray(g16).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode in ("I;16", "I")  # Pillow's 16-bit grey, not 8-bit
    x = ifm.decode_image(str(tmp_path / "deep.png"), 6)
    torch.testing.assert_close(x[1], torch.from_numpy(g16 / 65535.0).float(), rtol=0, atol=1e-6)
    rgb = _pixels(3, 6, 6)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    with Image.open(tmp_path / "print.jpg") as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    x = ifm.decode_image(str(tmp_path / "print.jpg"), 6)
    torch.testing.assert_close(x, torch.from_numpy(want).permute(2, 0, 1), rtol=0, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((6, 6, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    torch.testing.assert_close(ifm.decode_image(str(tmp_path / "alpha.png"), 6),
                               _expected(rgb, 6), rtol=0, atol=1e-6)  # alpha dropped
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png", transparency=0)
    assert ifm.decode_image(str(tmp_path / "pal.png"), 6).shape == (3, 6, 6)


# -- split folders ----------------------------------------------------------------------------


def test_split_dirs_detected_or_given(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "val", classes=("dog", "fox"), per=2)
    spec = DataSpec("imagefolder", root=tmp_path, image_size=4)
    idx = ifm.folder_index(spec)
    assert idx.split_dirs == ("train", "val") and len(idx.train) == 20 and len(idx.test) == 4
    assert info(spec).class_names == ("cat", "dog", "emu", "fox")
    assert idx.test.labels.tolist() == [1, 3, 1, 3]  # the train split's indices
    x, y = load_split(spec, "test")
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [1, 3, 1, 3]
    same = ifm.folder_index(spec.replace(split_dirs="train,val"))
    assert same.test.files == idx.test.files
    # a third sub-folder beside train: which is the test split? refused, never read as
    # the classes "extra", "train", "val" (silently meaningless labels)
    _folder(tmp_path / "extra", classes=("x",), per=1)
    with pytest.raises(DataError, match="holds split folders") as e:
        ifm.folder_index(spec)
    assert e.value.param == "split_dirs"
    assert info(spec.replace(split_dirs=())).class_names == ("extra", "train", "val")
    assert ifm.folder_index(spec.replace(split_dirs=("train", "val"))).split_dirs == (
        "train", "val")
    with pytest.raises(DataError, match="split folder .*test does not exist") as e:
        info(spec.replace(split_dirs=("train", "test")))
    assert e.value.param == "split_dirs"
    _one_line(e)


def test_a_val_class_missing_from_train_is_refused(tmp_path):
    _folder(tmp_path / "train", classes=("a", "b"), per=2)
    _folder(tmp_path / "test", classes=("a", "zebra"), per=1)
    with pytest.raises(DataError, match="class 'zebra' of .*test is not among the 2 classes") as e:
        info(DataSpec("imagefolder", root=tmp_path))
    assert e.value.param == "root"
    _one_line(e)


# -- one-line errors ---------------------------------------------------------------------------


def test_bad_folders_are_one_line_errors(tmp_path):
    def err(root, **kw):
        with pytest.raises(DataError) as e:
            info(DataSpec("imagefolder", root=root, **kw))
        assert e.value.param == "root"
        return _one_line(e)

    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "holds no class folders" in err(tmp_path / "empty")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(_pixels(0)).save(loose / "a.png")
    assert "holds 1 images but no class folders" in err(loose)
    one = tmp_path / "one"
    _folder(one, classes=("only",), per=2)
    assert "one class folder (only); a classifier needs at least 2" in err(one)
    hollow = tmp_path / "hollow"
    _folder(hollow, classes=("a", "b"), per=1)
    (hollow / "c").mkdir()
    (hollow / "c" / "notes.txt").write_text("not an image")
    assert "class folder" in err(hollow) and os.path.join("hollow", "c") in err(hollow)
    with pytest.raises(DataError, match="needs its directory") as e:
        info(DataSpec("imagefolder"))
    assert e.value.param == "root"
    with pytest.raises(DataError, match="split_dirs applies to the imagefolder source") as e:
        DataSpec("digits", split_dirs=("train", "val"))
    assert e.value.param == "split_dirs"
    for bad in ("fancy", "1,2/3", "0.5/0", ((0.5, 0.5), (0.5,))):
        with pytest.raises(DataError) as e:
            DataSpec("imagefolder", mean_std=bad)
        assert e.value.param == "mean_std"
        _one_line(e)
    with pytest.raises(DataError, match="normalize is false"):
        DataSpec("imagefolder", normalize=False, mean_std="imagenet")
    with pytest.raises(DataError, match="has 3 channels but the digits images have 1") as e:
        load_split(DataSpec("digits", mean_std="imagenet"), "train")
    assert e.value.param == "mean_std"


def test_a_corrupt_image_is_named(tmp_path):
    _folder(tmp_path)
    bad = tmp_path / "dog" / "03.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    spec = DataSpec("imagefolder", root=tmp_path, image_size=4)
    assert info(spec).num_classes == 4  # listing never opens it
    with pytest.raises(DataError, match=f"cannot decode image {bad}") as e:
        load_split(spec, "train")
    _one_line(e)
    with pytest.raises(DataError, match="cannot decode image"):
        list(ImageFolderBatches(spec, "train", batch_size=3, workers=2))
    first = ImageFolderBatches(spec, "train", n=4)  # the bad file is example 13
    assert len(next(iter(first))[0]) == 4


# -- streaming ---------------------------------------------------------------------------------


def test_stream_equals_tensors_bitwise(tmp_path):
    _folder(tmp_path, per=6)
    spec = DataSpec("imagefolder", root=tmp_path, image_size=7)
    x, y = load_split(spec, "train")
    for workers in (0, 2):
        b = ImageFolderBatches(spec, "train", n=17, batch_size=5, workers=workers)
        assert len(b) == b.num_examples == 17 and b.nbytes == 17 * 3 * 7 * 7 * 4
        for _ in range(2):  # re-iterable
            parts = list(b)
            assert [len(p[0]) for p in parts] == [5, 5, 5, 2]
            assert torch.equal(torch.cat([p[0] for p in parts]), x[:17])
            assert torch.equal(torch.cat([p[1] for p in parts]), y[:17])
    xt, yt = ImageFolderBatches(spec, "train", n=17).tensors()
    assert torch.equal(xt, x[:17]) and torch.equal(yt, y[:17])
    with pytest.raises(DataError, match="asked for 25 train examples but .* has only 24"):
        ImageFolderBatches(spec, "train", n=25)
    # the training subset applies as in load_split
    sub = spec.replace(subset=0.5)
    assert torch.equal(torch.cat([a for a, _ in ImageFolderBatches(sub, "train")]),
                       load_split(sub, "train")[0])


def _checkpoint(tmp_path, spec, width=8):
    from geomkit.checkpoint import Checkpoint

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * spec.image_size**2, width),
                              torch.nn.Tanh(), torch.nn.Linear(width, 4)).eval()
    return Checkpoint(path=tmp_path / "ck.pt", model=net, model_name="user", model_kwargs={},
                      config={}, data_spec=spec, metrics={}, provenance={}, step=0, epoch=0)


def test_checkpoint_streams_above_the_bound(tmp_path, monkeypatch):
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.geometry.landscape import evaluate

    _folder(tmp_path / "imgs", per=6)
    ck = _checkpoint(tmp_path, DataSpec("imagefolder", root=tmp_path / "imgs", image_size=6))
    x, y = ck.analysis_data("train", 20)
    assert isinstance(x, torch.Tensor) and len(x) == 20  # 20 small images: tensors
    monkeypatch.setattr(ifm, "STREAM_ABOVE_BYTES", 20 * 3 * 6 * 6 * 4 - 1)
    monkeypatch.setattr(ifm, "STREAM_BATCH", 8)
    s, none = ck.analysis_data("train", 20)
    assert isinstance(s, ImageFolderBatches) and none is None and len(s) == 20
    assert [len(b) for b, _ in s] == [8, 8, 4]
    opts = dict(blocks=("whole",), tol=1e-6, max_iter=50, seed=0)
    want = hessian_eigs(ck.model, x, y, batch_size=4, **opts).blocks["whole"].lambda_max
    got = hessian_eigs(ck.model, s, none, batch_size=4, **opts).blocks["whole"].lambda_max
    assert got == want  # the same batches: bitwise
    one = hessian_eigs(ck.model, x, y, **opts).blocks["whole"].lambda_max  # one batch of 20
    assert hessian_eigs(ck.model, s, none, **opts).blocks["whole"].lambda_max == pytest.approx(
        one, rel=1e-6)
    assert evaluate(ck.model, s, none)[0] == pytest.approx(evaluate(ck.model, x, y)[0], rel=1e-6)
    # robustness un-normalizes with the spec's constants (ImageNet's) and streams as well
    from geomkit.geometry.robustness import robustness

    r_t = robustness(ck.model, x, y, normalization=ck.data_spec, seed=0)
    r_s = robustness(ck.model, s, none, normalization=ck.data_spec, seed=0)
    assert (r_s.clean, r_s.mean_corrupted) == pytest.approx((r_t.clean, r_t.mean_corrupted))


# -- the commands, end to end --------------------------------------------------------------------

FACTORY = """
from torch import nn

def build_net(width=12):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, width), nn.GELU(), nn.Linear(width, 10))
"""


@pytest.fixture
def digits_folder(tmp_path, monkeypatch):
    """The first 150 digits training images as 8×8 grey PNGs in DIR/<digit>/, a user model
    for 3×8×8 inputs and its weights; yields (module:fn, net, DIR, uint8 pixels)."""
    x, y = load_split(DataSpec("digits", normalize=False), "train")
    u8 = (x[:150, 0] * 255).round().to(torch.uint8).numpy()
    root = tmp_path / "digits"
    for i, (img, label) in enumerate(zip(u8, y[:150].tolist(), strict=True)):
        os.makedirs(root / str(label), exist_ok=True)
        Image.fromarray(img).save(root / str(label) / f"{i:04d}.png")
    name = f"ifm_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(name)
    torch.manual_seed(0)
    net = mod.build_net().eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    yield f"{name}:build_net", net, root, u8
    sys.modules.pop(name, None)


def _cli(capsys, argv):
    from cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_import_and_analyze_an_image_folder(digits_folder, capsys, tmp_path):
    from geomkit.geometry.hessian import hessian_eigs
    from geomkit.results import load_results

    spec_name, net, root, u8 = digits_folder
    _cli(capsys, ["import", "--model", spec_name, "--weights", tmp_path / "w.pt", "--data",
                  "imagefolder", "--data-root", root, "--image-size", "8",
                  "--out", tmp_path / "ck.pt"])
    _cli(capsys, ["analyze", tmp_path / "ck.pt", "--measure", "params,hessian", "--samples",
                  "60", "--out", tmp_path / "r.h5", "--no-progress"])
    rec = load_results(tmp_path / "r.h5")[0]
    got = rec.measurements["hessian"].values["lambda_max"]["whole"]
    spec = DataSpec("imagefolder", root=root, image_size=8)
    x, y = load_split(spec, "train")
    # the decoded tensors are the digits' pixels, replicated to RGB and ImageNet-normalized
    files = ImageFolderBatches(spec, "train").files
    grey = torch.from_numpy(np.stack([u8[int(os.path.basename(f)[:4])] for f in files]))
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    want_x = (grey.float().div(255.0)[:, None].expand(-1, 3, -1, -1) - m) / s
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-6)
    assert sorted(y[:10].tolist()) == list(range(10))
    want = hessian_eigs(net, x[:60], y[:60], loss="ce", blocks=("paper",), tol=1e-3,
                        max_iter=100, seed=0).blocks["whole"].lambda_max
    assert got == pytest.approx(want, rel=1e-6)


def test_streamed_commands_equal_the_tensor_path(digits_folder, capsys, tmp_path, monkeypatch):
    spec_name, _, root, _ = digits_folder
    src = ["--model", spec_name, "--weights", tmp_path / "w.pt", "--data", "imagefolder",
           "--data-root", root, "--image-size", "8"]

    def run(tag):
        from geomkit.results import load_results

        _cli(capsys, ["analyze", *src, "--measure", "hessian", "--samples", "48",
                      "--batch-size", "16", "--out", tmp_path / f"{tag}.h5", "--no-progress"])
        lam = load_results(tmp_path / f"{tag}.h5")[0].measurements["hessian"].values
        out = _cli(capsys, ["landscape", *src, "--x", "-1:1:3", "--samples", "48",
                            "--out", tmp_path / f"{tag}-s.h5", "--no-progress", "--json"])
        return lam["lambda_max"]["whole"], json.loads(out)["center_loss"]

    calls = []
    real = ifm.ImageFolderBatches.__iter__

    def counted(self):
        calls.append(len(self))
        return real(self)

    monkeypatch.setattr(ifm.ImageFolderBatches, "__iter__", counted)
    tensors = run("t")
    assert not calls  # 48 images of 3×8×8: tensors
    monkeypatch.setattr(ifm, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(ifm, "STREAM_BATCH", 32)
    streamed = run("s")
    # the commands read the stream of all 48 (and `import` its first example, to check
    # that the model takes the inputs)
    assert 48 in calls and set(calls) <= {1, 48}
    assert streamed[0] == tensors[0]  # 32-example batches cut at 16: the tensor path's batches
    assert streamed[1] == pytest.approx(tensors[1], rel=1e-6)


@pytest.mark.slow
def test_train_on_an_image_folder(tmp_path, capsys):
    from geomkit.checkpoint import load_checkpoint

    _folder(tmp_path / "imgs" / "train", per=6)
    _folder(tmp_path / "imgs" / "val", per=2)
    from tests.cases import TINY_VIT_ARGS

    args = [a if a != "synthetic" else "imagefolder" for a in TINY_VIT_ARGS]
    out = _cli(capsys, ["train", *args, "--data-root", tmp_path / "imgs", "--split-dirs",
                        "train,val", "--image-size", "8", "--epochs", "1", "--batch-size", "8",
                        "--out", tmp_path / "run", "--no-progress", "--json"])
    assert np.isfinite(json.loads(out)["test_loss"])
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck.data_spec.split_dirs == ("train", "val") and ck.data_spec.image_size == 8
    x, y = ck.analysis_data("test")
    assert x.shape == (8, 3, 8, 8) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_three_split_folders_are_not_read_as_three_classes(tmp_path):
    for split in ("train", "val", "test"):
        _folder(tmp_path / split, per=2)
    with pytest.raises(DataError) as e:
        info(DataSpec("imagefolder", root=str(tmp_path)))
    assert "split folders" in str(e.value) and e.value.param == "split_dirs"
    assert info(DataSpec("imagefolder", root=str(tmp_path),
                         split_dirs=("train", "val"))).num_classes == 4


def test_no_progress_reaches_the_decoding_bar_inside_a_measurement(
        digits_folder, capsys, tmp_path, monkeypatch):
    """`--no-progress` silences the decoding bar that a measurement's ck.analysis_data
    draws (stderr a terminal, where the bar is on by default)."""
    from geomkit.data import imagefolder

    spec_name, _, root, _ = digits_folder
    _cli(capsys, ["import", "--model", spec_name, "--weights", tmp_path / "w.pt", "--data",
                  "imagefolder", "--data-root", root, "--image-size", "8",
                  "--out", tmp_path / "ck.pt"])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bars: list[bool] = []
    real = imagefolder.ImageFolderBatches.__init__

    def spy(self, *a, progress=False, **kw):
        bars.append(bool(progress))
        real(self, *a, progress=progress, **kw)

    monkeypatch.setattr(imagefolder.ImageFolderBatches, "__init__", spy)
    for flags, want in ((["--no-progress"], False), ([], True)):
        bars.clear()
        _cli(capsys, ["hessian", tmp_path / "ck.pt", "--samples", "20", *flags])
        assert bars and set(bars) == {want}
    with imagefolder.decode_progress(False):
        assert imagefolder.decode_bar(None) is False and imagefolder.decode_bar(True) is True
    assert imagefolder.decode_bar(None) is True  # the terminal decides again
