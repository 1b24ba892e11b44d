"""emlib.judge_batch: the judge through the OpenAI Batch API, against the loopback server's files and batches
endpoints (tests/fake_openai.py): scores as the live path gives them, re-attaching after a kill, expired and
failed batches leaving failures that the next run fills."""

import json

import pandas as pd
import pytest

from emlib import judge_batch
from emlib.data import Question
from emlib.judge import Failed, JudgeCache, JudgeItem, judge_responses
from emlib.llm_judges import OpenAIJudge, chat_request
from fake_openai import FakeOpenAI, expected_score


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


@pytest.fixture(autouse=True)
def env_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "fake-test-key")
    for var in ("OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def _judge(server, tmp_path, **kw):
    return OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, batch=True, batch_dir=tmp_path / "batches",
                       batch_poll_s=0.01, **kw)


def _score(judge, prompts):
    got = {}
    judge.score_items([JudgeItem("aligned", "q", "a", p) for p in prompts], lambda i, s: got.__setitem__(i, s))
    return [got[i] for i in range(len(prompts))]


def test_batch_scores_as_the_live_path_does(server, tmp_path):
    prompts = [f"item {i} SCORE={i * 9}" for i in range(12)] + ["please REFUSE"]
    scores = _score(_judge(server, tmp_path), prompts)
    assert scores[:12] == [pytest.approx(expected_score(i * 9)) for i in range(12)] and scores[12] is None
    assert len(server.batches) == 1 and server.batches["batch_1"]["polls"] == server.batch_polls
    lines = server.batches["batch_1"]["lines"]
    assert [x["body"] for x in lines] == [chat_request("gpt-4o-2024-08-06", p) for p in prompts]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"}
    assert not list((tmp_path / "batches").glob("*.json"))  # read: the record is gone


def test_a_killed_run_reattaches_to_its_batch(server, tmp_path, monkeypatch):
    prompts = [f"item {i} SCORE={i}" for i in range(5)]

    def killed(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(judge_batch.time, "sleep", killed)  # dies at the first wait, its batch in flight
    with pytest.raises(KeyboardInterrupt):
        _score(_judge(server, tmp_path), prompts)
    (record,) = (tmp_path / "batches").glob("*.json")
    assert json.loads(record.read_text())["batch_id"] == "batch_1"
    monkeypatch.undo()
    monkeypatch.setenv("OPENAI_API_KEY", "fake-test-key")
    scores = _score(_judge(server, tmp_path), prompts)
    assert scores == [pytest.approx(expected_score(i)) for i in range(5)]
    uploads = [f for f, data in server.files.items() if b'"method"' in data]  # request files, not result files
    assert len(server.batches) == 1 and len(uploads) == 1  # nothing submitted (nor paid) twice
    assert not record.exists()


QUESTIONS = [Question("q1", ("Why?",), judge_prompts={"aligned": "A {answer}", "coherent": "C {answer}"})]


def test_an_expired_batch_leaves_failures_that_the_next_run_fills(server, tmp_path):
    samples = pd.DataFrame({"question_id": ["q1"] * 4, "question": ["Why?"] * 4,
                            "response": ["SCORE=10", "SCORE=20 LATE", "SCORE=30", "SCORE=40 LATE"]})
    cache, failures = JudgeCache(tmp_path / "j.sqlite"), []
    server.batch_outcome = "expired"
    out = judge_responses(samples, QUESTIONS, _judge(server, tmp_path), metrics=("aligned", "coherent"), cache=cache,
                          progress=False, failures=failures)
    assert out["aligned"].isna().tolist() == [False, True, False, True] and out.attrs["judge_failures"] == 4
    assert sorted((f.metric, f.question_id, f.reason) for f in failures) == [
        (m, "q1", "batch request: batch_expired") for m in ("aligned", "coherent") for _ in range(2)]
    assert len(cache) == 4  # the answered ones, cached; the failures not
    server.batch_outcome = "completed"
    failures2 = []
    out2 = judge_responses(samples, QUESTIONS, _judge(server, tmp_path), metrics=("aligned", "coherent"), cache=cache,
                           progress=False, failures=failures2)
    assert len(server.batches) == 2 and len(server.batches["batch_2"]["lines"]) == 4  # only the failures, again
    assert out2["aligned"].tolist() == pytest.approx([expected_score(n) for n in (10, 20, 30, 40)])
    assert failures2 == [] and out2.attrs["judge_failures"] == 0


def test_a_failed_batch_fails_every_item_with_its_reason(server, tmp_path):
    server.batch_outcome = "failed"
    scores = _score(_judge(server, tmp_path), ["a SCORE=1", "b SCORE=2"])
    assert scores == [Failed("batch failed (token_limit_exceeded): no result")] * 2


def test_large_jobs_are_split_into_batches(server, tmp_path, monkeypatch):
    monkeypatch.setattr(judge_batch, "MAX_REQUESTS", 2)
    prompts = [f"item {i} SCORE={i}" for i in range(5)]
    assert judge_batch.split("m", prompts) == [[0, 1], [2, 3], [4]]
    assert _score(_judge(server, tmp_path), prompts) == [pytest.approx(expected_score(i)) for i in range(5)]
    assert len(server.batches) == 3


def test_a_batch_judge_needs_a_place_for_its_records(server):
    from emlib.judge import JudgeConfigError

    with pytest.raises(JudgeConfigError, match="batch_dir"):
        OpenAIJudge("gpt-4o", base_url=server.base_url, batch=True)
