"""Chapter 4's last section, where the adapters write: the activation changes the direction organism induces
downstream, against those of steering with the direction and with random vectors of its norm (teacher-forced
passes over the same answers, each cached; ``emlib.work`` runs each pass alone: ``geometry_pass``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emlib import adapter_geometry
from emlib.book.session import Chapter, FineTune, answer_means
from emlib.controls import gaussian
from emlib.directions import Directions
from emlib.inference import Verdict, rank_test
from emlib.interventions import steer
from emlib.models import paper_layer, single_direction_layer
from emlib.paper import FIGURES, value


@dataclass(frozen=True)
class Downstream:
    """Chapter 4's induced-change comparison, computed once and read by the verdict, the plot and the text:
    ``cosines`` [n_layers] (the adapters' change vs λ = 1 steering with the direction at ``steer_layer``), ``null``
    [n_random, n_layers] (the same with random vectors of the direction's norm at that layer), ``paper_at`` (the
    paper's layer at the same relative depth), and the answers compared (``n_answers``)."""

    cosines: np.ndarray
    null: np.ndarray
    steer_layer: int
    paper_at: int
    n_answers: int

    @property
    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """Per layer, the lowest and highest random vector's cosine (``emlib.adapter_geometry.null_band``)."""
        return adapter_geometry.null_band(self.null)

    @property
    def at_paper(self) -> tuple[float, float, float]:
        """(cosine, band low, band high) at the paper's relative depth."""
        lo, hi = self.band
        return float(self.cosines[self.paper_at]), float(lo[self.paper_at]), float(hi[self.paper_at])

    @property
    def rank_p(self) -> float:
        """The direction's cosine at the paper's depth as one unit among the random ones (``inference.rank_test``)."""
        return rank_test(float(self.cosines[self.paper_at]), self.null[:, self.paper_at], "greater")

    def band_text(self) -> str:
        cos, lo, hi = self.at_paper
        return (f"{len(self.null)} random steering vectors (the direction's norm at layer {self.steer_layer}) give "
                f"{lo:.2f} to {hi:.2f} at layer {self.paper_at}")


def geometry_texts(ch: Chapter, texts: pd.DataFrame) -> pd.DataFrame:
    """The answers chapter 4's induced-change comparison reads: a seeded sample of ``geometry_answers`` of
    ``texts`` (the direction organism's extraction answers), or all of them."""
    n = ch.p.geometry_answers
    return texts.sample(n=n, random_state=ch.p.seed) if n is not None and n < len(texts) else texts


def geometry_pass(ch: Chapter, texts: pd.DataFrame, direction: Directions, through: str) -> torch.Tensor:
    """One teacher-forced pass of ``downstream_geometry`` (cached): the answer-token means [n_layers, d_model] of
    ``geometry_texts`` through ``through``, which is "chat model", the direction organism's name, "chat model
    steered by the direction" or "chat model steered by random vector i" (λ = 1 at the single-direction layer;
    the i-th of ``geometry_random_vectors`` Gaussian vectors of the direction's norm). ``emlib.plan`` names the
    passes alike, and ``emlib.work`` runs each alone."""
    p, texts = ch.p, geometry_texts(ch, texts)
    layer = single_direction_layer(direction.n_layers)
    if through == "chat model":
        return answer_means(ch, texts).mean
    if through == p.direction_organism:
        return answer_means(ch, texts, ft=ch.ready[through]).mean
    if through == "chat model steered by the direction":
        vector = direction.vectors[layer]
    elif through.startswith("chat model steered by random vector "):
        i = int(through.rsplit(" ", 1)[1])
        vector = gaussian(direction, p.geometry_random_vectors, p.seed)[i].vectors[layer]
    else:
        raise ValueError(f"no geometry pass through {through!r}")
    return answer_means(ch, texts, intervention=steer(vector, layer, 1.0)).mean


def downstream_geometry(ch: Chapter, ft: FineTune, texts: pd.DataFrame, direction: Directions) -> Downstream:
    """``emlib.adapter_geometry.downstream_cosines`` on the same texts (``geometry_texts``): the direction organism ``ft``
    (any fine-tune) vs λ = 1 steering with the mean-diff vector at the single-direction layer, each against the
    chat model's answer-token means; and the null: the same with each of ``geometry_random_vectors`` Gaussian
    vectors of the direction's norm at that layer in place of the direction (``emlib.controls.gaussian``; one
    cached teacher-forced pass each: ``geometry_pass``)."""
    p = ch.p
    if ft.name != p.direction_organism:
        raise ValueError(f"downstream_geometry reads the direction organism ({p.direction_organism}), not {ft.name}")
    base, organism = (geometry_pass(ch, texts, direction, w) for w in ("chat model", p.direction_organism))

    def cosines(through: str) -> np.ndarray:
        return adapter_geometry.downstream_cosines(base, organism, geometry_pass(ch, texts, direction, through)).numpy()

    null = np.stack([cosines(f"chat model steered by random vector {i}") for i in range(p.geometry_random_vectors)])
    layer = single_direction_layer(direction.n_layers)
    return Downstream(cosines("chat model steered by the direction"), null, layer,
                      paper_layer(int(value("downstream_layer")), direction.n_layers), len(geometry_texts(ch, texts)))


def downstream_verdict(g: Downstream) -> Verdict:
    """``downstream_cosine``: the cosine at the paper's relative depth against the random steering vectors' band
    there: above its top, reproduced in direction; inside (or below), not reproduced; not testable when that
    depth comes before the steered layer (steering changes nothing there)."""
    cos, lo, hi = g.at_paper
    if g.paper_at < g.steer_layer:
        return Verdict("not testable", f"the paper's relative depth (layer {g.paper_at}) comes before the steered layer "
                       f"{g.steer_layer}, where steering changes nothing")
    where = f"cosine {cos:.2f} at layer {g.paper_at}; {g.band_text()}; rank p = {g.rank_p:.2g}"
    if cos > hi:
        return Verdict("reproduced in direction", f"above every random steering vector ({where}; the paper: "
                       f"{FIGURES['downstream_cosine'].text})")
    return Verdict("not reproduced", f"{'inside' if cos >= lo else 'below'} the band of random steering vectors ({where})")


def downstream_note(g: Downstream) -> str:
    """Chapter 4's sentence on the downstream comparison, from the same numbers as the verdict and the plot."""
    return (f"On {g.n_answers} answers, steered at layer {g.steer_layer}, read at layer {g.paper_at} (the paper's "
            f"relative depth). **Verdict:** {downstream_verdict(g).text()}.")


