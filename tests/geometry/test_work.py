"""The shared private helpers every measurement uses: analysis mode and the progress bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geomkit.geometry._work import analysis_mode, work_model
from tests.cases import make_case


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Linear(3, 2))


@pytest.mark.parametrize("untracked", [False, True])
def test_analysis_mode_sets_and_restores_every_flag(untracked):
    model = _bn_model()
    model.train()
    model[3].eval()  # a mixed state must come back exactly
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"), analysis_mode(model, "train",
                                                                   untracked=untracked):
        assert not model.training and not model[2].training and model[1].training
        assert model[1].track_running_stats is not untracked
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == flags
    assert model[1].track_running_stats


def test_untracked_train_bn_normalizes_with_batch_stats_and_keeps_the_buffers():
    model = _bn_model()
    model[1].running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4)
    with torch.no_grad(), analysis_mode(model, "train", untracked=True):
        out = model(x)
    h = model[0](x).detach()
    ref = model[3]((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + model[1].eps)
                   * model[1].weight + model[1].bias)
    torch.testing.assert_close(out, ref)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad(), analysis_mode(model, "train"):  # tracked: the buffers move
        model(x)
    assert not torch.equal(model[1].running_mean, before["1.running_mean"])


def test_work_model_is_the_model_itself_unless_it_must_move():
    model = _bn_model()
    assert work_model(model, None)[0] is model
    assert work_model(model, "cpu", torch.float32)[0] is model
    copy, dev, dtype = work_model(model, "cpu", torch.float64)
    assert copy is not model and dtype == torch.float64 and dev == torch.device("cpu")
    assert next(model.parameters()).dtype == torch.float32


def _measurements(case):
    from geomkit.geometry import activations, landscape, ntk, robustness

    dirs = landscape.random_directions(case.model, 1, seed=0)
    return {
        "ntk": lambda p: ntk.ntk(case.model, case.inputs, progress=p),
        "activations": lambda p: activations.activation_stats(case.model, case.inputs,
                                                              case.targets, progress=p),
        "robustness": lambda p: robustness.robustness(case.model, case.inputs.clamp(0, 1),
                                                      case.targets,
                                                      corruptions=("gaussian_noise",),
                                                      severities=(1,), progress=p),
        "landscape": lambda p: landscape.evaluate_points(case.model, case.inputs, case.targets,
                                                         dirs, np.zeros((2, 1)), progress=p),
    }


@pytest.mark.parametrize("name", ["ntk", "activations", "robustness", "landscape"])
def test_progress_is_one_bar_on_stderr_and_nothing_when_off(name, capsys):
    case = make_case("cnn_bn", n=8, dtype=torch.float32)
    run = _measurements(case)[name]
    run(False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    run(True)
    out, err = capsys.readouterr()
    assert out == "" and name in err
