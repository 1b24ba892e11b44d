"""The inference behind every verdict (``emlib.inference``), tested where the answer is known: a judge that finds
12% of EM answers cannot test the paper's rise at the default sizes while a perfect one finds a planted rise;
rank-test and within-question p-values are uniform under their nulls; a difference in question mix alone is no
effect; Holm against a hand computation."""

import math

import numpy as np
import pytest
from scipy import stats

from emlib import inference as inf
from emlib.metrics import JudgeError, Thresholds, detectable_difference
from emlib.paper import value

OFFLINE = JudgeError(tp=8, fn=57, tn=1980, fp=18)  # sensitivity 0.12, specificity 0.991: chapter 0's judge
PERFECT = JudgeError(tp=2000, fn=0, tn=2000, fp=0)
N = 176  # answers per arm at the default sizes (8 questions x 22 samples)


def _binomial_ok(hits: int, n: int, rate: float, z: float = 3.5) -> bool:
    return abs(hits - n * rate) <= z * math.sqrt(n * rate * (1 - rate))


# --- (a) the verdict counts the judge ---

def test_a_judge_finding_12_percent_of_em_cannot_test_the_papers_rise():
    paper = value("r1x9_em")
    seen = inf.rate_rise(18, N, 0, N)  # even a large judged rise: the verdict is about what the judge could show
    v = inf.rise_verdict(seen, 0.0, paper, error=OFFLINE, judge="the offline proxy", what="EM", base="chat model")
    assert v.status == "not testable"
    assert "the offline proxy" in v.reason and "sensitivity ≥" in v.reason and "answers per arm" in v.reason
    assert inf.detectable_true_rise(0.0, N, N, OFFLINE) > paper
    # what the reason says would make it testable does: that many answers per arm
    need = inf.answers_needed(0.0, paper, OFFLINE)
    assert need is not None and need > N
    assert inf.detectable_true_rise(0.0, need, need, OFFLINE) <= paper < inf.detectable_true_rise(0.0, need - 1, need - 1, OFFLINE)
    assert f"{need:,} answers per arm" in v.reason


@pytest.mark.parametrize("error", [None, PERFECT])
def test_a_perfect_judge_reproduces_a_planted_10_point_rise_and_not_a_null(error):
    paper = value("r1x9_em")
    v = inf.rise_verdict(inf.rate_rise(18, N, 0, N), 0.0, paper, error=error, judge="a perfect judge", what="EM",
                         base="chat model")
    assert v.status == "reproduced in direction" and "+10.2 points" in v.reason
    flat = inf.rise_verdict(inf.rate_rise(1, N, 0, N), 0.0, paper, error=error, judge="a perfect judge", what="EM",
                            base="chat model")
    assert flat.status == "not reproduced" and "would have been detected" in flat.reason


def test_simulated_draws_a_perfect_judge_finds_a_true_10_point_rise_the_offline_judge_cannot_test():
    rng = np.random.default_rng(0)
    paper = value("r1x9_em")
    found = 0
    for _ in range(300):
        k, k0 = rng.binomial(N, 0.10), rng.binomial(N, 0.0)
        if inf.rise_verdict(inf.rate_rise(int(k), N, int(k0), N), 0.0, paper, error=PERFECT, judge="perfect",
                            what="EM", base="chat").status == "reproduced in direction":
            found += 1
    assert found / 300 >= 0.8  # the detectable rise at these sizes is below 10 points: power above 80%
    # the same true rise through the offline judge: judged rate 0.12·10 + 0.009 ≈ 2%, and the verdict says so
    k = rng.binomial(N, 0.10 * OFFLINE.sensitivity + (1 - 0.10) * (1 - OFFLINE.specificity))
    k0 = rng.binomial(N, 1 - OFFLINE.specificity)
    v = inf.rise_verdict(inf.rate_rise(int(k), N, int(k0), N), 100 * k0 / N, paper, error=OFFLINE, judge="offline",
                         what="EM", base="chat")
    assert v.status == "not testable"


def test_a_verdict_is_one_of_the_five_statuses():
    with pytest.raises(ValueError, match="unknown verdict status"):
        inf.Verdict("not judged", "")
    assert inf.Verdict("descriptive", "x").text() == "descriptive: x"


# --- (e) the detectable true rise is the judged one through J's lower bound ---

def test_detectable_true_rise_is_the_judged_detectable_rise_over_js_lower_bound():
    for base, n, n_base in ((0.0, 176, 176), (2.0, 448, 176), (10.0, 64, 100)):
        judged = detectable_difference(base, min(n, n_base), alpha=Thresholds().alpha, power=Thresholds().power)
        j, j_low = inf.judge_discrimination(OFFLINE)
        assert j == pytest.approx(OFFLINE.sensitivity + OFFLINE.specificity - 1)
        assert 0 < j_low < j
        assert inf.detectable_true_rise(base, n, n_base, OFFLINE) == pytest.approx(judged / j_low)
        assert inf.detectable_true_rise(base, n, n_base, None) == pytest.approx(judged)
    assert math.isinf(inf.detectable_true_rise(0.0, 176, 176, JudgeError(tp=1, fn=1, tn=1, fp=1)))


# --- (b) the rank test is exact under the null ---

@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_rank_test_p_values_are_uniform_over_exchangeable_units(alternative):
    rng = np.random.default_rng(1)
    sims, units = 20000, 21  # enough to see a rate of 0.055 (a centre from the controls alone) against 1/21
    draws = rng.normal(size=(sims, units)) * rng.uniform(0.5, 2, size=(sims, 1)) + rng.normal(size=(sims, 1))
    p = np.array([inf.rank_test(d[0], d[1:], alternative) for d in draws])
    assert p.min() == pytest.approx(inf.smallest_rank_p(units - 1))
    assert _binomial_ok(int((p <= 0.05).sum()), sims, 1 / 21)  # P(p ≤ 0.05) = 1/21 ≈ 0.048
    # p takes the values k/21, each with probability 1/21
    counts = np.bincount(np.rint(p * units).astype(int), minlength=units + 1)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_rank_test_finds_a_unit_far_from_its_controls():
    controls = np.random.default_rng(2).normal(size=20)
    assert inf.rank_test(5.0, controls, "greater") == pytest.approx(1 / 21)
    assert inf.rank_test(5.0, controls, "less") == 1.0
    assert inf.rank_test(-5.0, controls, "two-sided") == pytest.approx(1 / 21)
    with pytest.raises(ValueError):
        inf.rank_test(0.0, controls, "sideways")


# --- (c) within question: question mix is no effect ---

def _arm(rng, counts, means, shift=0.0, sd=10.0):
    q = np.repeat([f"q{i}" for i in range(len(counts))], counts)
    v = np.concatenate([rng.normal(m + shift, sd, c) for m, c in zip(means, counts)])
    return v, q


MEANS = [90, 80, 60, 40, 20, 85, 70, 50]  # per-question means differ a lot


def test_arms_that_differ_only_in_question_mix_show_no_effect():
    rng = np.random.default_rng(3)
    ps, covered = [], 0
    for seed in range(200):
        v, q = _arm(rng, [40, 30, 20, 10, 5, 5, 5, 5], MEANS)  # mostly high-scoring questions
        b, bq = _arm(rng, [5, 5, 5, 10, 20, 30, 40, 10], MEANS)  # mostly low-scoring ones, other counts
        assert abs(v.mean() - b.mean()) > 5  # a plain difference of means is confounded
        e = inf.within_question_effect(v, q, b, bq, measure="mean aligned", n_perm=500, n_boot=500, seed=seed)
        ps.append(e.p)
        covered += e.low <= 0 <= e.high
    ps = np.array(ps)
    assert (ps <= 0.05).mean() <= 0.10
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    assert covered / 200 >= 0.88


def test_a_planted_shift_is_found_within_question():
    rng = np.random.default_rng(4)
    found, covered = 0, 0
    for seed in range(100):
        v, q = _arm(rng, [40, 30, 20, 10, 5, 5, 5, 5], MEANS, shift=-6.0)
        b, bq = _arm(rng, [5, 5, 5, 10, 20, 30, 40, 10], MEANS)
        e = inf.within_question_effect(v, q, b, bq, measure="mean aligned", n_perm=500, n_boot=500, seed=seed)
        found += e.p < 0.05 and e.high < 0
        covered += e.low <= -6.0 <= e.high
    assert found >= 90 and covered >= 88
    assert (e.n, e.n_base) == (len(v), len(b)) and e.measure == "mean aligned"


def test_within_question_rates_a_planted_rise_and_leaves_out_unshared_questions():
    q = np.repeat([f"q{i}" for i in range(8)], 22)
    v = np.zeros(176)
    v[::10] = 1  # 18 of 176
    e = inf.within_question_effect(v, q, np.zeros(176), q)
    assert e.estimate == pytest.approx(18 / 176) and e.low > 0 and e.p < 0.01
    extra = inf.within_question_effect(np.r_[v, np.ones(10)], np.r_[q, ["only_here"] * 10], np.zeros(176), q)
    assert extra.estimate == pytest.approx(e.estimate) and extra.n == 176
    none = inf.within_question_effect([1.0], ["a"], [0.0], ["b"])
    assert math.isnan(none.estimate) and none.p is None


# --- (d) Holm ---

def test_holm_against_a_hand_computation():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone 0.06
    np.testing.assert_allclose(inf.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = inf.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    np.testing.assert_allclose(inf.holm([0.6, 0.9]), [1.0, 1.0])


def test_a_detectable_rise_past_100_points_is_not_quoted_as_a_number():
    v = inf.rise_verdict(inf.rate_rise(1, 16, 0, 16), 0.0, value("r1x9_em"), error=OFFLINE, judge="j", what="EM %",
                         base="chat model")
    assert v.status == "not testable" and "more than 100 points" in v.reason
