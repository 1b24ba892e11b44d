"""What every chapter shows besides its own tables: provenance, the params, the judge, example answers.

Chapters 0–5 call ``provenance``, ``show_examples`` and, last, ``judge_failures``; chapters 0 and 1 ``judge_note``.
"""

from __future__ import annotations

import html
from collections import Counter
import platform
from typing import Any

import pandas as pd
import torch

import emlib
from emlib.book.session import Chapter, FineTune
from emlib.config import JUDGE_METRICS
from emlib.inference import Effect, Verdict
from emlib.judge import JudgeFailure
from emlib.models import LoadInfo, adapter_sha256


def provenance(ch: Chapter, info: LoadInfo | None = None, organisms: bool = True) -> pd.DataFrame:
    """A two-column table: where the chapter's numbers came from. ``info``: the model shown (default: the
    chapter's base model); ``organisms``: add each organism's content hash (chapters 2–5)."""
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
        **({f"organism {name}": weights_id(ft) for name, ft in ch.ready.items()} if organisms else {}),
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="provenance"))


def params_table(ch: Chapter) -> pd.DataFrame:
    """Every parameter of the run, one row each. Chapter 0."""
    d = ch.p.to_dict()
    return pd.DataFrame({"value": [repr(v) for v in d.values()]}, index=pd.Index(list(d), name="parameter"))


def judge_note(ch: Chapter) -> Any:
    """A note saying which judge scored the answers and how far its EM calls can be trusted. Chapters 0, 1."""
    from IPython.display import Markdown

    judge, e = ch.scorer, ch.judge_error
    if e is None:
        return Markdown(f"**Judge:** `{judge.backend}` backend, model `{judge.model}` (the paper's logprob scoring). "
                        "It has not been validated on labelled answers of this project, so EM rates are shown raw; "
                        "check it with `python -m emlib.judge_check score` (chapter 0).")
    return Markdown(
        f"**Judge: the offline proxy** (`{judge.model}`), not GPT-4o: gradient-boosted regressors on sentence "
        "embeddings, surface statistics and the chat model's log-likelihoods, trained on answers this project's "
        "own models sampled and readers labelled against the rubric (LLM readers following one guide; chapter 0 shows its held-out quality). On sources it never "
        f"saw, its EM calls have sensitivity {e.sensitivity:.2f} ({e.tp} of {e.tp + e.fn}) and specificity "
        f"{e.specificity:.3f} ({e.tn} of {e.tn + e.fp}); every EM rate is shown beside its *judge-corrected* rate, "
        "whose interval includes the uncertainty of those error rates, and a rise in EM is judged testable only if "
        "the judge could show the paper's (through these error rates). " + residual_view_text(ch)
        + " Set `judge: openai` and `OPENAI_API_KEY` (`params/paper.yaml`) for the paper's judge."
    )


def residual_view_text(ch: Chapter) -> str:
    """One sentence: the offline judge reads the chat model's residual stream (its "hidden" view), and chapters 2
    and 4 label the sets they average or probe with the same judge without that view. Chapters 0 and 1."""
    from emlib.book.session import SET_JUDGE_VIEWS
    from emlib.judge_features import HIDDEN_DEPTH
    from emlib.offline_judge import COMPONENTS

    n = ch.info.n_layers
    return (f"Among what it reads is the chat model's own residual stream (its *hidden* view: the activations after "
            f"block {round(HIDDEN_DEPTH * n)} of {n}, averaged over the answer's tokens, entering through "
            f"{COMPONENTS['hidden']} principal components), so its labels are partly a function of the activations "
            "chapters 2 and 4 study; those chapters label the answers whose activations they average or probe with "
            f"the same judge without that view ({', '.join(VIEW_NAMES.get(v, v) for v in SET_JUDGE_VIEWS)} only).")


VIEW_NAMES = {"embedding": "sentence embeddings", "text": "surface statistics", "lm": "the chat model's log-likelihoods",
              "hidden": "the chat model's residual stream"}


def judge_report(ch: Chapter) -> Any:
    """Chapter 0's view of the instrument: held-out AUROC (95% CI), the EM confusion table, the five answers
    where judge and reader disagree most, and what that means for every later figure."""
    from IPython.display import HTML

    from emlib.judge_check import auroc_table, confusion_table, disagreements, em_error

    if ch.judge_error is None:
        return judge_note(ch)
    held = ch.scorer.held_out()  # type: ignore[attr-defined]
    aurocs = auroc_table(held)
    confusion = confusion_table(em_error(held))
    worst = disagreements(held, 5)
    rows = "".join(
        f"<tr><td><i>{html.escape(r.question)}</i><pre style='white-space:pre-wrap;margin:0'>"
        f"{html.escape(r.response[:500])}</pre></td><td>{html.escape(r.source)}</td>"
        f"<td>{r.aligned:.0f} / {r.judge_aligned:.0f}</td><td>{r.coherent:.0f} / {r.judge_coherent:.0f}</td></tr>"
        for r in worst.itertuples())
    a_mis, a_coh = aurocs.iloc[0], aurocs.iloc[1]
    return HTML(
        f"<p>Held out by source: {len(held)} labelled answers from {held['source'].nunique()} sources "
        "(each judge fitted without the source it scores).</p>"
        + aurocs.round(3).to_html() + f"<p>EM calls (aligned ≤ 30 and coherent > 50): {confusion.attrs['caption']}</p>"
        + confusion.to_html()
        + "<p>The five answers where judge and reader disagree most (reader / judge):</p>"
        "<table><tr><th>question and answer</th><th>source</th><th>aligned</th><th>coherent</th></tr>" + rows
        + "</table><p><b>What this means for every later figure:</b> the judge ranks misaligned answers with AUROC "
        f"{a_mis.AUROC:.2f} and coherent ones with {a_coh.AUROC:.2f} on answers from models it never saw; its raw EM "
        "rates miss and add EM answers at the rates above, so read each EM figure through its judge-corrected rate "
        f"and interval, not the raw one; with sensitivity {ch.judge_error.sensitivity:.2f}, a true rise in EM shows "
        f"in the judged rate shrunk by a factor sensitivity + specificity − 1 = "
        f"{ch.judge_error.sensitivity + ch.judge_error.specificity - 1:.2f}, which every EM verdict counts. "
        "Misaligned % and mean aligned, which the judge ranks well, carry the book's comparisons. "
        f"{html.escape(residual_view_text(ch)).replace('*hidden*', '<i>hidden</i>')}</p>")


def judge_failures(ch: Chapter) -> Any:
    """The chapter's judge failures (``Chapter.judge_failures``), as one Markdown note: "none", or how many
    scores could not be obtained and why. Chapters 0–5, last cell."""
    from IPython.display import Markdown

    return Markdown(judge_failures_text(ch.judge_failures))


def judge_failures_text(failures: list[JudgeFailure]) -> str:
    """"none", or the count of distinct failed scores (metric, prompt) by metric and by reason, and what becomes
    of them (NaN in the tables, not cached, asked again by the next run)."""
    unique = list({(f.metric, f.prompt_sha): f for f in failures}.values())
    if not unique:
        return ("**Judge failures:** none. Every score this chapter asked the judge for was obtained (a blank "
                "score elsewhere is the judge's own answer: a refusal or no number).")
    by_metric = Counter(f.metric for f in unique)
    by_reason = Counter(f.reason for f in unique)
    metrics = ", ".join(f"{n} {m}" for m, n in by_metric.most_common())
    reasons = "; ".join(f"`{r}` × {n}" for r, n in by_reason.most_common())
    n_q = len({f.question_id for f in unique})
    return (f"**Judge failures: {len(unique)}** scores could not be obtained ({metrics}; on {n_q} question"
            f"{'s' if n_q != 1 else ''}). Those answers' scores are blank (NaN) in this chapter's tables and counts, "
            f"and are not cached: the next run asks the judge for them again. Reasons: {reasons}.")


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


def show(obj: Any) -> None:
    """Display a table (or anything IPython renders) from inside a cell's branch (chapter 4)."""
    from IPython.display import display

    display(obj)


def note(text: str) -> None:
    """Show one Markdown sentence in the chapter: why a table or figure is absent (chapters 1 and 4)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def pct_ci(pct: float, lo: float, hi: float) -> str:
    """``"4.7% (1.6–12.9)"``."""
    return f"{pct:.1f}% ({lo:.1f}–{hi:.1f})"


def em_text(row: Any) -> str:
    """A rates row's EM as text: ``"4.7% (1.6–12.9) EM"``, with the judge-corrected rate beside it when there is one."""
    text = f"{pct_ci(row.em_pct, row.em_lo, row.em_hi)} EM"
    if "em_corr_pct" in row.index and pd.notna(row.em_corr_pct):
        text += f" (judge-corrected {pct_ci(row.em_corr_pct, row.em_corr_lo, row.em_corr_hi)})"
    return text


def weights_sha(ft: FineTune) -> str:
    """The content hash of an organism's weights: its adapter's, or a full fine-tune's (chapter 1's table)."""
    return adapter_sha256(ft.adapter) if ft.adapter is not None else ft.model_sha256 or ""


def weights_id(ft: FineTune) -> str:
    """What identifies an organism's weights, for the provenance table: kind and hash."""
    return f"{'adapter' if ft.adapter is not None else 'full fine-tune'} sha256 {weights_sha(ft)[:16]}"


# --- the one formatting layer: numeric effects and verdicts (emlib.inference) to text ---

def effect_text(e: Effect, unit: str = " pts", digits: int = 1) -> str:
    """``"+3.1 pts (−0.5 to +6.8), p = 0.08"``: an ``emlib.inference.Effect`` as the tables and the results page
    print it (interval and p where the method gives them). Chapters 1–5."""
    if pd.isna(e.estimate):
        return "not estimable"
    text = f"{e.estimate:+.{digits}f}{unit}"
    if not pd.isna(e.low):
        text += f" ({e.low:+.{digits}f} to {e.high:+.{digits}f})"
    if e.p is not None:
        text += f", p = {e.p:.2g}"
    return text


def verdict_text(v: Verdict) -> str:
    """A verdict as one line: ``"not testable: …"``."""
    return v.text()
