import pytest
import torch

from geomkit.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from geomkit.data import DataSpec
from geomkit.errors import CheckpointError, DataError
from geomkit.models import build


def _save(path, **kw):
    torch.manual_seed(0)
    model = build("resnet-tiny", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    save_checkpoint(
        path,
        model,
        config={"optimizer": "sgd", "lr": 0.1},
        data_spec=DataSpec("digits"),
        optimizer=opt,
        step=3,
        epoch=1,
        metrics={"test_acc": 0.5},
        **kw,
    )
    return model


def test_round_trip_with_weights_only(tmp_path):
    model = _save(tmp_path / "c.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == FORMAT and raw["optimizer"]["state"]
    ck = load_checkpoint(tmp_path / "c.pt")
    assert ck.model_name == "resnet-tiny" and ck.model_kwargs == {"num_classes": 10}
    assert not ck.model.training and ck.step == 3 and ck.epoch == 1
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v)
    assert ck.config["lr"] == 0.1 and ck.metrics["test_acc"] == 0.5
    assert ck.data_spec == DataSpec("digits") and len(ck.sha256()) == 64
    x, y = ck.analysis_data("train", 5)
    assert x.shape == (5, 1, 8, 8) and y.dtype == torch.int64
    x_all, _ = ck.analysis_data("train")
    assert torch.equal(x_all[:5], x)
    with pytest.raises(DataError, match="only 1437"):
        ck.analysis_data("train", 10**6)
    # a fresh model: same architecture, new weights, seeded
    a, b = ck.fresh_model(1), ck.fresh_model(1)
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(
        a.fc.weight, ck.model.fc.weight
    )


def test_run_directory_resolves_to_last(tmp_path):
    _save(tmp_path / "last.pt")
    assert load_checkpoint(tmp_path).path.name == "last.pt"


def test_atomic_write_leaves_no_temporary(tmp_path):
    _save(tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: None, "no such checkpoint"),
        (lambda p: p.write_text("hello"), "not a readable checkpoint"),
        (lambda p: torch.save({"a": torch.ones(2)}, p), "not a geomkit checkpoint"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, make, match):
    p = tmp_path / "x.pt"
    make(p)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value)


def test_truncated_and_unknown_model(tmp_path):
    _save(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "t.pt")
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    raw["model"]["kwargs"] = {"num_classes": 3}  # weights of shape 10 do not fit
    torch.save(raw, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(tmp_path / "s.pt")
    raw["model"]["kwargs"], raw["step"] = {"num_classes": 10}, None
    torch.save(raw, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "n.pt")
    raw["step"] = 3
    raw["model"]["name"] = "vit-huge"
    torch.save(raw, tmp_path / "u.pt")
    with pytest.raises(CheckpointError, match="unknown model 'vit-huge'"):
        load_checkpoint(tmp_path / "u.pt")
