"""Clean and corrupted accuracy: against a direct loop, invariances, model left unchanged.

Measurement tests take the ``device`` fixture (CPU, and CUDA when present): the direct-loop
oracle runs on the CPU; :func:`robustness` runs with the model, the data or both on
``device``.  The noise is drawn on the CPU generator either way, so the corrupted inputs,
and hence the accuracies, are the same on every device.  (Measured on the CPU, the float32
models below have a smallest top-2 logit gap of 2e-5 on these inputs, against float32
rounding differences of about 3e-7, so no prediction flips between devices: the
comparisons stay exact.)
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from geomkit.checkpoint import load_checkpoint, save_checkpoint
from geomkit.data import CORRUPTIONS, DataSpec, corrupt_normalized, load_split
from geomkit.errors import DataError, SpecError
from geomkit.geometry import robustness as rob
from geomkit.models import build
from tests.cases import OutputWrapper

SPEC = DataSpec(source="digits")


@pytest.fixture(scope="module")
def data():
    x, y = load_split(SPEC, "test")
    return x[:120], y[:120]


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 10))


def _direct(model, x, y, seed, names, sevs, chunk):
    """Accuracy by a plain loop: corrupt each chunk with its own generator, classify."""
    from geomkit.data.sources import raw_data

    raw = raw_data(SPEC)
    model.eval()
    out = {}
    with torch.no_grad():
        out["clean"] = float((model(x).argmax(1) == y).double().mean())
        for c in names:
            for s in sevs:
                hits = 0
                for k in range(0, len(x), chunk):
                    g = rob._chunk_generator(seed, c, s, k // chunk)
                    xc = corrupt_normalized(x[k : k + chunk], c, s, (raw.mean, raw.std), g)
                    hits += int((model(xc).argmax(1) == y[k : k + chunk]).sum())
                out[(c, s)] = hits / len(x)
    return out


def test_matches_direct_loop_and_aggregates(data, monkeypatch, device):
    monkeypatch.setattr(rob, "CHUNK", 50)  # three chunks, the last one short
    x, y = data
    m = _model()
    # model and data on the device: the corruptions themselves run there
    r = rob.robustness(copy.deepcopy(m).to(device), x.to(device), y.to(device),
                       normalization=SPEC, seed=4, batch_size=32)
    ref = _direct(m, x, y, 4, CORRUPTIONS, range(1, 6), 50)
    assert r.clean == pytest.approx(ref["clean"])
    assert set(r.accuracy) == set(CORRUPTIONS) and r.severities == (1, 2, 3, 4, 5)
    for c in CORRUPTIONS:
        assert r.accuracy[c] == pytest.approx([ref[(c, s)] for s in range(1, 6)])
        assert r.per_corruption[c] == pytest.approx(np.mean(r.accuracy[c]))
    assert r.mean_corrupted == pytest.approx(np.mean([ref[k] for k in ref if k != "clean"]))
    assert r.n_samples == 120 and r.seed == 4


def test_invariant_to_batch_size_and_corruption_subset(data, monkeypatch, device):
    monkeypatch.setattr(rob, "CHUNK", 40)
    x, y = data
    m = _model()  # a CPU model and CPU data, evaluated on ``device`` (a copy there)
    names = ("gaussian_noise", "shot_noise", "impulse_noise", "jpeg")
    kw = dict(normalization=SPEC, device=device)
    a = rob.robustness(m, x, y, corruptions=names, batch_size=7, **kw)
    b = rob.robustness(m, x, y, corruptions=names, batch_size=None, **kw)
    c = rob.robustness(m, x, y, corruptions=("shot_noise",), severities=(3,), **kw)
    assert a.accuracy == b.accuracy and a.clean == b.clean
    assert c.accuracy["shot_noise"] == (a.accuracy["shot_noise"][2],)
    # deterministic: the same call twice gives the same numbers
    again = rob.robustness(m, x, y, corruptions=names, batch_size=7, **kw)
    assert again.accuracy == a.accuracy
    assert all(t.device.type == "cpu" for t in m.state_dict().values())


def test_eval_mode_and_model_left_unchanged(data, device):
    x, y = data
    ref = _model().train()
    ref[2].running_mean.fill_(0.3)
    m = copy.deepcopy(ref).to(device)  # the model on the device, the data on the CPU
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = rob.robustness(m, x, y, normalization=SPEC, corruptions=("contrast",), severities=(1,))
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items():
        # BatchNorm statistics not updated (eval mode), nothing moved
        assert torch.equal(v, before[k]) and v.device.type == device.type, k
    ref.eval()  # the oracle, on the CPU
    with torch.no_grad():
        assert r.clean == pytest.approx(float((ref(x).argmax(1) == y).double().mean()))


def test_unnormalized_inputs_and_float64(device):
    torch.manual_seed(0)
    x = torch.rand(30, 1, 4, 4)
    y = torch.randint(0, 3, (30,))
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).to(device)
    r32 = rob.robustness(m, x, y, corruptions=("gaussian_noise", "jpeg"))
    r64 = rob.robustness(m, x, y, corruptions=("gaussian_noise", "jpeg"), dtype=torch.float64)
    p = next(m.parameters())  # the model itself is neither cast nor moved
    assert p.dtype == torch.float32 and p.device.type == device.type
    assert 0.0 <= r32.mean_corrupted <= 1.0 and r64.n_samples == 30
    with pytest.raises(DataError, match="un-normalized"):
        rob.robustness(m, x * 5 - 2, y)  # normalized inputs without their constants


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"severities": (0,)}, SpecError),
        ({"severities": (6,)}, SpecError),
        ({"corruptions": ("fog",)}, DataError),
        ({"corruptions": ()}, SpecError),
        ({"batch_size": 0}, SpecError),
    ],
)
def test_bad_options(kwargs, err):
    x, y = torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(err):
        rob.robustness(m, x, y, **kwargs)


def test_mismatched_or_empty_data():
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(DataError):
        rob.robustness(m, torch.rand(4, 1, 4, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError):
        rob.robustness(m, torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.long))


def test_checkpoint_robustness_uses_test_split(tmp_path, device):
    torch.manual_seed(1)
    model = build("mixer-tiny", image_size=8, in_chans=1, num_classes=10, depth=1)
    path = save_checkpoint(tmp_path / "m.pt", model, config={"optimizer": "adamw"}, data_spec=SPEC)
    ck = load_checkpoint(path)
    r = rob.checkpoint_robustness(ck, n=40, corruptions=("pixelate",), severities=(2,),
                                  device=device)
    x, y = load_split(SPEC, "test")
    ref = rob.robustness(ck.model, x[:40], y[:40], normalization=SPEC,
                         corruptions=("pixelate",), severities=(2,))
    assert r.n_samples == 40 and r.accuracy == ref.accuracy and r.clean == ref.clean


# ---------------------------------------------------------------- data and outputs

_NAMES = ("gaussian_noise", "impulse_noise", "contrast")


def test_uneven_dataloader_gives_the_same_accuracies(data, monkeypatch, device):
    from torch.utils.data import DataLoader, TensorDataset

    monkeypatch.setattr(rob, "CHUNK", 50)  # chunks [0, 50), [50, 100), [100, 120)
    x, y = data
    m = _model().to(device)
    kw = dict(normalization=SPEC, corruptions=_NAMES, severities=(1, 4), seed=7, batch_size=16)
    ref = rob.robustness(m, x, y, **kw)
    # loader batches of 7 and 3 cross every chunk boundary; the chunks are regrouped from them,
    # so each chunk holds the same examples and draws the same noise: the counts are equal
    for bs in (7, 3, 120):
        r = rob.robustness(m, DataLoader(TensorDataset(x, y), batch_size=bs), **kw)
        assert r.clean == ref.clean and r.accuracy == ref.accuracy, bs
        assert r.mean_corrupted == ref.mean_corrupted and r.n_samples == 120
    r = rob.robustness(m, ((x[i : i + 13], y[i : i + 13]) for i in range(0, 120, 13)), **kw)
    assert r.accuracy == ref.accuracy  # a one-shot generator, read once
    assert rob.robustness(m, (x, y), **kw).accuracy == ref.accuracy  # a pair of tensors
    with pytest.raises(DataError, match="targets are needed"):
        rob.robustness(m, x)


def test_sharded_ranks_over_a_dataloader(data, monkeypatch, device):
    """Two simulated torchrun ranks (chunks 0-1 and 2): the same counts from a loader as from
    the tensors, adding up to the single-process accuracies."""
    from torch.utils.data import DataLoader, TensorDataset

    from geomkit import distributed

    monkeypatch.setattr(rob, "CHUNK", 50)
    x, y = data
    m = _model().to(device)
    kw = dict(normalization=SPEC, corruptions=_NAMES, severities=(2,), seed=1)
    ref = rob.robustness(m, x, y, **kw)
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)  # active() stays False
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        a, b = rob.robustness(m, x, y, **kw), rob.robustness(m, loader, **kw)
        assert a.clean == b.clean and a.accuracy == b.accuracy, rank
        parts.append(b)
    assert parts[0].clean + parts[1].clean == pytest.approx(ref.clean, rel=1e-12)
    for c in _NAMES:
        assert parts[0].accuracy[c][0] + parts[1].accuracy[c][0] == pytest.approx(
            ref.accuracy[c][0], rel=1e-12)


_Wrapped = OutputWrapper  # the shared tuple/dict/.logits output wrapper


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_dict_and_tuple_outputs_and_soft_targets(data, kind, device):
    x, y = data
    m = _model().to(device)
    kw = dict(normalization=SPEC, corruptions=_NAMES, severities=(3,), seed=2)
    ref = rob.robustness(m, x, y, **kw)
    r = rob.robustness(_Wrapped(m, kind), x, y, **kw)
    assert r.clean == ref.clean and r.accuracy == ref.accuracy
    # one-hot (soft) targets: the label is their argmax
    soft = nn.functional.one_hot(y, 10).float() * 0.9 + 0.01
    r = rob.robustness(m, x, soft, **kw)
    assert r.clean == ref.clean and r.accuracy == ref.accuracy
