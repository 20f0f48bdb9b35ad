import os

import pytest
import torch

from geomkit.device import set_tf32

# Deterministic, quiet, headless.
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models are fastest single-threaded (2 threads made small double backwards
# ~15x slower on the shared 2-core machine), and it leaves a core for the other worker.
torch.set_num_threads(1)
# Oracle tests on CUDA compare against float64 CPU references: no TF32 shortcuts.
set_tf32(False)

# Every measurement test that takes the ``device`` fixture runs on each available device,
# as curvlinops' ``get_available_devices()``: CPU always, CUDA when present (marked ``gpu``,
# so ``pytest -m gpu`` selects exactly the CUDA half, and a machine without CUDA skips it
# with the reason).
DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a measurement test runs on (the oracle stays on the CPU)."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
