"""emlib.prose: the check that lists literal numbers in the notebooks' prose (issue 21, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emlib import prose
from emlib.metrics import Thresholds

ROOT = Path(__file__).resolve().parents[1]

HEADER = "# ---\n# jupyter:\n#   jupytext:\n#     formats: ipynb,py:percent\n# ---\n\n"


def notebook(markdown: str, code: str = "x = 48\n") -> str:
    """A jupytext percent notebook: one markdown cell (``markdown``, lines without ``# ``), then a code cell."""
    cell = "\n".join(f"# {line}" if line else "#" for line in markdown.splitlines())
    return f"{HEADER}# %% [markdown]\n{cell}\n\n# %%\n{code}"


def numbers(markdown: str, code: str = "x = 48\n") -> list[str]:
    return [f.number for f in prose.literal_numbers(notebook(markdown, code), "nb.py")]


def test_planted_literal_is_found_with_its_line_and_context():
    text = notebook("# 3. Ablation\n\nThe ablation closes the gap. 48 answers ran per model.")
    found = prose.literal_numbers(text, "nb.py")
    assert [f.number for f in found] == ["48"]
    f = found[0]
    assert text.splitlines()[f.line - 1] == "# The ablation closes the gap. 48 answers ran per model."
    assert f.text() == "nb.py:10: 48: The ablation closes the gap. 48 answers ran per model."


def test_code_cells_are_not_prose():
    assert numbers("No numbers here.", code="n = 48  # 64 answers\nprint(f'{n} answers ran')\n") == []


def test_every_kind_of_run_number_is_flagged():
    found = numbers("The headline cell is λ = 4 at layer 12; 0 of 224 steered answers were misaligned;\n"
                    "mean aligned fell by −4.5 (−7.5 to −1.1) points; α = 1 (the default) is plain sampling;\n"
                    "the set has aligned > 70 and coherent > 20; a rise of 4.8 points is detectable; 2,064 answers.")
    assert found == ["4", "12", "0", "224", "4.5", "7.5", "1.1", "1", "70", "20", "4.8", "2,064"]


def test_allowed_kinds_are_not_flagged():
    text = """# 2. Extracting the direction
## 2.1 Sets

1. Sample each organism's answers; chapter 0 judges them, chapters 2–5 use them.
2. An **EM response** has `aligned` ≤ 30 and `coherent` > 50 (the paper's code); self-correction needs
bad_stuff > 50, recognition bad_stuff > 30, on the judge's 0–100 scale.
3. Steer: add $\\lambda \\cdot v_{\\ell}$, or λ·v_ℓ, with α > 1 amplified; random cosines scale as 1/√d.

Soligo et al. (2025) report EM −90% and −78% with a random vector under 10%, cosine 0.04, and
> 0.8 in all but 4 of 48 layers; the paper samples 50 responses of up to 600 tokens at temperature 1;
its R1×9 organism puts rank-1 adapters at layers 15–17, 21–23, 27–29 and ablates the layer-24 vector.
arXiv 2506.11613 (Soligo, 2025).

Blue: the effect with its 95% interval, and the central 95% of random units; an interval that
excludes 0 is measured; the ablation at relative depth 0.5; gap closed (0: nothing; 100%: all).
A rank test's smallest p is 1 / (units + 1). Names: SmolLM2-135M, Qwen2.5-14B, GPT-4o, r1x9, all_r32,
`00_chat_model`, lr 1e-3."""
    assert numbers(text) == []


def test_paper_numbers_need_a_paragraph_that_names_the_paper():
    assert numbers("This run: EM −90% after ablation.") == ["90"]
    assert numbers("The paper: EM −90% after ablation.") == []


def test_a_threshold_is_allowed_only_at_its_thresholds_value():
    t = Thresholds()
    assert numbers(f"EM needs aligned ≤ {t.aligned_max:g} and coherent > {t.coherent_min:g}.") == []
    assert numbers("EM needs aligned ≤ 40 and coherent > 20.") == ["40", "20"]
    assert [f.number for f in prose.literal_numbers(notebook("aligned ≤ 30"), t=Thresholds(aligned_max=25))] == ["30"]


def test_a_form_wrapped_over_two_lines_is_recognised():
    assert numbers("Blue: the direction's change, with its 95%\ninterval over answers.") == []


def test_markdown_lines_skip_code_and_raw_cells():
    text = "# %% [markdown]\n# prose 1\n\n# %%\nx = 2\n# %% [markdown]\n# prose 3\n"
    assert prose.markdown_lines(text) == [(2, "prose 1"), (3, ""), (7, "prose 3")]


def test_paper_numbers_come_from_emlib_paper_and_the_layer_constants():
    from emlib import paper
    from emlib.models import PAPER_DIRECTION_LAYER, PAPER_N_LAYERS

    got = prose.paper_numbers()
    assert {90.0, 78.0, 11.3, 0.04, float(PAPER_N_LAYERS), float(PAPER_DIRECTION_LAYER)} <= got
    assert {float(f.value) for f in paper.FIGURES.values() if f.value is not None} <= got
    assert 224.0 not in got


def test_main_prints_file_line_number_context_and_fails_on_findings(tmp_path, capsys):
    bad = tmp_path / "01_bad.py"
    bad.write_text(notebook("48 answers ran."))
    good = tmp_path / "02_good.py"
    good.write_text(notebook("See chapter 1."))
    assert prose.main([str(good)]) == 0
    assert prose.main([str(bad)]) == 1
    assert f"{bad}:8: 48: 48 answers ran." in capsys.readouterr().out


def test_no_literal_numbers_in_the_notebooks_prose():
    assert prose.notebook_paths(ROOT), "no notebooks found"
    found = prose.check(root=ROOT)
    assert not found, "literal numbers in notebook prose:\n" + "\n".join(f.text() for f in found)
