"""Sampling runs as values: what chapters 2 and 3 sample (``RunSpec``), named as the plan names them
(``emlib.plan.Run``), so ``emlib.work`` can run any one of them alone and a chapter runs them all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from emlib.book.session import Chapter, FineTune, sample_and_judge
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


def execute(ch: Chapter, spec: RunSpec) -> pd.DataFrame:
    """``spec`` sampled (or read from the cache) and judged; a stacked run's rows get their unit's columns
    (its ``unit`` column replaced by the unit's own), every other run's rows the ``meta`` columns."""
    t = sample_and_judge(ch, spec.questions, ft=spec.ft, label=spec.label, sampling=spec.sampling,
                         intervention=spec.intervention)
    if spec.units is None:
        return t.assign(**spec.meta)
    index = t.pop("unit")
    return t.assign(**spec.meta, **{c: [spec.units[i][c] for i in index] for c in spec.units[0]})
