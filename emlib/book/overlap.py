"""Judging that overlaps sampling: a run's answers are judged while the next run samples (issue 22, item 5).

``background_judging(ch)`` is a context manager giving ``judge_later(samples, questions, label=...)``, which
returns a ``concurrent.futures.Future`` of the judged table (what ``session.sample_and_judge`` returns for the
same run). With the openai judge, which waits on a server (live calls or the Batch API), the judging runs in a
background thread while the caller samples the next run on its device; any other judge (offline, local: they
compute on this machine, beside the sampler) judges at once in the caller's thread, its future already done.
Leaving the block waits for every judging; on an exception, the running ones finish and those not started are
cancelled. Either way each score is cached as it arrives and every failure lands in ``ch.judge_failures``.

    with background_judging(ch) as judge_later:
        futures = [judge_later(session.sample(ch, qs, ft=ft, sampling=s), qs, label=name) for qs, ft, s, name in runs]
    tables = [f.result() for f in futures]

Live calls are judged one run at a time (each run's calls ``judge_concurrency`` at once, paced by the judge's
shared rate limits); with the Batch API up to ``BATCH_WORKERS`` runs' batches are in flight together, each
submitted as soon as its run is sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pandas as pd

from emlib.book.session import Chapter, judge_sampled
from emlib.data import Question

BATCH_WORKERS = 16  # batches awaited at once (their threads mostly sleep between polls)

JudgeLater = Callable[..., "Future[pd.DataFrame]"]


@contextmanager
def background_judging(ch: Chapter) -> Iterator[JudgeLater]:
    """``judge_later(samples, questions, *, label) -> Future[DataFrame]``: judging in a background thread for the
    openai judge, at once otherwise (module docstring)."""
    background = ch.scorer.backend == "openai"
    workers = BATCH_WORKERS if getattr(ch.scorer, "batch", False) else 1
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emlib-judge") if background else None

    def judge_later(samples: pd.DataFrame, questions: list[Question], *, label: str) -> Future[pd.DataFrame]:
        if pool is not None:
            return pool.submit(judge_sampled, ch, samples, questions, label=label)
        done: Future[pd.DataFrame] = Future()
        done.set_result(judge_sampled(ch, samples, questions, label=label))
        return done

    finished = False
    try:
        yield judge_later
        finished = True
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=not finished)
