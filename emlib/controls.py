"""Random controls for the interventions, and what an intervention closes: the stage behind chapters 2
(steering), 3 (ablation) and 5 (self-correction under steering).

A random vector is one *unit* of ``emlib.inference.rank_test``, never pooled noise. Two kinds per quoted cell:

- *anisotropy-matched*: the direction's own construction on the direction organism's own answers with the
  misaligned/aligned labels permuted within question (``emlib.direction_nulls.within_question_null``: label-free
  splits that keep both sets' sizes and question mix), rescaled to the direction's norm at every layer. They share
  everything the direction shares with any mean difference of these answers (the residual stream's anisotropy,
  the answers' question mix and length) except the label: the stringent control, on which the verdicts rest.
- *Gaussian*: ``emlib.directions.random_like``, the paper's same-norm random vector: a floor beside them.

Each unit (the direction's and every control's) is measured on the same number of answers per question with the
same sampling seed, so the units are exchangeable under the null and the rank test's p is uniform.
``unit_effects`` gives each unit's effect against one un-intervened baseline; ``gap_closed`` the fraction of an
organism's gap to the chat model in mean aligned that an ablation closes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from emlib.direction_nulls import within_question_null
from emlib.directions import Directions, random_like
from emlib.inference import Effect, rank_test

KINDS = ("anisotropy-matched", "Gaussian")  # the two kinds of random unit; the first is the one verdicts rest on


def rescale(vectors: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``vectors`` [draws, n_layers, d_model] each rescaled to ``norms`` [n_layers] at every layer."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12) * norms[None, :, None].to(vectors.dtype)


def anisotropy_matched(sums: torch.Tensor, tokens: torch.Tensor, questions: Sequence[str], labels: np.ndarray,
                       direction: Directions, count: int, seed: int) -> list[Directions]:
    """``count`` anisotropy-matched random directions [n_layers, d_model] each: the question-demeaned mean
    difference of the answers whose per-answer sums ``sums`` [n, n_layers, d_model], token counts ``tokens`` [n],
    question ids ``questions`` [n] and set ``labels`` [n] (1 misaligned, 0 aligned, −1 neither) are given, with the
    labels permuted within question (``emlib.direction_nulls.within_question_null``), rescaled to ``direction``'s
    norm at every layer. Chapters 2 and 3."""
    null = within_question_null(sums, tokens, questions, labels, count, seed=seed)
    vectors = rescale(null.float(), direction.norms())
    return [Directions(v, {"control": "anisotropy-matched", "split": k, "seed": seed,
                           "norm_matched_to": direction.provenance.get("source", "")}) for k, v in enumerate(vectors)]


def gaussian(direction: Directions, count: int, seed: int) -> list[Directions]:
    """``count`` Gaussian random directions with ``direction``'s norm at every layer (seeds ``seed`` + 0..count−1).
    Chapters 2 and 3."""
    return [random_like(direction, seed=seed + k) for k in range(count)]


def question_difference(values: Sequence[float], questions: Sequence[str], base: Sequence[float],
                        base_questions: Sequence[str]) -> float:
    """mean(``values``) − mean(``base``) within question: the per-question differences of means, weighted by each
    question's answers in both arms (the estimate of ``emlib.inference.within_question_effect``, without its
    interval). nan when no question is shared."""
    v, q = np.asarray(values, dtype=float), np.asarray(questions).astype(str)
    b, bq = np.asarray(base, dtype=float), np.asarray(base_questions).astype(str)
    ids = np.intersect1d(np.unique(q), np.unique(bq))
    if len(ids) == 0:
        return math.nan
    w = np.array([(q == i).sum() + (bq == i).sum() for i in ids], dtype=float)
    d = np.array([v[q == i].mean() - b[bq == i].mean() for i in ids])
    return float((w / w.sum() * d).sum())


def unit_effects(units: pd.DataFrame, base: pd.DataFrame, column: str, scale: float = 1.0) -> pd.DataFrame:
    """Each unit's effect on mean ``column`` (× ``scale``: 100 for a 0/1 rate in points) against the one
    un-intervened ``base``, within question (``question_difference``). ``units``: answers with columns ``kind``
    ("direction" or one of ``KINDS``), ``unit`` (its index within the kind), ``question_id`` and ``column``;
    ``base``: answers with ``question_id`` and ``column``. Returns one row per unit: kind, unit, answers, effect.
    Chapters 2, 3 and 5."""
    rows = []
    for (kind, unit), g in units.groupby(["kind", "unit"], sort=False):
        rows.append({"kind": kind, "unit": unit, "answers": len(g),
                     "effect": scale * question_difference(g[column].astype(float), g["question_id"],
                                                           base[column].astype(float), base["question_id"])})
    return pd.DataFrame(rows, columns=["kind", "unit", "answers", "effect"])


def rank_p(effects: pd.DataFrame, kind: str, alternative: str) -> tuple[float, int]:
    """The direction's unit ranked among the ``kind`` units of ``unit_effects`` (``emlib.inference.rank_test`` with
    ``alternative``): (p, number of control units). nan with 0 units. Chapters 2, 3 and 5."""
    direction = effects.loc[effects["kind"] == "direction", "effect"]
    controls = effects.loc[effects["kind"] == kind, "effect"].to_numpy()
    if direction.empty or len(controls) == 0:
        return math.nan, 0
    return rank_test(float(direction.iloc[0]), controls, alternative), len(controls)


def _question_means(values: np.ndarray, questions: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.array([values[questions == i].mean() for i in ids])


def gap_closed(treated: Sequence[float], treated_q: Sequence[str], organism: Sequence[float],
               organism_q: Sequence[str], chat: Sequence[float], chat_q: Sequence[str], *, n_boot: int = 2000,
               seed: int = 0, measure: str = "gap closed %") -> Effect:
    """The fraction (in %) of the organism's gap to the chat model that an intervention closes:
    100·(treated − organism) / (chat − organism) of mean scores (e.g. aligned), each arm's mean taken as the mean
    of its per-question means over the questions all three arms answered (so a difference in question mix cannot
    open or close the gap). 95% interval: answers resampled within each (question, arm), ``n_boot`` times; nan
    bounds when the gap itself is not established (its own resampled values reach 0 in more than 2.5% of draws:
    the ratio is then unbounded). Estimate nan when the gap is exactly 0. Chapter 3."""
    arms = [(np.asarray(v, dtype=float), np.asarray(q).astype(str)) for v, q in
            ((treated, treated_q), (organism, organism_q), (chat, chat_q))]
    ids = np.intersect1d(np.intersect1d(np.unique(arms[0][1]), np.unique(arms[1][1])), np.unique(arms[2][1]))
    n_t, n_o = (int(np.isin(q, ids).sum()) for _, q in arms[:2])
    if len(ids) == 0:
        return Effect(measure, math.nan, math.nan, math.nan, None, n_t, n_o, "no shared question")
    t, o, c = (_question_means(v, q, ids).mean() for v, q in arms)
    est = 100 * (t - o) / (c - o) if c != o else math.nan
    rng = np.random.default_rng(seed)
    boot = np.zeros((3, n_boot))
    for a, (v, q) in enumerate(arms):
        for i in ids:
            x = v[q == i]
            boot[a] += x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) / len(ids)
    gap = boot[2] - boot[1]
    method = "mean of per-question means; 95% interval resampling answers within question and arm"
    if np.mean(gap * np.sign(c - o) <= 0) > 0.025:
        return Effect(measure, est, math.nan, math.nan, None, n_t, n_o,
                      method + " (no interval: the gap itself is not established)")
    lo, hi = np.percentile(100 * (boot[0] - boot[1]) / gap, [2.5, 97.5])
    return Effect(measure, est, float(lo), float(hi), None, n_t, n_o, method)


# measure name -> (column of emlib.metrics.classify-ed answers, scale to the unit shown)
MEASURES: dict[str, tuple[str, float]] = {"mean aligned": ("aligned", 1.0), "misaligned %": ("misaligned", 100.0),
                                          "coherent %": ("is_coherent", 100.0), "EM %": ("em", 100.0),
                                          "self-correction %": ("self_correction", 100.0)}


def rank_table(units: pd.DataFrame, base: pd.DataFrame, alternatives: dict[str, str]) -> pd.DataFrame:
    """The direction's unit among the random units, per measure of ``alternatives`` (a key of ``MEASURES`` ->
    ``rank_test``'s alternative) and per kind of control: the direction's unit effect, the controls' median and
    range, their number, the rank-test p and the smallest p that number allows. ``units`` and ``base``:
    ``classify``-ed answers as ``unit_effects`` takes them. Indexed by (measure, kind). Chapters 2, 3 and 5."""
    rows = []
    for measure, alternative in alternatives.items():
        column, scale = MEASURES[measure]
        e = unit_effects(units, base, column, scale)
        direction = e.loc[e["kind"] == "direction", "effect"]
        for kind in KINDS:
            c = e.loc[e["kind"] == kind, "effect"]
            if c.empty:
                continue
            p, n = rank_p(e, kind, alternative)
            rows.append({"measure": measure, "kind": kind, "direction's unit": float(direction.iloc[0])
                         if len(direction) else math.nan, "controls' median": float(c.median()),
                         "controls' min": float(c.min()), "controls' max": float(c.max()), "controls": n,
                         "alternative": alternative, "p": p, "smallest p": 1 / (n + 1)})
    return pd.DataFrame(rows).set_index(["measure", "kind"]) if rows else pd.DataFrame()
