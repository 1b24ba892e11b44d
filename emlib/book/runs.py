"""Sampling runs as values: what chapters 2 and 3 sample (``RunSpec``), named as the plan names them
(``emlib.plan.Run``), so ``emlib.work`` can run any one of them alone and a chapter runs them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from emlib.book.overlap import background_judging
from emlib.book.session import Chapter, FineTune, sample
from emlib.data import Question
from emlib.generate import SamplingConfig
from emlib.interventions import Intervention, Stacked
from emlib.plan import Run


@dataclass(frozen=True)
class RunSpec:
    """One sampling run: its plan name ``run``, and what ``sample_and_judge`` takes. ``meta``: the columns its
    table gets (arm, kind, ...), or for a stacked run of rank-test units, ``units``: each unit's columns."""

    run: Run
    questions: list[Question]
    ft: FineTune | None
    label: str | None
    sampling: SamplingConfig
    intervention: Intervention | Stacked | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    units: list[dict[str, Any]] | None = None


def execute_all(ch: Chapter, specs: list[RunSpec]) -> list[pd.DataFrame]:
    """Every run of ``specs`` sampled (or read from the cache) and judged, a run's answers judged while the next
    run samples (``emlib.book.overlap``: the openai judge; any other judges at once). A stacked run's rows get their
    unit's columns (its ``unit`` column replaced by the unit's own), every other run's rows the ``meta`` columns.
    Chapters 2 and 3."""
    with background_judging(ch) as judge_later:
        futures = [judge_later(sample(ch, s.questions, ft=s.ft, sampling=s.sampling, intervention=s.intervention),
                               s.questions, label=s.label or (s.ft or ch.chat).name)
                   for s in tqdm(specs, desc="sampling runs", disable=len(specs) < 2)]
    return [_columns(s, f.result()) for s, f in zip(specs, futures)]


def _columns(spec: RunSpec, t: pd.DataFrame) -> pd.DataFrame:
    if spec.units is None:
        return t.assign(**spec.meta)
    index = t.pop("unit")
    return t.assign(**spec.meta, **{c: [spec.units[i][c] for i in index] for c in spec.units[0]})
