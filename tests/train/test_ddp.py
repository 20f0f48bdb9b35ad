"""Data-parallel training under torchrun: 2 gloo CPU processes equal 1 process (vanilla),
and SAM (perturbation per worker) runs to a valid checkpoint."""

import os
import subprocess
import sys

import pytest
import torch

from geomkit.checkpoint import load_checkpoint
from tests.cases import TINY_VIT_ARGS

ARGS = ["train", *TINY_VIT_ARGS, "--epochs", "2", "--batch-size", "32", "--warmup-epochs", "0",
        "--no-progress", "--json"]


def _run(argv, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "cli", *argv]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "cli",
            *argv,
        ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_equal_one_for_vanilla_and_sam_runs(tmp_path):
    # synthetic: 256 training examples = 8 full global batches of 32 (16 per rank)
    _run([*ARGS, "--optimizer", "sgd", "--out", str(tmp_path / "one")], 1)
    _run([*ARGS, "--optimizer", "sgd", "--out", str(tmp_path / "two")], 2)
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert one.step == two.step == 16 and two.metrics["world_size"] == 2
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    # SAM: each worker perturbs with its local gradient (m-sharpness) -> a different but
    # valid run; it must finish and write a loadable checkpoint
    _run([*ARGS, "--optimizer", "sam", "--out", str(tmp_path / "sam")], 2)
    sam = load_checkpoint(tmp_path / "sam")
    assert sam.step == 16 and sam.config["rho"] > 0
    assert any(
        not torch.equal(sam.model.state_dict()[k], v) for k, v in one.model.state_dict().items()
    )
