"""Figures for the book. Each returns a matplotlib Figure (the notebook displays it).

- ``response_lengths``: chapter 00.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure


def response_lengths(samples: pd.DataFrame, max_new_tokens: int, title: str = "Response length") -> Figure:
    """Per-question distribution of response length (tokens) with the ``max_new_tokens`` cap marked.

    ``samples``: the table from ``emlib.generate.sample_responses`` (needs ``question_id``, ``n_tokens``).
    """
    fig, ax = plt.subplots(figsize=(8, 0.45 * samples["question_id"].nunique() + 1.2))
    order = list(dict.fromkeys(samples["question_id"]))
    sns.boxplot(data=samples, y="question_id", x="n_tokens", order=order, color="#cfe0f3", fliersize=0, ax=ax)
    sns.stripplot(data=samples, y="question_id", x="n_tokens", order=order, size=3, color="#1f4e79", alpha=0.6, ax=ax)
    ax.axvline(max_new_tokens, ls="--", color="#b03a2e", lw=1)
    ax.text(max_new_tokens, -0.6, " max_new_tokens", color="#b03a2e", va="bottom", ha="right", fontsize=8)
    ax.set(xlabel="response tokens", ylabel="", title=title)
    sns.despine(fig)
    fig.tight_layout()
    return fig
