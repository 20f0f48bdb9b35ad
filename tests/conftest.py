import os

import pytest
import torch

# Deterministic, quiet, headless.
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny test models are fastest single-threaded (2 threads made small double backwards
# ~15x slower on the shared 2-core machine), and it leaves a core for the other worker.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
