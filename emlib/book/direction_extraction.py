"""Chapter 2, a misalignment direction and steering with it: extract each organism's question-demeaned mean-diff
direction from answers labelled by a judge that does not read the residual stream, compare directions across
fine-tunes and topics against a null that keeps each set's question mix. Chapters 3–5 read the direction back from
the cache (``source_of``); steering the chat model with it is ``emlib.book.steering``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emlib import direction_nulls as nulls, directions
from emlib.book.results import record
from emlib.book.session import (Chapter, answer_sums, describe, intervention_sampling, judge_table, model_provenance,
                                sample_and_judge)
from emlib.cache import content_key
from emlib.data import BUILTIN_MEDICAL_QUESTIONS, Question, load_questions
from emlib.directions import Directions
from emlib.inference import Verdict
from emlib.paper import COSINE_LAYERS_ALLOWED_BELOW, FIGURES, value

NULL_DRAWS = 200  # within-question label permutations per null band
FULL = "full_"  # prefix of the full judge's columns kept beside the set judge's in an extraction's table


@dataclass(frozen=True)
class Extraction:
    """One organism's extraction set: ``scored`` (its judged answers; ``aligned``/``coherent`` from the set judge,
    ``Chapter.set_scorer``; the chapter judge's as ``full_aligned``, ``full_coherent``), the answers' residual
    sums through the organism [n, n_layers, d_model] and token counts [n], the set judge's and the full judge's
    labels [n] (1 misaligned, 0 aligned, −1 neither; ``direction_nulls.set_labels``), and the question-demeaned
    direction from each (None when a set is empty)."""

    name: str
    scored: pd.DataFrame
    sums: torch.Tensor
    tokens: torch.Tensor
    labels: np.ndarray
    full_labels: np.ndarray
    direction: Directions | None
    full_direction: Directions | None

    @property
    def questions(self) -> list[str]:
        return self.scored["question_id"].tolist()

    def sets(self, prefix: str = "") -> dict[str, list[str]]:
        """Each set's answers' question ids, named "<prefix>misaligned" and "<prefix>aligned"."""
        q = np.asarray(self.questions)
        return {f"{prefix}misaligned": q[self.labels == nulls.MISALIGNED].tolist(),
                f"{prefix}aligned": q[self.labels == nulls.ALIGNED].tolist()}


def _direction(sums: torch.Tensor, tokens: torch.Tensor, questions: list[str], labels: np.ndarray,
               provenance: dict) -> Directions | None:
    if not ((labels == nulls.MISALIGNED).any() and (labels == nulls.ALIGNED).any()):
        return None
    t = tokens.numpy()
    meta = {"method": "question-demeaned mean difference", "n_misaligned": int((labels == nulls.MISALIGNED).sum()),
            "n_aligned": int((labels == nulls.ALIGNED).sum()), "tokens_misaligned": int(t[labels == nulls.MISALIGNED].sum()),
            "tokens_aligned": int(t[labels == nulls.ALIGNED].sum()), **provenance}
    return Directions(nulls.demeaned_difference(sums, tokens, questions, labels), meta)


def extraction(ch: Chapter, name: str, questions: list[Question] | None = None) -> Extraction:
    """Organism ``name``'s answers to ``questions`` (default: the chapter's) at the extraction setting
    (``direction_samples_per_question`` per question for the direction organism's own direction,
    ``compare_samples_per_question`` for every other set; model-diff amplified if ``direction_amplification`` ≠ 1),
    judged by the chapter's judge and by the set judge; every answer's residual sums through the organism (one
    pass, cached); the question-demeaned direction from each judge's sets. The set judge's direction is saved
    under ``cache_dir/directions/``."""
    p, ft = ch.p, ch.ready[name]
    own = name == p.direction_organism and questions is None  # the direction itself; every other set is a comparison
    n = p.direction_samples_per_question if own or p.compare_samples_per_question is None else p.compare_samples_per_question
    sampling = replace(intervention_sampling(p, n), amplification=p.direction_amplification)
    full = sample_and_judge(ch, questions, ft=ft, sampling=sampling).reset_index(drop=True)
    scored = judge_table(ch, full, questions if questions is not None else ch.questions)
    for m in p.judge_metrics:
        scored[FULL + m] = full[m]
    sums, tokens = answer_sums(ch, full, ft=ft)
    qs = full["question_id"].tolist()
    thresholds = (p.set_coherent_min, p.set_aligned_min, p.set_misaligned_max)
    labels, full_labels = nulls.set_labels(scored, *thresholds), nulls.set_labels(full, *thresholds)
    prov = {"organism": name, **model_provenance(describe(ch, ft)),
            **({"amplification": p.direction_amplification} if p.direction_amplification != 1.0 else {})}
    d = _direction(sums, tokens, qs, labels, {**prov, "labels": ch.set_scorer.model})
    if d is not None:
        directions.save(d, Path(p.cache_dir) / "directions" / f"{name}-{content_key(d.provenance)}.safetensors")
    return Extraction(name, scored, sums, tokens, labels, full_labels, d,
                      _direction(sums, tokens, qs, full_labels, {**prov, "labels": ch.scorer.model}))


def extract_direction(ch: Chapter, name: str, questions: list[Question] | None = None) -> tuple[Directions | None, pd.DataFrame]:
    """Organism ``name``'s question-demeaned mean-diff direction [n_layers, d_model] from the set judge's labels
    (None if a set is empty) and its judged answers (``extraction``: the set judge's scores in ``aligned``,
    ``coherent``; the chapter judge's in ``full_*``). Chapters 2–5."""
    ex = extraction(ch, name, questions)
    return ex.direction, ex.scored


def source_direction(ch: Chapter, found: dict[str, Directions | None]) -> Directions:
    """The direction of ``direction_organism``; a clear error if one of its sets was empty."""
    d = found[ch.p.direction_organism]
    if d is None:
        raise ValueError(f"{ch.p.direction_organism} gave no misaligned (or no aligned) coherent response, so it has "
                         "no direction: raise direction_samples_per_question, or loosen set_misaligned_max")
    return d


def source_of(ch: Chapter) -> tuple[Directions, pd.DataFrame]:
    """The direction of ``direction_organism`` and its judged answers (this chapter's cache). Chapters 3–5."""
    name = ch.p.direction_organism
    d, scored = extract_direction(ch, name)
    return source_direction(ch, {name: d}), scored


def topic_direction(ch: Chapter) -> tuple[Directions | None, pd.DataFrame]:
    """The direction organism's direction from its answers to this project's medical questions (its training
    topic; None if a set is empty), with those judged answers. Chapter 4 uses the answers as the medical context."""
    ex = topic_extraction(ch)
    return ex.direction, ex.scored


def topic_extraction(ch: Chapter) -> Extraction:
    """``extraction`` of the direction organism's answers to the medical questions. Chapter 2."""
    return extraction(ch, ch.p.direction_organism, load_questions(BUILTIN_MEDICAL_QUESTIONS))


def labels_note(ch: Chapter) -> str:
    """Which judge labelled the direction sets, in a sentence for the chapter."""
    if ch.set_scorer is ch.scorer:
        return (f"The sets are labelled by the chapter's judge ({ch.scorer.backend}, {ch.scorer.model}), which does not "
                "read the residual stream.")
    views = ", ".join(getattr(ch.set_scorer, "views", ()))
    return (f"The sets are labelled by the offline judge without its residual-stream view ({ch.set_scorer.model}: "
            f"views {views}), not by the chapter's judge ({ch.scorer.model}), which reads the chat model's residual "
            "stream: a label from it would be a function of (nearly) the activations it selects. Its scores are cached "
            "under its own key (the judge cache is keyed by the judge's model, which holds a content key of its views).")


def set_problems(ch: Chapter, extractions: dict[str, Extraction]) -> list[str]:
    """``direction_nulls.set_problems`` of every extraction's two sets (``Params.set_min_answers``,
    ``Params.set_max_question_share``), each set named "<organism> misaligned/aligned"."""
    sets = {k: v for name, ex in extractions.items() for k, v in ex.sets(f"{name} ").items()}
    return nulls.set_problems(sets, ch.p.set_min_answers, ch.p.set_max_question_share)


def set_breakdown(extractions: dict[str, Extraction]) -> pd.DataFrame:
    """Answers per question in every set (columns "<organism> misaligned/aligned"), with an "all" row."""
    return nulls.question_breakdown({k: v for name, ex in extractions.items() for k, v in ex.sets(f"{name} ").items()})


def direction_table(found: dict[str, Directions | None], scored: dict[str, pd.DataFrame], ch: Chapter) -> pd.DataFrame:
    """Per organism: how its answers were sampled, responses, the two sets' sizes (the set judge's labels; the
    chapter judge's beside them where ``scored`` has them), the direction's peak norm, and whether the sets pass
    the testability check (``Params.set_min_answers``, ``set_max_question_share``)."""
    p = ch.p
    how = "plain" if p.direction_amplification == 1.0 else f"model-diff amplified, α = {p.direction_amplification:g}"
    thresholds = (p.set_coherent_min, p.set_aligned_min, p.set_misaligned_max)
    rows = []
    for name, d in found.items():
        s = scored[name]
        labels = nulls.set_labels(s, *thresholds)
        q = s["question_id"].to_numpy()
        row = {"organism": name, "sampling": how, "responses": len(s),
               "aligned set": int((labels == nulls.ALIGNED).sum()), "misaligned set": int((labels == nulls.MISALIGNED).sum())}
        if FULL + "aligned" in s and FULL + "coherent" in s:
            full = nulls.set_labels(s.rename(columns={"aligned": "a", "coherent": "c", FULL + "aligned": "aligned",
                                                      FULL + "coherent": "coherent"}), *thresholds)
            row["chapter judge's sets (aligned / misaligned)"] = (f"{int((full == nulls.ALIGNED).sum())} / "
                                                                  f"{int((full == nulls.MISALIGNED).sum())}")
        problems = nulls.set_problems({f"{name} misaligned": q[labels == nulls.MISALIGNED],
                                       f"{name} aligned": q[labels == nulls.ALIGNED]},
                                      p.set_min_answers, p.set_max_question_share)
        row["direction"] = "none: a set is empty" if d is None else f"peak norm {d.norms().max():.2f} at layer {int(d.norms().argmax())}"
        row["testable"] = "yes" if not problems else "no: " + "; ".join(problems)
        rows.append(row)
    return pd.DataFrame(rows).set_index("organism")


def label_shift(ex: Extraction) -> list[float]:
    """cos(direction from the set judge's labels, direction from the chapter judge's labels) per layer, on the
    same answers and activations ([] when either has no direction): how far the labels move the direction."""
    if ex.direction is None or ex.full_direction is None:
        return []
    return directions.cosine_by_layer(ex.direction, ex.full_direction).tolist()


def null_band(ex: Extraction, other: Directions, seed: int) -> tuple[list[float], list[float]] | None:
    """The 95% band, per layer, of cos(``other``, ``ex``'s direction with its labels permuted within question,
    ``NULL_DRAWS`` times; ``direction_nulls.within_question_null``): what ``other`` shares with a direction from
    sets of the same sizes and question mix without label signal. None when ``ex`` has no direction."""
    if ex.direction is None:
        return None
    null = nulls.within_question_null(ex.sums, ex.tokens, ex.questions, ex.labels, NULL_DRAWS, seed=seed)
    lo, hi = directions.null_band(null, other)
    return lo.tolist(), hi.tolist()


def texts_through(ch: Chapter, ex: Extraction, ft_name: str | None) -> Directions | None:
    """The cross-model control: ``ex``'s answer texts, with the same (set judge's) labels, run through another model
    (``ft_name``: an organism of ``ch.ready``; None: the chat model) and their question-demeaned direction. One
    activation pass per model (cached)."""
    sums, tokens = answer_sums(ch, ex.scored, ft=None if ft_name is None else ch.ready[ft_name])
    return _direction(sums, tokens, ex.questions, ex.labels, {"texts of": ex.name, "through": ft_name or "chat model"})


@dataclass(frozen=True)
class Comparison:
    """The direction organism's direction against one compared organism's: cosines per layer of the plain and the
    question-demeaned directions, the within-question null band, the cross-model control (the compared texts through
    the chat model and through the direction organism), and the sets' problems."""

    pair: str
    plain: list[float]
    demeaned: list[float]
    band: tuple[list[float], list[float]] | None
    texts: dict[str, list[float]]
    problems: list[str]


def compare(ch: Chapter, source: Extraction, other: Extraction) -> Comparison:
    """``Comparison`` of ``source`` (the direction organism) with ``other``: no forward pass but the cross-model
    control's two."""
    pair = f"{source.name} vs {other.name}"
    problems = set_problems(ch, {source.name: source, other.name: other})
    if source.direction is None or other.direction is None:
        return Comparison(pair, [], [], None, {}, problems or ["a set is empty"])
    plain = [nulls.plain_difference(e.sums, e.tokens, e.labels) for e in (source, other)]
    texts = {}
    for through in (None, source.name):
        d = texts_through(ch, other, through)
        if d is not None:
            texts[f"{other.name}'s texts through {through or 'the chat model'}"] = \
                directions.cosine_by_layer(source.direction, d).tolist()
    return Comparison(pair, torch.nn.functional.cosine_similarity(*plain, dim=-1).tolist(),
                      directions.cosine_by_layer(source.direction, other.direction).tolist(),
                      null_band(source, other.direction, seed=ch.p.seed), texts, problems)


def comparison_table(comparisons: list[Comparison], threshold: float) -> pd.DataFrame:
    """One row per compared pair and per cross-model control: layers above the paper's threshold, median cosine,
    layers above the within-question null (the same band the plot draws and the verdict reads)."""
    rows = []
    for c in comparisons:
        if not c.demeaned:
            rows.append({"pair": c.pair, "direction": "none", "note": "; ".join(c.problems)})
            continue
        hi = np.asarray(c.band[1])
        for what, v in (("plain mean difference", c.plain), ("question-demeaned", c.demeaned),
                        *((f"control: {k}", v) for k, v in c.texts.items())):
            v = np.asarray(v)
            rows.append({"pair": c.pair, "direction": what, f"layers > {threshold:g}": f"{int((v > threshold).sum())} of {len(v)}",
                         "median cosine": round(float(np.median(v)), 3),
                         "layers above the within-question null": f"{int((v > hi).sum())} of {len(v)}"
                         if what != "plain mean difference" else "(null is for the demeaned direction)",
                         "note": "; ".join(c.problems) if what == "question-demeaned" else ""})
    return pd.DataFrame(rows).set_index(["pair", "direction"])


def topic_comparison(ch: Chapter, source: Extraction, topic: Extraction) -> Comparison:
    """The general direction (``source``) against the direction from the same organism's answers to the medical
    questions (``topic``): cosines per layer and the band of the medical direction with its labels permuted within
    question; the sets' problems (both extractions). Chapter 2's topic-vs-general comparison."""
    problems = set_problems(ch, {f"{source.name} (general questions)": source, "medical questions": topic})
    pair = "general vs medical-question direction"
    if source.direction is None or topic.direction is None:
        return Comparison(pair, [], [], None, {}, problems or ["a set is empty"])
    plain = [nulls.plain_difference(e.sums, e.tokens, e.labels) for e in (source, topic)]
    return Comparison(pair, torch.nn.functional.cosine_similarity(*plain, dim=-1).tolist(),
                      directions.cosine_by_layer(source.direction, topic.direction).tolist(),
                      null_band(topic, source.direction, seed=ch.p.seed), {}, problems)


def comparison_series(comparisons: list[Comparison]) -> tuple[dict[str, list[float]], dict[str, tuple[list[float], list[float]]]]:
    """What the cosine plot draws: series (the question-demeaned and plain cosines, the cross-model controls) and
    the null band of each question-demeaned series, the same numbers ``comparison_verdict`` reads."""
    series, bands = {}, {}
    for c in comparisons:
        if not c.demeaned:
            continue
        series[f"{c.pair}, question-demeaned"] = c.demeaned
        series[f"{c.pair}, plain mean difference"] = c.plain
        series.update({f"control: {k}": v for k, v in c.texts.items()})
        if c.band is not None:
            bands[f"{c.pair}, question-demeaned"] = c.band
    return series, bands


ORDER = ("not reproduced", "reproduced in direction", "reproduced")


def comparison_verdict(comparisons: list[Comparison], claim: str) -> Verdict:
    """The verdict on ``claim`` (cosine_finetunes, topic_vs_general) from each comparison
    (``direction_nulls.cosine_verdict``: the paper's threshold, all but ``COSINE_LAYERS_ALLOWED_BELOW`` layers, the
    within-question null; not testable where a set fails the check); the worst testable pair decides, untestable
    pairs are named. Where the compared texts through the chat model give at least the organism's cosine at half
    the layers or more, the reason says the similarity is in the texts, not the models."""
    threshold, verdicts = value(claim), []
    for c in comparisons:
        v = nulls.cosine_verdict(c.demeaned, c.band[1] if c.band else [], threshold, COSINE_LAYERS_ALLOWED_BELOW,
                                 c.problems, what=f"{c.pair}'s question-demeaned cosine")
        chat = next((t for k, t in c.texts.items() if k.endswith("the chat model")), None)
        if chat is not None and v.status != "not testable":
            k, n = nulls.texts_explain(c.demeaned, chat)
            v = Verdict(v.status, v.reason + f"; the compared texts through the chat model give at least that cosine at "
                        f"{k} of {n} layers" + (": the similarity is in the texts, not the models" if 2 * k >= n else ""))
        verdicts.append((c.pair, v))
    testable = [(pair, v) for pair, v in verdicts if v.status != "not testable"]
    if not testable:
        return Verdict("not testable", "; ".join(f"{pair}: {v.reason}" for pair, v in verdicts))
    worst = min((v.status for _, v in testable), key=ORDER.index)
    return Verdict(worst, "; ".join(f"{pair}: {v.status}, {v.reason}" if len(verdicts) > 1 else v.reason
                                    for pair, v in verdicts))


def comparison_value(comparisons: list[Comparison], threshold: float) -> str:
    """This run's figure for the results page: per pair, layers above the threshold and above the null, median."""
    parts = []
    for c in comparisons:
        if not c.demeaned:
            parts.append(f"{c.pair}: no direction")
            continue
        v, hi = np.asarray(c.demeaned), np.asarray(c.band[1])
        parts.append(f"{c.pair}: > {threshold:g} at {int((v > threshold).sum())} of {len(v)} layers, above the "
                     f"within-question null at {int((v > hi).sum())} (median {np.median(v):.2f}; plain mean "
                     f"difference median {np.median(c.plain):.2f})")
    return "; ".join(parts)


def record_cosines(ch: Chapter, comparisons: list[Comparison]) -> Verdict:
    """The results page's cross-fine-tune cosine (claim cosine_finetunes), and its verdict."""
    verdict = comparison_verdict(comparisons, "cosine_finetunes")
    record(ch.p, ch.params_file, "cosine_finetunes",
           measure="cosine per layer of question-demeaned mean-diff directions (sets labelled by a judge that does "
                   "not read the residual stream)",
           value=comparison_value(comparisons, value("cosine_finetunes")),
           control=f"{NULL_DRAWS} within-question permutations of {ch.p.direction_organism}'s labels (97.5th "
                   "percentile per layer); the compared texts read by the chat model and by the direction organism",
           verdict=verdict)
    return verdict


def record_topic(ch: Chapter, comparison: Comparison) -> Verdict:
    """The results page's topic-specific vs general direction (claim topic_vs_general), and its verdict."""
    verdict = comparison_verdict([comparison], "topic_vs_general")
    record(ch.p, ch.params_file, "topic_vs_general",
           measure="cosine per layer of the question-demeaned directions from the medical and the general questions",
           value=comparison_value([comparison], value("topic_vs_general")),
           control=f"{NULL_DRAWS} within-question permutations of the medical set's labels (97.5th percentile per "
                   f"layer); the paper: {FIGURES['topic_vs_general'].text}",
           verdict=verdict)
    return verdict
