"""The geometry of rank-1 adapters against nulls of the same dimension (chapter 4).

The B-vector cosines with the mean-diff direction are tested against the exact cosine distribution of a uniformly
random direction (``b_cosine_test``); the downstream cosines between the activation changes induced by the adapters
and by steering, against random steering vectors (``downstream_cosines`` applied to each; ``null_band``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import beta as beta_dist

from emlib.probes import Adapter


def b_direction_cosines(adapters: list[Adapter], directions: torch.Tensor) -> pd.Series:
    """Cosine between each adapter's B vector and the mean-diff direction at its layer; ``directions`` [n_layers, d]."""
    return pd.Series([float(torch.nn.functional.cosine_similarity(ad.b, directions[ad.layer], dim=0)) for ad in adapters],
                     index=pd.Index([ad.name for ad in adapters], name="adapter"), name="cosine(B, mean-diff)")


def random_cosine_band(d: int, level: float) -> float:
    """Half-width h with P(|cos(u, v)| ≤ h) = ``level`` for u uniform on the unit sphere of R^d and any fixed v:
    (cos + 1)/2 ~ Beta((d − 1)/2, (d − 1)/2) exactly (sd of cos = 1/√d). Chapter 4's band for the B vectors."""
    a = (d - 1) / 2
    return float(2 * beta_dist.ppf((1 + level) / 2, a, a) - 1)


def random_cosine_p(cosines: np.ndarray, d: int) -> np.ndarray:
    """Two-sided p = P(|cos(u, v)| ≥ |c|) of each cosine c in ``cosines`` [k] under the same null as
    ``random_cosine_band`` (u uniform on the unit sphere of R^d). [k]"""
    a = (d - 1) / 2
    c = np.abs(np.asarray(cosines, dtype=float))
    return np.minimum(1.0, 2 * beta_dist.sf((c + 1) / 2, a, a))


def b_cosine_test(cosines: pd.Series, d: int, alpha: float = 0.05) -> pd.DataFrame:
    """Each B-vector cosine (``b_direction_cosines``) against the cosine of a uniformly random direction in R^``d``:
    columns ``cosine``, ``cos·√d`` (in units of 1/√d, the null's sd), ``p`` (``random_cosine_p``), ``p (Bonferroni)``
    (× the number of adapters) and ``outside`` (|cos| beyond the family-wise band, i.e. Bonferroni p < ``alpha``).
    ``attrs``: ``d``, ``alpha``, ``band`` (one vector's 1 − alpha band) and ``family_band`` (the 1 − alpha/k band:
    the band the verdict and chapter 4's plot use). Chapter 4."""
    c = cosines.to_numpy(float)
    p = random_cosine_p(c, d)
    family = random_cosine_band(d, 1 - alpha / len(c))
    out = pd.DataFrame({"cosine": c, "cos·√d": c * np.sqrt(d), "p": p, "p (Bonferroni)": np.minimum(1.0, p * len(c)),
                        "outside": np.abs(c) > family}, index=cosines.index)
    out.attrs.update(d=d, alpha=alpha, band=random_cosine_band(d, 1 - alpha), family_band=family)
    return out


def downstream_cosines(base: torch.Tensor, organism: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """cos(organism − base, steered − base) per layer, from answer-token means [n_layers, d] of the same texts:
    how alike the activation changes induced by the adapters and by steering are, layer by layer. [n_layers]"""
    return torch.nn.functional.cosine_similarity(organism - base, steered - base, dim=-1)


def null_band(null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the lowest and highest of the random steering vectors' downstream cosines ``null``
    [n_random, n_layers] (each row ``downstream_cosines`` with a random vector in place of the direction): the
    band chapter 4 draws and its verdict reads. ([n_layers], [n_layers])"""
    n = np.asarray(null, dtype=float)
    return np.nanmin(n, axis=0), np.nanmax(n, axis=0)
