"""Chapter 4, what the rank-1 adapters read and where they write: the adapters beside the direction and
probes on their LoRA scalars; the activation changes they induce downstream are ``emlib.book.geometry``'s."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib import adapter_geometry, probes
from emlib.book.results import record
from emlib.book.session import Chapter, FineTune, describe, load, model_provenance
from emlib.directions import Directions
from emlib.models import LoadInfo
from emlib.organisms import fetch
from emlib.book import display
from emlib.book.geometry import Downstream, downstream_geometry, downstream_note, downstream_verdict  # noqa: F401 (chapter 4 calls them here)
from emlib.inference import Effect, Verdict
from emlib.metrics import Thresholds
from emlib.paper import D_MODEL, FIGURES, PROBE_ROLES, value
from emlib.sources import read_adapter


@dataclass(frozen=True)
class Probed:
    """The direction organism for chapter 4: loaded unmerged with its rank-1 adapters, or ``skipped`` with the
    reason (a rank > 1 adapter or a full fine-tune has no per-token LoRA scalar to read)."""

    name: str
    ft: FineTune
    info: LoadInfo
    skipped: str | None = None
    model: nn.Module | None = None
    tok: PreTrainedTokenizerBase | None = None
    adapters: list[probes.Adapter] | None = None


def why_not_rank1(ch: Chapter, name: str) -> str | None:
    """None if organism ``name`` is rank-1 LoRA adapters throughout (a trained r1x9, or a brought rank-1
    adapter, read from its files); otherwise one sentence saying why chapter 4's LoRA-scalar sections skip it."""
    o = next(o for o in ch.organisms if o.name == name)
    if o.kind == "trained":
        return None if o.preset == "r1x9" else f"`{name}` is an {o.preset} organism (rank 32)"
    if o.kind == "model":
        return f"`{name}` is a full fine-tune: it has no adapters to read"
    info = read_adapter(fetch(o))
    return None if info.rank1 else f"`{name}`'s adapter has rank {info.rank}"


def probed_organism(ch: Chapter) -> Probed:
    """The direction organism, loaded unmerged with its rank-1 adapters if it has them; if not, ``skipped`` says
    why, and nothing is loaded."""
    name = ch.p.direction_organism
    ft, reason = ch.ready[name], why_not_rank1(ch, name)
    if reason is not None:
        return Probed(name, ft, describe(ch, ft), skipped=(
            f"**The LoRA-scalar sections are skipped:** {reason}. They read A·x, one number per token per adapter, "
            "which only rank-1 adapters have. The direction, steering and ablation chapters work for any fine-tune, "
            "and the comparison of induced activation changes at the end of this chapter runs for this one."))
    model, tok, info = load(ch, ft, merge=False)  # unmerged: the adapter modules are read
    return Probed(name, ft, info, model=model, tok=tok, adapters=probes.rank1_adapters(model))


def adapter_table(adapters: list[probes.Adapter], direction: Directions, alpha: float = Thresholds().alpha) -> pd.DataFrame:
    """Per rank-1 adapter: layer, ‖A‖, ‖B‖ (scaling included), cos(B, mean-diff direction at its layer), the same in
    units of 1/√d, its p against a uniformly random direction and whether it lies outside the family-wise band
    (``emlib.adapter_geometry.b_cosine_test``; its ``attrs`` — ``d``, ``alpha``, ``band``, ``family_band`` — are kept)."""
    test = adapter_geometry.b_cosine_test(adapter_geometry.b_direction_cosines(adapters, direction.vectors), direction.width, alpha)
    table = pd.DataFrame({"layer": [a.layer for a in adapters], "‖A‖": [round(float(a.a.norm()), 3) for a in adapters],
                          "‖B‖": [round(float(a.b.norm()), 3) for a in adapters], "cosine(B, mean-diff)": test["cosine"].round(3),
                          "cos·√d": test["cos·√d"].round(2), "p (Bonferroni)": test["p (Bonferroni)"].round(3),
                          "outside the band": test["outside"]}, index=test.index)
    table.attrs.update(test.attrs)
    return table


PAPER_B_HALF_DIGIT = 0.005  # the paper prints its cosine to two decimals: a value it prints is within this of the truth


def paper_b_units() -> float:
    """The paper's B-vector cosine in units of 1/√d at its own width (``paper.D_MODEL``)."""
    return value("b_cosine") * np.sqrt(D_MODEL)


def paper_b_units_max() -> float:
    """The largest cosine the paper's printed figure allows, in units of 1/√d: (its figure + ``PAPER_B_HALF_DIGIT``)·√d."""
    return (value("b_cosine") + PAPER_B_HALF_DIGIT) * np.sqrt(D_MODEL)


def b_cosines(adapters_table: pd.DataFrame) -> pd.Series:
    """The B-vector cosines of ``adapter_table`` in units of 1/√d, with the family-wise band in the same units
    (``attrs["band"]``) and its label (``attrs["band_label"]``): what chapter 4's plot draws."""
    a = adapters_table.attrs
    units = adapters_table["cos·√d"].copy()
    units.attrs.update(band=a["family_band"] * np.sqrt(a["d"]), band_label=band_label(adapters_table))
    return units


def band_label(adapters_table: pd.DataFrame) -> str:
    """The B-vector null band in words, as the plot, the text and the verdict say it."""
    a, k = adapters_table.attrs, len(adapters_table)
    return (f"random direction at d = {a['d']}: |cos| ≤ {a['family_band']:.3f} = {a['family_band'] * np.sqrt(a['d']):.2f}/√d "
            f"({100 * (1 - a['alpha']):g}% family-wise over {k} adapters, Bonferroni)")


def b_verdict(adapters_table: pd.DataFrame) -> Verdict:
    """``b_cosine``: reproduced when every B vector lies inside the family-wise band of a random direction, or is no
    further from orthogonal than the paper's own figure in units of 1/√d (its own figure, at its width, lies outside that band
    too); not reproduced otherwise."""
    a = adapters_table.attrs
    outside = adapters_table.index[adapters_table["outside the band"]].tolist()
    band = (f"a random direction's {100 * (1 - a['alpha']):g}% family-wise band at d = {a['d']}, |cos|·√d ≤ "
            f"{a['family_band'] * np.sqrt(a['d']):.2f}")
    paper = f"the paper's {value('b_cosine'):g} at d = {D_MODEL} is {paper_b_units():.1f}/√d"
    largest = adapters_table["cos·√d"].abs().max()
    if not outside:
        return Verdict("reproduced", f"every B vector lies inside {band} (largest {largest:.1f}); {paper}")
    if largest < paper_b_units_max():  # the paper's own "nearly orthogonal" lies outside that band too
        return Verdict("reproduced", f"{len(outside)} of {len(adapters_table)} B vectors lie outside {band} "
                       f"({', '.join(outside)}), but none is further from orthogonal than the paper's printed figure allows, "
                       f"in units of 1/√d (largest {largest:.1f}, under {paper_b_units_max():.1f}; {paper})")
    return Verdict("not reproduced", f"{len(outside)} of {len(adapters_table)} B vectors lie outside {band} "
                   f"({', '.join(outside)}); {paper}")


def probe_datasets(ch: Chapter, general: pd.DataFrame, medical: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """``emlib.probes.probe_datasets`` with the params' set thresholds."""
    p = ch.p
    return probes.probe_datasets(general, medical, p.set_coherent_min, p.set_aligned_min, p.set_misaligned_max)


Probes = dict[str, probes.ProbeResult | None]
ROLE_PERMUTATIONS = 500  # label permutations per trained probe for its coefficients' p (smallest p 1/501: Holm over
# 2 × 9 tests at 0.05 needs p < 0.0028); the random-readout controls get none (their roles are not read)


def fit_probes(ch: Chapter, probed: Probed, datasets: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> tuple[Probes, Probes]:
    """A probe per dataset on the LoRA-scalar features of its responses through the probed organism (unmerged),
    and the same probe on the control's features, every A replaced by a same-norm random vector
    (``probes.random_readouts``): (trained, control), each name -> ``ProbeResult``, or None where a class has
    fewer than ``MIN_PROBE_CLASS`` answers. One teacher-forced pass over the datasets' distinct responses gives
    both readouts."""
    adapters, n, seed = probed.adapters, len(probed.adapters), ch.p.seed
    keys = ["question", "response"]
    rows = pd.concat([r[keys] for r, _ in datasets.values()]).drop_duplicates(ignore_index=True)
    features = probes.response_features(probed.model, probed.tok, rows, adapters + probes.random_readouts(adapters, seed),
                                        ch.p.activation_batch_size, cache_dir=ch.p.cache_dir,
                                        model_provenance=model_provenance(probed.info))  # [n_rows, 2 · n_adapters]
    where = {k: i for i, k in enumerate(zip(rows["question"], rows["response"]))}
    names = [a.name for a in adapters]
    trained: Probes = {}
    control: Probes = {}
    for name, (r, labels) in datasets.items():
        at = [where[k] for k in zip(r["question"], r["response"])]
        for out, columns, n_perm in ((trained, slice(0, n), ROLE_PERMUTATIONS), (control, slice(n, 2 * n), 0)):
            out[name] = (probes.fit_probe(features[at, columns], labels, names, seed=seed, n_perm=n_perm)
                         if probes.fittable(labels) else None)
    return trained, control


def probe_table(results: dict[str, probes.ProbeResult | None], datasets: dict[str, tuple[pd.DataFrame, np.ndarray]],
                control: dict[str, probes.ProbeResult | None] | None = None) -> pd.DataFrame:
    """Cross-validated accuracy and AUROC (95% CIs) per probe, each followed by the same probe on random readouts
    (``control``, if given); why a probe was not fitted."""
    rows, index = [], []
    entries = [(name, name, r) for name, r in results.items()]  # (row label, dataset, result)
    if control is not None:
        entries = [e for name, r in results.items()
                   for e in ((name, name, r), (f"{name}: random readouts (control)", name, control[name]))]
    for label, name, r in entries:
        index.append(label)
        labels = datasets[name][1]
        if r is None:
            rows.append({"responses (positive)": f"{len(labels)} ({int(labels.sum())})", "folds": "",
                         "accuracy (95% CI)": f"not fitted: fewer than {probes.MIN_PROBE_CLASS} answers in a class",
                         "AUROC (95% CI)": ""})
        else:
            rows.append({"responses (positive)": f"{r.n} ({r.n_positive})", "folds": r.folds,
                         "accuracy (95% CI)": f"{r.accuracy:.2f} ({r.accuracy_ci[0]:.2f}–{r.accuracy_ci[1]:.2f})",
                         "AUROC (95% CI)": f"{r.auroc:.2f} ({r.auroc_ci[0]:.2f}–{r.auroc_ci[1]:.2f})"})
    return pd.DataFrame(rows, index=pd.Index(index, name="probe"))


def probe_effects(trained: Probes, control: Probes, seed: int = 0) -> dict[str, Effect | None]:
    """Per probe, trained minus random-readout AUROC on the same answers (``emlib.probes.auroc_difference``: paired
    bootstrap over answers of the out-of-fold scores); None where a probe was not fitted."""
    return {name: None if r is None or control.get(name) is None else
            probes.auroc_difference(r.labels, r.scores, control[name].scores, seed=seed) for name, r in trained.items()}


def beats_random(e: Effect) -> bool:
    """Whether the trained readouts carry more than random ones: the difference's 95% interval is above 0."""
    return e.low > 0


def probe_reading(name: str, e: Effect | None) -> str:
    """One probe's verdict in words: ``"misaligned vs aligned: trained − random AUROC +0.07 (−0.05 to +0.18), p = …:
    no evidence the trained readouts carry more"``."""
    if e is None:
        return f"{name}: not fitted (fewer than {probes.MIN_PROBE_CLASS} answers in a class)"
    return f"{name}: trained − random AUROC {display.effect_text(e, unit='', digits=2)}: {reading(e)}"


def reading(e: Effect) -> str:
    """What a trained − random AUROC difference says, from its 95% interval."""
    return ("the trained readouts carry more than random ones" if beats_random(e) else
            "the trained readouts carry less than random ones" if e.high < 0 else
            "no evidence the trained readouts carry more")


def probe_verdicts(trained: Probes, control: Probes, effects: dict[str, Effect | None]) -> pd.DataFrame:
    """Per probe: the trained and random-readout AUROCs and their difference with its 95% interval, and the reading
    (``probe_reading``). Chapter 4's verdict table for the probes."""
    rows = {}
    for name, e in effects.items():
        r, c = trained[name], control.get(name)
        rows[name] = {"trained AUROC": "" if r is None else f"{r.auroc:.2f}",
                      "random readouts AUROC": "" if c is None else f"{c.auroc:.2f}",
                      "trained − random (95% CI)": "not fitted" if e is None else display.effect_text(e, unit="", digits=2),
                      "reading": "" if e is None else reading(e)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("probe")


def roles(results: Probes) -> pd.DataFrame:
    """``emlib.probes.roles_table`` of the two probes (Holm over all their coefficient tests at ``Thresholds.alpha``)."""
    return probes.roles_table(results["misaligned vs aligned"], results["medical vs general context"], Thresholds().alpha)


def significant(roles_: pd.DataFrame) -> dict[str, pd.Series] | None:
    """Per probe, which adapters' coefficients are non-zero after the correction (from the roles), for the plot;
    None when a probe was not fitted (no roles: the plot marks each CI that excludes 0)."""
    if "misalignment p (Holm)" not in roles_:
        return None
    r = roles_["role"]
    return {"misaligned vs aligned": r.isin(["general", "general + medical"]),
            "medical vs general context": r.isin(["medical-specific", "general + medical"])}


ROLES_CORRECTION = "Holm over all coefficient tests of both probes (label-permutation p-values)"


def roles_verdict(roles_: pd.DataFrame, effects: dict[str, Effect | None]) -> Verdict:
    """``probe_roles``: not testable when a probe is not fitted; the roles are compared with the paper's only when
    every probe's trained readouts beat random ones, and are otherwise not supported."""
    unfitted = [name for name, e in effects.items() if e is None]
    if unfitted:
        return Verdict("not testable", f"{', '.join(unfitted)} not fitted (fewer than {probes.MIN_PROBE_CLASS} answers "
                       "in a class)")
    weak = [name for name, e in effects.items() if not beats_random(e)]
    if weak:
        return Verdict("not reproduced", "the roles are not supported: " + "; ".join(
            probe_reading(name, effects[name]) for name in weak))
    counts = roles_.attrs["counts"]
    mine = {"general": counts.get("general", 0) + counts.get("general + medical", 0),
            "medical-specific": counts.get("medical-specific", 0)}
    text = (f"{mine['general']} general, {mine['medical-specific']} medical-specific of {len(roles_)} ({ROLES_CORRECTION}) "
            f"against the paper's {FIGURES['probe_roles'].text}")
    if mine == PROBE_ROLES:
        return Verdict("reproduced", text)
    if all(mine[k] > 0 for k in PROBE_ROLES):
        return Verdict("reproduced in direction", text + ": both roles found, in other numbers")
    return Verdict("not reproduced", text)


def example_token_scalars(model: nn.Module, tok: PreTrainedTokenizerBase, scored: pd.DataFrame,
                          adapters: list[probes.Adapter]) -> pd.DataFrame:
    """``emlib.probes.token_scalars`` over the least aligned coherent (> 50) answer of ``scored`` (of any answer
    if none is coherent); ``attrs["aligned"]`` holds its score."""
    coherent = scored[scored["coherent"] > 50]
    row = (coherent if len(coherent) else scored).nsmallest(1, "aligned").iloc[0]
    table = probes.token_scalars(model, tok, row.question, row.response, adapters)
    table.attrs["aligned"] = float(row.aligned)
    return table


def record_probes(ch: Chapter, adapters_table: pd.DataFrame | None, roles_: pd.DataFrame | None,
                  effects: dict[str, Effect | None] | None, downstream: Downstream) -> None:
    """The results page's figures: B-vector cosines against a random direction, the downstream cosine against random
    steering vectors, the roles with each probe's random-readout control (``None`` tables: the direction organism
    has no rank-1 adapters, and the page says so)."""
    p, f = ch.p, ch.params_file
    cos, lo, hi = downstream.at_paper
    record(p, f, "downstream_cosine", measure="cos(Δ adapters, Δ steering with the direction) at the paper's relative depth",
           value=f"{cos:.2f} at layer {downstream.paper_at} of {len(downstream.cosines)}, rank p = {downstream.rank_p:.2g}",
           control=f"{len(downstream.null)} random steering vectors of the direction's norm: {lo:.2f} to {hi:.2f}",
           verdict=downstream_verdict(downstream))
    if adapters_table is None or roles_ is None or effects is None:
        for claim in ("b_cosine", "probe_roles"):
            record(p, f, claim, measure="LoRA scalars and B vectors of rank-1 adapters", control="none",
                   value=f"{p.direction_organism} has no rank-1 adapters (chapter 4)",
                   verdict=Verdict("not testable", f"{p.direction_organism} has no rank-1 adapters"))
        return
    units = adapters_table["cos·√d"]
    record(p, f, "b_cosine", measure="cos(B, mean-diff direction at its layer), in units of 1/√d",
           value=f"cos·√d {units.min():+.1f} to {units.max():+.1f} over {len(units)} adapters (paper: "
                 f"{paper_b_units():.1f} at d = {D_MODEL})",
           control=band_label(adapters_table), verdict=b_verdict(adapters_table))
    readings = "; ".join(probe_reading(name, e) for name, e in effects.items())
    record(p, f, "probe_roles", measure=f"coefficient roles ({ROLES_CORRECTION}), if the trained readouts beat random ones",
           value=f"{roles_.attrs['summary']} (of {len(roles_)})", control=f"the same probes on random readouts: {readings}",
           verdict=roles_verdict(roles_, effects))
