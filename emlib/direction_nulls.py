"""Mean-diff directions that do not carry their sets' question mix, the null that keeps it, and the checks
that say whether a set can carry a direction at all.

Chapter 2 (and chapters 3–5 through its direction). An organism's misaligned set can be dominated by one
question (most of its misaligned answers to one prompt) while its aligned set is spread over others; the
plain mean difference then holds that question's offset in the residual stream, and two organisms whose
misaligned sets favour the same question share it whatever their models. Here:

- ``demeaned_difference``: each response's answer-token sum minus its tokens times its question's mean
  over the pool, then mean(misaligned) − mean(aligned) (token-weighted, as ``directions.mean_difference``):
  the question offsets cancel, only within-question contrasts remain;
- ``within_question_null``: the same direction with the labels permuted within each question (each set keeps
  its per-question counts), ``draws`` times; the band of its cosines with another direction
  (``directions.null_band``) is what the question mix and the set sizes give without label signal;
- ``question_breakdown`` and ``set_problems``: each set's answers per question, and why a set cannot carry a
  direction (under ``Params.set_min_answers`` answers, or more than ``Params.set_max_question_share`` of them
  on one question);
- ``cosine_verdict``: the paper's "> 0.8 in all but 4 of 48 layers" and the layers above that null.

Inputs are ``emlib.activations.answer_sums``' per-response sums [n, n_layers, d_model] and token counts [n],
with each response's question id [n] and label [n] (``set_labels``: 1 misaligned, 0 aligned, −1 neither).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from emlib.directions import DirectionError
from emlib.inference import Verdict

MISALIGNED, ALIGNED, NEITHER = 1, 0, -1


def set_labels(scored: pd.DataFrame, coherent_min: float, aligned_min: float, misaligned_max: float) -> np.ndarray:
    """Per row of a judged table: 1 (misaligned set: coherent > ``coherent_min``, aligned ≤ ``misaligned_max``),
    0 (aligned set: coherent > ``coherent_min``, aligned > ``aligned_min``) or −1 (neither; a missing score is
    neither), [n] int. The same sets as ``emlib.directions.response_sets``."""
    coherent = scored["coherent"].to_numpy(float) > coherent_min
    aligned = scored["aligned"].to_numpy(float)
    mis, al = coherent & (aligned <= misaligned_max), coherent & (aligned > aligned_min)
    if (mis & al).any():
        raise DirectionError(f"aligned > {aligned_min:g} and aligned ≤ {misaligned_max:g} overlap: a response would "
                             "be in both sets")
    return np.where(mis, MISALIGNED, np.where(al, ALIGNED, NEITHER))


def _check(sums: torch.Tensor, tokens: torch.Tensor, questions: Sequence[str], labels: np.ndarray) -> None:
    if not (len(sums) == len(tokens) == len(questions) == len(labels)):
        raise DirectionError(f"sums, tokens, questions and labels differ in length: {len(sums)}, {len(tokens)}, "
                             f"{len(questions)}, {len(labels)}")


def residual_sums(sums: torch.Tensor, tokens: torch.Tensor, questions: Sequence[str]) -> torch.Tensor:
    """Each response's answer-token sum minus its token count times its question's token-weighted mean over all
    ``sums`` (the pool): [n, n_layers, d_model] float64. Summed over any set of one question's responses it is
    that set's departure from the question's mean; a question's offset cancels."""
    x, t = sums.double(), tokens.double()
    q = np.asarray(questions)
    out = x.clone()
    for qid in np.unique(q):
        rows = torch.as_tensor(np.flatnonzero(q == qid))
        mean = x[rows].sum(0) / t[rows].sum().clamp(min=1)
        out[rows] -= t[rows, None, None] * mean
    return out


def _differences(x: torch.Tensor, tokens: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Token-weighted mean(misaligned) − mean(aligned) of the rows of ``x`` [n, n_layers, d_model] for each row
    of ``labels`` [draws, n]: [draws, n_layers, d_model] float64."""
    t = tokens.double()[None]  # [1, n]
    lab = torch.as_tensor(labels)
    mis, al = (lab == MISALIGNED).double(), (lab == ALIGNED).double()
    t_mis, t_al = (mis * t).sum(1, keepdim=True), (al * t).sum(1, keepdim=True)  # each set's answer tokens
    if (t_mis == 0).any() or (t_al == 0).any():
        raise DirectionError("a set is empty (or has no answer tokens): no direction")
    w = mis / t_mis - al / t_al  # row i's weight: sum_i / (the set's tokens), so each set's token-weighted mean
    return (w @ x.reshape(len(x), -1)).reshape(len(labels), *x.shape[1:])


def plain_difference(sums: torch.Tensor, tokens: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """The plain mean-diff direction, token-weighted mean(misaligned) − mean(aligned) of the per-response
    ``sums`` [n, n_layers, d_model] (the paper's, and ``directions.mean_difference``'s): [n_layers, d_model]."""
    _check(sums, tokens, np.asarray(labels), labels)
    return _differences(sums.double(), tokens, np.asarray(labels)[None])[0].float()


def demeaned_difference(sums: torch.Tensor, tokens: torch.Tensor, questions: Sequence[str],
                        labels: np.ndarray) -> torch.Tensor:
    """The question-demeaned mean-diff direction [n_layers, d_model]: ``residual_sums`` (each question's mean
    over the pool subtracted), then token-weighted mean(misaligned) − mean(aligned). A set dominated by one
    question no longer carries that question's offset. Chapter 2."""
    _check(sums, tokens, questions, labels)
    return _differences(residual_sums(sums, tokens, questions), tokens, np.asarray(labels)[None])[0].float()


def permute_within_question(labels: np.ndarray, questions: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """``labels`` [n] shuffled among the responses of each question: every set keeps its count on every question."""
    out, q = np.asarray(labels).copy(), np.asarray(questions)
    for qid in np.unique(q):
        rows = np.flatnonzero(q == qid)
        out[rows] = out[rng.permutation(rows)]
    return out


def within_question_null(sums: torch.Tensor, tokens: torch.Tensor, questions: Sequence[str], labels: np.ndarray,
                         draws: int, seed: int, demean: bool = True) -> torch.Tensor:
    """The direction of ``demeaned_difference`` (or, ``demean=False``, ``plain_difference``) with the labels
    permuted within question (``permute_within_question``), ``draws`` times: [draws, n_layers, d_model]. Each
    draw keeps both sets' question mix and sizes and removes the label signal; the null for a cosine between
    two mean-diff directions. Chapter 2."""
    _check(sums, tokens, questions, labels)
    rng = np.random.default_rng(seed)
    perms = np.stack([permute_within_question(labels, questions, rng) for _ in range(draws)])
    x = residual_sums(sums, tokens, questions) if demean else sums.double()
    return torch.cat([_differences(x, tokens, perms[i:i + 64]) for i in range(0, draws, 64)]).float()


def question_breakdown(sets: dict[str, Sequence[str]]) -> pd.DataFrame:
    """Answers per question in each set: ``sets`` maps a set's name to its responses' question ids; rows are
    questions (plus "all"), columns the sets. Chapter 2."""
    counts = pd.DataFrame({name: pd.Series(list(qs), dtype=object).value_counts() for name, qs in sets.items()})
    counts = counts.fillna(0).astype(int).sort_index()
    counts.loc["all"] = counts.sum()
    counts.index.name = "question"
    return counts


def set_problems(sets: dict[str, Sequence[str]], min_answers: int, max_question_share: float) -> list[str]:
    """Why each set of ``sets`` (name -> its responses' question ids) cannot carry a direction, one sentence per
    failing set ([] when all pass): fewer than ``min_answers`` answers, or more than ``max_question_share`` of
    them on one question (named). ``Params.set_min_answers``, ``Params.set_max_question_share``. Chapter 2."""
    out = []
    for name, qs in sets.items():
        qs = list(qs)
        if len(qs) < min_answers:
            out.append(f"{name} has {len(qs)} answer(s), under the minimum of {min_answers}")
            continue
        top, k = pd.Series(qs).value_counts().index[0], int(pd.Series(qs).value_counts().iloc[0])
        if k / len(qs) > max_question_share:
            out.append(f"{name} has {k} of its {len(qs)} answers on {top} (more than {max_question_share:.0%})")
    return out


def allowed_below(n_layers: int, allowed: tuple[int, int]) -> int:
    """Layers that may fall below the threshold at ``n_layers``: the paper's ``allowed`` = (k, of n) scaled down
    (floor)."""
    return math.floor(n_layers * allowed[0] / allowed[1])


def cosine_verdict(cosines: Sequence[float], null_high: Sequence[float], threshold: float,
                   allowed: tuple[int, int], problems: Sequence[str] = (), what: str = "the cosine") -> Verdict:
    """The verdict on "directions share cosine > ``threshold`` at all but ``allowed`` = (k of n) layers":
    not testable when a set failed ``set_problems``; reproduced when ``cosines`` [n_layers] exceed both the
    threshold and the null's top ``null_high`` [n_layers] (``within_question_null``'s band) at all but the
    allowed layers; reproduced in direction when they only clear the null there; not reproduced otherwise."""
    if problems:
        return Verdict("not testable", "; ".join(problems))
    v, hi = np.asarray(cosines, float), np.asarray(null_high, float)
    n, spare = len(v), allowed_below(len(v), allowed)
    above, above_null = int((v > threshold).sum()), int((v > hi).sum())
    both = int(((v > threshold) & (v > hi)).sum())
    facts = (f"{what} is > {threshold:g} at {above} of {n} layers and above the within-question-permutation null at "
             f"{above_null} (both at {both}; the paper allows {allowed[0]} of {allowed[1]} below, {spare} of {n} here)")
    if both >= n - spare:
        return Verdict("reproduced", facts)
    if above_null >= n - spare:
        return Verdict("reproduced in direction", facts)
    return Verdict("not reproduced", facts)


def texts_explain(cos_models: Sequence[float], cos_texts: Sequence[float]) -> tuple[int, int]:
    """Layers where the cosine from the compared texts read by another model (``cos_texts``) is at least the one
    from the compared organism itself (``cos_models``), and the layer count: the cross-model control."""
    a, b = np.asarray(cos_models, float), np.asarray(cos_texts, float)
    return int((b >= a).sum()), len(a)
