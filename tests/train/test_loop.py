import math

import pytest
import torch

from geomkit.checkpoint import load_checkpoint
from geomkit.errors import GeomkitError
from geomkit.train import TrainConfig, train
from geomkit.train.loop import lr_factor

TINY = {"depth": 1, "embed_dim": 16, "num_heads": 2}
DATA = {"source": "synthetic", "synthetic_train": 96, "synthetic_test": 32, "synthetic_classes": 4}


def _cfg(**kw):
    base = dict(
        model="vit-tiny", model_kwargs=TINY, data=DATA, epochs=2, batch_size=32, warmup_epochs=0.5
    )
    return TrainConfig(**{**base, **kw})


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_lr_schedule_warmup_then_decay():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "linear") == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "constant") == 1.0


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_cpu_run_is_repeatable_and_checkpoint_is_complete(tmp_path, optimizer):
    r1 = train(_cfg(optimizer=optimizer), tmp_path / "a", progress=False)
    r2 = train(_cfg(optimizer=optimizer), tmp_path / "b", progress=False)
    w1, w2 = _weights(r1.checkpoint), _weights(r2.checkpoint)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    ck = load_checkpoint(r1.checkpoint)
    assert ck.epoch == 2 and ck.step == 6 and not ck.model.training
    assert ck.config["optimizer"] == optimizer and ck.config["lr"] > 0
    assert ck.config["rho"] == (0.1 if optimizer == "sam" else 0.0)
    assert ck.label == f"vit-tiny/{'sam' if optimizer == 'sam' else 'vanilla'}"
    assert len(ck.metrics["history"]) == 2 and math.isfinite(ck.metrics["test_loss"])
    assert ck.provenance["torch_version"] == torch.__version__
    # the checkpoint's own loss is reproduced from the rebuilt model
    x, y = ck.analysis_data("test")
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(ck.model(x), y).item()
    assert loss == pytest.approx(ck.metrics["test_loss"], rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_resume_continues_the_same_run(tmp_path, optimizer, device, monkeypatch):
    from geomkit.train import loop

    cfg = _cfg(optimizer=optimizer, epochs=3, device=device.type)
    full = train(cfg, tmp_path / "full", progress=False)
    # simulate an interruption after epoch 1: retrain 1 epoch of a 3-epoch schedule
    part = tmp_path / "cut"
    orig = loop.save_checkpoint
    state_devices = []

    def stop_after_first(path, model, **kw):
        orig(path, model, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, part, progress=False)
    assert load_checkpoint(part / "last.pt").epoch == 1
    # the run was started elsewhere: its stored device is one no machine here has; the
    # resumed run uses the device asked for now
    raw = torch.load(part / "last.pt", weights_only=True)
    assert raw["config"]["device"] == device.type
    raw["config"]["device"] = "cuda:99"
    torch.save(raw, part / "last.pt")

    def record(path, model, **kw):  # the resumed optimizer's state lives with the weights
        state = kw["optimizer"].state_dict()["state"]
        state_devices.extend(
            t.device.type for s in state.values() for k, t in s.items() if k != "step"
        )
        orig(path, model, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", record)
    resumed = train(cfg, part, resume=True, progress=False)
    assert resumed.steps == full.steps
    assert state_devices and set(state_devices) == {device.type}
    w_full, w_res = _weights(full.checkpoint), _weights(resumed.checkpoint)
    for k in w_full:
        if device.type == "cpu":
            assert torch.equal(w_full[k], w_res[k]), k
        else:  # float32 CUDA kernels (attention, convolution backward) use atomics: two
            # identical CUDA runs agree to rounding only, not bit for bit
            torch.testing.assert_close(w_res[k], w_full[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bad_config_is_a_user_error():
    with pytest.raises(GeomkitError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(GeomkitError, match="rho"):
        TrainConfig(optimizer="sam", rho=-1.0)
