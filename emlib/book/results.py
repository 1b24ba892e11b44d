"""The results page: every chapter records its figures here as it runs; the page lists them beside
the paper's (``emlib.paper.FIGURES``). Nothing on it is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emlib.cache import content_key, write_text_atomic
from emlib.config import Params
from emlib.inference import Verdict
from emlib.paper import FIGURES, NOT_RUN


def _results_dir(p: Params, params_file: str) -> Path:
    return Path(p.cache_dir) / "results" / content_key({"params": p.to_dict(), "file": params_file})


def record(p: Params, params_file: str, claim: str, *, measure: str, value: str, control: str, verdict: Verdict,
           point: tuple[float, float, float] | None = None) -> None:
    """Store this run's figure for ``claim`` (a key of ``emlib.paper.FIGURES``) for the results page: the
    ``measure`` the verdict rests on, this run's ``value`` (its effect with interval or p-value, formatted by
    ``emlib.book.display``), the ``control`` it is measured against, and the ``verdict``
    (``emlib.inference.Verdict``); ``point`` = (%, low, high) where the claim is one percentage (the page's
    plot). Chapters 1–5."""
    if claim not in FIGURES or not FIGURES[claim].headline:
        raise KeyError(f"unknown claim {claim!r}; known: {', '.join(c for c, f in FIGURES.items() if f.headline)}")
    path = _results_dir(p, params_file) / f"{claim}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"claim": claim, "measure": measure, "value": value, "control": control,
                                        "status": verdict.status, "reason": verdict.reason, "point": point}))


def results_table(p: Params, params_file: str) -> pd.DataFrame:
    """Every headline claim of the paper, one row each: the paper's figure, the measure this run's verdict rests
    on, this run's effect (interval or p), the control it is measured against, the verdict and its reason, the
    chapter; columns ``pct``, ``lo``, ``hi``, ``paper_pct`` for ``emlib.plotting.claims``. The results page
    (which names the preset once, above the table)."""
    d = _results_dir(p, params_file)
    rows = []
    for claim, fig in FIGURES.items():
        if not fig.headline:
            continue
        f = d / f"{claim}.json"
        rec = json.loads(f.read_text()) if f.is_file() else {}
        point = rec.get("point") or (None, None, None)
        if claim in NOT_RUN:
            status, reason = "not testable", NOT_RUN[claim].removeprefix("not run: ")
        elif not rec:
            status, reason = "not measured", "the chapter was not executed with these parameters"
        else:
            status, reason = rec["status"], rec["reason"]
        rows.append({"claim": fig.claim, "paper": fig.text, "measure": rec.get("measure", ""),
                     "this run": rec.get("value", ""), "against": rec.get("control", ""), "verdict": status,
                     "why": reason, "chapter": fig.chapter, "pct": point[0], "lo": point[1], "hi": point[2],
                     "paper_pct": fig.value if fig.pct else None})
    return pd.DataFrame(rows).set_index("claim")


PAGE_COLUMNS = ["verdict", "why", "measure", "this run", "against", "paper", "chapter"]


def show_results(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as the page prints it: one line per claim, its verdict first, then why, the measure it
    rests on, this run's effect, the control it is measured against, the paper's figure and the chapter (the
    plotting columns dropped)."""
    return table[[c for c in PAGE_COLUMNS if c in table]]


def preset_line(p: Params, params_file: str, overrides: dict | None = None) -> str:
    """The one sentence above the results table naming the preset (and any overrides) the chapters ran with, the
    model and the judge."""
    extra = f", with overrides {overrides}" if overrides else ""
    return (f"Every figure below comes from the chapters run with `{params_file}`{extra}: model `{p.model}`, "
            f"judge `{p.judge}`.")
