"""The Makefile's install: one command installs torch's CUDA build over a CPU one, and the choice sticks.

Run against a stand-in venv (its ``bin/python`` only logs the commands it is given), so no package is installed.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU = "torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu"
GPU = "torch==2.13.0 --extra-index-url https://pypi.org/simple"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(venv: Path, *args: str) -> list[str]:
    """``make ARGS VENV=venv``; returns the pip commands that touch torch, in order."""
    log = venv / "log"
    log.write_text("")
    subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}", *args], check=True,
                   capture_output=True, text=True)
    return [line.replace("--quiet --retries 1 --timeout 30 ", "").removeprefix("-m pip install ")
            for line in log.read_text().splitlines() if "install" in line and "torch==" in line]


@pytest.fixture
def venv(tmp_path) -> Path:
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    (v / "bin" / "python").write_text(f'#!/bin/bash\necho "$*" >> {v / "log"}\n')
    (v / "bin" / "python").chmod(0o755)
    return v


def test_install_gpu_reinstalls_torch_and_later_targets_keep_it(venv):
    assert _make(venv, "install") == [f"--force-reinstall --no-deps {CPU}", CPU]  # a fresh venv: the CPU build
    assert _make(venv, "install") == []  # nothing changed: nothing installed
    # pip would keep 2.13.0+cpu for "torch==2.13.0": the CUDA build is forced in, torch alone, then its dependencies
    assert _make(venv, "install-gpu") == [f"--force-reinstall --no-deps {GPU}", GPU]
    assert _make(venv, "install") == []  # a plain make keeps the build installed last
    assert (venv / ".torch").read_text().strip() == GPU.replace(" --extra-index-url", "")
    assert _make(venv, "install", "GPU=0") == [f"--force-reinstall --no-deps {CPU}", CPU]
    mine = ["TORCH=torch==2.13.0+cu128", "TORCH_INDEX=https://download.pytorch.org/whl/cu128"]
    assert _make(venv, "install", *mine)[0] == ("--force-reinstall --no-deps torch==2.13.0+cu128 --extra-index-url "
                                                "https://download.pytorch.org/whl/cu128")


def test_a_venv_installed_before_the_torch_stamp_is_not_reinstalled(venv):
    _make(venv, "install")
    (venv / ".torch").unlink()  # as in a venv made by the Makefile before it recorded the torch build
    assert _make(venv, "install") == []
    assert _make(venv, "install-gpu")[0] == f"--force-reinstall --no-deps {GPU}"
