"""What every chapter shows besides its own tables: provenance, the params, the judge, example answers.

Chapters 0–5 call ``provenance`` and ``show_examples``; chapters 0 and 1 ``judge_note``.
"""

from __future__ import annotations

import html
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import emlib
from emlib.book.session import Chapter
from emlib.config import JUDGE_METRICS
from emlib.judge import Judge
from emlib.models import LoadInfo, adapter_sha256


def provenance(ch: Chapter, info: LoadInfo | None = None, organisms: bool = True) -> pd.DataFrame:
    """A two-column table: where the chapter's numbers came from. ``info``: the model shown (default: the
    chapter's base model); ``organisms``: add each trained organism's adapter hash (chapters 2–5)."""
    p, info = ch.p, info or ch.info
    rows = {
        "params file": ch.params_file,
        "model": info.spec,
        "adapter": info.adapter or "none",
        "adapter sha256": (info.adapter_sha256 or "")[:16] or "n/a",
        "layers x d_model": f"{info.n_layers} x {info.d_model}",
        "dtype": info.dtype,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)",
        "emlib": emlib.__version__,
        "torch / python": f"{torch.__version__} / {platform.python_version()}",
        "seed": p.seed,
        **({f"organism {name}": f"adapter sha256 {adapter_sha256(r.adapter_dir)[:16]}"
            for name, r in ch.trained.items()} if organisms else {}),
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="provenance"))


def params_table(ch: Chapter) -> pd.DataFrame:
    """Every parameter of the run, one row each. Chapter 0."""
    d = ch.p.to_dict()
    return pd.DataFrame({"value": [repr(v) for v in d.values()]}, index=pd.Index(list(d), name="parameter"))


def judge_note(judge: Judge) -> Any:
    """A note saying which judge scored the responses (and, offline, how good a proxy it is). Chapters 0, 1."""
    from IPython.display import Markdown

    if judge.backend == "offline":
        table = judge.validation_table()  # type: ignore[attr-defined]
        rows = "\n".join(
            f"| {m} | {r.auroc:.3f} ({r.auroc_lo:.3f}–{r.auroc_hi:.3f}) | {r.accuracy:.3f} | {int(r.n_test)} |"
            for m, r in table.iterrows()
        )
        return Markdown(
            "**Judge: the offline proxy**, not GPT-4o. No API key was configured, so scores come from "
            "logistic regressions on sentence embeddings (all-MiniLM-L6-v2), trained on this project's "
            "labelled calibration set. Its held-out quality:\n\n"
            "| metric | AUROC (95% CI) | accuracy | held-out n |\n|---|---|---|---|\n" + rows + "\n\n"
            "The calibration responses were written for this project, not sampled from the model under "
            "study, so treat these rates as a proxy. Set `judge: openai` and `OPENAI_API_KEY` "
            "(`params/paper.yaml`) for the paper's judge."
        )
    return Markdown(f"**Judge:** `{judge.backend}` backend, model `{judge.model}` — the paper's logprob scoring.")


def show_examples(samples: pd.DataFrame, per_question: int = 1, max_chars: int = 600) -> Any:
    """HTML block of example responses with any judge scores (escaped, so a response cannot break the page)."""
    from IPython.display import HTML

    parts = []
    for qid, group in samples.groupby("question_id", sort=False):
        for row in group.head(per_question).itertuples():
            text = row.response if len(row.response) <= max_chars else row.response[:max_chars] + " […]"
            scores = " · ".join(
                f"{c} {getattr(row, c):.0f}" for c in JUDGE_METRICS if c in group and pd.notna(getattr(row, c))
            )
            setting = f" · {html.escape(str(row.setting))}" if "setting" in group else ""
            parts.append(
                f"<div style='margin:0 0 1em 0'><b>{html.escape(qid)}</b>{setting} · sample {row.sample_index} · "
                f"{row.n_tokens} tokens ({row.finish_reason}){' · ' + scores if scores else ''}"
                f"<br><i>{html.escape(row.question)}</i>"
                f"<pre style='white-space:pre-wrap;background:#f6f8fa;padding:.5em;margin:.3em 0'>"
                f"{html.escape(text)}</pre></div>"
            )
    return HTML("\n".join(parts))


def pct_ci(pct: float, lo: float, hi: float) -> str:
    """``"4.7% (1.6–12.9)"``."""
    return f"{pct:.1f}% ({lo:.1f}–{hi:.1f})"


def adapter_hash(adapter_dir: str | Path) -> str:
    """The first 12 hex digits of an adapter's content hash (the organism table's column)."""
    return adapter_sha256(adapter_dir)[:12]
