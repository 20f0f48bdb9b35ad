"""The analysis-data rule, the losses and the logits adapter shared by every measurement."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from geomkit.errors import DataError, ModelError, SpecError
from geomkit.geometry._inputs import as_data, logits_of, resolve_loss


def _xy(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_tensors_and_uneven_loader_give_the_same_first_n_examples():
    x, y = _xy(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # batches 4, 4, 2
    for n in (None, 7, 10, 99):
        a, b = as_data((x, y), n=n), as_data(loader, n=n)
        assert a.n == b.n == min(n or 10, 10)
        xa = torch.cat([bx for bx, _ in a.batches(3)])
        xb = torch.cat([bx for bx, _ in b.batches(3)])
        assert torch.equal(xa, xb) and torch.equal(xa, x[: a.n])
        assert all(len(bx) <= 3 for bx, _ in b.batches(3))
    # a slice [lo, hi) (one rank's shard) crosses the loader's batch boundaries
    sl = torch.cat([bx for bx, _ in as_data(loader).batches(lo=3, hi=9)])
    assert torch.equal(sl, x[3:9])


def test_one_shot_iterator_is_read_once_and_reused():
    x, y = _xy(10)
    gen = ((x[i : i + 3], y[i : i + 3]) for i in range(0, 10, 3))
    d = as_data(gen, n=8)
    first = torch.cat([bx for bx, _ in d.batches()])
    again = torch.cat([bx for bx, _ in d.batches()])
    assert d.n == 8 and torch.equal(first, x[:8]) and torch.equal(again, first)


def test_bad_data():
    x, y = _xy(4)
    with pytest.raises(DataError, match="differ in length"):
        as_data((x, y[:3]))
    with pytest.raises(DataError, match="targets are needed"):
        as_data(x)
    with pytest.raises(DataError, match="pair"):
        as_data([x, x, x])
    with pytest.raises(SpecError, match="no analysis examples"):
        as_data([])
    with pytest.raises(SpecError, match="n must be"):
        as_data((x, y), n=0)


def test_losses_per_example():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    onehot = F.one_hot(y, 4).double()
    torch.testing.assert_close(resolve_loss("ce")(logits, y),
                               F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(resolve_loss("ce:0.1")(logits, y),
                               F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1))
    torch.testing.assert_close(resolve_loss("ce", 0.1)(logits, y),
                               resolve_loss("ce:0.1")(logits, y))
    bce = -(onehot * F.logsigmoid(logits) + (1 - onehot) * F.logsigmoid(-logits)).sum(1)
    torch.testing.assert_close(resolve_loss("bce")(logits, y), bce)
    torch.testing.assert_close(resolve_loss("mse")(logits, y), ((logits - onehot) ** 2).sum(1))
    soft = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1)  # mixup targets
    torch.testing.assert_close(resolve_loss("mse")(logits, soft), ((logits - soft) ** 2).sum(1))
    custom = resolve_loss(lambda out, t: (out[:, 0] - t.double()) ** 2)
    torch.testing.assert_close(custom(logits, y), (logits[:, 0] - y.double()) ** 2)
    with pytest.raises(SpecError, match="one loss per example"):
        resolve_loss(lambda out, t: out.sum())(logits, y)
    with pytest.raises(SpecError, match="unknown loss"):
        resolve_loss("hinge")
    with pytest.raises(SpecError, match="label smoothing applies to ce only"):
        resolve_loss("bce", 0.1)


def test_logits_adapter():
    t = torch.ones(2, 3)

    class HF:
        logits = t

    assert logits_of(t) is t and logits_of((t, 5)) is t and logits_of([t]) is t
    assert logits_of({"logits": t, "aux": 1}) is t and logits_of({"out": t}) is t
    assert logits_of(HF()) is t
    with pytest.raises(ModelError, match="not logits"):
        logits_of("text")
