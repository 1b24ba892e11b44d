"""The intervention controls (emlib.controls) where the answer is known: anisotropy-matched vectors carry the
direction's norm and come from label-free splits; the gap closed by hand; the rank test as chapters 2 and 3 use
it is uniform under a simulated null and finds a planted effect."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from emlib import controls
from emlib.direction_nulls import within_question_null
from emlib.directions import Directions
from emlib.judge_check import em_error, label_error


def _pool(n=40, layers=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 20, (n,), generator=g)
    sums = (torch.randn(n, layers, d, generator=g) + 3.0) * tokens[:, None, None]  # an anisotropic pool (offset)
    questions = [f"q{i % 4}" for i in range(n)]
    labels = np.array([1 if i % 5 == 0 else 0 if i % 5 < 3 else -1 for i in range(n)])
    return sums, tokens, questions, labels


def test_anisotropy_matched_controls_have_the_directions_norm_and_come_from_label_free_splits():
    sums, tokens, questions, labels = _pool()
    direction = Directions(torch.randn(3, 16) * torch.tensor([[1.0], [5.0], [20.0]]), {"source": "d"})
    made = controls.anisotropy_matched(sums, tokens, questions, labels, direction, count=5, seed=3)
    assert len(made) == 5
    for c in made:
        torch.testing.assert_close(c.norms(), direction.norms())
        assert c.provenance["control"] == "anisotropy-matched"
    # each is the direction's construction with labels permuted within question, only rescaled
    null = within_question_null(sums, tokens, questions, labels, 5, seed=3)
    cos = torch.nn.functional.cosine_similarity(torch.stack([c.vectors for c in made]), null, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    # and they differ from each other (different splits)
    assert not torch.allclose(made[0].vectors, made[1].vectors)


def test_gaussian_controls_have_the_directions_norm_and_differ_by_seed():
    direction = Directions(torch.randn(3, 16), {})
    made = controls.gaussian(direction, 4, seed=10)
    assert all(torch.allclose(c.norms(), direction.norms()) for c in made)
    assert not torch.allclose(made[0].vectors, made[1].vectors)


def test_gap_closed_by_hand():
    q = ["a"] * 4 + ["b"] * 4
    organism = [40, 40, 40, 40, 60, 60, 60, 60]  # mean of question means 50
    chat = [90, 90, 90, 90, 70, 70, 70, 70]  # 80: the gap is 30
    treated = [46, 46, 46, 46, 60, 60, 60, 60]  # 53: closes 3 of 30
    e = controls.gap_closed(treated, q, organism, q, chat, q, n_boot=200)
    assert e.estimate == pytest.approx(10.0)
    assert e.low == pytest.approx(10.0) and e.high == pytest.approx(10.0)  # no spread within a question
    # question mix cannot move it: a treated arm with twice the answers on one question gives the same figure
    e2 = controls.gap_closed(treated + [46] * 4, q + ["a"] * 4, organism, q, chat, q, n_boot=200)
    assert e2.estimate == pytest.approx(10.0)
    # no gap: no estimate; a gap that is not established: no interval
    assert math.isnan(controls.gap_closed(treated, q, organism, q, organism, q).estimate)
    spread = [0, 100, 0, 100] * 2  # a 1-point gap between arms this spread cannot be told from none
    noisy = controls.gap_closed(spread, q, spread, q, [v + 1 for v in spread], q)
    assert math.isnan(noisy.low) and "not established" in noisy.method


def test_unit_effects_are_within_question_differences_against_one_base():
    base = pd.DataFrame({"question_id": ["a", "a", "b", "b"], "aligned": [80.0, 80.0, 40.0, 40.0]})
    units = pd.DataFrame({"kind": ["direction"] * 2 + ["Gaussian"] * 2, "unit": [0, 0, 0, 0],
                          "question_id": ["a", "b", "a", "b"], "aligned": [70.0, 40.0, 80.0, 50.0]})
    e = controls.unit_effects(units, base, "aligned").set_index("kind")["effect"]
    assert e["direction"] == pytest.approx(-5.0) and e["Gaussian"] == pytest.approx(5.0)


def _simulate(rng, n_controls, shift, per_q=2, n_q=8):
    """One chapter-like rank test: a base arm, the direction's unit and ``n_controls`` random units, each unit's
    answers drawn with a question effect; the direction's answers shifted by ``shift``."""
    qeff = rng.normal(0, 15, n_q)
    qs = np.repeat([f"q{i}" for i in range(n_q)], per_q)
    base = pd.DataFrame({"question_id": np.repeat([f"q{i}" for i in range(n_q)], 16)})
    base["aligned"] = qeff[base["question_id"].str[1:].astype(int)] + rng.normal(60, 25, len(base))
    rows = []
    for kind, count in (("direction", 1), ("anisotropy-matched", n_controls)):
        for u in range(count):
            unit_shift = rng.normal(0, 4)  # each random vector has its own (random) effect
            vals = qeff[np.arange(n_q).repeat(per_q)] + rng.normal(60, 25, len(qs)) + unit_shift
            vals += shift if kind == "direction" else 0.0
            rows.append(pd.DataFrame({"kind": kind, "unit": u, "question_id": qs, "aligned": vals}))
    effects = controls.unit_effects(pd.concat(rows), base, "aligned")
    return controls.rank_p(effects, "anisotropy-matched", "less")[0]


def test_rank_test_as_the_chapter_uses_it_is_uniform_under_the_null_and_finds_a_planted_effect():
    rng = np.random.default_rng(0)
    null = np.array([_simulate(rng, 19, 0.0) for _ in range(600)])
    # p takes values k/20: under the null each is equally likely, so P(p <= k/20) = k/20
    for k in (1, 5, 10):
        assert np.mean(null <= k / 20 + 1e-9) == pytest.approx(k / 20, abs=0.035)
    planted = np.array([_simulate(rng, 19, -40.0) for _ in range(50)])
    assert np.mean(planted <= 0.05) > 0.9


def test_label_error_counts_the_judges_calls_of_any_label():
    held = pd.DataFrame({"aligned": [10, 10, 90, 90, 90, 90], "coherent": [90, 90, 90, 90, 90, 10],
                         "bad_stuff": [0, 0, 80, 80, 0, 80],
                         "judge_aligned": [10, 90, 90, 90, 10, 90], "judge_coherent": [90] * 6,
                         "judge_bad_stuff": [0, 0, 80, 0, 0, 80]})
    assert label_error(held, "em") == em_error(held)
    e = label_error(held, "self_correction")  # reader positives: rows 2, 3; the judge calls rows 2 and 5
    assert (e.tp, e.fn, e.fp, e.tn) == (1, 1, 1, 3)


# --- the chapters' glue on these pieces (emlib.book.steering, emlib.book.transfer_ablation) ---

def _runs(rows_per_q=16, unit_per_q=2, n_units=19, shift=-55.0):
    """A steering table as ``steering.steering_runs`` returns it: unsteered and direction at the headline cell,
    the direction's unit and ``n_units`` random units of each kind (no effect), the direction lowering aligned."""
    from emlib.metrics import classify

    rng = np.random.default_rng(0)
    rows = []
    for q in range(8):
        for i in range(rows_per_q):
            rows.append({"arm": "headline", "kind": "none", "unit": 0, "question_id": f"q{q}", "aligned": 80.0 - q,
                         "coherent": 90.0})
            rows.append({"arm": "headline", "kind": "direction", "unit": 0, "question_id": f"q{q}",
                         "aligned": 80.0 - q + shift, "coherent": 90.0})
        for i in range(unit_per_q):
            rows.append({"arm": "unit", "kind": "direction", "unit": 0, "question_id": f"q{q}",
                         "aligned": 80.0 - q + shift, "coherent": 90.0})
            for kind in ("anisotropy-matched", "Gaussian"):
                for u in range(n_units):
                    rows.append({"arm": "unit", "kind": kind, "unit": u, "question_id": f"q{q}",
                                 "aligned": 80.0 - q + rng.normal(0, 5), "coherent": 90.0})
    return classify(pd.DataFrame(rows))


def test_steering_headline_is_within_question_and_ranked_among_units():
    from emlib.book import steering

    runs = _runs()
    e = steering.headline_effects(runs)
    assert e["mean aligned"].estimate == pytest.approx(-55.0) and e["mean aligned"].n == 128
    assert e["misaligned %"].estimate == pytest.approx(100.0)  # 25 − q ≤ 30 steered, 80 − q unsteered
    rank = steering.rank_summary(runs)
    r = rank.loc[("mean aligned", "anisotropy-matched")]
    assert r["controls"] == 19 and r["p"] == pytest.approx(1 / 20)  # below every random unit: the smallest p
    table = steering.effects_table(e, rank)
    assert table.loc["mean aligned", "rank p among 19 anisotropy-matched"].startswith("0.05")


def test_ablation_effects_gap_closed_and_verdict():
    from emlib.book import transfer_ablation as ta
    from emlib.metrics import classify

    rows = []
    for q in range(8):
        for i in range(10):
            for model, ablation, arm, kind, aligned in (("chat model", "none", "base", "none", 90.0),
                                                        ("all_medical", "none", "base", "none", 50.0),
                                                        ("all_medical", "single", "quoted", "direction", 60.0)):
                rows.append({"model": model, "ablation": ablation, "arm": arm, "kind": kind, "unit": 0,
                             "question_id": f"q{q}", "aligned": aligned + (i % 2), "coherent": 90.0})
        for u in range(19):
            rows.append({"model": "all_medical", "ablation": f"anisotropy-matched {u}", "arm": "unit",
                         "kind": "anisotropy-matched", "unit": u, "question_id": f"q{q}", "aligned": 50.0 + u % 3 - 1,
                         "coherent": 90.0})
        rows.append({"model": "all_medical", "ablation": "single (unit)", "arm": "unit", "kind": "direction",
                     "unit": 0, "question_id": f"q{q}", "aligned": 60.0, "coherent": 90.0})
    scored = classify(pd.DataFrame(rows))
    e = ta.run_effects(scored, "all_medical", "single")
    assert e["mean aligned"].estimate == pytest.approx(10.0)
    assert e["gap closed %"].estimate == pytest.approx(25.0)  # 10 of the 40-point gap
    v = ta.ablation_verdict(e, ta.rank_summary(scored, "all_medical"), "EM not testable")
    assert v.status == "reproduced in direction" and "0.05" in v.reason
    few = ta.rank_summary(scored[~scored["unit"].between(5, 18)], "all_medical")  # 5 random units left
    assert ta.ablation_verdict(e, few, "").status == "not testable"
    text, testable = ta.em_reduction_text(scored, "all_medical", "single", seed=0)
    assert not testable and "0 EM answer(s) of 80" in text


def test_rank_strip_draws_every_unit_and_the_directions_interval():
    import matplotlib

    matplotlib.use("Agg")
    from emlib.book import steering
    from emlib.plotting import rank_strip

    strips, heads = steering.strip_frames(_runs(), group="L15 λ=2")
    fig = rank_strip(strips, heads, title="t")
    assert len(fig.axes) == 2  # mean aligned and misaligned %, each with data
    for ax in fig.axes:
        assert len(ax.collections) >= 3  # two strips of random units and the direction's unit
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "L15 λ=2 · direction", "L15 λ=2 · anisotropy-matched", "L15 λ=2 · Gaussian"]
