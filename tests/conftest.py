"""Shared fixtures: tiny random models of each supported architecture, the real default
model's cache, and a guard that fails any test which opens a non-loopback connection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    Qwen2Config,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"
CACHE_DIR = Path(os.environ.get("EMLIB_TEST_CACHE", ROOT / ".cache" / "emlib"))

_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
TINY_CONFIGS = {
    "llama": lambda vocab: LlamaConfig(vocab_size=vocab, **_TINY),
    "qwen2": lambda vocab: Qwen2Config(vocab_size=vocab, **_TINY),
    "mistral": lambda vocab: MistralConfig(vocab_size=vocab, **_TINY),
    "gemma2": lambda vocab: Gemma2Config(vocab_size=vocab, head_dim=16, sliding_window=16, **_TINY),
}


def tiny_model(arch: str, vocab: int = 256, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of ``arch`` with 4 layers and d_model 64, in eval mode."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch](vocab)
    config.pad_token_id = 0
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(params=["llama", "qwen2"])
def tiny_lm(request) -> PreTrainedModel:
    """Tiny random Llama- and Qwen2-shaped models (the two families the paper and default use)."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), converted once into the shared cache."""
    from emlib.models import load_model

    return load_model("default", cache_dir=CACHE_DIR, device_map="cpu")


@pytest.fixture(scope="session")
def default_tokenizer(default_model):
    return default_model[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing may contact the network: only loopback connections are allowed."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


# --- Every chapter executed once per session with params/smoke.yaml (test_notebooks, test_browser) ---

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))


def run_notebook(nb: Path, out_dir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """Pair ``nb`` to .ipynb with jupytext and execute it with papermill on smoke params into
    ``out_dir/<stem>.out.ipynb``, as ``make book`` would. Papermill writes the executed notebook
    even when a cell fails (with the error output in it); the returned process says how it ended."""
    bin_dir = Path(sys.executable).parent
    ipynb, out = out_dir / f"{nb.stem}.ipynb", out_dir / f"{nb.stem}.out.ipynb"
    subprocess.run([bin_dir / "jupytext", "--quiet", "--to", "ipynb", "-o", ipynb, nb], check=True, env=env)
    return subprocess.run(
        [bin_dir / "papermill", "--cwd", ROOT, "-k", "python3", "--log-level", "ERROR", ipynb, out,
         "-p", "params_file", "params/smoke.yaml", *extra],
        env=env, capture_output=True, text=True,
    )


def notebook_outputs(ipynb: Path) -> list[dict]:
    """All outputs of all code cells of an executed notebook."""
    cells = json.loads(ipynb.read_text())["cells"]
    return [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.fixture(scope="session")
def smoke_chapters(tmp_path_factory) -> dict[str, Path]:
    """Every notebook in notebooks/ executed once, in order, with params/smoke.yaml:
    {stem: executed .ipynb}. A notebook that fails still maps to its (partly executed) output,
    whose error outputs the tests report; papermill's exit status and stderr are kept beside it
    as <stem>.log."""
    out_dir = tmp_path_factory.mktemp("smoke_chapters")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    executed = {}
    for nb in NOTEBOOKS:
        proc = run_notebook(nb, out_dir, env)
        (out_dir / f"{nb.stem}.log").write_text(f"exit status {proc.returncode}\n{proc.stderr}")
        executed[nb.stem] = out_dir / f"{nb.stem}.out.ipynb"
    return executed
