"""emlib.plan: the jobs and totals a params file implies, checked against sums written out from the params."""

from dataclasses import replace

import pytest

from emlib.config import load_params
from emlib.data import BUILTIN_MEDICAL_QUESTIONS, load_questions
from emlib.plan import PROMPT_TOKENS, Run, estimate, plan, totals


def paper():
    # the paper's question file is not in the repository: the built-in questions stand in (8, like the paper's)
    return load_params("params/paper.yaml", {"questions": "builtin"})


def test_paper_totals_match_the_params_summed_by_hand():
    """Every sampling run the chapters make, written out from the params as (model, questions, answers a question,
    tokens, intervention): a run two chapters make alike (in the paper's preset every plain run has 50 answers of
    600 tokens, so chapter 2's extraction sets and chapter 3's unablated runs are chapter 1's runs) counts once."""
    p = paper()
    jobs = plan(p, n_layers=48)
    q, m = len(load_questions("builtin")), len(load_questions(BUILTIN_MEDICAL_QUESTIONS))
    orgs = [o["name"] for o in p.organisms]
    units = 1 + 2 * p.random_controls  # direction + anisotropy-matched + as many Gaussian
    t_eval, t_iv = p.max_new_tokens, p.intervention_max_new_tokens
    runs = {(o, "eval", p.samples_per_question, t_eval, "none") for o in ["chat", *orgs]}
    runs |= {(o, "eval", p.direction_samples_per_question, t_iv, "none") for o in [p.direction_organism, *p.compare_organisms]}
    runs |= {(p.direction_organism, "medical", p.direction_samples_per_question, t_iv, "none")}
    runs |= {("chat", "eval", p.headline_samples_per_question, t_iv, "none"),
             ("chat", "eval", p.headline_samples_per_question, t_iv, f"steer {p.headline_layer} {p.headline_scale}"),
             ("chat", "eval", units * p.control_samples_per_question, t_iv, "steering units")}
    runs |= {("chat", "eval", p.steer_samples_per_question, t_iv, f"steer {lay} {s}") for lay in p.steer_layers
             for s in p.steer_scales if (lay, s) != (p.headline_layer, p.headline_scale)}
    for o in [p.direction_organism, *p.compare_organisms]:
        runs |= {(o, "eval", p.ablation_samples_per_question, t_iv, a) for a in ("none", "single")}
        runs |= {(o, "eval", units * p.control_samples_per_question, t_iv, "ablation units")}
    runs |= {(p.direction_organism, "eval", p.ablation_samples_per_question, t_iv, "layer-wise")}
    answers = {r: (m if r[1] == "medical" else q) * r[2] for r in runs}
    t = totals(jobs)
    assert t.by_kind["sample"] == len(runs)
    assert t.answers_sampled == sum(answers.values())
    assert t.tokens_decoded == sum(n * r[3] for r, n in answers.items())
    assert t.judge_calls == t.judge_api_calls == t.answers_sampled * len(p.judge_metrics)  # GPT-4o: no set judge
    per_answer = PROMPT_TOKENS + t_iv
    n_dir = q * p.direction_samples_per_question
    passes = ((1 + len(p.compare_organisms)) * n_dir + m * p.direction_samples_per_question  # each extraction set
              + len(p.compare_organisms) * 2 * n_dir  # the cross-model control: through the chat model and the source
              + (3 + p.geometry_random_vectors) * n_dir)  # chapter 4: chat, organism, direction, random vectors
    assert t.forward_tokens == passes * per_answer
    assert t.by_kind == {"train": sum("preset" in o for o in p.organisms), "sample": len(runs),
                         "judge": len(runs), "activations": 4 + 2 * len(p.compare_organisms) + 3 + p.geometry_random_vectors}
    under = sum(n for r, n in answers.items() if r[4] != "none")
    assert 0.7 < under / t.answers_sampled < 0.9  # most of the decoding is under an intervention


def test_a_run_two_chapters_share_is_one_job():
    p = paper()
    jobs = plan(p, 48)
    unsteered = Run("chat model", "evaluation", p.headline_samples_per_question, p.intervention_max_new_tokens)
    assert sum(j.kind == "sample" and j.target[1] == unsteered.__dict__ for j in jobs) == 1
    assert len({j.key for j in jobs}) == len(jobs)
    position = {j.key: i for i, j in enumerate(jobs)}
    assert all(position[d] < position[j.key] for j in jobs for d in j.deps)  # dependencies first


def test_an_extraction_set_equal_to_an_evaluation_run_keeps_its_set_judge_and_pass():
    p = load_params("params/smoke.yaml")  # 2 answers x 12 tokens: the direction set IS the evaluation run
    jobs = plan(p, 30)
    run = Run(p.direction_organism, "evaluation", p.samples_per_question, p.max_new_tokens)
    named = [j for j in jobs if j.target[1:2] == (run.__dict__,) or (j.kind == "activations" and j.target[2] == run.__dict__
                                                                     and j.target[3] == p.direction_organism)]
    assert sorted(j.target[0] for j in named) == ["activations", "activations", "judge", "sample", "set judge"]


def test_estimate_from_a_measured_rate_and_the_batch_discount():
    from emlib.plan import Throughput

    t = totals(plan(paper(), 48))
    rate = Throughput("test", decode_tokens_per_s=1000.0, forward_tokens_per_s=1e4, train_tokens_per_s=100.0, source="t")
    e = estimate(t, rate)
    assert e["device_hours"] == pytest.approx((t.tokens_decoded / 1000 + t.forward_tokens / 1e4
                                               + t.train_tokens / 100) / 3600)
    assert estimate(t, rate, batch_api=True)["judge_dollars"] == pytest.approx(e["judge_dollars"] / 2)
    assert estimate(t, None)["device_hours"] is None


def test_amplified_sampling_counts_two_model_evaluations_a_token():
    p = replace(load_params("params/smoke.yaml"), direction_amplification=2.0)
    jobs = plan(p, 30)
    amp = [j for j in jobs if j.kind == "sample" and j.target[1]["amplification"] == 2.0]
    assert amp and all(j.tokens_decoded == 2 * j.answers * p.intervention_max_new_tokens for j in amp)


def test_transfer_targets_take_their_own_count_of_each_kind_of_random_unit():
    """Anisotropy-matched and Gaussian units on a transfer target: capped by their own keys, at most the direction
    organism's; Gaussian ones follow the anisotropy-matched cap when not given."""
    from emlib.plan import n_transfer

    p = replace(load_params("params/default.yaml"), random_controls=20, gaussian_controls=10)
    p = replace(p, transfer_random_controls=None, transfer_gaussian_controls=None)
    assert (n_transfer(p, False), n_transfer(p, True)) == (20, 10)
    p = replace(p, transfer_random_controls=5)
    assert (n_transfer(p, False), n_transfer(p, True)) == (5, 5)
    p = replace(p, gaussian_controls=20, transfer_random_controls=19, transfer_gaussian_controls=0)
    assert (n_transfer(p, False), n_transfer(p, True)) == (19, 0)
    units = {j.target[1]["model"]: j.name for j in plan(p, 30) if "stacked ablation units" in j.name}
    assert "(41)" in units.pop(p.direction_organism)  # its own unit, 20 + 20 random
    assert sorted(units) == sorted(p.compare_organisms) and all("(20)" in n for n in units.values())  # 1 + 19 + 0
