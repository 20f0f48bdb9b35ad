"""Strong augmentation (AugReg levels, AugMix + JSD) and the BCE loss in the training loop:
plain runs unchanged bit for bit, augmented runs repeatable and resumable exactly, both SAM
passes on one augmented batch, soft targets in the loss, and the CLI flags."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cli.main import main
from geomkit.checkpoint import load_checkpoint
from geomkit.data import DataSpec, augment_batch, load_split
from geomkit.data.augment import jsd_loss, soft_cross_entropy
from geomkit.errors import SpecError
from geomkit.models import build, family
from geomkit.train import TrainConfig, loop, train
from geomkit.train.loop import lr_factor, make_optimizer, train_step

TINY = {"depth": 1, "embed_dim": 16, "num_heads": 2}
DATA = {"source": "synthetic", "synthetic_train": 96, "synthetic_test": 32,
        "synthetic_classes": 4}
K = 4  # classes


def _cfg(**kw) -> TrainConfig:
    base = dict(model="vit-tiny", model_kwargs=TINY, data=DATA, epochs=2, batch_size=32,
                warmup_epochs=0.5)
    return TrainConfig(**{**base, **kw})


def _weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- configuration ------------------------------------------------------------------------

def test_config_defaults_validation_and_old_configs():
    cfg = _cfg()
    assert (cfg.augreg, cfg.augmix, cfg.augmix_severity, cfg.jsd_weight, cfg.loss) == (
        "none", False, 3, 12.0, "ce")
    assert not cfg.soft_targets
    assert _cfg(augreg="light1").soft_targets and _cfg(loss="bce").soft_targets
    # a configuration stored before these fields existed loads with the plain defaults
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("augreg", "augmix", "augmix_severity", "jsd_weight", "loss")}
    assert TrainConfig.from_dict(old) == cfg
    with pytest.raises(SpecError, match="unknown augreg level 'medium3'; valid: none, light1, "
                       "light2, medium1, medium2, heavy1, heavy2"):
        _cfg(augreg="medium3")
    with pytest.raises(SpecError, match="unknown loss 'mse'; valid: ce, bce"):
        _cfg(loss="mse")
    for bad in (0, 11, 2.5, True):
        with pytest.raises(SpecError, match="augmix_severity"):
            _cfg(augmix_severity=bad)
    with pytest.raises(SpecError, match="jsd_weight must be a finite number >= 0"):
        _cfg(jsd_weight=-1.0)
    with pytest.raises(SpecError, match="augmix must be true or false"):
        _cfg(augmix="yes")


# -- plain runs are unchanged -------------------------------------------------------------

def _reference_run(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The plain training loop written out independently of train(): seeded init, per-epoch
    shuffle and light-augmentation generators, warmup + cosine lr, hard-label CE."""
    spec = DataSpec.from_dict(cfg.data)
    x, y = load_split(spec, "train")
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, image_size=8, in_chans=1, num_classes=K, **cfg.model_kwargs)
    cfg = cfg.resolved(family(model))
    opt = make_optimizer(model, cfg)
    steps = math.ceil(len(x) / cfg.batch_size)
    total, warmup = steps * cfg.epochs, int(round(cfg.warmup_epochs * steps))
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 1000
                                                                              + epoch))
        ga = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 7919)
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if spec.augment:
                xb = augment_batch(xb, spec, ga)
            for grp in opt.param_groups:
                grp["lr"] = cfg.lr * lr_factor(step, total, warmup, cfg.schedule)
            if cfg.is_sam:
                train_step(model, opt, lambda xb=xb, yb=yb: F.cross_entropy(
                    model(xb), yb, label_smoothing=cfg.label_smoothing), sam=True,
                    grad_clip=cfg.grad_clip)
            else:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            step += 1
    return model.state_dict()


@pytest.mark.parametrize("kw", [
    {"label_smoothing": 0.1},
    {"optimizer": "sam", "data": {**DATA, "augment": True}},
])
def test_plain_run_equals_the_plain_loop_written_out(tmp_path, kw):
    cfg = _cfg(**kw)
    r = train(cfg, tmp_path / "run", progress=False)
    assert _same(_weights(r.checkpoint), _reference_run(cfg))


# -- augmented runs -----------------------------------------------------------------------

def test_augmented_run_is_repeatable_and_differs_from_plain(tmp_path):
    cfg = _cfg(augreg="medium2")
    a = _weights(train(cfg, tmp_path / "a", progress=False).checkpoint)
    b = _weights(train(cfg, tmp_path / "b", progress=False).checkpoint)
    plain = _weights(train(_cfg(), tmp_path / "p", progress=False).checkpoint)
    other = _weights(train(_cfg(augreg="medium2", seed=1), tmp_path / "s",
                           progress=False).checkpoint)
    assert _same(a, b)
    assert not _same(a, plain) and not _same(a, other)
    ck = load_checkpoint(tmp_path / "a" / "last.pt")
    assert ck.config["augreg"] == "medium2" and ck.config["loss"] == "ce"
    assert ck.config["augmix"] is False and ck.config["jsd_weight"] == 12.0


def _interrupt_after_first_epoch(monkeypatch):
    orig = loop.save_checkpoint

    def stop(path, model, **kw):
        orig(path, model, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", stop)
    return orig


@pytest.mark.parametrize("kw", [
    {"augreg": "heavy2", "optimizer": "sam",
     "model_kwargs": {**TINY, "depth": 2, "drop_rate": 0.1, "drop_path_rate": 0.2}},
    {"augreg": "light2", "augmix": True, "loss": "bce",
     "model_kwargs": {**TINY, "drop_rate": 0.1}, "data": {**DATA, "augment": True}},
])
def test_interrupted_and_resumed_augmented_run_equals_uninterrupted(tmp_path, monkeypatch, kw):
    """With augmentation, dropout and drop path every random draw is seeded per epoch, so
    the resumed run continues bit for bit (on CPU)."""
    cfg = _cfg(epochs=3, **kw)
    full = _weights(train(cfg, tmp_path / "full", progress=False).checkpoint)
    orig = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", orig)
    assert load_checkpoint(tmp_path / "cut" / "last.pt").epoch == 1
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.steps == 9 and _same(_weights(resumed.checkpoint), full)


def test_old_checkpoint_without_the_fields_resumes_as_plain(tmp_path, monkeypatch):
    cfg = _cfg(epochs=3)
    full = _weights(train(cfg, tmp_path / "full", progress=False).checkpoint)
    orig = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "old", progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", orig)
    last = tmp_path / "old" / "last.pt"
    raw = torch.load(last, weights_only=True)
    for k in ("augreg", "augmix", "augmix_severity", "jsd_weight", "loss"):
        del raw["config"][k]
    torch.save(raw, last)  # as a checkpoint written before these fields existed
    r = train(cfg, tmp_path / "old", resume=True, progress=False)
    assert _same(_weights(r.checkpoint), full)
    assert load_checkpoint(r.checkpoint).config["augreg"] == "none"


def test_resume_refuses_contradicting_augmentation(tmp_path):
    train(_cfg(augreg="light2", epochs=1), tmp_path / "r", progress=False)
    for name, value in (("augreg", "medium2"), ("augmix", True), ("loss", "bce"),
                        ("jsd_weight", 1.0), ("augmix_severity", 5)):
        given = _cfg(epochs=1, **{"augreg": "light2", name: value})
        with pytest.raises(SpecError, match=f"{name}={value!r} \\(the run has "):
            train(given, tmp_path / "r", resume=True, progress=False, same_as=[name])
    # the settings it was trained with are accepted
    train(_cfg(augreg="light2", epochs=1), tmp_path / "r", resume=True, progress=False,
          same_as=["augreg", "augmix", "loss"])


class _Spy:
    """Records, in order, the augment calls, the training-mode forward inputs and the
    targets the soft loss sees."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.inputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        orig_augment, orig_light = loop.augment, loop.augment_batch
        orig_ce, orig_build = loop.soft_cross_entropy, loop.build

        def augment(*a, **kw):
            self.calls.append("strong")
            return orig_augment(*a, **kw)

        def light(*a, **kw):
            self.calls.append("light")
            return orig_light(*a, **kw)

        def ce(logits, targets, *a, **kw):
            self.targets.append(targets.detach().clone())
            return orig_ce(logits, targets, *a, **kw)

        def build_(name, **kw):
            model = orig_build(name, **kw)
            model.register_forward_pre_hook(
                lambda m, args: self.inputs.append(args[0].detach().clone()) if m.training
                else None)
            return model

        monkeypatch.setattr(loop, "augment", augment)
        monkeypatch.setattr(loop, "augment_batch", light)
        monkeypatch.setattr(loop, "soft_cross_entropy", ce)
        monkeypatch.setattr(loop, "build", build_)


@pytest.mark.parametrize("augmix", [False, True])
def test_both_sam_passes_see_one_augmented_batch(tmp_path, monkeypatch, augmix):
    spy = _Spy(monkeypatch)
    cfg = _cfg(optimizer="sam", augreg="medium2", augmix=augmix, epochs=1,
               data={**DATA, "augment": True})
    r = train(cfg, tmp_path / "run", progress=False)
    steps = r.steps
    assert steps == 3
    # light first, then strong, once per step each
    assert spy.calls == ["light", "strong"] * steps
    assert len(spy.inputs) == len(spy.targets) == 2 * steps  # SAM: two passes per step
    for k in range(steps):
        first, second = spy.inputs[2 * k], spy.inputs[2 * k + 1]
        assert torch.equal(first, second)
        assert torch.equal(spy.targets[2 * k], spy.targets[2 * k + 1])
        assert first.shape[0] == (3 if augmix else 1) * 32  # clean + two AugMix views
    # consecutive steps get new batches, and the augmented targets are mixed soft rows
    assert not torch.equal(spy.inputs[0][:32], spy.inputs[2][:32])
    t = torch.cat(spy.targets)
    assert t.shape[1] == K
    assert torch.allclose(t.sum(1), torch.ones(len(t)))
    assert (t.max(1).values < 1).any()  # Mixup 0.5 mixed the labels


def test_label_smoothing_is_folded_into_the_soft_targets(tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    train(_cfg(augreg="light1", label_smoothing=0.2, epochs=1), tmp_path / "run",
          progress=False)
    t = torch.cat(spy.targets)  # light1: RandAugment only, no Mixup
    assert t.unique().tolist() == pytest.approx([0.2 / K, 0.8 + 0.2 / K])


class _StepLoss:
    every = 1

    def __init__(self) -> None:
        self.losses: list[float] = []

    def __call__(self, e) -> None:
        if e.kind == "step":
            self.losses.append(e.loss)


def test_augmix_objective_is_ce_on_clean_plus_weighted_jsd(tmp_path, monkeypatch):
    seen: list[tuple[float, float]] = []
    orig_ce, orig_jsd = loop.soft_cross_entropy, loop.jsd_loss

    def ce(logits, t):
        v = orig_ce(logits, t)
        seen.append((logits.shape[0], float(v.detach())))
        return v

    def jsd(z0, z1, z2):
        assert z0.shape == z1.shape == z2.shape and z0.shape[0] == 32
        assert not torch.equal(z0, z1)
        v = orig_jsd(z0, z1, z2)
        seen.append((-1, float(v.detach())))
        return v

    monkeypatch.setattr(loop, "soft_cross_entropy", ce)
    monkeypatch.setattr(loop, "jsd_loss", jsd)
    rec = _StepLoss()
    train(_cfg(augmix=True, jsd_weight=12.0, epochs=1), tmp_path / "run", progress=False,
          callbacks=[rec])
    assert len(seen) == 2 * len(rec.losses) == 6
    for k, loss in enumerate(rec.losses):
        (n, c), (_, j) = seen[2 * k], seen[2 * k + 1]
        assert n == 32 and j > 0  # CE on the clean third only
        assert loss == pytest.approx(c + 12.0 * j, rel=1e-6)


def test_bce_loss_trains_on_sigmoid_targets(tmp_path, monkeypatch):
    used: list[str] = []
    orig = loop.soft_bce
    monkeypatch.setattr(loop, "soft_bce", lambda z, t: (used.append("bce"), orig(z, t))[1])
    rec = _StepLoss()
    r = train(_cfg(loss="bce", epochs=1), tmp_path / "run", progress=False, callbacks=[rec])
    assert used == ["bce"] * 3
    # at initialization every sigmoid is near 1/2: BCE ≈ log 2, not the CE's log 4
    assert rec.losses[0] == pytest.approx(math.log(2), abs=0.05)
    assert math.isfinite(r.test_loss) and load_checkpoint(r.checkpoint).config["loss"] == "bce"


def test_jsd_weight_zero_with_identical_views_is_plain_soft_ce():
    z = torch.randn(8, K)
    assert float(jsd_loss(z, z, z)) == pytest.approx(0.0, abs=1e-7)
    y = torch.randint(0, K, (8,))
    assert torch.equal(soft_cross_entropy(z, y), soft_cross_entropy(z, F.one_hot(y, K).float()))


# -- CLI ----------------------------------------------------------------------------------

FAST = ["--data", "synthetic", "--model", "vit-tiny", "--model-arg", "depth=1",
        "--model-arg", "embed_dim=16", "--model-arg", "num_heads=2", "--epochs", "1",
        "--batch-size", "128", "--no-progress"]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_trains_with_augmentation_and_refuses_a_contradicting_resume(tmp_path, capsys):
    out = str(tmp_path / "r")
    rc, _, err = _run(capsys, "train", *FAST, "--augreg", "light2", "--augmix",
                      "--augmix-severity", "2", "--jsd-weight", "6", "--loss", "bce",
                      "--out", out)
    assert rc == 0, err
    c = load_checkpoint(tmp_path / "r" / "last.pt").config
    assert (c["augreg"], c["augmix"], c["augmix_severity"], c["jsd_weight"], c["loss"]) == (
        "light2", True, 2, 6.0, "bce")
    before = (tmp_path / "r" / "last.pt").read_bytes()
    rc, _, err = _run(capsys, "train", "--augreg", "medium2", "--loss", "ce", "--out", out,
                      "--resume", "--no-progress")
    assert rc == 2 and err.count("\n") == 1
    assert "augreg='medium2'" in err and "the run has 'light2'" in err
    assert (tmp_path / "r" / "last.pt").read_bytes() == before
    rc, _, err = _run(capsys, "train", "--augreg", "light2", "--out", out, "--resume",
                      "--no-progress")
    assert rc == 0, err


@pytest.mark.parametrize("argv, words", [
    (["--augreg", "strong"], ["--augreg", "invalid choice", "medium2"]),
    (["--loss", "mse"], ["--loss", "invalid choice", "bce"]),
    (["--augmix-severity", "0"], ["--augmix-severity", "at most 10"]),
    (["--augmix-severity", "11"], ["--augmix-severity", "at most 10"]),
    (["--jsd-weight", "-2"], ["--jsd-weight", "non-negative"]),
])
def test_cli_bad_values_are_one_line(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert all(w in err for w in words)
    assert not (tmp_path / "x").exists()
