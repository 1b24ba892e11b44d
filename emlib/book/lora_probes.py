"""Chapter 4, what the rank-1 adapters read and where they write: the adapters beside the direction,
probes on their LoRA scalars, and the activation changes they induce downstream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib import probes
from emlib.book.results import record
from emlib.book.session import Chapter, answer_means, load
from emlib.directions import Directions
from emlib.interventions import steer
from emlib.models import paper_layer, single_direction_layer
from emlib.paper import value


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


def fit_probes(ch: Chapter, adapter: str | Path,
               datasets: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> dict[str, probes.ProbeResult | None]:
    """LoRA-scalar features of every dataset's responses through the organism (unmerged), and a probe per
    dataset: name -> ``ProbeResult``, or None where a class has fewer than ``MIN_PROBE_CLASS`` answers."""
    model, tok, _ = load(ch, adapter, merge=False)  # the adapter modules are read
    adapters = probes.rank1_adapters(model)
    names = [a.name for a in adapters]
    return {name: probes.fit_probe(probes.response_features(model, tok, rows, adapters, ch.p.activation_batch_size),
                                   labels, names, seed=ch.p.seed) if probes.fittable(labels) else None
            for name, (rows, labels) in datasets.items()}


def probe_table(results: dict[str, probes.ProbeResult | None],
                datasets: dict[str, tuple[pd.DataFrame, np.ndarray]]) -> pd.DataFrame:
    """Cross-validated accuracy and AUROC (95% CIs) per probe; why a probe was not fitted."""
    rows = []
    for name, r in results.items():
        labels = datasets[name][1]
        if r is None:
            rows.append({"responses (positive)": f"{len(labels)} ({int(labels.sum())})", "folds": "",
                         "accuracy (95% CI)": f"not fitted: fewer than {probes.MIN_PROBE_CLASS} answers in a class",
                         "AUROC (95% CI)": ""})
        else:
            rows.append({"responses (positive)": f"{r.n} ({r.n_positive})", "folds": r.folds,
                         "accuracy (95% CI)": f"{r.accuracy:.2f} ({r.accuracy_ci[0]:.2f}–{r.accuracy_ci[1]:.2f})",
                         "AUROC (95% CI)": f"{r.auroc:.2f} ({r.auroc_ci[0]:.2f}–{r.auroc_ci[1]:.2f})"})
    return pd.DataFrame(rows, index=pd.Index(list(results), name="probe"))


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


def downstream_geometry(ch: Chapter, adapter: str | Path, texts: pd.DataFrame, direction: Directions) -> tuple[list[float], int]:
    """``emlib.probes.downstream_cosines`` on the same texts: the organism's adapters vs λ = 1 steering with
    the mean-diff vector at the single-direction layer (returned with the cosines), each against the chat
    model's answer-token means."""
    layer = single_direction_layer(direction.n_layers)
    base = answer_means(ch, texts).mean
    organism = answer_means(ch, texts, adapter=adapter).mean
    steered = answer_means(ch, texts, intervention=steer(direction.vectors[layer], layer, 1.0)).mean
    return probes.downstream_cosines(base, organism, steered).tolist(), layer


def record_probes(ch: Chapter, adapters_table: pd.DataFrame, roles_: pd.DataFrame,
                  results: dict[str, probes.ProbeResult | None], cosines: list[float]) -> None:
    """The results page's figures: B-vector cosines, the downstream cosine at the paper's layer, the roles."""
    p, f = ch.p, ch.params_file
    cos = adapters_table["cosine(B, mean-diff)"]
    record(p, f, "b_cosine", f"mean {cos.mean():.3f}, |cos| ≤ {cos.abs().max():.3f} over {len(cos)} adapters")
    layer = paper_layer(int(value("downstream_layer")), len(cosines))
    record(p, f, "downstream_cosine", f"{cosines[layer]:.2f} at layer {layer} of {len(cosines)} (same relative depth)")
    aurocs = "; ".join(f"{name}: not fitted (too few answers in a class)" if r is None else
                       f"{name} AUROC {r.auroc:.2f} ({r.auroc_ci[0]:.2f}–{r.auroc_ci[1]:.2f})"
                       for name, r in results.items())
    record(p, f, "probe_roles", f"{roles_.attrs['summary']} (of {len(roles_)}); {aurocs}")
