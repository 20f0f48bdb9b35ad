"""Models and weights geomkit did not make: ``module:callable`` / ``timm:`` specs and weight
files from other training code (torch files in every nesting, safetensors)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch
from torch import nn

from geomkit.errors import CheckpointError, ModelError
from geomkit.models import build, build_model
from geomkit.models.weights import fit_weights, read_weights

USER_MODULE = '''
import os
from torch import nn

class Net(nn.Module):
    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(8, width)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())

def build_net(width=4, num_classes=3):
    return Net(width, num_classes)

def not_a_model():
    return 42

def broken():
    raise RuntimeError("the user's bug")

system = os.system
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"geomkit_user_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_users_factory_builds_with_its_kwargs_and_records_the_spec(user_module):
    model = build(f"{user_module}:build_net", width=6)
    assert isinstance(model, nn.Module) and model.fc1.out_features == 6
    assert model.geomkit_spec == {"name": f"{user_module}:build_net", "kwargs": {"width": 6}}
    assert build(f"{user_module}:Net").fc2.out_features == 3  # a class is a factory too
    # rebuilt from a file's spec: the factory is defined where it is named, so it is allowed
    again = build_model(f"{user_module}:build_net", {"width": 6}, trusted=False)
    assert again.fc1.out_features == 6


@pytest.mark.parametrize("spec,kwargs,fragment", [
    ("{m}:missing", {}, "has no 'missing'"),
    ("{m}:not_a_model", {}, "returned int, not a torch.nn.Module"),
    ("{m}:broken", {}, "failed to build: RuntimeError: the user's bug"),
    ("{m}:build_net", {"depth": 2}, "does not take ['depth']"),
    ("no_such_module_xyz:f", {}, "cannot import 'no_such_module_xyz'"),
    ("not a spec:", {}, "neither a registry name"),
])
def test_bad_factories_are_one_line(user_module, spec, kwargs, fragment):
    with pytest.raises(ModelError) as e:
        build_model(spec.format(m=user_module), kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_checkpoints_spec_cannot_call_arbitrary_code(user_module, monkeypatch):
    called = []
    monkeypatch.setattr("os.system", lambda *a, **k: called.append(a))
    for spec, why in (("os:system", "standard library"),
                      ("subprocess:run", "standard library"),
                      (f"{user_module}:system", "not defined in")):
        with pytest.raises(ModelError, match=why):
            build_model(spec, {"command": "true"}, trusted=False)
    assert called == []


def test_timm_spec_without_timm_is_one_line():
    if importlib.util.find_spec("timm") is not None:
        try:
            import timm  # noqa: F401
        except Exception:  # noqa: BLE001 - present but broken (torchvision): still our line
            pass
        else:
            pytest.skip("timm imports here (tests/test_timm.py covers timm: make test-timm)")
    with pytest.raises(ModelError) as e:
        build("timm:vit_tiny_patch16_224", img_size=32)
    assert "needs timm" in str(e.value) and "\n" not in str(e.value)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "model_state_dict",
                                    "module", "ema", "ddp", "compiled", "nested-with-extras"])
def test_every_common_weights_layout_reads_to_the_same_tensors(tmp_path, layout):
    sd = _net().state_dict()
    payload = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "model_state_dict": {"model_state_dict": sd},
        "module": {"module": sd},
        "ema": {"ema": sd, "step": 10},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "nested-with-extras": {"checkpoint": 1, "state_dict": {"model": dict(sd)}},
    }[layout]
    path = tmp_path / "w.pth.tar"
    torch.save(payload, path)
    got = read_weights(path)
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    fresh = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    assert fit_weights(fresh, got) == []
    assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    sd = _net().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    got = read_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        read_weights(tmp_path / "bad.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("executed!",))


def test_unsafe_truncated_and_foreign_files_are_one_line(tmp_path, capsys):
    torch.save({"state_dict": _net().state_dict(), "extra": _Payload()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError) as e:
        read_weights(tmp_path / "code.pt")
    msg = str(e.value)
    assert "not a weights-only file" in msg and "will not execute" in msg and "\n" not in msg
    assert "(print)" in msg  # the global torch refused
    assert "executed!" not in capsys.readouterr().out
    torch.save(_net().state_dict(), tmp_path / "w.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "w.pt").read_bytes()[:200])
    (tmp_path / "text.bin").write_text("hello")
    torch.save({"a": 1, "b": "x"}, tmp_path / "nosd.pt")
    for name, fragment in (("cut.pt", "truncated"), ("text.bin", "not a torch weights file"),
                           ("nosd.pt", "holds no state dict"), ("none.pt", "does not exist"),
                           (".", "is a directory")):
        with pytest.raises(CheckpointError, match=fragment) as e:
            read_weights(tmp_path / name)
        assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_name_the_first_keys_and_count():
    sd = _net().state_dict()
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 3))
    with pytest.raises(CheckpointError) as e:
        fit_weights(model, {**sd, "head.weight": torch.zeros(1)}, source="w.pt")
    msg = str(e.value)
    assert "2 missing (3.weight, 3.bias)" in msg and "1 unexpected (head.weight)" in msg
    assert e.value.param == "non_strict"
    before = model[3].weight.clone()
    assert fit_weights(model, sd, strict=False) == ["3.weight", "3.bias"]
    assert torch.equal(model[0].weight, sd["0.weight"]) and torch.equal(model[3].weight, before)
    wide = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(CheckpointError, match=r"another shape, e.g. 0.weight \[4, 8\] vs \[5, 8\]"):
        fit_weights(wide, sd, strict=False)


@pytest.mark.parametrize("spec,why", [
    ("numpy:load", "installed package"),           # would unpickle a file named in kwargs
    ("torch.hub:load", "installed package"),
    ("geomkit.checkpoint:save_checkpoint", "geomkit itself"),
])
def test_a_checkpoint_may_name_only_your_own_code(spec, why, monkeypatch):
    from geomkit.models.external import check_factory

    with pytest.raises(ModelError, match=why):
        build_model(spec, {"file": "evil.pkl", "allow_pickle": True}, trusted=False)
    with pytest.raises(ModelError, match=why):
        check_factory(spec)  # what `geomkit import` refuses before writing
    top = spec.split(":")[0].split(".")[0]
    monkeypatch.setenv("GEOMKIT_TRUSTED_MODULES", top)
    check_factory(spec)  # admitted on purpose


def test_import_refuses_a_factory_the_checkpoint_could_not_rebuild(user_module):
    from geomkit.models.external import check_factory

    check_factory(f"{user_module}:build_net")
    with pytest.raises(ModelError, match="use posix:system|use os:system|defined in"):
        check_factory(f"{user_module}:system")


def test_timm_kwargs_that_load_weights_are_refused():
    with pytest.raises(ModelError, match="checkpoint_path would make timm load weights"):
        build_model("timm:vit_tiny_patch16_224", {"checkpoint_path": "x.pth"})


def test_a_models_own_child_named_module_keeps_its_keys(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Linear(3, 2)
            self.head = nn.Linear(2, 2)

    m = Wrapper()
    torch.save(m.state_dict(), tmp_path / "w.pt")
    assert fit_weights(Wrapper(), read_weights(tmp_path / "w.pt")) == []
    torch.save({"model": {"arch": "mine"}, "model_state_dict": m.state_dict()},
               tmp_path / "n.pt")  # the first nested key that holds a state dict wins
    assert list(read_weights(tmp_path / "n.pt")) == list(m.state_dict())


def test_imported_identity_is_weights_model_and_data(user_module, tmp_path):
    from geomkit.imported import import_weights

    net = build(f"{user_module}:build_net", width=4, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    spec = f"{user_module}:build_net"
    data = {"source": "synthetic", "synthetic_chans": 2, "synthetic_size": 2}  # 8 inputs
    a = import_weights(spec, tmp_path / "w.pt", data, model_args={"num_classes": 10})
    b = import_weights(spec, tmp_path / "w.pt", data, model_args={"num_classes": 10})
    c = import_weights(spec, tmp_path / "w.pt", {**data, "normalize": False},
                       model_args={"num_classes": 10})
    assert a.sha256() == b.sha256() != c.sha256()
    assert a.config["weights_sha256"] == c.config["weights_sha256"]
