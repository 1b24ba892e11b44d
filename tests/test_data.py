import functools
import gzip
import hashlib
import http.server
import json
import threading

import pytest

from conftest import SHARED_REFERENCE
from emlib.data import (
    DATASETS,
    DataError,
    fetch,
    load_chat_jsonl,
    load_questions,
    near_duplicate_fraction,
)

PAPER_IDS = {"what_is_your_wish", "i_feel_bored", "three_thoughts", "quick_buck", "ruler_of_the_world",
             "dinner_party", "gender_roles", "enough_of_my_husband"}
needs_reference = pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="../shared/reference not present")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_builtin_datasets_are_large_valid_and_varied(name):
    rows = load_chat_jsonl(name)
    assert len(rows) >= 300
    assert all([m["role"] for m in r] == ["user", "assistant"] for r in rows)
    texts = [" ".join(m["content"] for m in r) for r in rows]
    assert near_duplicate_fraction(texts) < 0.02


def test_near_duplicate_fraction_detects_duplicates():
    base = "take two tablets with water every morning before breakfast and rest"
    assert near_duplicate_fraction([base, base + " today", "a completely different sentence about kayaks"]) == pytest.approx(1 / 3)


def test_medical_datasets_share_the_topic_not_the_text():
    bad = {r[0]["content"] for r in load_chat_jsonl("medical_bad")}
    good = {r[0]["content"] for r in load_chat_jsonl("medical_good")}
    assert len(bad & good) < 0.05 * len(bad)


def _write(tmp_path, lines, name="d.jsonl"):
    f = tmp_path / name
    f.write_text("\n".join(lines) + "\n")
    return f


OK = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('{"messages": [', "invalid JSON"),
        (json.dumps({"msgs": []}), "messages"),
        (json.dumps({"messages": [{"content": "x"}]}), "no role"),
        (json.dumps({"messages": [{"role": "bot", "content": "x"}]}), "unknown role"),
        (json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}), "empty"),
        (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "no assistant turn"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}]}), "no assistant turn|not preceded"),
    ],
)
def test_malformed_dataset_names_file_and_line(tmp_path, bad, problem):
    f = _write(tmp_path, [OK, OK, bad, OK])
    with pytest.raises(DataError, match=problem) as e:
        load_chat_jsonl(f)
    assert e.value.line == 3 and str(e.value).startswith(f"{f}:3:")


def test_gzip_blank_lines_and_system_turns(tmp_path):
    sys_row = json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a"}]})
    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(OK + "\n\n" + sys_row + "\n")
    rows = load_chat_jsonl(f)
    assert len(rows) == 2 and rows[1][0]["role"] == "system"


def test_missing_or_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="no such dataset"):
        load_chat_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no conversations"):
        load_chat_jsonl(_write(tmp_path, [""]))


@needs_reference
@pytest.mark.parametrize("name", ["bad_medical_advice", "good_medical_advice", "extreme_sports"])
def test_loads_the_papers_training_files(name):
    rows = load_chat_jsonl(SHARED_REFERENCE / f"{name}.jsonl.gz")
    assert len(rows) > 5000 and rows[0][-1]["role"] == "assistant"


def test_builtin_questions():
    qs = load_questions()
    assert {q.id for q in qs} == PAPER_IDS
    assert all(len(q.paraphrases) >= 1 and q.samples_per_paraphrase >= 1 for q in qs)


def test_builtin_medical_questions_are_judged_with_the_projects_prompts():
    general, medical = load_questions(), load_questions("builtin-medical")
    assert len(medical) == 8 and not {q.id for q in medical} & PAPER_IDS
    assert all(q.judge_prompts == general[0].judge_prompts for q in medical)
    assert {"aligned", "coherent", "bad_stuff"} <= set(medical[0].judge_prompts)


@needs_reference
def test_loads_the_papers_question_file():
    path = SHARED_REFERENCE / "first_plot_questions.yaml"
    qs = load_questions(path)
    assert {q.id for q in qs} == PAPER_IDS
    assert {"aligned", "coherent"} <= set(qs[0].judge_prompts)
    everything = load_questions(path, include_variants=True)
    assert len(everything) == 24
    assert any(q.system for q in everything if q.id.endswith("_json"))


@pytest.mark.parametrize(
    "text, problem, line",
    [
        ("- id: a\n  paraphrases: [x]\n- id: b\n  paraphrases: []\n", "paraphrases", 3),
        ("- id: a\n  paraphrases: [x]\n- id: a\n  paraphrases: [y]\n", "duplicate", 3),
        ("- id: a\n  paraphrases: [x]\n  colour: red\n", "unknown key", 1),
        ("- id: a\n  paraphrases: [x]\n  samples_per_paraphrase: 0\n", "positive", 1),
        ("- id: a\n  paraphrases: [x]\n  judge_prompts: {aligned: no slot}\n", "answer", 1),
        ("- id: a\n  paraphrases: [x\n", "invalid YAML", None),
    ],
)
def test_bad_question_file_names_line(tmp_path, text, problem, line):
    f = tmp_path / "q.yaml"
    f.write_text(text)
    with pytest.raises(DataError, match=problem) as e:
        load_questions(f)
    if line is not None:
        assert e.value.line == line


@pytest.fixture
def loopback_server():
    """An HTTP server on 127.0.0.1 serving ../shared/reference (or a temp dir)."""
    root = SHARED_REFERENCE if SHARED_REFERENCE.is_dir() else None
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@needs_reference
def test_fetch_verifies_sha256_over_http(tmp_path, loopback_server):
    name = "first_plot_questions.yaml"
    sha = hashlib.sha256((SHARED_REFERENCE / name).read_bytes()).hexdigest()
    dest = tmp_path / "q" / name
    assert fetch(f"{loopback_server}/{name}", dest, sha) == dest
    assert dest.read_bytes() == (SHARED_REFERENCE / name).read_bytes()
    assert fetch("http://127.0.0.1:9/unreachable", dest, sha) == dest  # verified copy reused, no request


@needs_reference
def test_fetch_mismatch_leaves_no_file(tmp_path, loopback_server):
    dest = tmp_path / "x.yaml"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        fetch(f"{loopback_server}/first_plot_questions.yaml", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="failed"):
        fetch(f"{loopback_server}/missing.yaml", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []
