"""The paper's figures: one table, read by the chapters and the results page."""

import re
from pathlib import Path

import pytest

from emlib.paper import FIGURES, NOT_RUN, TRANSFER_CLAIMS, organism_figures, value

EMLIB = Path(__file__).resolve().parents[1] / "emlib"


def test_every_figure_is_typed_and_reachable():
    for claim, f in FIGURES.items():
        assert f.claim and f.text and f.chapter
        assert f.value is None or isinstance(f.value, (int, float))
        assert not f.pct or f.value is not None, claim
    assert set(NOT_RUN) <= set(FIGURES) and set(TRANSFER_CLAIMS.values()) <= set(FIGURES)
    assert value("r1x9_em") == 11.3 and organism_figures() == {"r1x9_medical": (11.3, 99.0)}
    with pytest.raises(KeyError, match="known"):
        value("no_such_claim")
    with pytest.raises(ValueError, match="no single number"):
        value("probe_roles")


@pytest.mark.parametrize("number", ["11.3", "0.04", "0.42", "0.95", "90.0", "78", "78.0"])
def test_no_paper_figure_is_written_twice_in_emlib(number):
    """Only emlib/paper.py writes the paper's numbers; everything else reads them."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(number)}(?![\w.])")
    where = [str(f.relative_to(EMLIB)) for f in sorted(EMLIB.rglob("*.py"))
             if f.name != "paper.py" and "datasets" not in f.parts and pattern.search(f.read_text())]
    assert not where, f"{number} also written in {where}"
