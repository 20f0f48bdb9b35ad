"""A value of the wrong type in a training or study configuration (issue #13).

`epochs = "two"` in a study TOML used to surface as "'<' not supported between instances
of 'str' and 'int'"; `bf16 = "false"` was taken as true. Every key of the wrong type now
gives one line naming the key, the type it takes and the value given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from geomkit.data import DataSpec
from geomkit.errors import DataError, GeomkitError, SpecError
from geomkit.study.config import list_presets, load_study_config
from geomkit.train import TrainConfig


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("epochs", "two", "epochs must be an integer >= 1, got 'two' (string)"),
        ("epochs", 2.5, "epochs must be an integer >= 1, got 2.5 (float)"),
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("batch_size", 64.0, "batch_size must be an integer >= 1, got 64.0 (float)"),
        ("batch_size", True, "batch_size must be an integer >= 1, got True (boolean)"),
        ("seed", "0", "seed must be an integer, got '0' (string)"),
        ("seed", 2**64, "seed must be an integer in [-9223372036854775808, "),
        ("lr", "fast", "lr must be a finite number >= 0 or null, got 'fast' (string)"),
        ("lr", math.inf, "lr must be a finite number >= 0 or null, got inf (float)"),
        ("lr", -0.1, "lr must be a finite number >= 0 or null, got -0.1"),
        ("weight_decay", [0.1], "weight_decay must be a finite number >= 0 or null, got [0.1] "
         "(list)"),
        ("rho", math.nan, "rho must be a finite number >= 0 or null, got nan"),
        ("grad_clip", -1.0, "grad_clip must be a finite number >= 0 or null, got -1.0"),
        ("warmup_epochs", "2", "warmup_epochs must be a finite number >= 0, got '2' (string)"),
        ("momentum", 1.5, "momentum must be in [0, 1), got 1.5"),
        ("momentum", None, "momentum must be a finite number >= 0, got None"),
        ("label_smoothing", 1.0, "label_smoothing must be in [0, 1), got 1.0"),
        ("bf16", "false", "bf16 must be true or false, got 'false' (string)"),
        ("save_best", 1, "save_best must be true or false, got 1 (integer)"),
        ("model", 3, "model must be a string, got 3 (integer)"),
        ("optimizer", ["sam"], "optimizer must be a string, got ['sam'] (list)"),
        ("schedule", "step", "unknown schedule 'step'; valid: cosine"),
        ("device", 0, "device must be a string, got 0 (integer)"),
        ("label", 3, "label must be a string or null, got 3 (integer)"),
        ("model_kwargs", "depth=2", "model_kwargs must be a table of KEY = VALUE, got 'depth=2'"),
        ("model_kwargs", {1: 2}, "model_kwargs keys must be strings, got 1 (integer)"),
        ("data", "digits", "data must be a table of KEY = VALUE, got 'digits' (string)"),
    ],
)
def test_train_config_names_key_type_and_value(key, value, fragment):
    with pytest.raises(SpecError) as e:
        TrainConfig(**{key: value})
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert e.value.param == key  # the CLI writes the flag (--epochs) in its place


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"augment": "false"}, "augment must be true or false, got 'false'"),
        ({"subset": "0.5"}, "subset must be a fraction in (0, 1], got '0.5'"),
        ({"image_size": "16"}, "image_size must be an integer, got '16'"),
        ({"image_size": 100000}, "image_size 100000 needs ~37 GiB"),
        ({"subset_seed": 2**64}, "subset_seed must be at most 9223372036854775807"),
        ({"colour": True}, "unknown data spec key(s) colour"),
    ],
)
def test_train_config_checks_its_data_table_up_front(data, fragment):
    with pytest.raises(DataError) as e:
        TrainConfig(data={"source": "digits", **data})
    assert fragment in str(e.value)


def test_train_config_keeps_valid_values_and_normalizes_numbers():
    cfg = TrainConfig(lr=1, epochs=np.int64(3), momentum=0, warmup_epochs=0, seed=-1,
                      grad_clip=None)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert isinstance(cfg.momentum, float) and cfg.seed == -1 and cfg.grad_clip is None
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    # still GeomkitErrors, as before
    with pytest.raises(GeomkitError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")


_BASE = 'models = ["vit-tiny"]\n'


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[train]\nepochs = "two"', "[train] epochs must be an integer >= 1, got 'two' (string)"),
        ("[train]\nepochs = 2.0", "[train] epochs must be an integer >= 1, got 2.0 (float)"),
        ("[train]\nbatch_size = 64.5", "[train] batch_size must be an integer >= 1, got 64.5"),
        ('[train]\nbf16 = "false"', "[train] bf16 must be true or false, got 'false' (string)"),
        ("[train]\nwarmup_epochs = [1]", "[train] warmup_epochs must be a finite number >= 0, "
         "got [1] (list)"),
        ('[train]\nschedule = 1', "[train] schedule must be a string, got 1 (integer)"),
        ('[data]\naugment = "false"', "[data]: augment must be true or false, got 'false'"),
        ('[data]\nsubset = "0.5"', "subset must be a fraction in (0, 1], got '0.5'"),
        ("[data]\nsubsets = 0.5", "subsets must be a non-empty list, got 0.5 (float)"),
        ("[data]\nimage_size = 100000", "[data]: image_size 100000 needs ~37 GiB"),
        ('models = "vit-tiny"', "models must be a non-empty list, got 'vit-tiny' (string)"),
        ("seeds = 0", "seeds must be a non-empty list, got 0 (integer)"),
        ("seeds = [0.5]", "seeds must be integers in"),
        ("seeds = [0, 0]", "seeds are listed twice"),
        ("subsets = [0.5, 0.5]", "subsets are listed twice"),
        ("name = 3", "name must be a non-empty string, got 3 (integer)"),
        ("description = ['a']", "description must be a string, got ['a'] (list)"),
        ('threads = "1"', "threads must be an integer >= 0, got '1' (string)"),
        ("threads = true", "threads must be an integer >= 0, got True (boolean)"),
        ("[lr]\nvit = inf", "lr.vit must be a finite number >= 0, got inf (float)"),
        ("[rho]\nvitt = 0.2", "rho.vitt names no registered model or family"),
        ('[vanilla]\nvitt = "sgd"', "vanilla.vitt names no registered model or family"),
        ('[model_kwargs."vit-tny"]\ndepth = 2', "model_kwargs.vit-tny names no registered model"),
        ('[landscape]\nenabled = "no"', "[landscape] enabled must be true or false, got 'no'"),
        ("[landscape]\nlog = 1", "[landscape] log must be true or false, got 1 (integer)"),
        ("[landscape]\nsamples = true", "[landscape] samples must be an integer >= 1, got True"),
        ('[landscape]\nnorm = "l2"', "[landscape] norm must be one of filter, layer, none"),
        ('[landscape]\nseed = "0"', "[landscape] seed must be an integer in"),
        ("[landscape]\nx = [-1, 1, 100000]", "[landscape] x and y are above the limit of "
         "1,000,000 points per surface: 2,100,000 points"),
        ("[analysis]\nsamples = 100000", "[analysis] samples 100000 is more than the 1437 train "
         "examples of digits"),
        ("[analysis]\ntest_samples = 1000", "[analysis] test_samples 1000 is more than the 360"),
        ("[landscape]\nsamples = 5000", "[landscape] samples 5000 is more than the 1437"),
    ],
)
def test_study_file_names_key_type_and_value(tmp_path: Path, text, fragment):
    p = tmp_path / "s.toml"
    p.write_text(text if text.startswith("models") else _BASE + text)
    with pytest.raises(SpecError) as e:
        load_study_config(p)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg
    assert "not supported between" not in msg


def test_presets_still_load():
    for name in list_presets():
        cfg = load_study_config(name)
        assert cfg.runs()
    assert DataSpec.from_dict(load_study_config("quick").data.to_dict()).source == "digits"
