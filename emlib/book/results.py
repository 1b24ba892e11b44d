"""The results page: every chapter records its figures here as it runs; the page lists them beside
the paper's (``emlib.paper.FIGURES``). Nothing on it is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emlib.cache import content_key, write_text_atomic
from emlib.config import Params
from emlib.metrics import JudgeError, detectable_difference, rate_difference
from emlib.paper import FIGURES, NOT_RUN


def _results_dir(p: Params, params_file: str) -> Path:
    return Path(p.cache_dir) / "results" / content_key({"params": p.to_dict(), "file": params_file})


def record(p: Params, params_file: str, claim: str, value: str,
           point: tuple[float, float, float] | None = None, verdict: str = "") -> None:
    """Store this run's figure for ``claim`` (a key of ``emlib.paper.FIGURES``) for the results page;
    ``point`` = (%, low, high) where the claim is one percentage; ``verdict``: reproduced, not reproduced
    (with the smallest effect the run could have detected) or not testable, and why. Chapters 1–5."""
    if claim not in FIGURES or not FIGURES[claim].headline:
        raise KeyError(f"unknown claim {claim!r}; known: {', '.join(c for c, f in FIGURES.items() if f.headline)}")
    path = _results_dir(p, params_file) / f"{claim}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"claim": claim, "value": value, "point": point, "verdict": verdict}))


def increase_verdict(what: str, k: int, n: int, k_base: int, n_base: int, base: str,
                     judge_error: JudgeError | None = None, note: str = "") -> str:
    """Is the rate ``k``/``n`` above the ``base`` rate ``k_base``/``n_base``? Reproduced (in direction) when the
    95% interval of the difference (``emlib.metrics.rate_difference``) excludes 0; otherwise not reproduced,
    with the increase the run would have detected (``detectable_difference``, 80% power). A judge that misses
    most EM answers (``judge_error``) is named, since it weakens either verdict. Chapters 1 and 2."""
    d, lo, hi = rate_difference(k, n, k_base, n_base)
    if lo > 0:
        text = f"reproduced in direction: {what} above the {base}'s by {d:.1f} points ({lo:.1f} to {hi:.1f})"
    else:
        text = (f"not reproduced: {what} not above the {base}'s ({d:+.1f} points, {lo:.1f} to {hi:.1f}); an increase "
                f"of {detectable_difference(100 * k_base / n_base, min(n, n_base)):.1f} points would have been "
                "detected (80% power)")
    if judge_error is not None and judge_error.sensitivity < 0.5:
        text += f"; the judge finds {judge_error.sensitivity:.0%} of EM answers, so EM verdicts are weak"
    return text + (f"; {note}" if note else "")


def results_table(p: Params, params_file: str) -> pd.DataFrame:
    """Every headline claim of the paper with its figure, this run's recorded figure (with CI), the chapter and
    the preset; columns ``pct``, ``lo``, ``hi``, ``paper_pct`` for ``emlib.plotting.claims``. The results page."""
    d = _results_dir(p, params_file)
    rows = []
    for claim, fig in FIGURES.items():
        if not fig.headline:
            continue
        f = d / f"{claim}.json"
        rec = json.loads(f.read_text()) if f.is_file() else {}
        point = rec.get("point") or (None, None, None)
        rows.append({"claim": fig.claim, "paper (Qwen2.5-14B-Instruct)": fig.text,
                     "this run (95% CI)": rec.get("value", NOT_RUN.get(claim, "not measured in this run")),
                     "verdict": rec.get("verdict") or ("not testable: " + NOT_RUN[claim].removeprefix("not run: ")
                                                       if claim in NOT_RUN
                                                       else "not measured" if not rec else "not judged"),
                     "chapter": fig.chapter, "preset": f"{params_file} ({p.model})", "pct": point[0], "lo": point[1],
                     "hi": point[2], "paper_pct": fig.value if fig.pct else None})
    return pd.DataFrame(rows).set_index("claim")


def show_results(table: pd.DataFrame) -> pd.DataFrame:
    """The results table without its plotting columns."""
    return table.drop(columns=["pct", "lo", "hi", "paper_pct"])
