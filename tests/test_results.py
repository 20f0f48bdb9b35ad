"""Results files: round trip, order, done mask, atomic updates, errors, plain h5py."""

import errno
import math

import h5py
import pytest

from geomkit import results as R
from geomkit.errors import ResultFileError


def _meta(cid="abc123-vit_x", label="vit/x", **kw):
    return {"id": cid, "label": label, "model": "vit", "optimizer": "adamw",
            "checkpoint_path": "/c.pt", "checkpoint_sha256": "abc123" + "0" * 58,
            "config": {"lr": 0.1, "label": "vanilla"}, "data_spec": {"source": "digits"},
            "model_kwargs": {"depth": 1}, **kw}


VALUES = {
    "f": 1.5, "i": 7, "b": True, "s": "hello", "inf": math.inf,
    "lf": [1.0, 2.5], "li": [1, 2], "ls": ["a", "bc"], "empty": [],
    "nested": {"x": {"y": 3.0}, "z": [True, False]},
    "ordered": {"zeta": 1, "alpha": 2, "mid": 3},
}


def test_round_trip_and_accessors(tmp_path):
    p = tmp_path / "r.h5"
    rf = R.ResultsFile(p)
    rf.put(_meta(), "m", VALUES, settings={"samples": 4, "tol": 1e-3}, seconds=1.25)
    res = R.load_results(p)
    assert len(res) == 1
    rec = res["vit/x"]
    assert rec is res["abc123-vit_x"] is res[0]
    assert rec.config == {"lr": 0.1, "label": "vanilla"} and rec.model_kwargs == {"depth": 1}
    m = rec.measurements["m"]
    assert list(m.values["ordered"]) == ["zeta", "alpha", "mid"]  # insertion order kept
    assert m.values == VALUES and m.settings == {"samples": 4, "tol": 1e-3} and m.seconds == 1.25
    assert m.provenance["torch_version"]
    assert rec.get("m.nested.x.y") == 3.0 and rec.get("m.nope", 5) == 5 and rec.get("q.x") is None
    flat = rec.flat()
    assert flat["m.nested.x.y"] == 3.0 and flat["m.ls"] == ["a", "bc"] and flat["label"] == "vit/x"
    assert res.to_dict() == {"abc123-vit_x": flat}
    assert res.attrs["format"] == R.FORMAT


def test_order_replace_drop_and_find(tmp_path):
    p = tmp_path / "r.h5"
    rf = R.ResultsFile(p)
    rf.put(_meta("zz-b", "b/x"), "m", {"v": 1}, settings={"k": 1}, seconds=0)
    rf.put(_meta("aa-a", "a/x"), "m", {"v": 2}, settings={"k": 2}, seconds=0)
    rf.put(_meta("zz-b", "b/x"), "m", {"v": 3}, settings={"k": 1}, seconds=0)  # replaces
    assert [r.id for r in rf.load()] == ["zz-b", "aa-a"]  # insertion order, not alphabetical
    assert rf.get("zz-b", "m").values == {"v": 3}
    assert rf.find("m", {"k": 2})[0] == "aa-a" and rf.find("m", {"k": 9}) is None
    rf.drop("zz-b", "m")
    assert rf.get("zz-b", "m") is None
    rf.drop("aa-a")
    assert [r.id for r in rf.load()] == ["zz-b"]


def test_unfinished_measurement_is_not_counted(tmp_path):
    p = tmp_path / "r.h5"
    rf = R.ResultsFile(p)
    rf.put(_meta(), "done_one", {"v": 1}, settings={}, seconds=0)
    with h5py.File(p, "a") as f:  # what a writer killed before its last attribute leaves
        g = f["checkpoints/abc123-vit_x"].create_group("half")
        g.create_dataset("v", data=1.0)
    assert rf.get("abc123-vit_x", "half") is None
    assert set(R.load_results(p)[0].measurements) == {"done_one"}


@pytest.mark.parametrize("cause,raised,message", [
    (RuntimeError("killed"), RuntimeError, "killed"),
    (OSError(errno.ENOSPC, "No space left on device"), ResultFileError,
     "cannot write {p}: no space left on device"),
], ids=["killed", "full-disk"])
def test_failed_update_leaves_file_untouched(tmp_path, monkeypatch, cause, raised, message):
    p = tmp_path / "r.h5"
    rf = R.ResultsFile(p)
    rf.put(_meta(), "m", {"v": 1}, settings={}, seconds=0)
    before = p.read_bytes()

    def fail(group, values):
        group.create_dataset("partial", data=1.0)
        raise cause

    monkeypatch.setattr(R, "_write_tree", fail)
    with pytest.raises(raised) as e:
        rf.put(_meta(), "m2", {"v": 2}, settings={}, seconds=0)
    assert str(e.value) == message.format(p=p)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["r.h5"]  # no temporary left behind
    assert set(R.load_results(p)[0].measurements) == {"m"}


def test_plain_h5py_layout(tmp_path):
    p = tmp_path / "r.h5"
    R.ResultsFile(p).put(_meta(), "hessian", {"lambda_max": {"whole": 2.0}}, settings={"n": 1},
                         seconds=0.5)
    with h5py.File(p, "r") as f:
        assert f.attrs["format"] == R.FORMAT
        g = f["checkpoints/abc123-vit_x"]
        assert g.attrs["checkpoint_path"] == "/c.pt" and g.attrs["label"] == "vit/x"
        assert f["checkpoints/abc123-vit_x/hessian/lambda_max/whole"][()] == 2.0
        assert bool(g["hessian"].attrs["done"])


def test_errors(tmp_path):
    with pytest.raises(ResultFileError, match="no such"):
        R.load_results(tmp_path / "missing.h5")
    txt = tmp_path / "t.h5"
    txt.write_text("not hdf5")
    with pytest.raises(ResultFileError, match="not an HDF5"):
        R.load_results(txt)
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=1)
    with pytest.raises(ResultFileError, match="not a geomkit results file"):
        R.load_results(other)
    with pytest.raises(ResultFileError):
        R.ResultsFile(other)  # never appends to someone else's HDF5 file


def test_checkpoint_id_is_stable_and_safe():
    assert R.checkpoint_id("0123456789abcdef", "vit-tiny/sam") == "0123456789ab-vit-tiny_sam"


def test_to_dataframe(tmp_path):
    p = tmp_path / "r.h5"
    R.ResultsFile(p).put(_meta(), "m", {"v": 1.0}, settings={}, seconds=0)
    res = R.load_results(p)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            res.to_dataframe()
        return
    df = res.to_dataframe()
    assert df.loc["abc123-vit_x", "m.v"] == 1.0


def test_nan_settings_are_valid_json_and_legacy_strings_still_read(tmp_path):
    import json

    p = tmp_path / "r.h5"
    rf = R.ResultsFile(p)
    settings = {"tol": math.nan, "cap": math.inf, "n": 3}
    rf.put(_meta(), "m", {"v": 1}, settings=settings, seconds=0)
    with h5py.File(p, "r") as f:
        text = f["checkpoints/abc123-vit_x/m"].attrs["settings"]

    def strict(token):
        raise ValueError(token)

    assert json.loads(text, parse_constant=strict) == {"cap": "inf", "n": 3, "tol": None}
    assert rf.get("abc123-vit_x", "m").settings == {"cap": "inf", "n": 3, "tol": None}
    assert rf.find("m", settings)[0] == "abc123-vit_x"
    # a file written before the one NaN policy: str(nan) / bare NaN in its JSON attributes
    with h5py.File(p, "a") as f:
        g = f["checkpoints/abc123-vit_x/m"]
        g.attrs["settings"] = '{"cap": "inf", "n": 3, "tol": "nan"}'
        f["checkpoints/abc123-vit_x"].attrs["config"] = '{"lr": NaN, "label": "vanilla"}'
    rec = R.load_results(p)[0]
    assert rec.measurements["m"].settings == {"cap": "inf", "n": 3, "tol": None}
    assert rec.config == {"lr": None, "label": "vanilla"}
    assert rf.find("m", settings)[0] == "abc123-vit_x"  # still the same computation


def test_existing_results_file_layout_still_reads(tmp_path):
    """A results file as the previous writer laid it out (plain h5py) reads unchanged."""
    p = tmp_path / "old.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "geomkit-results/1"
        f.attrs["created"] = "2024-01-01T00:00:00+00:00"
        f.attrs["provenance"] = '{"torch_version": "2.0"}'
        g = f.create_group("checkpoints/abc-x")
        g.attrs.update({"label": "m/x", "model": "m", "optimizer": "sgd", "order": 0,
                        "config": '{"lr": 0.1}', "data_spec": "{}", "model_kwargs": "{}",
                        "checkpoint_path": "/c.pt", "checkpoint_sha256": "abc"})
        m = g.create_group("hessian", track_order=True)
        m.create_group("lambda_max").create_dataset("whole", data=2.5)
        m.attrs.update({"settings": '{"samples": 8}', "provenance": "{}", "seconds": 1.0,
                        "done": True})
    res = R.load_results(p)
    assert res.attrs["provenance"] == {"torch_version": "2.0"}
    assert res["m/x"].get("hessian.lambda_max.whole") == 2.5
    assert res["m/x"].measurements["hessian"].settings == {"samples": 8}
    R.ResultsFile(p).put(_meta("abc-x", "m/x"), "params", {"num_params": 1}, settings={},
                         seconds=0)
    assert set(R.load_results(p)["m/x"].measurements) == {"hessian", "params"}
