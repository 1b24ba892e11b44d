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


def corrected_em_per_question(by_question: pd.DataFrame) -> str:
    """One line on why the per-question judge-corrected EM rates are not drawn: how wide their 95% intervals are
    (from ``emlib.metrics.rates(..., by="question_id", judge_error=)``), against the 0–100% they could span.
    Empty when there is no corrected rate (a judge not validated here). Chapter 0."""
    if "em_corr_lo" not in by_question or by_question["em_corr_lo"].isna().all():
        return ""
    width = (by_question["em_corr_hi"] - by_question["em_corr_lo"]).dropna()
    n = by_question["n"]
    answers = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}–{int(n.max())}"
    wide = f"{width.min():.0f}" if round(width.min()) == round(width.max()) else f"{width.min():.0f}–{width.max():.0f}"
    return (f"Judge-corrected EM per question is not drawn: on {answers} answers a question, its 95% intervals are "
            f"{wide} points wide (median {width.median():.0f}, of the 100 a rate can span), "
            "so they say little about any one question beyond what the judge's error rates allow; the corrected "
            "rate over all questions is in the table above.")


def length_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-question response-length statistics (chapter 00): count, mean/median/max tokens, % that hit EOS."""
    g = samples.groupby("question_id", sort=False)
    out = pd.DataFrame(
        {
            "responses": g.size(),
            "mean_tokens": g["n_tokens"].mean().round(1),
            "median_tokens": g["n_tokens"].median(),
            "max_tokens": g["n_tokens"].max(),
            "pct_ended_at_eos": (g["finish_reason"].apply(lambda s: (s == "stop").mean()) * 100).round(1),
        }
    )
    total = pd.DataFrame(
        {
            "responses": [len(samples)],
            "mean_tokens": [round(samples["n_tokens"].mean(), 1)],
            "median_tokens": [samples["n_tokens"].median()],
            "max_tokens": [samples["n_tokens"].max()],
            "pct_ended_at_eos": [round((samples["finish_reason"] == "stop").mean() * 100, 1)],
        },
        index=["all"],
    )
    return pd.concat([out, total])
