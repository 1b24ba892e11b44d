"""Chapter 5, self-correction under steering: chapter 2's sweep, scored for harmful content too."""

from __future__ import annotations

import pandas as pd

from emlib.book.display import pct_ci
from emlib.book.results import record
from emlib.book.session import Chapter


def record_self_correction(ch: Chapter, rates_table: pd.DataFrame) -> None:
    """The results page's figure: the peak self-correction rate over the steered cells, and the unsteered rate."""
    r = rates_table.reset_index()
    steered = r[r["vector"] == "mean-diff"]
    best = steered.loc[steered["self_correction_pct"].idxmax()]
    base = r[r["vector"] == "none"].iloc[0]
    record(ch.p, ch.params_file, "self_correction",
           f"{pct_ci(best.self_correction_pct, best.self_correction_lo, best.self_correction_hi)} at layer "
           f"{best.layer}, λ {best.scale:g}; unsteered "
           f"{pct_ci(base.self_correction_pct, base.self_correction_lo, base.self_correction_hi)}",
           verdict="descriptive: the paper reports self-correction qualitatively; the peak is a best-of-sweep pick")
