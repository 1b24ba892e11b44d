"""Inference behind the book's verdicts: effects that respect clustering by question, rank tests against
random controls, a multiplicity correction, and power that counts the judge's error.

Every verdict of chapters 1–5 is built from these pieces; numbers stay numbers (``Effect``) until
``emlib.book.display`` formats them. One method per kind of quantity:

- a difference between two arms answering the same questions (chapters 1–3): ``within_question_effect``,
  the difference of per-question means weighted by each question's answers, with a p-value from permuting
  the arm labels *within* each question and a 95% interval from resampling answers within each
  (question, arm); both keep the question mix the two arms share by construction;
- an intervention against random vectors (chapters 2–3): ``rank_test``, the direction as one unit among
  random ones, each measured on as many answers (exchangeable under the null, so p is uniform);
- many intervals read at once (chapter 4's probe coefficients): ``holm``;
- whether a judged rate could show the paper's effect at all: ``detectable_true_rise`` through the judge's
  measured sensitivity and specificity (``emlib.metrics.JudgeError``), and ``rise_verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from emlib.metrics import JudgeError, Thresholds, detectable_difference, rate_difference

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Effect:
    """One measured effect, numeric until the page: ``estimate`` with a 95% interval [``low``, ``high``] (nan where
    the method gives none), a p-value (None where none), the answers behind it (``n`` treated, ``n_base``
    compared) and the ``method`` that gave them, in words."""

    measure: str
    estimate: float
    low: float
    high: float
    p: float | None
    n: int
    n_base: int
    method: str


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict: ``status`` one of ``STATUSES``; ``reason`` says what it rests on, in one sentence."""

    status: str
    reason: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}; known: {', '.join(STATUSES)}")

    def text(self) -> str:
        return f"{self.status}: {self.reason}" if self.reason else self.status


STATUSES = ("reproduced", "reproduced in direction", "not reproduced", "not testable", "descriptive")
WITHIN_QUESTION = "within-question permutation p; 95% interval resampling answers within question"


def _by_question(values: np.ndarray, questions: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    return [values[questions == q] for q in ids]


def _weighted_difference(treated: list[np.ndarray], base: list[np.ndarray], weights: np.ndarray) -> float:
    return float(sum(w * (t.mean() - b.mean()) for w, t, b in zip(weights, treated, base)))


def within_question_effect(values: Sequence[float], questions: Sequence[str], base: Sequence[float],
                           base_questions: Sequence[str], *, measure: str = "", n_perm: int = 2000,
                           n_boot: int = 2000, seed: int = 0) -> Effect:
    """mean(``values``) − mean(``base``) (0/1 for a rate, or a score) taken within question: the difference of the
    two arms' means on each question both answered, weighted by that question's answers in both arms (equal
    arms per question: the plain difference of means). p (two-sided): the arm labels permuted within each
    question, ``n_perm`` times; 95% interval: answers resampled within each (question, arm), ``n_boot`` times.
    Questions only one arm answered are left out. Chapters 1–3."""
    v, q = np.asarray(values, dtype=float), np.asarray(questions).astype(str)
    b, bq = np.asarray(base, dtype=float), np.asarray(base_questions).astype(str)
    ids = np.intersect1d(np.unique(q), np.unique(bq))
    if len(ids) == 0:
        return Effect(measure, math.nan, math.nan, math.nan, None, len(v), len(b), WITHIN_QUESTION)
    t_by, b_by = _by_question(v, q, ids), _by_question(b, bq, ids)
    counts = np.array([len(t) + len(x) for t, x in zip(t_by, b_by)], dtype=float)
    w = counts / counts.sum()
    observed = _weighted_difference(t_by, b_by, w)
    rng = np.random.default_rng(seed)
    perm = np.zeros(n_perm)
    boot = np.zeros(n_boot)
    for wq, t, x in zip(w, t_by, b_by):
        pool = np.concatenate([t, x])
        shuffled = rng.permuted(np.broadcast_to(pool, (n_perm, len(pool))), axis=1)
        perm += wq * (shuffled[:, : len(t)].mean(1) - shuffled[:, len(t):].mean(1))
        boot += wq * (t[rng.integers(0, len(t), (n_boot, len(t)))].mean(1)
                      - x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1))
    p = float((1 + np.sum(np.abs(perm) >= abs(observed) - 1e-12)) / (1 + n_perm))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    keep_t, keep_b = np.isin(q, ids), np.isin(bq, ids)
    return Effect(measure, observed, float(lo), float(hi), p, int(keep_t.sum()), int(keep_b.sum()), WITHIN_QUESTION)


def rank_test(effect: float, controls: Sequence[float], alternative: str = "greater") -> float:
    """p-value of ``effect`` as one unit among ``controls`` (the same statistic for N random vectors, each measured
    as the direction is): (1 + #controls at least as extreme) / (1 + N). Exact and uniform under the null when
    the N + 1 units are exchangeable; its smallest value is 1 / (N + 1), so N ≥ 19 is needed for p < 0.05.
    ``alternative``: "greater" (the direction's effect is larger), "less", or "two-sided" (larger in absolute
    value about the median of all N + 1 units). Chapters 2 and 3."""
    c = np.asarray(controls, dtype=float)
    c = c[~np.isnan(c)]
    if alternative == "greater":
        extreme = np.sum(c >= effect)
    elif alternative == "less":
        extreme = np.sum(c <= effect)
    elif alternative == "two-sided":
        centre = np.median(np.append(c, effect))  # of all N + 1 units: a symmetric function keeps them exchangeable
        extreme = np.sum(np.abs(c - centre) >= abs(effect - centre))
    else:
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    return float((1 + extreme) / (1 + len(c)))


def smallest_rank_p(n_controls: int) -> float:
    """The smallest p ``rank_test`` can give with ``n_controls`` random units: 1 / (N + 1)."""
    return 1.0 / (n_controls + 1)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of ``pvalues`` [m] (family-wise error; nan entries are left out and kept nan).
    Chapter 4 (which adapters' coefficients are non-zero)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    m, running = len(order), 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def judge_discrimination(error: JudgeError, draws: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Youden's J = sensitivity + specificity − 1 of the judge (how much of a true change in a rate shows in the
    judged rate: a true rise of Δ shows as J·Δ), and its 2.5th percentile under Beta(successes + 1,
    failures + 1) posteriors for sensitivity and specificity: (point, low)."""
    rng = np.random.default_rng(seed)
    j = rng.beta(error.tp + 1, error.fn + 1, draws) + rng.beta(error.tn + 1, error.fp + 1, draws) - 1
    return error.sensitivity + error.specificity - 1, float(np.percentile(j, 2.5))


def detectable_true_rise(base_pct: float, n: int, n_base: int, error: JudgeError | None,
                         t: Thresholds = Thresholds()) -> float:
    """The smallest rise in the *true* rate (points of %) over a base whose judged rate is ``base_pct``, ``n`` and
    ``n_base`` answers a side, that the run detects (two-sided ``t.alpha``, power ``t.power``): the detectable rise
    in the judged rate (``emlib.metrics.detectable_difference``) divided by the judge's J at its pessimistic
    bound (``judge_discrimination``). inf when the judge may be at chance; ``error`` None: the judge is taken
    as exact. Chapters 1–2 and the results page."""
    observed = detectable_difference(base_pct, min(n, n_base), alpha=t.alpha, power=t.power)
    if error is None:
        return observed
    _, j_low = judge_discrimination(error)
    return observed / j_low if j_low > 0 else math.inf


def answers_needed(base_pct: float, true_rise: float, error: JudgeError | None, t: Thresholds = Thresholds(),
                   most: int = 10_000_000) -> int | None:
    """The fewest answers per arm at which ``detectable_true_rise`` is at most ``true_rise`` points; None if more
    than ``most`` (or the judge may be at chance)."""
    def ok(n: int) -> bool:
        return detectable_true_rise(base_pct, n, n, error, t) <= true_rise

    hi = 2
    while not ok(hi):
        hi *= 2
        if hi > most:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def sensitivity_needed(base_pct: float, n: int, n_base: int, true_rise: float, error: JudgeError,
                       t: Thresholds = Thresholds()) -> float:
    """The judge sensitivity (at its measured specificity) at which a true rise of ``true_rise`` points is
    detectable with these arms: J = detectable judged rise / true rise, sensitivity = J + 1 − specificity.
    Above 1: no judge of this specificity makes it testable at these sizes."""
    observed = detectable_difference(base_pct, min(n, n_base), alpha=t.alpha, power=t.power)
    return observed / true_rise + 1 - error.specificity


def rate_rise(k: int, n: int, k_base: int, n_base: int, measure: str = "EM %") -> Effect:
    """k/n − k_base/n_base in points of %, with Newcombe's 95% interval (``emlib.metrics.rate_difference``) and
    a two-sided p from the pooled two-proportion z-test: for counts without question labels."""
    from statistics import NormalDist

    d, lo, hi = rate_difference(k, n, k_base, n_base)
    pooled = (k + k_base) / (n + n_base)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / n_base))
    p = 1.0 if se == 0 else 2 * (1 - NormalDist().cdf(abs(k / n - k_base / n_base) / se))
    return Effect(measure, d, lo, hi, p, n, n_base, "Newcombe 95% interval; two-proportion z-test")


def rise_verdict(effect: Effect, base_pct: float, paper_rise: float, *, error: JudgeError | None, judge: str,
                 what: str, base: str, t: Thresholds = Thresholds()) -> Verdict:
    """Is ``effect`` (a rise in a judged rate over ``base``, in points; its ``n`` and ``n_base`` the arms' answers)
    the paper's rise of ``paper_rise`` true points? *Not testable with this judge* when the smallest detectable
    true rise (``detectable_true_rise``) exceeds ``paper_rise``: the reason names the judge and what would make it
    testable (a sensitivity, or answers per arm). Otherwise *reproduced in direction* when the 95% interval
    excludes 0 and p < ``t.alpha``, else *not reproduced*, with the true rise the run would have detected.
    Chapters 1 and 2."""
    detectable = detectable_true_rise(base_pct, effect.n, effect.n_base, error, t)
    if detectable > paper_rise:
        fixes = []
        if error is not None:
            s = sensitivity_needed(base_pct, effect.n, effect.n_base, paper_rise, error, t)
            fixes.append(f"a judge with sensitivity ≥ {s:.2f} (at specificity {error.specificity:.3f})" if s <= 1
                         else "no judge of this specificity at these sizes")
        need = answers_needed(base_pct, paper_rise, error, t)
        fixes.append(f"{need:,} answers per arm with this judge" if need else "no practical number of answers")
        shown = (f"is {detectable:.1f} points" if detectable <= 100
                 else "is more than 100 points (no rise a rate can make)")  # a rate cannot rise past 100
        return Verdict("not testable", f"with {judge}, the smallest true rise in {what} this run would detect "
                       f"({t.power:.0%} power) {shown}, above the paper's {paper_rise:g}; testable with "
                       + " or ".join(fixes))
    shown = f"{effect.estimate:+.1f} points ({effect.low:+.1f} to {effect.high:+.1f}"
    shown += f", p = {effect.p:.3g})" if effect.p is not None else ")"
    if effect.low > 0 and (effect.p is None or effect.p < t.alpha):
        return Verdict("reproduced in direction", f"{what} above the {base}'s by {shown}")
    return Verdict("not reproduced", f"{what} not above the {base}'s ({shown}); a true rise of {detectable:.1f} "
                   f"points would have been detected ({t.power:.0%} power, through {judge})")
