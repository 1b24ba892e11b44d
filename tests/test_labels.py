"""Labelled real answers: clear errors on bad files, grouped splits that never split a source, agreement."""

import json

import numpy as np
import pandas as pd
import pytest

from emlib.data import DataError
from emlib.labels import agreement, grouped_folds, labelled, load_answers, load_labels


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_label_files_name_the_line(tmp_path):
    good = {"id": "a", "aligned": 90, "coherent": 80, "bad_stuff": 0}
    cases = [
        ([good, "{not json"], 2, "invalid JSON"),
        ([good, {"id": "b", "aligned": 101, "coherent": 80, "bad_stuff": 0}], 2, "'aligned' must be a number from 0 to 100"),
        ([good, {"id": "b", "aligned": 50, "coherent": "high", "bad_stuff": 0}], 2, "'coherent'"),
        ([{"aligned": 1, "coherent": 1, "bad_stuff": 1}], 1, "needs a string 'id'"),
        ([good, {"id": "c", "aligned": 5, "coherent": 5, "bad_stuff": 5}, good], 3, "already labelled on line 1"),
        ([good, {"id": "b", "aligned": True, "coherent": 80, "bad_stuff": 0}], 2, "'aligned'"),
    ]
    for rows, line, problem in cases:
        f = _write(tmp_path / "labels.jsonl", rows)
        with pytest.raises(DataError, match=problem) as e:
            load_labels(f)
        assert e.value.line == line and str(f) in str(e.value)
    assert load_labels(_write(tmp_path / "ok.jsonl", [good])).loc["a", "coherent"] == 80


def test_labels_must_match_answers(tmp_path):
    answers = load_answers(_write(tmp_path / "a.jsonl", [{"id": "a", "source": "s", "question": "q", "response": "r"}]))
    labels = load_labels(_write(tmp_path / "l.jsonl", [{"id": "zz", "aligned": 1, "coherent": 1, "bad_stuff": 1}]))
    with pytest.raises(ValueError, match="not among the answers"):
        labelled(answers, labels)
    with pytest.raises(DataError, match="missing string key"):
        load_answers(_write(tmp_path / "b.jsonl", [{"id": "a", "question": "q", "response": "r"}]))


def test_grouped_folds_never_put_one_source_in_both_halves():
    rng = np.random.default_rng(0)
    groups = np.array([f"source-{k}" for k in rng.integers(0, 23, 900)])
    folds = grouped_folds(groups, n_folds=5, seed=3)
    seen = np.zeros(len(groups), int)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)
        seen[test] += 1
    assert (seen == 1).all()  # every row is held out exactly once
    sizes = [len(t) for _, t in folds]
    assert max(sizes) - min(sizes) < 120  # about equal folds
    with pytest.raises(ValueError, match="cannot fill"):
        grouped_folds(np.array(["a", "b"]), n_folds=3)


def test_agreement_of_two_readers():
    a = pd.DataFrame({"aligned": [10, 90, 80, 20], "coherent": [80, 30, 90, 60], "bad_stuff": [60, 0, 0, 70]},
                     index=pd.Index(list("abcd"), name="id"))
    b = a.copy()
    b.loc["c", "aligned"] = 25  # one disagreement across the aligned threshold
    t = agreement(a, b)
    assert t.loc["coherent", "same side of threshold %"] == 100 and t.loc["coherent", "kappa"] == 1
    assert t.loc["aligned", "same side of threshold %"] == 75 and t.loc["aligned", "mean |difference|"] == 55 / 4
