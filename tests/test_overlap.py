"""emlib.book.overlap: the openai judge judges a run in the background while the next run samples (measured
against the loopback server), with the same tables and failures as judging inline; other judges judge at once."""

import threading
import time

import pandas as pd
import pytest

from emlib.book import session
from emlib.book.overlap import background_judging
from emlib.book.session import judge_sampled
from emlib.config import Params
from emlib.data import Question
from emlib.judge import Failed
from emlib.llm_judges import OpenAIJudge
from fake_openai import FakeOpenAI

METRICS = ("aligned", "coherent", "bad_stuff")
Q = Question("q1", ("Why?",), judge_prompts={m: f"{m} {{answer}}" for m in METRICS})
SAMPLE_S = 1.0  # one "sampling run" (a sleep: the device's time); judging one takes about half that


def _chapter(tmp_path, judge):
    return session.Chapter(Params(cache_dir=str(tmp_path)), "p.yaml", judge, [Q], None)


def _run(i):
    return pd.DataFrame({"question_id": ["q1"] * 4, "question": ["Why?"] * 4,
                         "response": [f"run {i} answer {k} SCORE={10 * i + k}" for k in range(4)]})


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "fake-test-key")
    with FakeOpenAI(latency=0.05) as s:
        yield s


def test_a_run_is_judged_while_the_next_samples(server, tmp_path):
    judge = OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, concurrency=4)
    ch = _chapter(tmp_path / "a", judge)
    judge.check()  # the openai client imported (a second, once) before the clock starts
    sampling = []  # (start, end) of each run's sampling
    t0 = time.monotonic()
    with background_judging(ch) as judge_later:
        futures = []
        for i in range(3):
            start = time.monotonic()
            time.sleep(SAMPLE_S)
            sampling.append((start, time.monotonic()))
            futures.append(judge_later(_run(i), [Q], label=f"run {i}"))
    overlapped = time.monotonic() - t0
    tables = [f.result() for f in futures]
    for i in range(2):  # run i's judge requests reach the server while run i + 1 samples
        arrivals = [t for p, ts in server.arrivals.items() if f"run {i} " in p for t in ts]
        start, end = sampling[i + 1]
        assert len(arrivals) == 12 and any(start <= t <= end for t in arrivals), (sampling, sorted(arrivals))
    ch2 = _chapter(tmp_path / "b", OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, concurrency=4))
    t0 = time.monotonic()
    inline = []
    for i in range(3):
        time.sleep(SAMPLE_S)
        inline.append(judge_sampled(ch2, _run(i), [Q], label=f"run {i}"))
    sequential = time.monotonic() - t0
    for a, b in zip(tables, inline):
        pd.testing.assert_frame_equal(a, b)
    assert overlapped < sequential - 0.5, (overlapped, sequential)  # 3 judgings of ~0.5 s: all hidden but the last
    print(f"overlapped {overlapped:.2f} s, sequential {sequential:.2f} s")


def test_failures_in_the_background_reach_the_chapter(server, tmp_path):
    judge = OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, max_retries=0)
    ch = _chapter(tmp_path, judge)
    bad = _run(0).assign(response=["fine SCORE=1", "FAIL500x9", "fine SCORE=2", "fine SCORE=3"])
    with background_judging(ch) as judge_later:
        future = judge_later(bad, [Q], label="run")
    assert future.result()["aligned"].isna().tolist() == [False, True, False, False]
    assert sorted(f.metric for f in ch.judge_failures) == sorted(METRICS)


class LocalCounting:
    backend, model, metrics = "offline", "counting", None

    def __init__(self):
        self.threads = set()

    def check(self):
        pass

    def score_items(self, items, on_result):
        self.threads.add(threading.get_ident())
        for i, it in enumerate(items):
            on_result(i, Failed("x") if "bad" in it.answer else 50.0)


def test_a_local_judge_judges_at_once_in_the_callers_thread(tmp_path):
    judge = LocalCounting()
    ch = _chapter(tmp_path, judge)
    with background_judging(ch) as judge_later:
        future = judge_later(_run(0), [Q], label="run 0")
        assert future.done() and judge.threads == {threading.get_ident()}
    assert future.result()["model"].tolist() == ["run 0"] * 4


def test_an_error_while_sampling_cancels_the_judging_not_started(server, tmp_path):
    judge = OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, concurrency=1)
    ch = _chapter(tmp_path, judge)
    futures = []
    with pytest.raises(RuntimeError, match="sampling broke"):
        with background_judging(ch) as judge_later:
            futures = [judge_later(_run(i), [Q], label=f"run {i}") for i in range(3)]
            raise RuntimeError("sampling broke")
    assert all(f.done() for f in futures) and futures[2].cancelled()  # the running one finished, the rest never start
    requests = server.requests
    time.sleep(0.3)
    assert server.requests == requests
