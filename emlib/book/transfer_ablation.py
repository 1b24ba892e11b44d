"""Chapter 3, ablating the direction in its own organism and in others, where the organisms are measurably
misaligned (``intervention_questions``): the ablation runs, each with random units of a rank test, the mean
aligned change and the share of the organism's gap to the chat model that an ablation closes, and the results
page's figures."""

from __future__ import annotations

import math

import pandas as pd

from emlib import controls
from emlib.book.display import effect_text
from emlib.book.results import record
from emlib.book.runs import RunSpec, execute_all
from emlib.book.session import Chapter, intervention_sampling
from emlib.book.steering import control_vectors, intervention_questions
from emlib.directions import Directions
from emlib.inference import Effect, Verdict, smallest_rank_p, within_question_effect
from emlib.interventions import Stacked, ablate
from emlib.metrics import MIN_EM_BEFORE, Thresholds, classify, reduction
from emlib.models import single_direction_layer
from emlib.paper import TRANSFER_CLAIMS, value
from emlib.plan import Run, n_gaussian, n_transfer

QUOTED = ("single", "layer-wise")  # the quoted ablations (layer-wise on the direction organism only)
ABLATION_ALTERNATIVES = {"mean aligned": "greater", "misaligned %": "less", "coherent %": "two-sided"}
CHAT = "chat model"


def gap_text(e: Effect) -> str:
    """A gap-closed effect as text, saying so where it has no interval (the gap itself not established)."""
    return effect_text(e, unit="%") + (" (no interval: the gap itself is not established)"
                                       if math.isnan(e.low) and not math.isnan(e.estimate) else "")


def n_controls(ch: Chapter, model: str, kind: str = controls.KINDS[0]) -> int:
    """Random vectors of ``kind`` ablated in ``model``: in the direction organism ``random_controls``
    anisotropy-matched and ``gaussian_controls`` Gaussian ones; in every transfer target ``emlib.plan.n_transfer``."""
    p, gaussian = ch.p, kind != controls.KINDS[0]
    if model != p.direction_organism:
        return n_transfer(p, gaussian)
    return n_gaussian(p) if gaussian else p.random_controls


def ablation_specs(ch: Chapter, direction: Directions) -> list[RunSpec]:
    """Every ablation run (``ablation_runs``) as a ``RunSpec``, named as ``emlib.plan`` names it. Chapter 3 and
    ``emlib.work``."""
    p, qs, where, t = ch.p, intervention_questions(ch), ch.p.intervention_questions, ch.p.intervention_max_new_tokens
    n = direction.n_layers
    layer = single_direction_layer(n)
    everywhere = lambda v: {i: v for i in range(n)}  # noqa: E731
    a = p.ablation_samples_per_question
    specs = [RunSpec(Run(CHAT, where, p.headline_samples_per_question, t), qs, None, CHAT,
                     intervention_sampling(p, p.headline_samples_per_question),
                     meta=dict(ablation="none", arm="base", kind="none", unit=0))]
    vecs = control_vectors(ch, direction)
    for model in [p.direction_organism, *p.compare_organisms]:
        ft = ch.ready[model]
        arms = [("none", "base", "none", None), ("single", "quoted", "direction",
                                                  ablate(everywhere(direction.vectors[layer]), "single"))]
        if model == p.direction_organism:
            arms.append(("layer-wise", "quoted", "direction", ablate(direction.by_layer(), "layer-wise")))
        for name, arm, kind, iv in arms:
            specs.append(RunSpec(Run(model, where, a, t, intervention="none" if iv is None else f"ablate {name}"), qs,
                                 ft, None, intervention_sampling(p, a), iv,
                                 meta=dict(ablation=name, arm=arm, kind=kind, unit=0)))
        # the single ablation's rank-test unit and the random units, in one stacked run (sampled alike)
        units = [("single (unit)", "direction", 0, direction)] + [
            (f"{kind} {k}", kind, k, v) for kind, vs in vecs.items()
            for k, v in enumerate(vs[:n_controls(ch, model, kind)])]
        specs.append(RunSpec(
            Run(model, where, len(units) * p.control_samples_per_question, t,
                intervention=f"stacked ablation units ({len(units)})"),
            qs, ft, None, intervention_sampling(p, p.control_samples_per_question),
            Stacked(tuple(ablate(everywhere(v.vectors[layer]), "single" if kind == "direction" else name)
                          for name, kind, _, v in units), f"ablation units L{layer}"),
            meta=dict(arm="unit"), units=[dict(ablation=name, kind=kind, unit=k) for name, kind, k, _ in units]))
    return specs


def ablation_runs(ch: Chapter, direction: Directions) -> pd.DataFrame:
    """Every ablation run on the intervention questions, judged, in one table. The chat model, unablated (the gap's
    other end: chapter 2's unsteered run, the same questions and setting). Each model of the direction organism and
    ``compare_organisms``: unablated and single-direction ablation (the relative-depth-0.5 vector at every layer) on
    ``ablation_samples_per_question``; the direction organism also layer-wise; the single ablation's rank-test
    unit and each random vector's (chapter 2's control vectors at that layer, ``n_controls`` of each kind) on
    ``control_samples_per_question``, a model's units all in one stacked run (each row under its own unit).
    Columns ``model``, ``ablation``, ``arm`` (base / quoted / unit), ``kind``, ``unit``."""
    tables = execute_all(ch, ablation_specs(ch, direction))
    c = classify(pd.concat(tables, ignore_index=True))
    return c[c["scored"]]


def _arm(scored: pd.DataFrame, model: str, ablation: str) -> pd.DataFrame:
    return scored[(scored["model"] == model) & (scored["ablation"] == ablation)]


def gap(scored: pd.DataFrame, model: str) -> Effect:
    """The organism's gap to the chat model in mean aligned (chat − organism, within question)."""
    chat, org = _arm(scored, CHAT, "none"), _arm(scored, model, "none")
    return within_question_effect(chat["aligned"], chat["question_id"], org["aligned"], org["question_id"],
                                  measure="chat − organism, mean aligned")


def run_effects(scored: pd.DataFrame, model: str, ablation: str) -> dict[str, Effect]:
    """A quoted ablation against the same model unablated, within question: mean aligned, misaligned %, coherent %,
    EM %; and the share of the organism's gap to the chat model it closes (``emlib.controls.gap_closed``)."""
    after, before, chat = _arm(scored, model, ablation), _arm(scored, model, "none"), _arm(scored, CHAT, "none")
    out = {}
    for m in ("mean aligned", "misaligned %", "coherent %", "EM %"):
        col, s = controls.MEASURES[m]
        out[m] = within_question_effect(s * after[col].astype(float), after["question_id"],
                                        s * before[col].astype(float), before["question_id"], measure=m)
    out["gap closed %"] = controls.gap_closed(after["aligned"], after["question_id"], before["aligned"],
                                              before["question_id"], chat["aligned"], chat["question_id"])
    return out


def rank_summary(scored: pd.DataFrame, model: str) -> pd.DataFrame:
    """``emlib.controls.rank_table`` of ``model``'s single-ablation unit among its random units (against it
    unablated)."""
    g = scored[scored["model"] == model]
    return controls.rank_table(g[g["arm"] == "unit"], g[g["ablation"] == "none"], ABLATION_ALTERNATIVES)


def effects_table(ch: Chapter, scored: pd.DataFrame) -> pd.DataFrame:
    """One row per quoted ablation: answers, mean aligned before and change, misaligned % and coherent % change,
    the gap closed, the rank-test p of the single ablation among the anisotropy-matched and the Gaussian units,
    EM answers before → after (the paper's measure)."""
    rows = []
    for model in [ch.p.direction_organism, *ch.p.compare_organisms]:
        rank = rank_summary(scored, model)
        for ablation in QUOTED:
            if _arm(scored, model, ablation).empty:
                continue
            e = run_effects(scored, model, ablation)
            before, after = _arm(scored, model, "none"), _arm(scored, model, ablation)
            row = {"model": model, "ablation": ablation, "answers (after / before)": f"{len(after)} / {len(before)}",
                   "mean aligned before": f"{before['aligned'].mean():.1f}",
                   "mean aligned change": effect_text(e["mean aligned"], unit=""),
                   "gap to chat closed": gap_text(e["gap closed %"]),
                   "misaligned % change": effect_text(e["misaligned %"]),
                   "coherent % change": effect_text(e["coherent %"]),
                   "EM answers before → after": f"{int(before['em'].sum())} → {int(after['em'].sum())}"}
            for kind in controls.KINDS:
                if ablation == "single" and ("mean aligned", kind) in rank.index:
                    r = rank.loc[("mean aligned", kind)]
                    row[f"rank p among {kind} units"] = f"{r['p']:.2g} of {r['controls']}"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "ablation"]).fillna("")


def strip_frames(ch: Chapter, scored: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What ``emlib.plotting.rank_strip`` draws: per model, every unit's change in mean aligned and the gap it
    closes (the unit's change over the model's gap), and the single ablation's full-sample effects."""
    strips, heads = [], []
    for model in [ch.p.direction_organism, *ch.p.compare_organisms]:
        g = scored[scored["model"] == model]
        u = controls.unit_effects(g[g["arm"] == "unit"], g[g["ablation"] == "none"], "aligned")
        size = gap(scored, model).estimate
        strips += [u.assign(group=model, measure="mean aligned"),
                   u.assign(group=model, measure="gap closed %", effect=100 * u["effect"] / size if size else math.nan)]
        e = run_effects(scored, model, "single")
        heads += [{"group": model, "measure": m, "estimate": e[m].estimate, "low": e[m].low, "high": e[m].high,
                   "n": e[m].n} for m in ("mean aligned", "gap closed %")]
    return pd.concat(strips, ignore_index=True), pd.DataFrame(heads)


def em_reduction_text(scored: pd.DataFrame, model: str, ablation: str, seed: int) -> tuple[str, bool]:
    """The paper's measure, EM reduction %, or why it is not testable here (the EM answers it would rest on):
    (text, testable)."""
    before, after = _arm(scored, model, "none")["em"], _arm(scored, model, ablation)["em"]
    k = int(before.sum())
    if k < MIN_EM_BEFORE:
        return (f"EM reduction not testable: {k} EM answer(s) of {len(before)} before ablation (a reduction needs "
                f"{MIN_EM_BEFORE} or more)", False)
    v, lo, hi = reduction(before.to_numpy(), after.to_numpy(), seed=seed)
    return f"EM reduction {v:+.0f}% ({lo:.0f} to {hi:.0f}) from {k} EM answers of {len(before)}", True


def ablation_verdict(e: dict[str, Effect], rank: pd.DataFrame, em: str, t: Thresholds = Thresholds()) -> Verdict:
    """A transfer (or own-organism) ablation's verdict on the primary measure: mean aligned should RISE, beyond
    the anisotropy-matched random units (rank test) and with its within-question interval above 0."""
    kind = controls.KINDS[0]
    r = rank.loc[("mean aligned", kind)] if ("mean aligned", kind) in rank.index else None
    n = int(r["controls"]) if r is not None else 0
    facts = (f"mean aligned {effect_text(e['mean aligned'], unit='')} after ablation, closing "
             f"{gap_text(e['gap closed %'])} of the gap to the chat model; coherent % "
             f"{effect_text(e['coherent %'])}; rank p among {n} {kind} random units "
             + (f"{r['p']:.2g}" if r is not None else "none") + f". Paper's measure: {em}")
    if n == 0 or smallest_rank_p(n) > t.alpha:  # an exact test at level α rejects at p ≤ α
        return Verdict("not testable", f"with {n} random unit(s) the rank test cannot reach p ≤ {t.alpha:g} "
                       f"(smallest {smallest_rank_p(max(n, 0)):.2g}); {facts}")
    if e["mean aligned"].low > 0 and r["p"] <= t.alpha:
        return Verdict("reproduced in direction", facts)
    return Verdict("not reproduced", f"no rise in mean aligned beyond random directions of the direction's "
                   f"anisotropy: {facts}")


def random_verdict(scored: pd.DataFrame, model: str, em: str, t: Thresholds = Thresholds()) -> tuple[Effect, Verdict]:
    """The paper's "a random vector changes EM by less than ``value('random_ablation')``%", on the primary measure:
    the share of the organism's gap to the chat model that the anisotropy-matched random ablations close (their
    answers together: the typical random effect, not a test of the direction), reproduced when its interval lies
    within ± that band, not reproduced when it lies outside, not testable when too wide to tell."""
    band = value("random_ablation")
    g, chat = scored[scored["model"] == model], _arm(scored, CHAT, "none")
    rand, before = g[g["kind"] == controls.KINDS[0]], g[g["ablation"] == "none"]
    e = controls.gap_closed(rand["aligned"], rand["question_id"], before["aligned"], before["question_id"],
                            chat["aligned"], chat["question_id"])
    facts = (f"{rand['unit'].nunique()} {controls.KINDS[0]} random ablation(s) close {effect_text(e, unit='%')} of "
             f"the gap to the chat model (paper: within ±{band:g}% of EM). Paper's measure: {em}")
    if math.isnan(e.low):
        return e, Verdict("not testable", f"{facts}; no interval: the gap itself is not established")
    if -band <= e.low and e.high <= band:
        return e, Verdict("reproduced", facts)
    if e.low > band or e.high < -band:
        return e, Verdict("not reproduced", facts)
    return e, Verdict("not testable", f"{facts}; the interval is too wide to tell a change within ±{band:g}%")


def record_ablation(ch: Chapter, scored: pd.DataFrame) -> dict[str, Verdict]:
    """The results page's figures: each compared organism's transfer ablation (a claim of
    ``emlib.paper.TRANSFER_CLAIMS``) and the random ablations of the direction organism. Returns the verdicts."""
    p, out = ch.p, {}
    for model in p.compare_organisms:
        claim = TRANSFER_CLAIMS.get(model)
        if claim is None:
            continue
        e, rank = run_effects(scored, model, "single"), rank_summary(scored, model)
        em, _ = em_reduction_text(scored, model, "single", p.seed)
        out[claim] = ablation_verdict(e, rank, em)
        record(p, ch.params_file, claim,
               measure="mean aligned rise after single-direction ablation (within question), the share of the "
                       "gap to the chat model it closes, its rank among random units; EM reduction (the paper's)",
               value=f"mean aligned {effect_text(e['mean aligned'], unit='')}; gap closed "
                     f"{gap_text(e['gap closed %'])}; {em}",
               control=f"{model} unablated; {n_controls(ch, model)} anisotropy-matched and "
                       f"{n_controls(ch, model, controls.KINDS[1])} Gaussian random ablations "
                       f"({p.control_samples_per_question} answer(s) a question each)",
               verdict=out[claim])
    src = p.direction_organism
    em, _ = em_reduction_text(scored[scored["kind"].isin(["none", controls.KINDS[0]])].assign(
        ablation=lambda d: d["ablation"].where(d["kind"] == "none", "random")), src, "random", p.seed)
    e, verdict = random_verdict(scored, src, em)
    out["random_ablation"] = verdict
    record(p, ch.params_file, "random_ablation",
           measure="share of the organism's gap to the chat model in mean aligned closed by the anisotropy-matched "
                   "random ablations (their answers together)",
           value=f"gap closed {gap_text(e)}; {em}",
           control=f"{src} unablated; the chat model (the gap's other end)", verdict=verdict)
    return out
