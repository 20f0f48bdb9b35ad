"""Sizes a new user gets wrong by orders of magnitude (issue #13, "never a traceback").

`--image-size 100000`, `--x -1:1:100000000`, `--x -1:inf:3`, seeds past torch's range,
`--repeats 100000`...: each is refused up front -- before a model is built, data read or
a file started -- in one line that names the flag and, for sizes, the memory, file or
time it would take. The computation itself is replaced by a tripwire, so a test that
regresses fails fast instead of allocating terabytes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cli.main import main
from geomkit.data import DataSpec
from geomkit.data.spec import MAX_IMAGE_SIZE, format_bytes
from geomkit.data.transforms import resize
from geomkit.errors import DataError, SpecError
from geomkit.geometry.landscape.grid_check import (
    FILE_BYTES_PER_POINT,
    MAX_POINTS,
    check_grid,
    grid_cost,
)
from tests.cases import tiny_checkpoint
from tests.cli.test_cli_core import TINY


class Started(Exception):
    """Raised by a tripwire: the computation was reached."""


def _trip(*args, **kwargs):
    raise Started(kwargs or args)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "vit.pt")


@pytest.fixture
def no_compute(monkeypatch):
    """Model builds, landscapes and NTKs are tripwires."""
    import geomkit.geometry.landscape as landscape
    import geomkit.geometry.ntk as ntk
    import geomkit.models as models
    import geomkit.train.loop as loop

    monkeypatch.setattr(models, "build", _trip)
    monkeypatch.setattr(loop, "build", _trip)
    monkeypatch.setattr(landscape, "landscape_from_checkpoint", _trip)
    monkeypatch.setattr(ntk, "ntk", _trip)
    monkeypatch.setattr(ntk, "ntk_at_init", _trip)


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("geomkit: error:") and err.count("\n") == 1, err
    return err


def _argparse_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# -- image sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ntk", "train"])
def test_huge_image_size_is_refused_before_the_model_is_built(command, no_compute, capsys,
                                                              tmp_path):
    argv = {"ntk": ["ntk", "--model", "vit-tiny", "--data", "digits"],
            "train": ["train", "--data", "digits", "--out", str(tmp_path / "o")]}[command]
    err = _one_line_error(capsys, [*argv, "--image-size", "100000"])
    assert "--image-size 100000 needs ~37 GiB per float32 image channel" in err
    assert f"above the limit of {MAX_IMAGE_SIZE} px" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["ntk", "train"])
def test_image_size_whose_split_does_not_fit_is_refused_with_the_memory(
        command, no_compute, monkeypatch, capsys, tmp_path):
    import geomkit.data.spec as spec

    monkeypatch.setattr(spec, "available_memory", lambda: 1 << 30)  # a 1 GiB machine
    argv = {"ntk": ["ntk", "--model", "vit-tiny", "--data", "digits"],
            "train": ["train", "--data", "digits", "--out", str(tmp_path / "o")]}[command]
    err = _one_line_error(capsys, [*argv, "--image-size", "512"])
    # 1437 digits x 512 x 512 x 4 bytes = 1.4 GiB
    assert "--image-size 512 (1437 float32 train images of 1×512×512) needs ~1.4 GiB" in err
    assert "more than the 1 GiB available" in err


def test_library_refuses_the_same_sizes(monkeypatch):
    import geomkit.data.spec as spec

    with pytest.raises(DataError, match="image_size 100000 needs ~37 GiB") as e:
        DataSpec(image_size=100000)
    assert e.value.param == "image_size"
    DataSpec(image_size=MAX_IMAGE_SIZE)  # the limit itself is accepted
    with pytest.raises(DataError, match="synthetic_size 5000 needs") as e:
        DataSpec(source="synthetic", synthetic_size=5000)
    with pytest.raises(DataError, match=r"need ~238 GiB .* limit of 16 GiB") as e:
        DataSpec(source="synthetic", synthetic_train=10**9)
    assert e.value.param == "synthetic_train"
    DataSpec(source="digits", synthetic_train=10**9)  # ignored by other sources

    s = DataSpec(image_size=64)
    assert s.split_shape("train") == (1437, 1, 64) and s.split_shape("test") == (360, 1, 64)
    assert DataSpec("cifar10").split_shape() == (50000, 3, 32)
    assert DataSpec("npz", root="x.npz").split_shape() is None
    s.check_memory(available=1437 * 64 * 64 * 4)
    with pytest.raises(DataError, match="more than the 22 MiB available") as e:
        s.check_memory(available=1437 * 64 * 64 * 4 - 1)
    assert e.value.param == "image_size"

    # load_split resizes a whole split at once: resize() refuses before it allocates
    monkeypatch.setattr(spec, "available_memory", lambda: 1 << 20)
    x = torch.zeros(4, 1, 8, 8)
    assert resize(x, 8) is x  # no resize, no check
    resize(x, 64)  # 64 KiB
    with pytest.raises(DataError, match=r"image_size 1024 \(resizing 4 images of 1×8×8 to "
                       r"1×1024×1024\) needs ~16 MiB of memory, more than the 1 MiB") as e:
        resize(x, 1024)
    assert e.value.param == "image_size"


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 10 << 20, 37.25 * 2**30)] == [
        "0 B", "1023 B", "1 KiB", "1.5 KiB", "10 MiB", "37 GiB"]


# -- landscape grids ---------------------------------------------------------------------


def test_huge_grid_is_refused_with_its_cost_unless_yes(ckpt, no_compute, capsys, tmp_path):
    out = tmp_path / "s.h5"
    base = ["landscape", str(ckpt), "--out", str(out), "--samples", "1024"]
    err = _one_line_error(capsys, [*base, "--x", "-1:1:100000000", "--y", "none"])
    assert "above the limit of 1,000,000 points or a 1 GiB file" in err
    assert "100,000,000 points (a line of 100000000): a ~2.3 GiB file" in err
    assert "1.0e+11 example forward passes (~12 days" in err and "pass --yes" in err
    assert not out.exists()
    # 2-D: 2000 x 2000 = 4e6 points, a small file but too many points
    err = _one_line_error(capsys, [*base, "--x", "-1:1:2000", "--y", "-1:1:2000"])
    assert "4,000,000 points (a 2000x2000 grid)" in err
    # --yes lets it through (to the tripwire)
    with pytest.raises(Started):
        main([*base, "--x", "-1:1:2000", "--y", "-1:1:2000", "--yes"])
    # the default grid and ordinary ones pass
    with pytest.raises(Started):
        main(base)


def test_grid_that_cannot_fit_in_memory_is_refused_even_with_yes(ckpt, no_compute, capsys,
                                                                 tmp_path):
    argv = ["landscape", str(ckpt), "--out", str(tmp_path / "s.h5"), "--x", "-1:1:100000",
            "--y", "-1:1:100000", "--yes"]
    err = _one_line_error(capsys, argv)
    assert "10,000,000,000 points (a 100000x100000 grid)" in err
    assert "of memory, more than the" in err and "available now" in err


def test_grid_cost_and_check_grid():
    c = grid_cost((-1, 1, 51), (-1, 1, 41), samples=100)
    assert c.shape == (41, 51) and c.points == 2091 and c.forward_examples == 209100
    assert c.file_bytes == 2091 * FILE_BYTES_PER_POINT + 8 * (51 + 41)
    assert grid_cost((-1, 1, 10)).shape == (10,)
    assert check_grid((-1, 1, MAX_POINTS), available=1 << 40).points == MAX_POINTS
    with pytest.raises(SpecError, match="pass allow_large") as e:
        check_grid((-1, 1, MAX_POINTS + 1), available=1 << 40)
    assert e.value.param == "allow_large"
    check_grid((-1, 1, MAX_POINTS + 1), allow_large=True, available=1 << 40)
    with pytest.raises(SpecError, match="more than the 1 KiB available"):
        check_grid((-1, 1, 100), allow_large=True, available=1024)
    with pytest.raises(SpecError, match="NUM >= 1"):
        grid_cost((-1, 1, 0))


# -- grid specs: MIN:MAX:NUM -------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("-1:inf:3", "--x MIN and MAX must be finite numbers, got 'inf' in '-1:inf:3'"),
        ("-inf:1:3", "--x MIN and MAX must be finite numbers, got '-inf'"),
        ("-1:nan:3", "--x MIN and MAX must be finite numbers, got 'nan'"),
        ("-nan:1:3", "--x MIN and MAX must be finite numbers, got '-nan'"),
        ("-1:1:0", "--x NUM must be a whole number of points >= 1, got '0'"),
        ("-1:1:-5", "--x NUM must be a whole number of points >= 1, got '-5'"),
        ("-1:1:2.5", "--x NUM must be a whole number of points >= 1, got '2.5'"),
        ("1:-1:5", "--x needs MIN < MAX for 5 points, got '1:-1:5'"),
        ("0:0:3", "--x needs MIN < MAX"),
        ("-1e308:1e308:3", "--x spans more than a float holds"),
        ("a:1:3", "--x MIN and MAX must be numbers"),
        ("-1:1", "--x must be MIN:MAX:NUM"),
    ],
)
def test_bad_grid_specs_name_the_flag_in_one_line(spec, fragment, ckpt, no_compute, capsys,
                                                  tmp_path):
    err = _one_line_error(capsys, ["landscape", str(ckpt), "--out", str(tmp_path / "s.h5"),
                                   "--x", spec])
    assert fragment in err


def test_negative_grid_specs_still_parse(ckpt, no_compute, tmp_path):
    with pytest.raises(Started) as e:
        main(["landscape", str(ckpt), "--out", str(tmp_path / "s.h5"), "--x", "-1:1:3",
              "--y", "-0.5:0.5:1", "--seed", "-1"])
    kw = e.value.args[0]
    assert kw["x"] == (-1.0, 1.0, 3) and kw["y"] == (-0.5, 0.5, 1) and kw["seed"] == -1


def test_non_finite_grid_is_one_line_in_a_real_process(ckpt, tmp_path):
    """The exit code and stderr of the installed command, not just of main()."""
    r = subprocess.run([sys.executable, "-m", "cli", "landscape", str(ckpt), "--x", "-1:inf:3",
                        "--out", str(tmp_path / "s.h5")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--x MIN and MAX must be finite" in r.stderr


# -- other counts a new user gets wrong ----------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", *TINY, "--seed", "99999999999999999999"],
         "argument --seed: expected an integer seed in"),
        (["train", *TINY, "--subset-seed", "-99999999999999999999"], "argument --subset-seed"),
        (["landscape", "CKPT", "--seed", "99999999999999999999"], "argument --seed"),
        (["ntk", "CKPT", "--init", "--seed", "99999999999999999999"], "argument --seed"),
        (["ntk", "CKPT", "--init", "--repeats", "100000"],
         "argument --repeats: expected a positive integer at most 10,000"),
        (["ntk", "CKPT", "--memory-gib", "nan"], "argument --memory-gib"),
        (["ntk", "CKPT", "--memory-gib", "-1"], "argument --memory-gib"),
        (["train", *TINY, "--epochs", "0"], "argument --epochs"),
        (["train", *TINY, "--lr", "-0.1"], "argument --lr"),
    ],
)
def test_out_of_range_counts_are_argparse_errors(argv, fragment, ckpt, no_compute, capsys,
                                                 tmp_path):
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    argv += ["--out", str(tmp_path / ("s.h5" if argv[0] == "landscape" else "o"))] \
        if argv[0] != "ntk" else []
    assert fragment in _argparse_error(capsys, argv)


def test_train_refuses_bad_momentum_before_training(no_compute, capsys, tmp_path):
    err = _one_line_error(capsys, ["train", *TINY, "--momentum", "1.5", "--out",
                                   str(tmp_path / "o")])
    assert "--momentum must be in [0, 1), got 1.5" in err


def test_ntk_refuses_image_size_and_data_with_a_checkpoint(ckpt, no_compute, capsys):
    err = _one_line_error(capsys, ["ntk", str(ckpt), "--image-size", "16"])
    assert "--image-size applies to --model NAME only" in err
    err = _one_line_error(capsys, ["ntk", str(ckpt), "--data", "cifar10"])
    assert "--data applies to --model NAME only" in err


@pytest.mark.parametrize("source", ["model", "checkpoint"])
def test_ntk_refuses_a_kernel_that_cannot_fit(source, ckpt, monkeypatch, capsys):
    import geomkit.geometry._work as work
    import geomkit.geometry.ntk as ntk

    monkeypatch.setattr(work, "free_memory", lambda device: 1 << 20)  # 1 MiB free
    monkeypatch.setattr(ntk, "ntk", _trip)
    monkeypatch.setattr(ntk, "ntk_at_init", _trip)
    what = ["--model", "vit-tiny", "--data", "digits"] if source == "model" else [str(ckpt)]
    err = _one_line_error(capsys, ["ntk", *what, "--samples", "64", "--mode", "full"])
    # 64 samples x 10 classes: a 640 x 640 float64 kernel and its copy, 6.2 MiB
    assert "--samples 64 with mode full needs a 640x640 float64 kernel" in err
    assert "~6.2 MiB" in err and "more than the 1 MiB free" in err and "--mode sum" in err
    with pytest.raises(Started):  # the N x N kernel of --mode sum fits
        main(["ntk", *what, "--samples", "64"])


@pytest.mark.parametrize("key", ["image_size", "in_chans", "num_classes"])
def test_model_args_may_not_contradict_the_data(key, no_compute, capsys, tmp_path):
    """`--model-arg image_size=100000` built a ViT for 100000 px inputs (a 10 GB position
    embedding) while the data stayed 8 px: the data decides these three."""
    err = _one_line_error(capsys, ["train", *TINY, "--model-arg", f"{key}=100000", "--out",
                                   str(tmp_path / "o")])
    assert f"--model-arg {key} is set from the data" in err
