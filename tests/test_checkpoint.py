import pytest
import torch
import torch.nn.functional as F

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


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_trained_on_device_loads_on_cpu(tmp_path, device, monkeypatch):
    """geomkit's loop trains on ``device`` and saves; a CPU-only machine loads the file."""
    from geomkit.train import TrainConfig, loop, train

    trained = {}
    orig = loop.save_checkpoint

    def keep(path, model, **kw):  # the weights in memory at the save, on the device
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return orig(path, model, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", keep)
    cfg = TrainConfig(
        model="vit-tiny",
        model_kwargs={"depth": 1, "embed_dim": 8, "num_heads": 2},
        data={
            "source": "synthetic",
            "synthetic_train": 64,
            "synthetic_test": 32,
            "synthetic_classes": 4,
        },
        optimizer="sam",  # SAM around AdamW: moments and step counts in the optimizer state
        epochs=1,
        batch_size=32,
        device=device.type,
    )
    path = train(cfg, tmp_path / "run", progress=False).checkpoint
    assert {v.device.type for v in trained.values()} == {device.type}
    # every tensor was saved on the CPU: plain weights_only loading, no map_location
    raw = torch.load(path, weights_only=True)
    assert raw["optimizer"]["state"] and raw["step"] == 2
    assert all(t.device.type == "cpu" for t in _tensors(raw))
    ck = load_checkpoint(path, device="cpu")
    weights = ck.model.state_dict()
    assert list(weights) == list(trained)
    for k, v in trained.items():
        assert weights[k].device.type == "cpu" and torch.equal(weights[k], v.cpu()), k
    # the loaded model's loss on the CPU is the one the loop measured on the device
    x, y = ck.analysis_data("test")
    with torch.no_grad():
        loss = F.cross_entropy(ck.model(x), y).item()
    # float32: CUDA sums the cross-entropy in another order than the CPU
    assert loss == pytest.approx(
        ck.metrics["test_loss"], rel=1e-5 if device.type == "cpu" else 1e-4
    )
    # loaded back onto the device: the same weights there, fresh models there too
    on_dev = load_checkpoint(path, device=device)
    for k, v in on_dev.model.state_dict().items():
        assert v.device.type == device.type and torch.equal(v.cpu(), weights[k]), k
    fresh = on_dev.fresh_model(1)
    assert all(p.device.type == device.type for p in fresh.parameters())
    for (k, a), b in zip(
        fresh.state_dict().items(), ck.fresh_model(1).state_dict().values(), strict=True
    ):
        assert torch.equal(a.cpu(), b), k  # initialised on the CPU, then moved


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
