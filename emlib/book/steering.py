"""Chapter 2's second half, steering the chat model with the direction; chapter 5 reads the same runs, and
chapter 3 the same random control vectors and the same unsteered chat model.

Where: the questions ``intervention_questions`` names. What: one headline cell (layer, λ) fixed in the params, the
direction and the unsteered chat model each on ``headline_samples_per_question`` answers a question; at that cell
``random_controls`` anisotropy-matched and ``gaussian_controls`` Gaussian random vectors (``emlib.controls``), each
one unit of a rank test on ``control_samples_per_question`` answers a question, beside the direction's own unit
(all units in one batched run, each row under its own unit: sampled the same way, in the same batches, with the
same seed: under the null the direction is one more within-question label
permutation, so the units are exchangeable and the test exact); the other (layer, λ) cells of ``steer_layers`` ×
``steer_scales``, descriptive, on ``steer_samples_per_question``.
"""

from __future__ import annotations

import pandas as pd

from emlib import controls
from emlib.book.display import effect_text
from emlib.book.results import record
from emlib.book.runs import RunSpec, execute_all
from emlib.book.session import Chapter, intervention_sampling
from emlib.config import Params, headline_cell, steering_layers
from emlib.data import BUILTIN_MEDICAL_QUESTIONS, Question, load_questions
from emlib.directions import Directions
from emlib.inference import Effect, Verdict, rise_verdict, smallest_rank_p, within_question_effect
from emlib.interventions import Stacked, steer
from emlib.metrics import JudgeError, Thresholds, classify, rates
from emlib.paper import value
from emlib.plan import Run, n_gaussian

CONTROL_SEED = 1000  # seed offset of the random control vectors (chapters 2 and 3 draw the same ones)
# the steering unit's alternative per measure: the direction should lower mean aligned and raise misaligned %
STEER_ALTERNATIVES = {"mean aligned": "less", "misaligned %": "greater", "coherent %": "two-sided"}


def intervention_questions(ch: Chapter) -> list[Question]:
    """The questions steering and ablation are evaluated on (``intervention_questions``): the chapter's, or this
    project's eight medical questions. Chapters 2, 3 and 5."""
    return ch.questions if ch.p.intervention_questions == "evaluation" else load_questions(BUILTIN_MEDICAL_QUESTIONS)


def where_text(ch: Chapter) -> str:
    """One sentence naming where the interventions are evaluated, from the params. Chapters 2, 3 and 5."""
    qs = intervention_questions(ch)
    which = ("the chapter's evaluation questions" if ch.p.intervention_questions == "evaluation" else
             "this project's medical questions (`emlib/datasets/medical_questions.yaml`), where the organisms are "
             "measurably misaligned and the judge was validated")
    return (f"Interventions are evaluated on {len(qs)} questions: {which} (`intervention_questions: "
            f"{ch.p.intervention_questions}`), answers cut at {ch.p.intervention_max_new_tokens} tokens.")


def control_vectors(ch: Chapter, direction: Directions) -> dict[str, list[Directions]]:
    """``random_controls`` anisotropy-matched random vectors for ``direction`` (its own construction on the
    direction organism's extraction answers with the labels permuted within question: chapter 2's cached
    extraction and activations) and ``gaussian_controls`` Gaussian ones, all at the direction's norm per layer.
    Chapters 2 and 3 (the same vectors: the same seeds)."""
    from emlib.book.direction_extraction import extraction

    p = ch.p
    ex = extraction(ch, p.direction_organism)
    return {"anisotropy-matched": controls.anisotropy_matched(ex.sums, ex.tokens, ex.questions, ex.labels, direction,
                                                              p.random_controls, seed=p.seed + CONTROL_SEED),
            "Gaussian": controls.gaussian(direction, n_gaussian(p), seed=p.seed + CONTROL_SEED)}


def _setting(kind: str, k: int, lay: int, s: float) -> str:
    return f"{kind}{'' if kind == 'direction' else f' {k}'} L{lay} λ={s:g}"


def steering_specs(ch: Chapter, direction: Directions) -> list[RunSpec]:
    """Every steering run (``steering_runs``) as a ``RunSpec``, named as ``emlib.plan`` names it: the unsteered
    chat model and the direction at the headline cell, the sweep's other cells, and one stacked run of the rank
    test's units (the direction's own and every random vector's, sampled alike). Chapter 2 and ``emlib.work``."""
    p, qs, where, t = ch.p, intervention_questions(ch), ch.p.intervention_questions, ch.p.intervention_max_new_tokens
    layer, scale = headline_cell(p, direction.n_layers)
    specs = [RunSpec(Run("chat model", where, p.headline_samples_per_question, t), qs, None, "chat model",
                     intervention_sampling(p, p.headline_samples_per_question),
                     meta=dict(arm="headline", kind="none", unit=0, layer=-1, scale=0.0, setting="unsteered",
                               vector="none"))]
    cells = [("headline", layer, scale, p.headline_samples_per_question)] + [
        ("sweep", lay, s, p.steer_samples_per_question) for lay in steering_layers(p, direction.n_layers)
        for s in p.steer_scales if (lay, s) != (layer, scale)]
    for arm, lay, s, n in cells:
        specs.append(RunSpec(Run("chat model", where, n, t, intervention=f"steer direction L{lay} x{s:g}"), qs, None,
                             "chat model", intervention_sampling(p, n),
                             steer(direction.vectors[lay], lay, s, label=f"steer direction 0 L{lay} x{s:g}"),
                             meta=dict(arm=arm, kind="direction", unit=0, layer=lay, scale=s,
                                       setting=_setting("direction", 0, lay, s), vector="mean-diff")))
    vecs = control_vectors(ch, direction)
    units = [("direction", 0, direction)] + [(kind, k, v) for kind, vs in vecs.items() for k, v in enumerate(vs)]
    n = p.control_samples_per_question
    specs.append(RunSpec(
        Run("chat model", where, len(units) * n, t,
            intervention=f"stacked steering units ({len(units)}) L{layer} x{scale:g}"),
        qs, None, "chat model", intervention_sampling(p, n),
        Stacked(tuple(steer(v.vectors[layer], layer, scale, label=f"steer {kind} {k} L{layer} x{scale:g}")
                      for kind, k, v in units), f"steering units L{layer} x{scale:g}"),
        meta=dict(arm="unit", layer=layer, scale=scale),
        units=[dict(kind=kind, unit=k, setting=_setting(kind, k, layer, scale),
                    vector="mean-diff" if kind == "direction" else "random") for kind, k, _ in units]))
    return specs


def steering_runs(ch: Chapter, direction: Directions) -> pd.DataFrame:
    """Every steering run, judged, in one table: the unsteered chat model and the direction at the headline cell
    (arm "headline"), the direction's and each random vector's rank-test unit at that cell (arm "unit"), the other
    cells of the sweep (arm "sweep"). Columns ``arm``, ``kind`` (none / direction / a kind of control), ``unit``,
    ``layer``, ``scale``, ``vector`` (none / mean-diff / random), ``setting``. Chapters 2 and 5."""
    tables = execute_all(ch, steering_specs(ch, direction))
    return classify(pd.concat(tables, ignore_index=True))


def arms(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(unsteered, the direction at the headline cell, every rank-test unit) of ``steering_runs``, scored rows."""
    r = runs[runs["scored"]]
    head = r[r["arm"] == "headline"]
    return head[head["kind"] == "none"], head[head["kind"] == "direction"], r[r["arm"] == "unit"]


def headline_effects(runs: pd.DataFrame, measures: tuple[str, ...] = ("mean aligned", "misaligned %", "coherent %",
                                                                       "EM %")) -> dict[str, Effect]:
    """The direction at the headline cell against the unsteered chat model, within question
    (``emlib.inference.within_question_effect``), per measure of ``emlib.controls.MEASURES``. Chapters 2 and 5."""
    base, head, _ = arms(runs)
    out = {}
    for m in measures:
        col, scale = controls.MEASURES[m]
        out[m] = within_question_effect(scale * head[col].astype(float), head["question_id"],
                                        scale * base[col].astype(float), base["question_id"], measure=m)
    return out


def effects_table(effects: dict[str, Effect], rank: pd.DataFrame) -> pd.DataFrame:
    """One row per measure: the direction − unsteered effect (interval, p) and the direction's rank-test p among
    each kind of random unit. Chapters 2 and 5."""
    rows = []
    for m, e in effects.items():
        row = {"measure": m, "direction − unsteered (within question)": effect_text(e, unit=""),
               "answers (direction / unsteered)": f"{e.n} / {e.n_base}"}
        for kind in controls.KINDS:
            if (m, kind) in rank.index:
                r = rank.loc[(m, kind)]
                row[f"rank p among {r['controls']} {kind}"] = f"{r['p']:.2g} ({r['alternative']})"
        rows.append(row)
    return pd.DataFrame(rows).set_index("measure").fillna("")


def rank_summary(runs: pd.DataFrame, alternatives: dict[str, str] | None = None) -> pd.DataFrame:
    """``emlib.controls.rank_table`` of the headline cell's units against the unsteered chat model."""
    base, _, units = arms(runs)
    return controls.rank_table(units, base, alternatives or STEER_ALTERNATIVES)


def strip_frames(runs: pd.DataFrame, group: str, measures: tuple[str, ...] = ("mean aligned", "misaligned %")
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What ``emlib.plotting.rank_strip`` draws for the headline cell: every unit's effect and the direction's
    full-sample effect with its interval, per measure, under ``group``."""
    base, _, units = arms(runs)
    effects = headline_effects(runs, measures)
    strips = pd.concat([controls.unit_effects(units, base, *controls.MEASURES[m]).assign(measure=m) for m in measures])
    heads = pd.DataFrame([{"measure": m, "estimate": e.estimate, "low": e.low, "high": e.high, "n": e.n}
                          for m, e in effects.items()])
    return strips.assign(group=group), heads.assign(group=group)


def judge_name(ch: Chapter) -> str:
    """How the verdicts name the judge."""
    e = ch.judge_error
    return (f"the {ch.p.judge} judge" if e is None else
            f"the {ch.p.judge} judge (EM sensitivity {e.tp} of {e.tp + e.fn}, specificity {e.specificity:.3f})")


def record_steering(ch: Chapter, runs: pd.DataFrame, t: Thresholds = Thresholds()) -> Verdict:
    """The results page's steering figure: the paper's EM rise through the judge (``rise_verdict``), and the
    primary measures, mean aligned and misaligned % of the direction against the unsteered chat model (within
    question) and the direction's rank among the anisotropy-matched random units. Returns the verdict."""
    p = ch.p
    effects = headline_effects(runs)
    rank = rank_summary(runs)
    base, _, _ = arms(runs)
    layer, scale = headline_cell(p, ch.info.n_layers)
    em = rise_verdict(effects["EM %"], 100 * float(base["em"].mean()), value("steering_em"), error=ch.judge_error,
                      judge=judge_name(ch), what="EM", base="unsteered chat model", t=t)
    kind = controls.KINDS[0]
    aligned, mis = effects["mean aligned"], effects["misaligned %"]
    r = rank.loc[("mean aligned", kind)] if ("mean aligned", kind) in rank.index else None
    n_units = int(r["controls"]) if r is not None else 0
    ranked = (f"the direction's unit ranks with p = {r['p']:.2g} among {n_units} {kind} random units on mean aligned"
              if r is not None else "no random unit ran")
    shown = (f"mean aligned {effect_text(aligned, unit='')}, misaligned % {effect_text(mis)} against the unsteered "
             f"chat model; {ranked}")
    if n_units == 0 or smallest_rank_p(n_units) > t.alpha:  # an exact test at level α rejects at p ≤ α
        verdict = Verdict("not testable", f"{shown}; with {n_units} random unit(s) the rank test cannot reach "
                          f"p ≤ {t.alpha:g}. EM: {em.text()}")
    elif aligned.high < 0 and r["p"] <= t.alpha:
        verdict = Verdict("reproduced in direction", f"{shown}: the direction lowers mean aligned beyond random "
                          f"directions of its anisotropy. EM (the paper's measure): {em.text()}")
    else:
        verdict = Verdict("not reproduced", f"{shown}: not beyond random directions of its anisotropy. "
                          f"EM (the paper's measure): {em.text()}")
    record(p, ch.params_file, "steering_em",
           measure=f"mean aligned and misaligned % at the headline cell (layer {layer}, λ {scale:g}, fixed in the "
                   "params), within question; the direction's rank among random units; EM through the judge",
           value=f"mean aligned {effect_text(aligned, unit='')}; misaligned % {effect_text(mis)}; EM % "
                 f"{effect_text(effects['EM %'])}; rank p (mean aligned) "
                 + (f"{r['p']:.2g} of {n_units} units" if r is not None else "none"),
           control=f"unsteered chat model ({aligned.n_base} answers); {p.random_controls} anisotropy-matched and "
                   f"{n_gaussian(p)} Gaussian random vectors at the same cell, {p.control_samples_per_question} "
                   "answer(s) a question each",
           verdict=verdict)
    return verdict


def sweep_rates(runs: pd.DataFrame, judge_error: JudgeError | None = None) -> pd.DataFrame:
    """``emlib.metrics.rates`` of the direction at every cell (headline and sweep) and of the unsteered model, by
    (vector, layer, scale): the descriptive sweep. Chapter 2."""
    keep = runs[(runs["arm"] != "unit")]
    return rates(keep, by=["vector", "layer", "scale"], judge_error=judge_error)
