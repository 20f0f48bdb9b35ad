"""A full or closed stdout ends in one line (or silence for a closed pipe), exit 2, never a
traceback."""

import os
import subprocess
import sys

import pytest

from tests.cases import tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "a.pt")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_full_stdout_is_one_line_exit_2(ckpt, argv):
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "cli", argv[0], str(ckpt), *argv[1:]],
                           cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 2
    assert p.stderr == "geomkit: error: cannot write the output: No space left on device\n"


def test_closed_pipe_is_silent_exit_2(ckpt):
    p = subprocess.Popen([sys.executable, "-m", "cli", "info", str(ckpt)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before geomkit writes
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait() == 2 and "Traceback" not in err and err == ""
