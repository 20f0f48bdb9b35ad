"""Your model, your weights: `geomkit import` and `--model SPEC --weights FILE --data` on the
analysis commands, checked against direct library calls on the same model."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from cli.main import main
from geomkit.checkpoint import load_checkpoint, save_checkpoint
from geomkit.errors import CheckpointError

FACTORY = """
from torch import nn

def build_net(width=16, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.GELU(),
                         nn.Linear(width, num_classes))
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's own module on the path, a trained-looking state dict saved the way other
    training code saves it (nested, DDP prefix) and as safetensors."""
    name = f"user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(name)
    torch.manual_seed(0)
    net = mod.build_net()
    sd = net.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7},
               tmp_path / "w.pth.tar")
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "w.safetensors"))
    yield f"{name}:build_net", net, tmp_path
    sys.modules.pop(name, None)


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_then_every_command_takes_the_checkpoint(user, capsys):
    spec, net, d = user
    rc, out, err = _run(capsys, ["import", "--model", spec, "--weights", d / "w.pth.tar",
                                 "--data", "digits", "--out", d / "ck.pt", "--json"])
    assert rc == 0, err
    s = json.loads(out)
    assert s["model"] == spec and s["params"] == sum(p.numel() for p in net.parameters())
    ck = load_checkpoint(d / "ck.pt")
    for k, v in net.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)
    assert ck.config["weights_sha256"] == s["weights_sha256"] and ck.data_spec.source == "digits"
    rc, _, err = _run(capsys, ["info", d / "ck.pt"])
    assert rc == 0, err
    # the Hessian of the imported checkpoint is the library's on the user's model
    rc, out, err = _run(capsys, ["hessian", d / "ck.pt", "--blocks", "whole", "--samples", "64",
                                 "--no-progress", "--json"])
    assert rc == 0, err
    from geomkit.geometry.hessian import hessian_eigs

    x, y = ck.analysis_data("train", 64)
    want = hessian_eigs(net.eval(), x, y, blocks=("whole",)).blocks["whole"].lambda_max
    got = json.loads(out)["blocks"]["whole"]["lambda_max"]
    assert got == pytest.approx(want, rel=1e-4)
    # a second import never replaces the first
    before = (d / "ck.pt").read_bytes()
    rc, _, err = _run(capsys, ["import", "--model", spec, "--weights", d / "w.safetensors",
                               "--data", "digits", "--out", d / "ck.pt"])
    assert rc == 2 and "exists" in err and (d / "ck.pt").read_bytes() == before


def test_analysis_commands_take_model_weights_and_data(user, capsys):
    spec, net, d = user
    src = ["--model", spec, "--weights", d / "w.safetensors", "--data", "digits"]
    rc, _, err = _run(capsys, ["analyze", *src, "--measure", "params,activations",
                               "--samples", "32", "--out", d / "r.h5", "--no-progress"])
    assert rc == 0, err
    from geomkit.results import load_results

    rec = load_results(d / "r.h5")[0]
    assert rec.measurements["params"].values["num_params"] == sum(p.numel()
                                                                for p in net.parameters())
    rc, out, err = _run(capsys, ["landscape", *src, "--x", "-1:1:3", "--y", "-1:1:3",
                                 "--samples", "32", "--out", d / "s.h5", "--no-progress",
                                 "--json"])
    assert rc == 0, err
    from geomkit.data import DataSpec, load_split
    from geomkit.geometry.landscape import evaluate

    x, y = load_split(DataSpec("digits"), "train")
    loss, _ = evaluate(net.eval(), x[:32], y[:32])
    assert json.loads(out)["center_loss"] == pytest.approx(loss, rel=1e-6)
    rc, out, err = _run(capsys, ["ntk", *src, "--samples", "8", "--no-progress", "--json"])
    assert rc == 0, err
    from geomkit.geometry.ntk import ntk

    want = ntk(net, x[:8], dtype=torch.float64).kappa
    assert json.loads(out)["kappa"] == pytest.approx(want, rel=1e-6)
    assert np.isfinite(want)


@pytest.mark.parametrize("argv,fragment", [
    (["hessian", "CK", "--model", "SPEC", "--weights", "W"], "not both"),
    (["hessian", "--weights", "W", "--data", "digits"], "--weights needs --model"),
    (["hessian", "--model", "SPEC", "--weights", "W"], "--weights needs --data"),
    (["hessian", "--model", "SPEC", "--data", "digits"], "--model needs --weights"),
    (["hessian"], "give a checkpoint CKPT"),
    (["hessian", "CK", "--data", "digits"], "--data applies to --model SPEC --weights"),
    (["landscape", "CK", "--model-arg", "width=3", "--out", "OUT"], "--model-arg applies"),
    (["import", "--model", "SPEC", "--weights", "W", "--data", "digits", "--model-arg",
      "width=8", "--out", "OUT"], "another shape, e.g. 1.weight [16, 64] vs [8, 64]"),
    (["import", "--model", "SPEC", "--data", "digits", "--out", "OUT"], "--weights FILE is"),
    (["analyze", "--model", "nomodule_xyz:f", "--weights", "W", "--data", "digits"],
     "cannot import 'nomodule_xyz'"),
    # a model built for other inputs fails at the import, not deep inside a measurement
    (["hessian", "--model", "SPEC", "--weights", "W", "--data", "digits", "--image-size", "16"],
     "does not take the inputs of data 'digits' (1x16x16 images)"),
    (["import", "--model", "SPEC", "--weights", "W", "--data", "imagefolder", "--out", "OUT"],
     "needs its directory"),
    (["import", "--model", "SPEC", "--weights", "W", "--data", "digits", "--mean-std", "timm",
      "--out", "OUT"], "--mean-std 'timm' needs a timm:NAME model"),
])
def test_mistakes_are_one_line(user, capsys, argv, fragment):
    spec, _, d = user
    save_checkpoint(d / "ck.pt", __import__("geomkit.models", fromlist=["build"]).build(
        "vit-tiny", image_size=8, in_chans=1, num_classes=10, depth=1, embed_dim=8,
        num_heads=2), config={}, data_spec={"source": "digits"})
    sub = {"CK": d / "ck.pt", "SPEC": spec, "W": d / "w.pth.tar", "OUT": d / "o.pt"}
    rc, _, err = _run(capsys, [sub.get(a, a) for a in argv])
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not (d / "o.pt").exists()


def test_a_checkpoint_naming_the_standard_library_is_refused(tmp_path):
    from torch import nn

    model = nn.Linear(2, 2)
    model.geomkit_spec = {"name": "subprocess:run", "kwargs": {"args": ["true"]}}
    save_checkpoint(tmp_path / "evil.pt", model, config={}, data_spec={"source": "digits"})
    with pytest.raises(CheckpointError, match="standard library"):
        load_checkpoint(tmp_path / "evil.pt")
