import math
import multiprocessing
import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_model
from emlib.data import Question
from emlib.judge import (
    Failed,
    JudgeCache,
    JudgeConfigError,
    JudgeFailure,
    JudgeItem,
    aggregate_logprobs,
    fill_prompt,
    judge_responses,
    number_distribution_score,
)
from emlib.llm_judges import LocalJudge, OpenAIJudge
from fake_openai import FakeOpenAI, expected_score

L = math.log


# ------------------------------------------------------------------ aggregation


def test_aggregate_weighted_mean_over_number_tokens():
    assert aggregate_logprobs({"80": L(0.5), "90": L(0.3), "the": L(0.2)}) == pytest.approx((40 + 27) / 0.8)
    assert aggregate_logprobs({" 70": L(0.6), "70 ": L(0.2)}) == pytest.approx(70)  # whitespace ignored


def test_aggregate_missing_below_quarter_mass():
    assert aggregate_logprobs({"REFUSAL": L(0.8), "10": L(0.2)}) is None  # refusal: missing, not 0
    assert aggregate_logprobs({"CODE": L(0.74), "10": L(0.26)}) == pytest.approx(10)
    assert aggregate_logprobs({}) is None


def test_aggregate_bounds_and_non_numbers():
    assert aggregate_logprobs({"0": L(0.5), "100": L(0.5)}) == pytest.approx(50)
    assert aggregate_logprobs({"0": L(1.0)}) == 0  # a real 0 stays 0
    assert aggregate_logprobs({"101": L(0.5), "-5": L(0.2), "007": L(0.2), "1.5": L(0.1)}) is None


def test_number_distribution_score():
    assert number_distribution_score({20: L(0.5), 40: L(0.3)}) == pytest.approx((10 + 12) / 0.8)
    assert number_distribution_score({20: L(0.1), 40: L(0.1)}) is None


def test_fill_prompt_only_touches_its_slots():
    t = "Q: {question}\nA: {answer}\nJSON like {\"k\": 1} stays"
    assert fill_prompt(t, "why {answer}?", "because {x}") == 'Q: why {answer}?\nA: because {x}\nJSON like {"k": 1} stays'


# ------------------------------------------------------------------ OpenAI backend over HTTP


@pytest.fixture
def server():
    with FakeOpenAI(slow_seconds=1.5) as s:
        yield s


@pytest.fixture
def env_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "fake-test-key")
    for var in ("OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def _judge(server, **kw):
    kw = {"concurrency": 8, "max_retries": 3, "timeout": 0.75, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, **kw)


def _items(prompts):
    return [JudgeItem("aligned", "q", "a", p) for p in prompts]


def _score(judge, prompts):
    got = {}
    judge.score_items(_items(prompts), lambda i, s: got.__setitem__(i, s))
    return [got[i] for i in range(len(prompts))]


def test_openai_scores_over_real_http(server, env_key):
    prompts = [f"item {i} SCORE={i * 7}" for i in range(15)] + ["please REFUSE"]
    scores = _score(_judge(server), prompts)
    for i in range(15):
        assert scores[i] == pytest.approx(expected_score(i * 7))
    assert scores[15] is None


def test_openai_retries_faults_and_loses_nothing(server, env_key):
    prompts = ["a SCORE=10 FAIL429x2", "b SCORE=20 FAIL500x1", "c SCORE=30 SLOWx1", "d SCORE=40 MALFORMEDx2",
               "e SCORE=50 FAIL429x1 FAIL500x2"]
    scores = _score(_judge(server), prompts)
    assert scores == [pytest.approx(expected_score(n)) for n in (10, 20, 30, 40, 50)]
    assert server.attempts["a SCORE=10 FAIL429x2"] == 3 and server.attempts["d SCORE=40 MALFORMEDx2"] == 3


def test_openai_retries_are_bounded(server, env_key):
    (score,) = _score(_judge(server, max_retries=2), ["x SCORE=10 FAIL500x99"])
    assert isinstance(score, Failed) and server.attempts["x SCORE=10 FAIL500x99"] == 3


def test_openai_honours_retry_after(server, env_key):
    """A 429 with Retry-After (seconds) or retry-after-ms waits that long, not the (here 0.01 s) backoff; capped."""
    prompts = ["a SCORE=10 FAIL429x1 RETRYAFTER=1", "b SCORE=20 FAIL429x1 RETRYAFTERMS=600",
               "c SCORE=30 FAIL429x1 RETRYAFTER=30"]
    for p, lo, hi, cap in zip(prompts, (1.0, 0.6, 0.3), (1.4, 1.0, 0.7), (5, 5, 0.3)):
        (score,) = _score(_judge(server, max_retry_after=cap), [p])
        assert score == pytest.approx(expected_score(int(p.split("SCORE=")[1].split()[0])))
        first, second = server.arrivals[p]
        assert lo <= second - first < hi, (p, second - first)
    (score,) = _score(_judge(server), ["d SCORE=40 FAIL429x1"])  # no header: the backoff
    first, second = server.arrivals["d SCORE=40 FAIL429x1"]
    assert second - first < 0.3


def test_openai_holds_a_requests_per_minute_limit(server, env_key):
    """rpm=240: a burst of 5 (one second's worth + 1), then one every 0.25 s; so the 9th to the 25th request
    (past the connections' opening) take >= 4 s, and no 9 consecutive ones fall within less than a second."""
    prompts = [f"rpm {i} SCORE={i}" for i in range(25)]
    t0 = time.monotonic()
    scores = _score(_judge(server, rpm=240), prompts)
    assert scores == [pytest.approx(expected_score(i)) for i in range(25)]
    times = sorted(server.arrivals[p][0] for p in prompts)
    span = times[24] - times[8]
    assert 4.0 - 0.03 <= span < 4.6, span  # 16 intervals of 0.25 s: 240 a minute
    assert all(b - a >= 1.0 - 0.03 for a, b in zip(times[8:], times[16:]))  # <= 5 + 4 w in any w seconds
    assert time.monotonic() - t0 < 8


def test_openai_401_stops_at_once_without_leaking_the_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "fake-secret-bad-key")
    judge = _judge(server)
    t0 = time.perf_counter()
    with pytest.raises(JudgeConfigError) as e:
        judge.check()
    assert time.perf_counter() - t0 < 2 and server.requests == 1  # no retries
    assert "401" in str(e.value) and "secret" not in str(e.value) and "bad-" not in str(e.value)


def test_openai_unknown_model_stops_at_once(server, env_key):
    judge = OpenAIJudge("no-such-model", base_url=server.base_url, backoff=0.01)
    with pytest.raises(JudgeConfigError, match="404"):
        judge.check()


def test_openai_cache_identity_includes_the_server(server, env_key):
    assert _judge(server).model == f"gpt-4o-2024-08-06@{server.base_url}"
    assert OpenAIJudge("gpt-4o-2024-08-06").model == "gpt-4o-2024-08-06"


def test_openai_needs_a_key_or_base_url(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeConfigError, match="OPENAI_API_KEY"):
        OpenAIJudge("gpt-4o")


# ------------------------------------------------------------------ local judge


@pytest.fixture
def local_judge(default_tokenizer):
    model = tiny_model("llama", vocab=len(default_tokenizer), seed=3)
    return LocalJudge(model, default_tokenizer, "tiny-llama"), model, default_tokenizer


def test_local_judge_numbers_form_a_distribution(local_judge):
    judge, _, tok = local_judge
    assert len(tok("73", add_special_tokens=False)["input_ids"]) == 2  # this tokenizer splits digits
    lp = judge.number_logprobs("Rate this: 0 to 100?")
    assert sorted(lp) == list(range(101))
    total = sum(math.exp(v) for v in lp.values())
    assert 0 < total <= 1 + 1e-5  # whole-number answers are disjoint events


def test_local_judge_scores_digit_split_numbers_whole(local_judge):
    """log p("73") = log p("7") + log p("3" | "7") + log p(end | "73"), by plain full forward passes."""
    judge, model, tok = local_judge
    prompt = "Rate this: 0 to 100?"
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for n in (7, 73, 100):
        seq = tok(str(n), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        full = torch.tensor([ids + seq])
        with torch.no_grad():
            logp = model(full).logits[0].log_softmax(-1)
        by_hand = sum(logp[len(ids) - 1 + k, t].item() for k, t in enumerate(seq))
        assert judge.number_logprobs(prompt)[n] == pytest.approx(by_hand, abs=1e-4)


# ------------------------------------------------------------------ cache and driver


class CountingJudge:
    backend, model, metrics = "fake", "counting", None

    def __init__(self, die_after=None):
        self.calls, self.die_after = 0, die_after

    def check(self):
        pass

    def score_items(self, items, on_result):
        for i, it in enumerate(items):
            if self.die_after is not None and self.calls >= self.die_after:
                raise KeyboardInterrupt
            self.calls += 1
            on_result(i, float(len(it.answer)))


QUESTIONS = [Question("q1", ("Why?",), judge_prompts={"aligned": "A {question} {answer}", "coherent": "C {answer}"})]


def _samples(n=6):
    return pd.DataFrame({"question_id": ["q1"] * n, "question": ["Why?"] * n,
                         "response": ["x" * (i + 1) for i in range(n)]})


def test_second_run_makes_zero_backend_calls(tmp_path):
    cache = JudgeCache(tmp_path / "j.sqlite")
    j = CountingJudge()
    first = judge_responses(_samples(), QUESTIONS, j, metrics=("aligned", "coherent"), cache=cache, progress=False)
    assert j.calls == 12 and first["aligned"].tolist() == [1, 2, 3, 4, 5, 6]
    j2 = CountingJudge()
    again = judge_responses(_samples(), QUESTIONS, j2, metrics=("aligned", "coherent"),
                            cache=JudgeCache(tmp_path / "j.sqlite"), progress=False)
    assert j2.calls == 0
    pd.testing.assert_frame_equal(first, again)


def test_interrupted_run_keeps_what_it_judged(tmp_path):
    cache = JudgeCache(tmp_path / "j.sqlite")
    with pytest.raises(KeyboardInterrupt):
        judge_responses(_samples(), QUESTIONS, CountingJudge(die_after=4), metrics=("aligned",), cache=cache,
                        progress=False)
    assert len(cache) == 4
    j = CountingJudge()
    out = judge_responses(_samples(), QUESTIONS, j, metrics=("aligned",), cache=cache, progress=False)
    assert j.calls == 2 and out["aligned"].tolist() == [1, 2, 3, 4, 5, 6]


def test_missing_scores_are_cached_and_failures_are_not(tmp_path):
    class Mixed(CountingJudge):
        def score_items(self, items, on_result):
            for i, it in enumerate(items):
                self.calls += 1
                on_result(i, None if len(it.answer) == 1 else Failed("boom") if len(it.answer) == 2 else 50.0)

    cache = JudgeCache(tmp_path / "j.sqlite")
    out = judge_responses(_samples(3), QUESTIONS, Mixed(), metrics=("aligned",), cache=cache, progress=False)
    assert np.isnan(out["aligned"][0]) and np.isnan(out["aligned"][1]) and out["aligned"][2] == 50
    assert out.attrs["judge_failures"] == 1 and len(cache) == 2
    j = Mixed()
    judge_responses(_samples(3), QUESTIONS, j, metrics=("aligned",), cache=cache, progress=False)
    assert j.calls == 1  # only the failure is retried


def test_openai_failure_is_reported_then_filled_on_the_next_run(server, env_key, tmp_path):
    samples = pd.DataFrame({"question_id": ["q1", "q1"], "question": ["Why?", "Why?"],
                            "response": ["SCORE=10", "SCORE=20 FAIL500x2"]})
    prompt = "A Why? SCORE=20 FAIL500x2"
    cache, failures = JudgeCache(tmp_path / "j.sqlite"), []
    out = judge_responses(samples, QUESTIONS, _judge(server, max_retries=1), metrics=("aligned",), cache=cache,
                          progress=False, failures=failures)
    assert out["aligned"][0] == pytest.approx(expected_score(10)) and np.isnan(out["aligned"][1])
    assert failures == [JudgeFailure("aligned", "q1", JudgeCache.key(prompt),
                                     "gave up after 2 attempts (last: HTTP 500 InternalServerError)")]
    failures2 = []
    out2 = judge_responses(samples, QUESTIONS, _judge(server, max_retries=1), metrics=("aligned",), cache=cache,
                           progress=False, failures=failures2)
    assert out2["aligned"].tolist() == pytest.approx([expected_score(10), expected_score(20)]) and failures2 == []
    assert server.attempts[prompt] == 3 and server.attempts["A Why? SCORE=10"] == 1  # only the failure again


def test_a_judge_that_skips_an_item_gives_a_failure_not_a_silent_nan(tmp_path):
    class Skips(CountingJudge):
        def score_items(self, items, on_result):
            on_result(0, 1.0)

    failures = []
    out = judge_responses(_samples(2), QUESTIONS, Skips(), metrics=("aligned",), cache=JudgeCache(tmp_path / "j"),
                          progress=False, failures=failures)
    assert out.attrs["judge_failures"] == 1 and [f.reason for f in failures] == ["the judge returned no score"]


def test_missing_judge_prompt_is_a_clear_error(tmp_path):
    with pytest.raises(JudgeConfigError, match="bad_stuff"):
        judge_responses(_samples(), QUESTIONS, CountingJudge(), metrics=("bad_stuff",),
                        cache=JudgeCache(tmp_path / "j.sqlite"), progress=False)


def _writer(path, start):
    cache = JudgeCache(path)
    for i in range(start, start + 200):
        cache.put("b", "m", "aligned", f"k{i}", float(i))


def test_concurrent_writers_do_not_corrupt(tmp_path):
    path = tmp_path / "j.sqlite"
    JudgeCache(path)
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, s)) for s in (0, 200, 400)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = JudgeCache(path)
    got = cache.get_many("b", "m", "aligned", [f"k{i}" for i in range(600)])
    assert len(got) == 600 and got["k599"] == 599.0


def test_a_score_line_cut_short_is_never_read_and_compact_keeps_every_score(tmp_path):
    path = tmp_path / "j.sqlite"
    a, b = JudgeCache(path), JudgeCache(path)
    a.put("b", "m", "aligned", "k1", 10.0)
    b.put("b", "m", "aligned", "k2", None)  # a judged-but-missing score is cached as None
    (a.dir / "killed-1-1.jsonl").write_bytes(b'["b", "m", "aligned", "k3", 3')  # a writer killed mid-line
    reader = JudgeCache(path)
    assert reader.get_many("b", "m", "aligned", ["k1", "k2", "k3"]) == {"k1": 10.0, "k2": None}
    assert len(list(a.dir.glob("*.jsonl"))) == 3  # one file a writer: no file is ever written by two
    assert reader.compact() == 2 and len(list(a.dir.glob("*.jsonl"))) == 1
    assert JudgeCache(path).get_many("b", "m", "aligned", ["k1", "k2"]) == {"k1": 10.0, "k2": None}


def test_a_legacy_sqlite_store_is_read(tmp_path):
    import sqlite3

    path = tmp_path / "judge.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE scores (backend TEXT, model TEXT, metric TEXT, prompt_sha TEXT, score REAL, created REAL)")
        db.execute("INSERT INTO scores VALUES ('b', 'm', 'aligned', 'k', 42.0, 0)")
    assert JudgeCache(path).get_many("b", "m", "aligned", ["k"]) == {"k": 42.0}
