"""Chapter 4, what the rank-1 adapters read and where they write: the adapters beside the direction,
probes on their LoRA scalars, and the activation changes they induce downstream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib import probes
from emlib.book.results import record
from emlib.book.session import Chapter, FineTune, answer_means, describe, load
from emlib.directions import Directions
from emlib.interventions import steer
from emlib.models import LoadInfo, paper_layer, single_direction_layer
from emlib.organisms import fetch
from emlib.paper import FIGURES, value
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


def adapter_table(adapters: list[probes.Adapter], direction: Directions) -> pd.DataFrame:
    """Per rank-1 adapter: layer, ‖A‖, ‖B‖ (scaling included), cos(B, mean-diff direction at its layer) and
    the paper's cosine. ``attrs["width"]``: d_model, for the random-direction band of the plot."""
    cos = probes.b_direction_cosines(adapters, direction.vectors)
    table = pd.DataFrame({"layer": [a.layer for a in adapters], "‖A‖": [round(float(a.a.norm()), 3) for a in adapters],
                          "‖B‖": [round(float(a.b.norm()), 3) for a in adapters], cos.name: cos.round(3).values,
                          "paper": value("b_cosine")}, index=cos.index)
    table.attrs["width"] = direction.width
    return table


def b_cosines(adapters_table: pd.DataFrame) -> pd.Series:
    """The B-vector cosines of ``adapter_table``, with the residual width (``attrs["width"]``) for the band."""
    cos = adapters_table["cosine(B, mean-diff)"].copy()
    cos.attrs["width"] = adapters_table.attrs["width"]
    return cos


def probe_datasets(ch: Chapter, general: pd.DataFrame, medical: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """``emlib.probes.probe_datasets`` with the params' set thresholds."""
    p = ch.p
    return probes.probe_datasets(general, medical, p.set_coherent_min, p.set_aligned_min, p.set_misaligned_max)


Probes = dict[str, probes.ProbeResult | None]


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
                                        ch.p.activation_batch_size)  # [n_rows, 2 · n_adapters]
    where = {k: i for i, k in enumerate(zip(rows["question"], rows["response"]))}
    names = [a.name for a in adapters]
    trained: Probes = {}
    control: Probes = {}
    for name, (r, labels) in datasets.items():
        at = [where[k] for k in zip(r["question"], r["response"])]
        for out, columns in ((trained, slice(0, n)), (control, slice(n, 2 * n))):
            out[name] = probes.fit_probe(features[at, columns], labels, names, seed=seed) if probes.fittable(labels) else None
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


def roles(results: dict[str, probes.ProbeResult | None]) -> pd.DataFrame:
    """``emlib.probes.roles_table`` of the two probes."""
    return probes.roles_table(results["misaligned vs aligned"], results["medical vs general context"])


def example_token_scalars(model: nn.Module, tok: PreTrainedTokenizerBase, scored: pd.DataFrame,
                          adapters: list[probes.Adapter]) -> pd.DataFrame:
    """``emlib.probes.token_scalars`` over the least aligned coherent (> 50) answer of ``scored`` (of any answer
    if none is coherent); ``attrs["aligned"]`` holds its score."""
    coherent = scored[scored["coherent"] > 50]
    row = (coherent if len(coherent) else scored).nsmallest(1, "aligned").iloc[0]
    table = probes.token_scalars(model, tok, row.question, row.response, adapters)
    table.attrs["aligned"] = float(row.aligned)
    return table


def downstream_geometry(ch: Chapter, ft: FineTune, texts: pd.DataFrame, direction: Directions) -> tuple[list[float], int]:
    """``emlib.probes.downstream_cosines`` on the same texts (a seeded sample of ``geometry_answers`` of them, if
    set): the organism ``ft`` (any fine-tune) vs λ = 1 steering with the mean-diff vector at the
    single-direction layer (returned with the cosines), each against the chat model's answer-token means."""
    n = ch.p.geometry_answers
    if n is not None and n < len(texts):
        texts = texts.sample(n=n, random_state=ch.p.seed)
    layer = single_direction_layer(direction.n_layers)
    base = answer_means(ch, texts).mean
    organism = answer_means(ch, texts, ft=ft).mean
    steered = answer_means(ch, texts, intervention=steer(direction.vectors[layer], layer, 1.0)).mean
    return probes.downstream_cosines(base, organism, steered).tolist(), layer


def record_probes(ch: Chapter, adapters_table: pd.DataFrame | None, roles_: pd.DataFrame | None,
                  results: dict[str, probes.ProbeResult | None] | None, cosines: list[float],
                  control: dict[str, probes.ProbeResult | None] | None = None) -> None:
    """The results page's figures: B-vector cosines, the downstream cosine at the paper's layer, the roles with
    each probe's random-readout control (``None`` tables: the direction organism has no rank-1 adapters, and
    the page says so)."""
    p, f = ch.p, ch.params_file
    layer = paper_layer(int(value("downstream_layer")), len(cosines))
    record(p, f, "downstream_cosine", f"{cosines[layer]:.2f} at layer {layer} of {len(cosines)} (same relative depth)",
           verdict="not judged: this run computes no null for the downstream cosine (descriptive only)")
    if adapters_table is None or roles_ is None or results is None:
        for claim in ("b_cosine", "probe_roles"):
            record(p, f, claim, f"not testable here: {p.direction_organism} has no rank-1 adapters (chapter 4)",
                   verdict=f"not testable: {p.direction_organism} has no rank-1 adapters")
        return
    cos, width = adapters_table["cosine(B, mean-diff)"], adapters_table.attrs["width"]
    band = 2 / np.sqrt(width)  # two standard deviations of the cosine of random directions
    record(p, f, "b_cosine", f"mean {cos.mean():.3f}, |cos| ≤ {cos.abs().max():.3f} over {len(cos)} adapters",
           verdict=f"reproduced: every B vector is as orthogonal to the direction as random ones (|cos| < {band:.3f} = 2/√d)"
           if (cos.abs() < band).all() else f"not reproduced: {int((cos.abs() >= band).sum())} of {len(cos)} B vectors "
           f"have |cos| ≥ {band:.3f} = 2/√d")
    def auroc(r: probes.ProbeResult) -> str:
        return f"AUROC {r.auroc:.2f} ({r.auroc_ci[0]:.2f}–{r.auroc_ci[1]:.2f})"

    aurocs = "; ".join(f"{name}: not fitted (too few answers in a class)" if r is None else
                       f"{name} {auroc(r)}" + (f", random readouts {auroc(control[name])}" if control and control.get(name) else "")
                       for name, r in results.items())
    unfitted = [name for name, r in results.items() if r is None]
    record(p, f, "probe_roles", f"{roles_.attrs['summary']} (of {len(roles_)}); {aurocs}",
           verdict=f"not testable: {', '.join(unfitted)} not fitted (too few answers in a class)" if unfitted else
           f"not judged: compare the roles with the paper's ({FIGURES['probe_roles'].text})")
