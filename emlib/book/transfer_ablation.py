"""Chapter 3, ablating the direction in its own organism and in others: the ablation runs, the EM
reduction table beside the paper, and the results page's figures."""

from __future__ import annotations

import re

import pandas as pd
from tqdm.auto import tqdm

from emlib.book.results import record
from emlib.book.session import Chapter, intervention_sampling, sample_and_judge
from emlib.directions import Directions, random_like
from emlib.interventions import Intervention, ablate
from emlib.metrics import MIN_EM_BEFORE, JudgeError, classify, effects, reduction, reduction_table
from emlib.models import single_direction_layer
from emlib.paper import TRANSFER_CLAIMS, value


def ablation_runs(ch: Chapter, direction: Directions) -> pd.DataFrame:
    """Each model before and after ablating the source organism's direction. The source organism: none,
    layer-wise (each layer's own vector), single (the relative-depth-0.5 vector at every layer) and
    ``random_controls`` same-norm random single directions. Each compared organism: none and single
    (transfer). One judged table with columns ``model``, ``ablation``."""
    p = ch.p
    n = direction.n_layers
    layer = single_direction_layer(n)
    single = direction.vectors[layer]
    source = p.direction_organism
    runs: list[tuple[str, str, Intervention | None]] = [
        (source, "none", None),
        (source, "layer-wise", ablate(direction.by_layer(), "layer-wise")),
        (source, "single", ablate({i: single for i in range(n)}, "single"))]
    for seed in range(1, p.random_controls + 1):
        r = random_like(direction, seed=p.seed + 100 + seed).vectors[layer]
        runs.append((source, f"random {seed}", ablate({i: r for i in range(n)}, f"random {seed}")))
    for target in p.compare_organisms:
        runs += [(target, "none", None), (target, "single", ablate({i: single for i in range(n)}, "single"))]
    sampling = intervention_sampling(p, p.ablation_samples_per_question)
    tables = []
    for model, name, iv in tqdm(runs, desc="ablation runs"):
        t = sample_and_judge(ch, ft=ch.ready[model], sampling=sampling, intervention=iv)
        tables.append(t.assign(ablation=name))
    return pd.concat(tables, ignore_index=True)


def ablation_effects(scored: pd.DataFrame, judge_error: JudgeError | None = None) -> pd.DataFrame:
    """Each ablation's effect on EM %, misaligned % and the mean aligned score (``emlib.metrics.effects``): the
    ablated model against the same model unablated and, where the model has random controls (the source), against
    its random ablations pooled; paired cluster-bootstrap intervals over questions. Indexed by (run with the arms'
    answer counts, measure); a model without random controls leaves those columns empty."""
    c = classify(scored)
    c = c[c["scored"]]
    tables = {}
    for model, g in c.groupby("model", sort=False):
        random = g[g["ablation"].str.startswith("random")]
        for ablation in [a for a in g["ablation"].unique() if a != "none" and not a.startswith("random")]:
            arms = {ablation: g[g["ablation"] == ablation], "none": g[g["ablation"] == "none"]}
            if len(random):
                arms[f"random, {random['ablation'].nunique()} vectors"] = random
            t = effects(arms, ablation, list(arms)[1:], judge_error)
            t.columns = [re.sub(r" \(n = \d+\)$", "", col.replace(ablation, "ablated", 1)) for col in t.columns]
            tables[f"{model} · {ablation} (n = {' / '.join(str(len(a)) for a in arms.values())})"] = t
    return pd.concat(tables, names=["run"]).fillna("") if tables else pd.DataFrame()


def _paper_reduction(ch: Chapter, model: str, ablation: str) -> float | None:
    """The paper's EM reduction % a (model, ablation) row is compared with, if any."""
    if ablation.startswith("random"):
        return value("random_ablation")
    if ablation == "single" and model in TRANSFER_CLAIMS and model != ch.p.direction_organism:
        return value(TRANSFER_CLAIMS[model])
    return None


def ablation_table(ch: Chapter, scored: pd.DataFrame) -> pd.DataFrame:
    """``emlib.metrics.reduction_table`` of the runs, with the paper's figure beside each row
    (``paper_reduction`` text, ``paper_reduction_pct`` for the bar chart's diamonds: transfer rows only)."""
    t = reduction_table(scored, seed=ch.p.seed, judge_error=ch.judge_error)
    paper = [_paper_reduction(ch, m, a) for m, a in zip(t["model"], t["ablation"])]
    t["paper_reduction"] = ["" if v is None else f"< {v:g} (noisy)" if a.startswith("random") else f"{v:g}"
                            for v, a in zip(paper, t["ablation"])]
    t["paper_reduction_pct"] = [None if a.startswith("random") else v for v, a in zip(paper, t["ablation"])]
    return t


def format_ablation(t: pd.DataFrame) -> pd.DataFrame:
    """A readable version of ``ablation_table``."""
    def pct(v: float, lo: float | None = None, hi: float | None = None, n_before: int | None = None) -> str:
        if pd.isna(v):
            return f"not estimable: {n_before} EM answer(s) before (fewer than {MIN_EM_BEFORE})"
        return f"{v:.1f}" + ("" if lo is None else f" ({lo:.1f} to {hi:.1f})")

    return pd.DataFrame({
        "model": t["model"], "ablation": t["ablation"], "responses": t["n"],
        "EM % before": [f"{v:.1f}" for v in t["em_before_pct"]],
        "EM % after (95% CI)": [pct(v, lo, hi) for v, lo, hi in zip(t["em_after_pct"], t["em_after_lo"], t["em_after_hi"])],
        **({"EM % after, judge-corrected": [pct(v, lo, hi) for v, lo, hi in zip(
            t["em_after_corr_pct"], t["em_after_corr_lo"], t["em_after_corr_hi"])]} if "em_after_corr_pct" in t else {}),
        "EM reduction % (95% CI)": [pct(v, lo, hi, n) for v, lo, hi, n in
                                    zip(t["reduction_pct"], t["reduction_lo"], t["reduction_hi"], t["em_before_n"])],
        "paper reduction %": t["paper_reduction"],
        "coherent % before → after": [f"{b:.0f} → {a:.0f}" for b, a in zip(t["coherent_before_pct"], t["coherent_after_pct"])],
    }).set_index(["model", "ablation"])


def _reduction_text(v: float, lo: float, hi: float, before: float) -> str:
    return (f"not estimable: EM before {before:.1f}% (fewer than {MIN_EM_BEFORE} EM answers)" if pd.isna(v)
            else f"EM {v:+.0f}% reduction ({lo:.0f} to {hi:.0f}); EM before {before:.1f}%")


def _reduction_verdict(v: float, lo: float, hi: float, before: float, random: bool = False) -> str:
    if pd.isna(v):
        return (f"not testable: {before:.1f}% EM before ablation, too few EM answers to remove (fewer than "
                f"{MIN_EM_BEFORE})")
    if random:  # the paper: a random vector changes EM by less than 10%
        return ("reproduced: the random vectors' change is within ±10%" if -10 <= lo and hi <= 10 else
                f"not reproduced: the random vectors change EM by {v:+.0f}% ({lo:.0f} to {hi:.0f})" if lo > 10 or hi < -10
                else f"inconclusive: the interval ({lo:.0f} to {hi:.0f}) is too wide to tell a change under 10%")
    return (f"reproduced in direction: EM falls by {v:.0f}% ({lo:.0f} to {hi:.0f})" if lo > 0 else
            f"not reproduced: no EM reduction shown ({v:+.0f}%, {lo:.0f} to {hi:.0f})")


def record_ablation(ch: Chapter, table: pd.DataFrame, scored: pd.DataFrame) -> None:
    """The results page's figures: transfer ablation per compared organism and the pooled random controls."""
    p = ch.p
    for model, claim in TRANSFER_CLAIMS.items():
        rows = table[(table["model"] == model) & (table["ablation"] == "single")]
        if not rows.empty and model != p.direction_organism:
            r = rows.iloc[0]
            record(p, ch.params_file, claim, _reduction_text(r.reduction_pct, r.reduction_lo, r.reduction_hi, r.em_before_pct),
                   None if pd.isna(r.reduction_pct) else (r.reduction_pct, r.reduction_lo, r.reduction_hi),
                   _reduction_verdict(r.reduction_pct, r.reduction_lo, r.reduction_hi, r.em_before_pct))
    c = classify(scored)
    src = c[c["model"] == p.direction_organism]
    before, rand = src[src["ablation"] == "none"]["em"], src[src["ablation"].str.startswith("random")]["em"]
    if len(rand):
        v, lo, hi = reduction(before.to_numpy(), rand.to_numpy(), seed=p.seed)
        n_random = src.loc[src["ablation"].str.startswith("random"), "ablation"].nunique()
        record(p, ch.params_file, "random_ablation", f"{n_random} vectors pooled: "
               + _reduction_text(v, lo, hi, 100 * before.mean()), None if pd.isna(v) else (v, lo, hi),
               _reduction_verdict(v, lo, hi, 100 * before.mean(), random=True))
