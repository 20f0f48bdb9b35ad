"""The train / info / models commands and the CLI's error contract."""

import json
import subprocess
import sys

import pytest

from cli.main import main
from tests.cases import TINY_VIT_ARGS

TINY = [*TINY_VIT_ARGS, "--epochs", "1", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--optimizer", "sam", "--out", str(out), "--json"]) == 0
    return out


def test_train_json_and_info(run_dir, capsys):
    capsys.readouterr()
    assert main(["info", str(run_dir / "last.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["label"] == "vit-tiny/sam" and info["model_kwargs"]["depth"] == 1
    assert info["config"]["rho"] == 0.1 and info["epoch"] == 1 and "history" not in info["metrics"]
    assert main(["info", str(run_dir)]) == 0
    assert "vit-tiny/sam" in capsys.readouterr().out


def test_models_lists_registry(capsys):
    assert main(["models", "--json"]) == 0
    assert "vit-b16" in json.loads(capsys.readouterr().out)["models"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["info", "/nonexistent/x.pt"], "no such checkpoint"),
        (
            ["train", "--model", "vit-huge", "--out", "OUT", "--data", "synthetic"],
            "unknown model 'vit-huge'",
        ),
        (["train", "--data", "imagenet", "--out", "OUT"], "unknown data source"),
        (["train", "--model-arg", "depth", "--out", "OUT", "--data", "synthetic"], "KEY=VALUE"),
        (["train", "--device", "foo", "--out", "OUT", "--data", "synthetic"], "--device must be"),
        # the library names its keyword (DataSpec root=), the command line its flag
        (["train", "--data", "npz", "--data-root", "/nonexistent.npz", "--out", "OUT"],
         "not found; pass --data-root FILE.npz"),
        (["train", "--data", "cifar10", "--out", "OUT"], "pass --data-root DIR"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, match, capsys, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geomkit: error:") and match in err and "\n" not in err


@pytest.mark.parametrize("command", ["hessian", "ntk", "landscape"])
def test_bad_device_is_a_user_error(run_dir, command, capsys, tmp_path):
    argv = [command, str(run_dir / "last.pt"), "--device", "tpu9", "--samples", "16"]
    if command == "landscape":
        argv += ["--out", str(tmp_path / "s.h5")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--device must be" in err and "\n" not in err


def test_console_script_and_help():
    out = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "info", "models"):
        assert cmd in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "cli", "info", "nope.pt"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_library_keywords_become_the_subcommands_flags(run_dir, capsys, tmp_path):
    from geomkit.data import DataSpec, load_split
    from geomkit.errors import DataError

    with pytest.raises(DataError) as e:
        load_split(DataSpec("cifar10"), "train")
    assert e.value.param == "root" and "--" not in str(e.value)
    argv = ["landscape", str(run_dir / "last.pt"), "--dir", str(tmp_path / "none.pt"),
            "--samples", "16", "--out", str(tmp_path / "s.h5")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--dir '" in err and "neither random/hessian" in err and "\n" not in err


@pytest.mark.parametrize("argv", [["train", "--epochs", "x"], ["hessian", "--samples", "x"],
                                  ["nope"],
                                  ["landscape", "ck.pt", "--norm", "weird", "--out", "o.h5"]])
def test_argparse_errors_are_one_line_too(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "usage:" not in err
    assert "error:" in err and "--help" in err
