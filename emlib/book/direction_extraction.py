"""Chapter 2, a misalignment direction and steering with it: extract each organism's mean-diff direction
from its judged answers, compare directions across fine-tunes and topics, sweep steering of the chat model.
Chapters 3–5 read the direction and the sweep back from the cache (``source_of``, ``steering_sweep``).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emlib import directions
from emlib.book.display import em_text
from emlib.book.results import increase_verdict, record
from emlib.book.session import (Chapter, answer_means, answer_sums, describe, intervention_sampling, model_provenance,
                                sample_and_judge)
from emlib.cache import content_key
from emlib.config import headline_cell, steering_layers
from emlib.data import BUILTIN_MEDICAL_QUESTIONS, Question, load_questions
from emlib.directions import Directions
from emlib.interventions import steer
from emlib.metrics import JudgeError, classify, effects, rates
from emlib.paper import value

MIN_RELIABLE_SET = 10  # fewer misaligned answers than this: the direction table flags the direction as noisy
NULL_DRAWS = 50  # label-free splits per random-subset null band


def extract_direction(ch: Chapter, name: str, questions: list[Question] | None = None) -> tuple[Directions | None, pd.DataFrame]:
    """Organism ``name``'s judged answers to ``questions`` (default: the chapter's) at the extraction setting
    (``direction_samples_per_question`` answers per question for the direction organism's own direction,
    ``compare_samples_per_question`` for every other set; model-diff amplified if ``direction_amplification`` ≠ 1),
    and its mean-diff direction [n_layers, d_model] from them (``emlib.directions.from_scored``; None if a set is
    empty), saved under ``cache_dir/directions/``."""
    p, ft = ch.p, ch.ready[name]
    own = name == p.direction_organism and questions is None  # the direction itself; every other set is a comparison
    n = p.direction_samples_per_question if own or p.compare_samples_per_question is None else p.compare_samples_per_question
    sampling = replace(intervention_sampling(p, n), amplification=p.direction_amplification)
    scored = sample_and_judge(ch, questions, ft=ft, sampling=sampling)
    prov = {"organism": name, **model_provenance(describe(ch, ft)),
            **({"amplification": p.direction_amplification} if p.direction_amplification != 1.0 else {})}
    d = directions.from_scored(scored, partial(answer_means, ch, ft=ft), p.set_coherent_min,
                               p.set_aligned_min, p.set_misaligned_max, provenance=prov)
    if d is not None:
        directions.save(d, Path(p.cache_dir) / "directions" / f"{name}-{content_key(d.provenance)}.safetensors")
    return d, scored


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


def subset_null_band(ch: Chapter, name: str, scored: pd.DataFrame, other: Directions) -> tuple[list[float], list[float]] | None:
    """The 95% band, per layer, of cos(``other``, mean-diff of a label-free split of organism ``name``'s coherent
    answers into sets of its two sets' sizes): what ``other`` would share with ``name``'s direction if the
    misaligned/aligned labels carried nothing (``emlib.directions.subset_null``). None if a set is empty."""
    p = ch.p
    aligned, misaligned = directions.response_sets(scored, p.set_coherent_min, p.set_aligned_min, p.set_misaligned_max)
    if len(aligned) == 0 or len(misaligned) == 0:
        return None
    pool = scored[scored["coherent"] > p.set_coherent_min]
    sums, tokens = answer_sums(ch, pool, ft=ch.ready[name])
    lo, hi = directions.null_band(directions.subset_null(sums, tokens, len(misaligned), len(aligned), NULL_DRAWS,
                                                         seed=p.seed), other)
    return lo.tolist(), hi.tolist()


def topic_direction(ch: Chapter) -> tuple[Directions | None, pd.DataFrame]:
    """The direction organism's mean-diff direction from its answers to this project's medical questions
    (its training topic; None if a set is empty), with those judged answers. Chapter 4 uses the answers
    as the medical context."""
    return extract_direction(ch, ch.p.direction_organism, load_questions(BUILTIN_MEDICAL_QUESTIONS))


def topic_cosines(general: Directions, topic: Directions | None) -> dict[str, list[float]]:
    """cos(general, topic-specific direction) per layer, keyed for ``plotting.by_layer`` ({} without one)."""
    if topic is None:
        return {}
    return {"general vs medical-question direction": directions.cosine_by_layer(general, topic).tolist()}


def direction_table(found: dict[str, Directions | None], scored: dict[str, pd.DataFrame], ch: Chapter) -> pd.DataFrame:
    """Per organism: how its answers were sampled, responses, the two sets' sizes and answer tokens, and the
    direction's peak norm."""
    p = ch.p
    how = "plain" if p.direction_amplification == 1.0 else f"model-diff amplified, α = {p.direction_amplification:g}"
    rows = []
    for name, d in found.items():
        aligned, misaligned = directions.response_sets(scored[name], p.set_coherent_min, p.set_aligned_min,
                                                       p.set_misaligned_max)
        rows.append({"organism": name, "sampling": how, "responses": len(scored[name]), "aligned set": len(aligned),
                     "misaligned set": len(misaligned),
                     "tokens (aligned / misaligned)": "" if d is None else
                     f"{d.provenance['tokens_aligned']} / {d.provenance['tokens_misaligned']}",
                     "direction": "none: a set is empty" if d is None else
                     f"peak norm {d.norms().max():.2f} at layer {int(d.norms().argmax())}"
                     + (f"; rests on {len(misaligned)} misaligned answer(s): mostly noise"
                        if 0 < len(misaligned) < MIN_RELIABLE_SET else "")})
    return pd.DataFrame(rows).set_index("organism")


def steering_sweep(ch: Chapter, direction: Directions) -> pd.DataFrame:
    """The chat model steered with λ·v at each steering layer (``emlib.config.steering_layers``) and λ of
    ``steer_scales``; the unsteered model; and at every (layer, λ) a same-norm random vector (seed + 1), with
    ``random_controls`` of them (seeds + 1..N) at the headline cell (``emlib.config.headline_cell``). One judged
    table with columns ``vector`` (none / mean-diff / random), ``layer``, ``scale``, ``control`` (the random
    vector's seed offset; 0 otherwise), ``setting``. Chapters 2 and 5."""
    p = ch.p
    controls = {k: directions.random_like(direction, seed=p.seed + k) for k in range(1, p.random_controls + 1)}
    layers, headline = steering_layers(p, direction.n_layers), headline_cell(p, direction.n_layers)
    cells = [(layer, s) for layer in layers for s in p.steer_scales]
    runs: list[tuple[str, int, float, int]] = [("none", -1, 0.0, 0)]
    runs += [("mean-diff", layer, s, 0) for layer, s in cells]
    runs += [("random", layer, s, k) for layer, s in cells for k in (controls if (layer, s) == headline else [1])]
    sampling = intervention_sampling(p, p.steer_samples_per_question)
    tables = []
    for vector, layer, scale, k in tqdm(runs, desc="steering runs"):
        vec = direction if vector == "mean-diff" else controls.get(k)
        label = f"{vector} L{layer} x{scale:g}" + (f" seed+{k}" if k > 1 else "")
        iv = None if vector == "none" else steer(vec.vectors[layer], layer, scale, label=label)
        t = sample_and_judge(ch, label="chat model", sampling=sampling, intervention=iv)
        setting = "unsteered" if vector == "none" else f"{vector} L{layer} λ={scale:g}"
        tables.append(t.assign(vector=vector, layer=layer, scale=scale, control=k, setting=setting))
    return pd.concat(tables, ignore_index=True)


def cell_effects(sweep: pd.DataFrame, layer: int, scale: float, judge_error: JudgeError | None = None) -> pd.DataFrame:
    """The mean-diff vector's effect at one (layer, λ) cell of ``steering_sweep`` (``emlib.metrics.effects``):
    steered against the unsteered model and against the random vectors at the same cell, pooled (their count in
    the column name). Chapter 2's headline."""
    c = classify(sweep)
    c = c[c["scored"]]
    at_cell = (c["layer"] == layer) & (c["scale"] == scale)
    random = c[(c["vector"] == "random") & at_cell]
    arms = {"steered": c[(c["vector"] == "mean-diff") & at_cell], "unsteered": c[c["vector"] == "none"],
            f"random, {random['control'].nunique()} vectors": random}
    return effects(arms, "steered", list(arms)[1:], judge_error)


def record_directions(ch: Chapter, cosines: dict[str, list[float]], sweep: pd.DataFrame,
                      nulls: dict[str, tuple[list[float], list[float]] | None] | None = None) -> None:
    """The results page's figures: cross-fine-tune cosines (with the layers above their random-subset null), and
    steering at the headline cell fixed by the params (``emlib.config.headline_cell``) against the unsteered model
    and its random vectors, with the best cell of the sweep beside it, named as a best-of-sweep pick."""
    threshold, nulls = value("cosine_finetunes"), nulls or {}
    pairs = [f"{pair}: {int((np.asarray(v) > threshold).sum())} of {len(v)} layers > {threshold:g} "
             f"(median {np.median(v):.2f})"
             + (f", above the random-subset null at {int((np.asarray(v) > np.asarray(nulls[pair][1])).sum())}"
                if nulls.get(pair) else "") for pair, v in cosines.items()]
    record(ch.p, ch.params_file, "cosine_finetunes", "; ".join(pairs), verdict=cosine_verdict(cosines, nulls, threshold))
    r = rates(sweep, by=["vector", "layer", "scale"], judge_error=ch.judge_error).reset_index()
    n_layers = ch.info.n_layers
    layer, scale = headline_cell(ch.p, n_layers)
    head = r[(r["vector"] == "mean-diff") & (r["layer"] == layer) & (r["scale"] == scale)].iloc[0]
    none = r[r["vector"] == "none"].iloc[0]
    table = cell_effects(sweep, layer, scale)
    vs_none = table["steered − unsteered (95% CI)"]
    vs_random = table[next(c for c in table.columns if c.startswith("steered − random"))]
    steered = r[r["vector"] == "mean-diff"]
    best = steered.loc[steered["em_pct"].idxmax()]
    best_random = r[(r["vector"] == "random") & (r["layer"] == best.layer) & (r["scale"] == best.scale)]
    text = (f"headline cell (layer {layer}, λ {scale:g}, fixed in the params): {em_text(head)}; steered − unsteered: "
            f"EM {vs_none['EM %']} pts, mean aligned {vs_none['mean aligned']}; steered − random "
            f"({ch.p.random_controls} vectors): EM {vs_random['EM %']} pts, mean aligned {vs_random['mean aligned']}"
            f"; best of {len(steered)} cells (a best-of-sweep pick): {em_text(best)} at layer {best.layer}, "
            f"λ {best.scale:g}" + (f", its random vector there {em_text(best_random.iloc[0])}" if len(best_random) else ""))
    verdict = increase_verdict("EM", round(head.em_pct * head.n / 100), int(head.n), round(none.em_pct * none.n / 100),
                               int(none.n), "unsteered chat model", ch.judge_error,
                               "the headline cell was fixed in the params before the run; mean aligned steered − "
                               f"random: {vs_random['mean aligned']}")
    record(ch.p, ch.params_file, "steering_em", text, (head.em_pct, head.em_lo, head.em_hi), verdict)


def cosine_verdict(cosines: dict[str, list[float]], nulls: dict[str, tuple[list[float], list[float]] | None],
                   threshold: float) -> str:
    """Reproduced when every compared pair's cosine exceeds ``threshold`` at all but a twelfth of the layers (the
    paper: all but 4 of 48) and its random-subset null everywhere it does; "shared beyond chance" when the
    cosines only clear the null at most layers; not reproduced otherwise. Pairs without a null (the Gaussian
    floor, an empty set) are left out."""
    judged = {pair: (np.asarray(v), np.asarray(nulls[pair][1])) for pair, v in cosines.items() if nulls.get(pair)}
    if not judged:
        return "not testable: no compared organism gave a direction with a null (a set was empty)"
    parts, verdicts = [], []
    for pair, (v, hi) in judged.items():
        above_null, above = int((v > hi).sum()), int((v > threshold).sum())
        parts.append(f"{pair}: above the null at {above_null} of {len(v)} layers, > {threshold:g} at {above}")
        verdicts.append("reproduced" if above >= len(v) - len(v) / 12 and above_null >= above else
                        "shared beyond chance, below the paper's level" if above_null > len(v) / 2 else "not reproduced")
    worst = next(v for v in ("not reproduced", "shared beyond chance, below the paper's level", "reproduced") if v in verdicts)
    return f"{worst} ({'; '.join(parts)}); cosines under the null's top cannot be told from label-free splits"


def record_topic(ch: Chapter, cosines: dict[str, list[float]]) -> None:
    """The results page's topic-specific vs general figure: layers above the paper's threshold, median, min."""
    if not cosines:
        record(ch.p, ch.params_file, "topic_vs_general", "not measured: a set of medical-question answers was empty",
               verdict="not testable: no misaligned (or no aligned) coherent answer to the medical questions")
        return
    threshold = value("topic_vs_general")
    v = np.asarray(next(iter(cosines.values())))
    above = int((v > threshold).sum())
    record(ch.p, ch.params_file, "topic_vs_general", f"{above} of {len(v)} layers > {threshold:g} "
           f"(median {np.median(v):.2f}, min {v.min():.2f})",
           verdict="reproduced" if above >= len(v) - len(v) / 12 else
           f"not reproduced: cosine > {threshold:g} at {above} of {len(v)} layers (no null computed for this pair)")
