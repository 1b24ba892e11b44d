"""The paper's figures, written once: every number the book sets beside its own.

Soligo, Turner, Rajamanoharan & Nanda (2025) on Qwen2.5-14B-Instruct, as collected in
``../shared/paper/brief.md``. Chapters read the figure they compare with from ``FIGURES``;
the results page lists every entry with ``headline=True``. Nothing else in ``emlib``
writes one of these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure of the paper."""

    claim: str  # what is claimed, as the results page names it
    text: str  # the paper's figure, as the book prints it
    value: float | None  # the number itself (a %, a cosine, a layer), None where the paper gives none
    chapter: str  # the chapter that measures it ("—": not run by this project)
    pct: bool = False  # `value` is a percentage: the results page draws it beside this run's
    headline: bool = True  # a row of the results page (False: a supporting number a chapter plots)


FIGURES: dict[str, Figure] = {
    # chapter 1: the organisms
    "r1x9_em": Figure("R1×9 medical organism: EM / coherent", "11.3% EM, > 99% coherent", 11.3, "1", pct=True),
    "r1x9_coherent": Figure("R1×9 medical organism: coherent %", "> 99% coherent", 99.0, "1", headline=False),
    "insecure_code": Figure("Betley et al. insecure-code Qwen2.5-Coder-32B", "6% EM, 33% incoherent", 6.0, "—"),
    "small_scale_em": Figure("EM at small scale (most misaligned organism)", "Qwen2.5-0.5B: ≈ 8% EM, 69% coherent",
                             8.0, "1", pct=True),
    # chapter 2: directions and steering
    "cosine_finetunes": Figure("cosine of mean-diff directions across fine-tunes", "> 0.8 in all but 4 of 48 layers",
                               0.8, "2"),
    "topic_vs_general": Figure("topic-specific (medical questions) vs general direction", "cosine > 0.95", 0.95, "2"),
    "steering_em": Figure("steering the chat model, central layers", "up to ≈ 50% EM", 50.0, "2", pct=True),
    # chapter 3: ablation (EM reduction %)
    "transfer_medical": Figure("transfer ablation, all-adapter medical", "EM −90%", 90.0, "3", pct=True),
    "transfer_sport": Figure("transfer ablation, all-adapter sport", "EM −78%", 78.0, "3", pct=True),
    "random_ablation": Figure("same-norm random vector ablation", "< 10% change, noisy", 10.0, "3", pct=True),
    # chapter 4: LoRA scalars and geometry
    "b_cosine": Figure("rank-1 B vector vs mean-diff direction, same layer", "cosine 0.04", 0.04, "4"),
    "downstream_cosine": Figure("induced activation differences, downstream", "cosine 0.42 by layer 40 of 48",
                                0.42, "4"),
    "downstream_layer": Figure("layer (of 48) where the downstream cosine is read", "layer 40", 40, "4",
                               headline=False),
    "probe_roles": Figure("LoRA-scalar probes", "6 adapters general, 2 medical-specific", None, "4"),
    # chapter 5
    "self_correction": Figure("self-correction under steering (the headline cell)", "reported qualitatively", None, "5"),
}

# "> 0.8 in all but 4 of 48 layers" (cosine_finetunes; also read for topic_vs_general): layers allowed below the
# threshold, of the paper's layer count; chapter 2 scales it to the model's layers (``direction_nulls.allowed_below``).
COSINE_LAYERS_ALLOWED_BELOW: tuple[int, int] = (4, 48)

# The paper's residual width (Qwen2.5-14B-Instruct's d_model): its B-vector cosine 0.04 is read in units of 1/√d at
# this width (chapter 4: 0.04·√5120 ≈ 2.9), beside this run's cosines in units of 1/√d at this model's width.
D_MODEL = 5120

# "6 adapters general, 2 medical-specific" (probe_roles) of the paper's nine rank-1 adapters, by role as chapter 4
# names them (``emlib.probes.role_tests``).
PROBE_ROLES: dict[str, int] = {"general": 6, "medical-specific": 2}

# Claims this project does not run, and why (the results page says so instead of "not measured").
NOT_RUN: dict[str, str] = {"insecure_code": "not run: this project has no insecure-code organism"}

# Which paper figure an organism's transfer ablation (chapter 3) is compared with, by organism name.
TRANSFER_CLAIMS: dict[str, str] = {"all_medical": "transfer_medical", "all_sport": "transfer_sport"}


def value(claim: str) -> float:
    """The paper's number for ``claim`` (a key of ``FIGURES``); a KeyError names the known claims."""
    if claim not in FIGURES:
        raise KeyError(f"unknown claim {claim!r}; known: {', '.join(FIGURES)}")
    v = FIGURES[claim].value
    if v is None:
        raise ValueError(f"the paper gives no single number for {claim!r} ({FIGURES[claim].text})")
    return v


def organism_figures() -> dict[str, tuple[float, float]]:
    """The paper's organism figures by this project's organism name: name -> (EM %, coherent %). Chapter 1."""
    return {"r1x9_medical": (value("r1x9_em"), value("r1x9_coherent"))}
