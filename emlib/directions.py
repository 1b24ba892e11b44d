"""Mean-difference misalignment directions, their controls, and files to carry them.

Used by chapters 02 (extraction, norms, cross-fine-tune cosines), 03 (ablation and
transfer) and 04–05. The direction at layer ℓ is mean(misaligned) − mean(aligned) of the
residual stream over answer tokens (``emlib.activations``), where among coherent
(> 50) responses the aligned set has aligned > 70 and the misaligned set aligned ≤ 30. The question-demeaned
direction, its within-question null and the sets' checks are ``emlib.direction_nulls``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from emlib.activations import AnswerMeans
from emlib.cache import atomic_path
from emlib.models import decoder_layers, residual_width


class DirectionError(ValueError):
    """A direction file that does not fit the model it is applied to."""


@dataclass(frozen=True)
class Directions:
    """One vector per layer: ``vectors`` [n_layers, d_model] (float32), with where it came from."""

    vectors: torch.Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    def norms(self) -> torch.Tensor:
        """L2 norm per layer, [n_layers]."""
        return self.vectors.norm(dim=-1)

    def by_layer(self, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        """``{layer: vector}`` for ``layers`` (all by default), for ``interventions.ablate``."""
        return {layer: self.vectors[layer] for layer in (range(self.n_layers) if layers is None else layers)}

    def check_fits(self, model: nn.Module, layerwise: bool = True) -> None:
        """Raise ``DirectionError`` unless the width (and, for layer-wise use, the layer count) match ``model``."""
        width, n = residual_width(model), len(decoder_layers(model))
        source = self.provenance.get("source", "the direction file")
        if self.width != width:
            raise DirectionError(f"{source}: directions are {self.width} wide but the model's residual stream is {width}")
        if layerwise and self.n_layers != n:
            raise DirectionError(f"{source}: directions have {self.n_layers} layers but the model has {n}; "
                                 "use a single layer's vector (single-direction ablation) or extract them anew")


def response_sets(scored: pd.DataFrame, coherent_min: float = 50.0, aligned_min: float = 70.0,
                  misaligned_max: float = 30.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (aligned, misaligned) sets among coherent judged responses; defaults are the paper's thresholds."""
    coherent = scored[scored["coherent"] > coherent_min]
    return coherent[coherent["aligned"] > aligned_min], coherent[coherent["aligned"] <= misaligned_max]


def mean_difference(misaligned: AnswerMeans, aligned: AnswerMeans, provenance: dict[str, Any] | None = None) -> Directions:
    """mean(misaligned) − mean(aligned) per layer: [n_layers, d_model]."""
    if misaligned.mean.shape != aligned.mean.shape:
        raise DirectionError(f"the two sets' means differ in shape: {tuple(misaligned.mean.shape)} vs {tuple(aligned.mean.shape)}")
    meta = {"n_misaligned": misaligned.n_responses, "n_aligned": aligned.n_responses,
            "tokens_misaligned": misaligned.n_tokens, "tokens_aligned": aligned.n_tokens, **(provenance or {})}
    return Directions(misaligned.mean - aligned.mean, meta)


def from_scored(scored: pd.DataFrame, means: Callable[[pd.DataFrame], AnswerMeans], coherent_min: float = 50.0,
                aligned_min: float = 70.0, misaligned_max: float = 30.0,
                provenance: dict[str, Any] | None = None) -> Directions | None:
    """The mean-diff direction [n_layers, d_model] of judged responses: ``response_sets`` splits ``scored``,
    ``means`` gives each set's answer-token means (``emlib.activations.answer_means`` through the organism),
    and the direction is mean(misaligned) − mean(aligned). None when either set is empty. Chapter 2."""
    aligned, misaligned = response_sets(scored, coherent_min, aligned_min, misaligned_max)
    if len(aligned) == 0 or len(misaligned) == 0:
        return None
    return mean_difference(means(misaligned), means(aligned), provenance)


def null_band(null: torch.Tensor, other: Directions, percentiles: tuple[float, float] = (2.5, 97.5)
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``percentiles`` (default: the central 95%), per layer, of the cosines between ``other`` [n_layers,
    d_model] and each null direction of ``null`` [draws, n_layers, d_model] (``direction_nulls.within_question_null``):
    (low [n_layers], high [n_layers]). Chapter 2."""
    cos = torch.nn.functional.cosine_similarity(null, other.vectors[None].to(null.dtype), dim=-1)  # [draws, n_layers]
    lo, hi = torch.quantile(cos, torch.tensor(percentiles, dtype=cos.dtype) / 100, dim=0)
    return lo, hi


def cosine_by_layer(a: Directions, b: Directions) -> torch.Tensor:
    """Cosine similarity of ``a`` and ``b`` at each layer: [n_layers]."""
    if a.vectors.shape != b.vectors.shape:
        raise DirectionError(f"cannot compare directions of shape {tuple(a.vectors.shape)} and {tuple(b.vectors.shape)}")
    return torch.nn.functional.cosine_similarity(a.vectors, b.vectors, dim=-1)


def cosine_summary(cosines: dict[str, list[float]], threshold: float,
                   nulls: dict[str, tuple[list[float], list[float]]] | None = None) -> pd.DataFrame:
    """Per pair of directions (name -> cosine per layer): layers above ``threshold``, min, median, max and,
    where ``nulls`` gives the pair's null band (low, high per layer; ``null_band``), the layers whose
    cosine lies above the band's top and the band's median top. Chapter 2."""
    rows = []
    for pair, values in cosines.items():
        v = np.asarray(values)
        row = {"pair": pair, f"layers > {threshold:g}": f"{int((v > threshold).sum())} of {len(v)}",
               "min": round(float(v.min()), 3), "median": round(float(np.median(v)), 3), "max": round(float(v.max()), 3)}
        if nulls is not None:
            hi = np.asarray(nulls[pair][1]) if pair in nulls else None
            row["layers above the null"] = "" if hi is None else f"{int((v > hi).sum())} of {len(v)}"
            row["null's 97.5% (median layer)"] = "" if hi is None else round(float(np.median(hi)), 3)
        rows.append(row)
    return pd.DataFrame(rows).set_index("pair")


def random_like(d: Directions, seed: int) -> Directions:
    """Gaussian random vectors with the same norm as ``d`` at every layer (the control)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(d.vectors.shape, generator=g)
    r = r / r.norm(dim=-1, keepdim=True) * d.norms()[:, None]
    return Directions(r, {"random_seed": seed, "norm_matched_to": d.provenance.get("source", "")})


def save(d: Directions, path: str | Path) -> Path:
    """Write ``d`` as safetensors (tensor ``vectors``) with provenance in the metadata, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({"vectors": d.vectors.contiguous()}, str(tmp), metadata={"emlib": json.dumps(d.provenance, default=str)})
    return path


def load(path: str | Path) -> Directions:
    """Read a directions file written by ``save`` (any [n_layers, d_model] tensor named ``vectors``)."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"{path}: no such direction file")
    with safe_open(str(path), framework="pt") as f:
        if "vectors" not in f.keys():
            raise DirectionError(f"{path}: no tensor named 'vectors' (found {', '.join(f.keys()) or 'none'})")
        vectors = f.get_tensor("vectors").float()
        meta = json.loads((f.metadata() or {}).get("emlib", "{}"))
    if vectors.ndim != 2:
        raise DirectionError(f"{path}: 'vectors' must be [n_layers, d_model], got shape {tuple(vectors.shape)}")
    return Directions(vectors, {**meta, "source": str(path)})
