"""`geomkit analyze` and `geomkit table` in process: JSON, resume, rendering, exit codes."""

from __future__ import annotations

import json

import h5py
import pytest

from cli.main import main
from tests.cases import tiny_checkpoint

FAST = ["--measure", "params,activations,robustness", "--samples", "16", "--test-samples", "20",
        "--no-progress"]


def _ckpt(path, seed, optimizer, label):
    return tiny_checkpoint(path, seed, model="mixer", optimizer=optimizer, label=label,
                           image_size=8, patch_size=4, in_chans=1, num_classes=10, embed_dim=8,
                           depth=2, tokens_dim=4, channels_dim=8)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    return str(_ckpt(d / "a.pt", 0, "adamw", "vanilla")), str(_ckpt(d / "b.pt", 1, "sam", "sam"))


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_json_resume_then_tables(ckpts, tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    rc, text, err = _run(capsys, ["analyze", *ckpts, *FAST, "--out", out, "--json"])
    assert rc == 0, err
    obj = json.loads(text)  # exactly one JSON object
    assert [c["label"] for c in obj["checkpoints"]] == ["mixer/vanilla", "mixer/sam"]
    first = obj["checkpoints"][0]
    assert first["computed"] == ["params", "activations", "robustness"] and not first["skipped"]
    assert first["params"] > 0 and 0 <= first["top1"] <= 100
    assert first["values"]["activations.depth"] == 2

    rc, text, err = _run(capsys, ["analyze", *ckpts, *FAST, "--out", out])
    assert rc == 0, err
    assert "0 new, 0 reused, 3 kept" in text and "mixer/sam" in text

    rc, text, err = _run(capsys, ["table", out, "--which", "1"])
    assert rc == 0, err
    assert "|  | mixer/adamw | mixer/sam |" in text and "| Hessian λ_max | – | – |" in text
    rc, text, err = _run(capsys, ["table", out, "--which", "3", "--format", "json",
                                  "--with-paper"])
    assert rc == 0, err
    obj = json.loads(text)
    assert obj["table"] == 3 and obj["rows"][-1]["label"] == "paper: Mixer-B/16-SAM"
    rc, text, _ = _run(capsys, ["table", out, "--which", "3", "--format", "csv"])
    assert text.splitlines()[0].startswith("Model,Embedding,")
    rc, text, _ = _run(capsys, ["table", out, "--which", "1", "--json", "--transpose"])
    assert json.loads(text)["columns"][0] == "#Params"


def test_exit_code_2_on_bad_input(ckpts, tmp_path, capsys):
    rc, _, err = _run(capsys, ["analyze", str(tmp_path / "missing.pt"), "--out",
                               str(tmp_path / "r.h5"), "--no-progress"])
    assert rc == 2 and err.startswith("geomkit: error: no such checkpoint")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=1)
    rc, _, err = _run(capsys, ["analyze", ckpts[0], *FAST, "--out", str(other)])
    assert rc == 2 and "not a geomkit results file" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, ["table", str(other), "--which", "1"])
    assert rc == 2 and "not a geomkit results file" in err
    rc, _, err = _run(capsys, ["table", str(tmp_path / "nope.h5"), "--which", "1"])
    assert rc == 2 and "no such results file" in err
    rc, _, err = _run(capsys, ["analyze", ckpts[0], "--measure", "fog", "--out",
                               str(tmp_path / "r.h5"), "--no-progress"])
    assert rc == 2 and "unknown measurement" in err
    with pytest.raises(SystemExit) as e:  # argparse: bad --which
        main(["table", str(other), "--which", "2"])
    assert e.value.code == 2


def test_settings_mismatch_is_refused_then_forced(ckpts, tmp_path, capsys):
    out = str(tmp_path / "r.h5")
    base = ["analyze", ckpts[0], "--measure", "activations", "--no-progress", "--out", out]
    assert _run(capsys, [*base, "--samples", "8"])[0] == 0
    rc, _, err = _run(capsys, [*base, "--samples", "12"])
    assert rc == 2 and "--force" in err
    rc, text, err = _run(capsys, [*base, "--samples", "12", "--force", "--json"])
    assert rc == 0 and json.loads(text)["checkpoints"][0]["computed"] == ["activations"]
