"""A fixed budget of optimizer steps (``TrainConfig.steps``): exactly that many steps, the
epochs it takes stored, an exact resume, and plain runs unchanged."""

from __future__ import annotations

import pytest
import torch

from geomkit.checkpoint import load_checkpoint
from geomkit.errors import SpecError
from geomkit.train import TrainConfig, TrainEvent, train
from geomkit.train.loop import lr_factor
from tests.train.tiny import tiny_cfg

_cfg = tiny_cfg


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Steps:
    every = 1

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float]] = []

    def __call__(self, e: TrainEvent) -> None:
        self.events.append((e.kind, e.step, e.lr))


def test_a_budget_of_whole_epochs_trains_the_plain_run_bit_for_bit(tmp_path):
    """steps = 2 epochs' worth is the plain 2-epoch run (same schedule total, same batches),
    and another budget is not (so the comparison can fail)."""
    plain = train(_cfg(epochs=2), tmp_path / "plain", progress=False)
    budget = train(_cfg(epochs=30, steps=6), tmp_path / "budget", progress=False)
    other = train(_cfg(epochs=30, steps=5), tmp_path / "other", progress=False)
    a, b, c = (load_checkpoint(r.checkpoint) for r in (plain, budget, other))
    assert (plain.steps, budget.steps, a.step, b.step) == (6, 6, 6, 6)
    assert _same_weights(a.model, b.model)
    assert a.metrics["history"] == b.metrics["history"]
    assert not _same_weights(a.model, c.model)
    assert a.config["steps"] is None and b.config["steps"] == 6
    assert b.config["epochs"] == 2  # epochs=30 was replaced by the budget's


def test_the_last_epoch_stops_at_the_budget_and_still_ends(tmp_path):
    rec = Steps()
    res = train(_cfg(epochs=1, steps=7), tmp_path / "run", progress=False, callbacks=[rec])
    ck = load_checkpoint(res.checkpoint)
    assert (res.steps, ck.step, ck.epoch, ck.config["epochs"], res.epochs) == (7, 7, 3, 3, 3)
    assert [h["epoch"] for h in ck.metrics["history"]] == [1, 2, 3]
    assert [s for k, s, _ in rec.events if k == "step"] == list(range(1, 8))
    assert [s for k, s, _ in rec.events if k == "epoch"] == [3, 6, 7]
    # the schedule spans the budget (7 steps, warmup round(0.5 * 3) = 2), not 3 epochs
    lrs = [lr for k, _, lr in rec.events if k == "step"]
    assert lrs == pytest.approx([3e-3 * lr_factor(i, 7, 2, "cosine") for i in range(7)])
    # finished: resuming returns at once, still at the budget
    again = train(_cfg(steps=7), tmp_path / "run", resume=True, progress=False)
    assert again.steps == 7 and load_checkpoint(res.checkpoint).step == 7


def test_warmup_steps_is_the_same_warmup_on_any_training_set(tmp_path):
    rec = Steps()
    train(_cfg(steps=7, warmup_steps=4), tmp_path / "run", progress=False, callbacks=[rec])
    lrs = [lr for k, _, lr in rec.events if k == "step"]
    assert lrs == pytest.approx([3e-3 * lr_factor(i, 7, 4, "cosine") for i in range(7)])
    assert lrs[3] == pytest.approx(3e-3)  # the warmup's last step is at the peak
    with pytest.raises(SpecError, match="warmup_steps must be an integer >= 0 or null"):
        _cfg(warmup_steps=-1)


@pytest.mark.parametrize("extra", [{}, {"augreg": "light2", "optimizer": "sam"}])
def test_resuming_a_budget_run_continues_it_exactly(tmp_path, monkeypatch, extra):
    from geomkit.train import loop

    whole = train(_cfg(steps=8, **extra), tmp_path / "whole", progress=False)
    orig = loop.save_checkpoint

    def stop_after_first(path, model, **kw):
        orig(path, model, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(steps=8, **extra), tmp_path / "cut", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", orig)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").step == 3
    res = train(_cfg(steps=8, **extra), tmp_path / "cut", resume=True, progress=False)
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(res.checkpoint)
    assert (a.step, b.step, b.epoch) == (8, 8, 3)
    assert _same_weights(a.model, b.model)
    assert a.metrics["history"] == b.metrics["history"]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_a_bad_budget_is_refused_in_one_line(bad):
    with pytest.raises(SpecError, match="steps must be an integer >= 1 or null") as e:
        _cfg(steps=bad)
    assert "\n" not in str(e.value)


def test_old_configs_without_steps_load_unchanged():
    d = _cfg().to_dict()
    del d["steps"]
    assert TrainConfig.from_dict(d) == _cfg() and TrainConfig.from_dict(d).steps is None
