"""Training callbacks: called every K steps and at epoch ends with the run's own step
count, continuing across a resume, and never changing what is trained."""

from __future__ import annotations

import pytest
import torch

from geomkit.checkpoint import load_checkpoint
from geomkit.train import TrainConfig, TrainEvent, train
from tests.train.tiny import DATA, tiny_cfg

_cfg = tiny_cfg


class Recorder:
    """Records every event; draws random numbers, as a Hutchinson probe would."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.events: list[TrainEvent] = []

    def __call__(self, e: TrainEvent) -> None:
        torch.randn(1000)  # consumes the global RNG: must not change the training
        self.events.append(e)


def _steps(rec: Recorder, kind: str) -> list[int]:
    return [e.step for e in rec.events if e.kind == kind]


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_called_every_k_steps_and_at_epoch_ends_without_changing_training(tmp_path,
                                                                          optimizer):
    rec = Recorder(every=2)
    plain = train(_cfg(optimizer=optimizer), tmp_path / "plain", progress=False)
    tracked = train(_cfg(optimizer=optimizer), tmp_path / "tracked", progress=False,
                    callbacks=[rec])
    a, b = (load_checkpoint(r.checkpoint).model.state_dict() for r in (plain, tracked))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the RNG draws changed nothing
    # 96 examples / batch 32 = 3 steps per epoch, 9 in all
    assert _steps(rec, "step") == [2, 4, 6, 8]
    assert _steps(rec, "epoch") == [3, 6, 9]
    ep = [e for e in rec.events if e.kind == "epoch"]
    assert [e.epoch for e in ep] == [1, 2, 3]
    assert ep[-1].metrics["test_acc"] == pytest.approx(tracked.test_acc)
    assert ep[-1].loss == pytest.approx(tracked.train_loss)
    assert all(e.lr > 0 and e.optimizer is not None for e in rec.events)
    assert all(isinstance(e.model, torch.nn.Module) for e in rec.events)


def test_a_resumed_run_continues_the_step_count(tmp_path, monkeypatch):
    from geomkit.train import loop

    orig = loop.save_checkpoint

    def stop_after_first(path, model, **kw):
        orig(path, model, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt

    first = Recorder(every=2)
    monkeypatch.setattr(loop, "save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path / "run", progress=False, callbacks=[first])
    monkeypatch.setattr(loop, "save_checkpoint", orig)
    second = Recorder(every=2)
    train(_cfg(), tmp_path / "run", resume=True, progress=False, callbacks=[second])
    # epoch 1 (steps 1-3) before the interruption; its epoch event comes after the
    # checkpoint, which the interruption cut: the resumed run starts at step 4
    assert _steps(first, "step") == [2]
    assert _steps(second, "step") == [4, 6, 8]
    assert _steps(second, "epoch") == [6, 9]


DROPNET = """
from torch import nn

def build_net(num_classes=4, in_chans=1, image_size=8, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size * image_size, 16),
                         nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, num_classes))
"""


def test_callbacks_drawing_random_numbers_leave_dropout_masks_alone(tmp_path, monkeypatch):
    """A model whose training draws from the global RNG (dropout): a callback drawing
    random numbers trains the same weights, because it runs in a forked RNG state; without
    the fork the same callback would change them (so the check can fail)."""
    import sys

    from geomkit.train import loop

    name = f"dropnet_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(DROPNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = TrainConfig(model=f"{name}:build_net", data=DATA, epochs=2, batch_size=32)

    def weights(out, callbacks):
        r = train(cfg, tmp_path / out, progress=False, callbacks=callbacks)
        return load_checkpoint(r.checkpoint).model.state_dict()

    plain = weights("plain", [])
    tracked = weights("tracked", [Recorder(every=1)])
    assert all(torch.equal(plain[k], tracked[k]) for k in plain)

    def unforked(callbacks, event, device):
        for cb in callbacks:
            cb(event)

    monkeypatch.setattr(loop, "_notify", unforked)
    leaky = weights("leaky", [Recorder(every=1)])
    assert not all(torch.equal(plain[k], leaky[k]) for k in plain)
    sys.modules.pop(name, None)
