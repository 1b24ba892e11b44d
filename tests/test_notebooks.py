"""Every chapter executed with params/smoke.yaml, as `make book` would run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
BIN = Path(sys.executable).parent


@pytest.mark.notebooks
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_with_smoke_params(nb, tmp_path):
    text = nb.read_text()
    assert 'tags=["parameters"]' in text, "the first code cell must be the papermill parameters cell"
    ipynb = tmp_path / f"{nb.stem}.ipynb"
    out = tmp_path / f"{nb.stem}.out.ipynb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([BIN / "jupytext", "--quiet", "--to", "ipynb", "-o", ipynb, nb], check=True, env=env)
    subprocess.run(
        [BIN / "papermill", "--cwd", ROOT, "-k", "python3", "--log-level", "ERROR", ipynb, out,
         "-p", "params_file", "params/smoke.yaml"],
        check=True, env=env, capture_output=True,
    )
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "every chapter shows at least one figure"
