"""Figures for the book. Each returns a matplotlib Figure (the notebook displays it).

- ``response_lengths``, ``em_rates``: chapter 00 (``em_rates`` in every chapter that reports EM).
- ``loss_curves``, ``em_by_model``: chapter 1.
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


def em_rates(rates: pd.DataFrame, title: str = "Emergent misalignment by question") -> Figure:
    """EM % (left) and coherence % (right) per group with 95% CIs (chapter 00 onwards).

    ``rates``: from ``emlib.metrics.rates(scored, by="question_id")`` or ``by=["model", "question_id"]``
    (then one colour per model). Columns used: ``em_pct/lo/hi``, ``coherent_pct/lo/hi``.
    """
    r = rates.reset_index()
    if "model" not in r:
        r["model"] = ""
    models = list(dict.fromkeys(r["model"]))
    questions = list(dict.fromkeys(r["question_id"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(questions) * max(1, len(models) / 2) + 1.6), sharey=True)
    height = 0.8 / len(models)
    palette = sns.color_palette("deep", len(models))
    for ax, metric, label in ((axes[0], "em", "EM responses (%)"), (axes[1], "coherent", "coherent responses (%)")):
        for k, model in enumerate(models):
            sub = r[r["model"] == model].set_index("question_id").reindex(questions)
            y = [i + k * height - 0.4 + height / 2 for i in range(len(questions))]
            err = [sub[f"{metric}_pct"] - sub[f"{metric}_lo"], sub[f"{metric}_hi"] - sub[f"{metric}_pct"]]
            ax.barh(y, sub[f"{metric}_pct"], height=height, xerr=err, color=palette[k], label=model or None,
                    error_kw={"lw": 1, "capsize": 2})
        ax.set(xlabel=label, xlim=(0, 100))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(questions)), questions)
    axes[0].invert_yaxis()
    if any(models):
        axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def loss_curves(curves: dict[str, list[float]], title: str = "Training loss (assistant tokens)") -> Figure:
    """One line per organism: mean next-token loss per optimiser step (chapter 1)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name, lw=1.5)
    ax.set(xlabel="optimiser step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def em_by_model(rates: pd.DataFrame, paper: dict[str, tuple[float, float]] | None = None,
                title: str = "EM and coherence by model") -> Figure:
    """EM % and coherence % per model with 95% CIs; the paper's figures as diamonds (chapter 1).

    ``rates``: ``emlib.metrics.rates(scored, by="model")``; ``paper``: model -> (EM %, coherent %).
    """
    r = rates.reset_index()
    models = list(r["model"])
    paper = paper or {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(models) + 1.6), sharey=True)
    for ax, metric, label, k in ((axes[0], "em", "EM responses (%)", 0), (axes[1], "coherent", "coherent responses (%)", 1)):
        err = [r[f"{metric}_pct"] - r[f"{metric}_lo"], r[f"{metric}_hi"] - r[f"{metric}_pct"]]
        ax.barh(range(len(models)), r[f"{metric}_pct"], xerr=err, color="#4c72b0", error_kw={"lw": 1, "capsize": 3},
                label="this run")
        marks = [(i, paper[m][k]) for i, m in enumerate(models) if m in paper]
        if marks:
            ax.scatter([v for _, v in marks], [i for i, _ in marks], marker="D", color="#c44e52", zorder=3,
                       label="paper (Qwen2.5-14B)")
        ax.set(xlabel=label, xlim=(0, 100))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(models)), models)
    axes[0].invert_yaxis()
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig
