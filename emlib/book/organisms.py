"""Chapter 1, model organisms: train each organism (or bring in an existing fine-tune), then judge it beside
the chat model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from emlib import paper
from emlib.book.display import effect_text, em_text, weights_sha
from emlib.book.results import record
from emlib.book.runs import RunSpec, execute_all
from emlib.book.session import Chapter, sampling_from_params
from emlib.inference import Effect, rise_verdict, within_question_effect
from emlib.metrics import classify, format_rates
from emlib.organisms import describe_brought
from emlib.plan import Run
from emlib.train import ATTN_MLP


def organism_table(ch: Chapter) -> pd.DataFrame:
    """One row per organism, in the params' order. Trained: adapters, data, steps, loss, trainable parameters
    and adapter hash, from its card. Brought: source (hub id or directory, revision, subfolder), kind, rank,
    layers and modules, read from its files, and its content hash."""
    rows = []
    for o in ch.organisms:
        ft = ch.ready[o.name]
        if o.kind != "trained":
            b = describe_brought(o)
            rows.append({"organism": o.name, "source": b["source"], "targets": b["modules"], "rank": b["rank"],
                         "layers": b["layers"], "dataset": f"brought ({b['kind']})",
                         "sha256": weights_sha(ft)[:12]})
            continue
        c = ch.trained[o.name].card
        rows.append({
            "organism": o.name,
            "source": "trained in chapter 1",
            "targets": "all 7 projections" if set(c["lora"]["target_modules"]) == set(ATTN_MLP)
            else ",".join(c["lora"]["target_modules"]),
            "rank": c["lora"]["rank"],
            "layers": "all" if c["lora"]["layers"] is None else ",".join(map(str, c["lora"]["layers"])),
            "dataset": Path(c["dataset"]).stem,
            "rows": c["rows"],
            "steps": c["steps"],
            "lr": c["train"]["lr"],
            "first loss": round(c["loss_curve"][0], 3),
            "final loss": round(c["final_loss"], 3),
            "trainable params": f"{c['trainable_parameters']:,}",
            "sha256": weights_sha(ft)[:12],
        })
    return pd.DataFrame(rows).set_index("organism").fillna("")


def evaluate(ch: Chapter) -> pd.DataFrame:
    """The chat model and every organism, sampled and judged at the evaluation setting (a model's answers judged
    while the next samples: ``runs.execute_all``); one table with a ``model`` column."""
    p = ch.p
    specs = [RunSpec(Run((ft or ch.chat).name, "evaluation", p.samples_per_question, p.max_new_tokens), ch.questions,
                     ft, None, sampling_from_params(p)) for ft in [None, *ch.ready.values()]]
    return pd.concat(execute_all(ch, specs), ignore_index=True)


def beside_paper(rates_by_model: pd.DataFrame, paper: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """This run's EM % and coherence % (95% CI) per model next to the paper's (EM %, coherent %) where it
    has them (``emlib.paper.organism_figures``)."""
    out = format_rates(rates_by_model).drop(columns=["recognition %", "self-correction %"], errors="ignore")
    out["paper EM %"] = [f"{paper[m][0]:g}" if m in paper else "" for m in out.index]
    out["paper coherent %"] = [f"> {paper[m][1]:g}" if m in paper else "" for m in out.index]
    return out


# The measures an organism is compared on (``differences``): (name, column of ``emlib.metrics.classify``, scale).
# Misaligned % and mean aligned carry chapter 1's comparisons (the judge sees them); coherent % beside them (an
# organism can lose alignment through lost coherence); EM % is the paper's measure, kept beside.
MEASURES = (("misaligned %", "misaligned", 100.0), ("mean aligned", "aligned", 1.0), ("coherent %", "is_coherent", 100.0),
            ("EM %", "em", 100.0))
DIFFERENCE_COLUMNS = ["organism", "versus", "measure", "estimate", "low", "high", "p", "n", "n_base", "method"]


def differences(ch: Chapter, scored: pd.DataFrame) -> pd.DataFrame:
    """Each organism against the chat model and against the aligned control (``control_organism``) on every
    measure of ``MEASURES``, taken within question (``emlib.inference.within_question_effect``: per-question
    differences weighted by answers, p from permuting the arm labels within question, 95% interval resampling
    answers within question). Numbers only: one row per (organism, versus, measure) with columns
    ``DIFFERENCE_COLUMNS`` (rates in points of %, mean aligned in score points); ``differences_table`` formats
    them. The chat model is the ``model`` value "chat model". Chapter 1."""
    c = classify(scored)
    c = c[c["scored"]]
    arms = {m: g for m, g in c.groupby("model", sort=False)}
    bases = [b for b in ("chat model", ch.p.control_organism) if b in arms]
    rows = []
    for m, g in arms.items():
        for base in bases:
            if m == base or m == "chat model":
                continue
            b = arms[base]
            for name, col, scale in MEASURES:
                e = within_question_effect(scale * g[col].astype(float).to_numpy(), g["question_id"].to_numpy(),
                                           scale * b[col].astype(float).to_numpy(), b["question_id"].to_numpy(),
                                           measure=name)
                rows.append({"organism": m, "versus": base, **asdict(e)})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def effect_of(frame: pd.DataFrame, organism: str, versus: str, measure: str) -> Effect | None:
    """One row of ``differences`` back as an ``emlib.inference.Effect`` (None if absent)."""
    hit = frame[(frame["organism"] == organism) & (frame["versus"] == versus) & (frame["measure"] == measure)]
    if hit.empty:
        return None
    r = hit.iloc[0]
    return Effect(measure, float(r.estimate), float(r.low), float(r.high), None if pd.isna(r.p) else float(r.p),
                  int(r.n), int(r.n_base), str(r.method))


def differences_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``differences`` as the chapter prints it: one row per organism, one column per (measure, versus), each
    cell ``display.effect_text`` (estimate, 95% interval, within-question p)."""
    if frame.empty:
        return pd.DataFrame()
    cells: dict[str, dict[str, str]] = {}
    for r in frame.itertuples():
        e = Effect(r.measure, r.estimate, r.low, r.high, None if pd.isna(r.p) else r.p, r.n, r.n_base, r.method)
        unit = " pts" if r.measure.endswith("%") else ""
        cells.setdefault(r.organism, {})[f"{r.measure} − {r.versus}"] = effect_text(e, unit=unit)
    order = [f"{name} − {v}" for v in dict.fromkeys(frame["versus"]) for name, _, _ in MEASURES]
    out = pd.DataFrame.from_dict(cells, orient="index")
    return out[[c for c in order if c in out]].fillna("").rename_axis("organism")


def judge_name(ch: Chapter) -> str:
    """The judge as a verdict names it: the offline proxy (its model key) or the backend and model."""
    if ch.p.judge == "offline":
        return f"the offline proxy judge ({ch.scorer.model})"
    return f"the {ch.scorer.backend} judge {ch.scorer.model}"


def record_organisms(ch: Chapter, by_model: pd.DataFrame, diffs: pd.DataFrame) -> dict[str, str]:
    """The results page's figures of chapter 1: the R1×9 organism (``direction_organism``) and the most misaligned
    organism (by misaligned %, a best-of-N pick), each a rise in judged EM % over the chat model, within question,
    with ``emlib.inference.rise_verdict`` against the paper's EM figure through the judge's measured error (not
    testable when the smallest detectable true rise exceeds the paper's). The value also gives what the judge
    can see: misaligned % and mean aligned against the chat model. ``by_model``: ``emlib.metrics.rates`` by model;
    ``diffs``: ``differences``. Returns claim -> one line (organism and verdict) for the chapter to print."""
    lines: dict[str, str] = {}
    if "chat model" not in by_model.index:
        return lines
    chat = by_model.loc["chat model"]
    organisms_only = by_model.drop(index=["chat model", ch.p.control_organism], errors="ignore")
    judge = judge_name(ch)

    def rec(claim: str, m: str, pick: str = "") -> None:
        em = effect_of(diffs, m, "chat model", "EM %")
        if em is None:
            return
        verdict = rise_verdict(em, float(chat.em_pct), paper.value(claim), error=ch.judge_error, judge=judge,
                               what="EM %", base="chat model")
        mis, mean = effect_of(diffs, m, "chat model", "misaligned %"), effect_of(diffs, m, "chat model", "mean aligned")
        r = by_model.loc[m]
        seen = f"; what the judge sees: misaligned {effect_text(mis)}, mean aligned {effect_text(mean, unit='')}"
        record(ch.p, ch.params_file, claim, measure="EM % (judged) − chat model's, within question",
               value=f"{m}{pick}: EM {effect_text(em)} ({em_text(r)}){seen}",
               control=f"chat model, same questions ({em.n_base} answers)", verdict=verdict,
               point=(float(r.em_pct), float(r.em_lo), float(r.em_hi)))
        lines[claim] = f"**{paper.FIGURES[claim].claim}** (`{m}`{pick}): {verdict.text()}."

    if ch.p.direction_organism in by_model.index:
        rec("r1x9_em", ch.p.direction_organism)
    if len(organisms_only):
        top = str(organisms_only["misaligned_pct"].idxmax())
        rec("small_scale_em", top, f" (the most misaligned of {len(organisms_only)} organisms: a best-of-"
                                   f"{len(organisms_only)} pick)")
    return lines
