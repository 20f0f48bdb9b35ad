"""Every docstring example in the library runs (and must keep running) as a test."""

import doctest
import importlib
import pkgutil

import pytest

import geomkit

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _runnable(ex: doctest.Example) -> bool:
    return not ex.options.get(doctest.SKIP, False)


def _modules():
    """Modules defining at least one example that is not marked ``+SKIP``."""
    finder = doctest.DocTestFinder()
    for info in pkgutil.walk_packages(geomkit.__path__, prefix="geomkit."):
        mod = importlib.import_module(info.name)
        if any(_runnable(ex) for t in finder.find(mod) for ex in t.examples):
            yield info.name


def test_the_examples_are_found():
    assert {"geomkit.geometry.hvp", "geomkit.geometry.blocks", "geomkit.results"} <= set(
        _modules())


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=FLAGS, verbose=False, report=False)
    assert res.attempted > 0, f"{name}: no example ran"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
