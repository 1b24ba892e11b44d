"""Chapter 0, the chat model before fine-tuning: its answers to the evaluation questions, judged."""

from __future__ import annotations

import pandas as pd

from emlib.book.session import Chapter, sample_and_judge


def baseline(ch: Chapter) -> pd.DataFrame:
    """The chat model's judged answers to the chapter's questions at the evaluation setting (one row per
    answer: the sample columns of ``emlib.generate`` and the judge scores); chapter 1 reuses them."""
    return sample_and_judge(ch, label="chat model")


def judge_sources(ch: Chapter) -> pd.DataFrame:
    """The offline judge's held-out scores against the labels, per source (``emlib.judge_check.source_rates``)."""
    from emlib.judge_check import source_rates

    return source_rates(ch.scorer.held_out())  # type: ignore[attr-defined]
