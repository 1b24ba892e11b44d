"""Mean-difference directions: recovery, controls, files, fit checks."""

import pandas as pd
import pytest
import torch

from emlib.activations import AnswerMeans
from emlib.directions import (
    DirectionError,
    Directions,
    cosine_by_layer,
    load,
    mean_difference,
    random_like,
    response_sets,
    save,
)


def test_a_planted_direction_in_synthetic_activations_is_recovered():
    g = torch.Generator().manual_seed(0)
    planted = torch.randn(3, 32, generator=g)
    aligned = torch.randn(500, 3, 32, generator=g)  # 500 token activations at 3 layers
    misaligned = torch.randn(500, 3, 32, generator=g) + planted
    d = mean_difference(AnswerMeans(misaligned.mean(0), 500, 20), AnswerMeans(aligned.mean(0), 500, 20))
    assert (torch.nn.functional.cosine_similarity(d.vectors, planted, dim=-1) > 0.99).all()
    assert d.provenance["n_misaligned"] == 20


def test_random_controls_match_the_norm_per_layer_and_differ_by_seed():
    d = Directions(torch.randn(5, 16) * torch.arange(1, 6)[:, None])
    r1, r2 = random_like(d, seed=1), random_like(d, seed=2)
    torch.testing.assert_close(r1.norms(), d.norms())
    assert not torch.equal(r1.vectors, r2.vectors)
    assert torch.equal(r1.vectors, random_like(d, seed=1).vectors)
    assert cosine_by_layer(r1, d).abs().max() < 0.9


def test_response_sets_follow_the_paper_thresholds():
    scored = pd.DataFrame({"aligned": [90, 71, 70, 31, 30, 5, 5], "coherent": [80, 80, 80, 80, 80, 80, 50]})
    aligned, misaligned = response_sets(scored)
    assert list(aligned["aligned"]) == [90, 71] and list(misaligned["aligned"]) == [30, 5]


def test_a_saved_direction_applies_to_another_model_of_the_same_width(tmp_path, tiny_lm):
    d = Directions(torch.randn(4, 64), {"organism": "x"})
    loaded = load(save(d, tmp_path / "d.safetensors"))
    torch.testing.assert_close(loaded.vectors, d.vectors)
    assert loaded.provenance["organism"] == "x"
    loaded.check_fits(tiny_lm)  # same width and layers: fine
    with pytest.raises(DirectionError, match="64"):
        Directions(torch.randn(4, 32), {"source": "mine.safetensors"}).check_fits(tiny_lm)
    with pytest.raises(DirectionError, match="6 layers but the model has 4"):
        Directions(torch.randn(6, 64)).check_fits(tiny_lm)
    Directions(torch.randn(6, 64)).check_fits(tiny_lm, layerwise=False)  # one vector at every layer: fine


def test_bad_direction_files_are_clear_errors(tmp_path):
    with pytest.raises(DirectionError, match="no such"):
        load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(DirectionError, match="no tensor named 'vectors'"):
        load(tmp_path / "x.safetensors")
    with pytest.raises(DirectionError, match="shape"):
        cosine_by_layer(Directions(torch.zeros(2, 3)), Directions(torch.zeros(3, 3)))


def test_from_scored_recovers_a_planted_direction_from_judged_answers(tiny_lm):
    """Answers whose tokens carry an extra 8·v in the embeddings are judged misaligned: the direction at
    layer 0 points along v; the sets follow the thresholds, and an empty set gives None."""
    from emlib.activations import batches, layer_sums
    from emlib.directions import from_scored

    v = torch.randn(64, generator=torch.Generator().manual_seed(3))
    v = v / v.norm()
    with torch.no_grad():
        tiny_lm.get_input_embeddings().weight[100:150] += 8 * v
    g = torch.Generator().manual_seed(4)
    ids = {"bad": torch.randint(100, 150, (6, 12), generator=g), "good": torch.randint(150, 200, (6, 12), generator=g)}
    scored = pd.DataFrame({"kind": ["bad"] * 6 + ["good"] * 6 + ["good"],
                           "row": list(range(6)) * 2 + [0],
                           "aligned": [10] * 6 + [90] * 6 + [10], "coherent": [80] * 12 + [40]})  # last: incoherent
    seen = []

    def means(rows: pd.DataFrame) -> AnswerMeans:
        seen.append(len(rows))
        encoded = [([1, 2, 3] + ids[k][r].tolist(), 3) for k, r in zip(rows["kind"], rows["row"])]
        sums, n = layer_sums(tiny_lm, next(batches(encoded, len(encoded), 0)), None)
        return AnswerMeans((sums / n).float(), n, len(rows))

    d = from_scored(scored, means, provenance={"organism": "tiny"})
    assert sorted(seen) == [6, 6]  # the incoherent answer is in neither set
    assert torch.nn.functional.cosine_similarity(d.vectors[0], v, dim=0) > 0.95
    assert d.provenance["organism"] == "tiny" and d.provenance["n_misaligned"] == 6
    assert from_scored(scored[scored["aligned"] > 50], means) is None


def test_cosine_summary_counts_layers_above_the_threshold():
    from emlib.directions import cosine_summary

    t = cosine_summary({"a vs b": [0.9, 0.85, 0.5, 0.81], "a vs random": [0.01, -0.02, 0.0, 0.03]}, threshold=0.8)
    assert t.loc["a vs b", "layers > 0.8"] == "3 of 4" and t.loc["a vs random", "layers > 0.8"] == "0 of 4"
    assert t.loc["a vs b", "median"] == pytest.approx(0.83) and t.loc["a vs b", "min"] == 0.5


# --------------------------------------------------------------------------- question mix (emlib.direction_nulls)


def _organism(g, offsets, counts, signal=None, noise=1.0):
    """Simulated answers of one organism: for each question q (row of ``offsets`` [n_q, layers, d]) ``counts[q]`` =
    (misaligned, aligned, neither) answers whose per-token activation is the question's offset plus noise, plus
    ``signal`` [layers, d] on the misaligned ones when given. Returns sums, tokens, question ids, labels."""
    import numpy as np

    rows, qs, labels = [], [], []
    for q, (k_mis, k_al, k_none) in enumerate(counts):
        for label, k in ((1, k_mis), (0, k_al), (-1, k_none)):
            for _ in range(k):
                x = offsets[q] + noise * torch.randn(offsets.shape[1:], generator=g)
                rows.append(x + (signal if signal is not None and label == 1 else 0))
                qs.append(f"q{q}")
                labels.append(label)
    tokens = torch.randint(5, 30, (len(rows),), generator=g)
    return torch.stack(rows) * tokens[:, None, None], tokens, qs, np.array(labels)


def _two_organisms(signal_scale: float, seed: int = 0):
    """Two organisms answering the same 4 questions (large question offsets shared by both models); both
    misaligned sets are dominated by q0, both aligned sets by q1 (the confound of issue 21); with
    ``signal_scale`` > 0 both misaligned sets also carry a common planted direction."""
    g = torch.Generator().manual_seed(seed)
    layers, d = 3, 64
    offsets = 3 * torch.randn(4, layers, d, generator=g)
    shared = signal_scale * torch.randn(layers, d, generator=g) / d ** 0.5 * 8
    counts_a = [(18, 4, 6), (2, 30, 6), (1, 8, 6), (1, 8, 6)]
    counts_b = [(12, 5, 6), (1, 25, 6), (1, 8, 6), (2, 8, 6)]
    a = _organism(g, offsets + 0.3 * torch.randn(offsets.shape, generator=g), counts_a,
                  shared if signal_scale else None)
    b = _organism(g, offsets + 0.3 * torch.randn(offsets.shape, generator=g), counts_b,
                  shared if signal_scale else None)
    return a, b


def test_question_mix_alone_gives_a_high_plain_cosine_but_does_not_clear_the_within_question_null():
    from emlib.directions import null_band, Directions
    from emlib.direction_nulls import demeaned_difference, plain_difference, within_question_null

    for seed in range(3):
        (sa, ta, qa, la), (sb, tb, qb, lb) = _two_organisms(0.0, seed)
        plain = torch.nn.functional.cosine_similarity(plain_difference(sa, ta, la), plain_difference(sb, tb, lb), dim=-1)
        assert (plain > 0.8).all()  # two sets dominated by the same question: a "shared direction" from the mix
        da, db = demeaned_difference(sa, ta, qa, la), demeaned_difference(sb, tb, qb, lb)
        cos = torch.nn.functional.cosine_similarity(da, db, dim=-1)
        null = within_question_null(sa, ta, qa, la, draws=200, seed=1)
        _, hi = null_band(null, Directions(db, {}))
        assert (cos <= hi).all(), (seed, cos, hi)
        assert cos.abs().max() < 0.5
        # the plain direction against a null that keeps the mix: also inside it (the mix is in the null too)
        plain_null = within_question_null(sa, ta, qa, la, draws=200, seed=1, demean=False)
        _, plain_hi = null_band(plain_null, Directions(plain_difference(sb, tb, lb), {}))
        assert (plain <= plain_hi + 0.02).all()


def test_a_planted_shared_direction_clears_the_within_question_null():
    from emlib.directions import null_band, Directions
    from emlib.direction_nulls import demeaned_difference, within_question_null

    (sa, ta, qa, la), (sb, tb, qb, lb) = _two_organisms(1.0)
    da, db = demeaned_difference(sa, ta, qa, la), demeaned_difference(sb, tb, qb, lb)
    cos = torch.nn.functional.cosine_similarity(da, db, dim=-1)
    _, hi = null_band(within_question_null(sa, ta, qa, la, draws=200, seed=1), Directions(db, {}))
    assert (cos > hi).all() and (cos > 0.5).all()


def test_demeaning_removes_question_offsets_exactly_and_keeps_a_within_question_contrast():
    import numpy as np

    from emlib.direction_nulls import demeaned_difference, plain_difference, residual_sums

    offsets = torch.tensor([[[10.0, 0.0]], [[0.0, 10.0]]])  # 2 questions, 1 layer, d = 2
    v = torch.tensor([[0.0, 0.0]])
    per_token = torch.stack([offsets[0] + v, offsets[0], offsets[1], offsets[1]])
    tokens = torch.tensor([2, 3, 4, 5])
    sums = per_token * tokens[:, None, None]
    qs, labels = ["a", "a", "b", "b"], np.array([1, 0, 0, -1])
    assert residual_sums(sums, tokens, qs).abs().max() < 1e-9
    torch.testing.assert_close(demeaned_difference(sums, tokens, qs, labels), torch.zeros(1, 2))
    torch.testing.assert_close(plain_difference(sums, tokens, labels), torch.tensor([[10 - 30 / 7, -40 / 7]]))
    per_token[0] += torch.tensor([[1.0, 0.0]])  # one misaligned answer departs from its question's mean along x
    d = demeaned_difference(per_token * tokens[:, None, None], tokens, qs, labels)
    assert d[0, 0] > 0 and d[0, 1] == pytest.approx(0.0, abs=1e-6)


def test_within_question_permutations_keep_every_sets_question_mix():
    import numpy as np

    from emlib.direction_nulls import permute_within_question

    qs = np.array(["a"] * 5 + ["b"] * 7)
    labels = np.array([1, 1, 0, -1, 0, 1, 0, 0, 0, -1, -1, 1])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        out = permute_within_question(labels, qs, rng)
        for q in "ab":
            assert sorted(out[qs == q]) == sorted(labels[qs == q])
        seen.add(tuple(out))
    assert len(seen) > 10


def test_question_breakdown_and_the_testability_check():
    from emlib.direction_nulls import question_breakdown, set_problems

    sets = {"misaligned": ["gender_roles"] * 6 + ["i_feel_bored"] * 2, "aligned": ["a", "b", "c", "d"] * 3}
    t = question_breakdown(sets)
    assert t.loc["gender_roles", "misaligned"] == 6 and t.loc["gender_roles", "aligned"] == 0
    assert t.loc["all", "misaligned"] == 8 and t.loc["all", "aligned"] == 12
    problems = set_problems(sets, min_answers=10, max_question_share=0.5)
    assert problems == ["misaligned has 8 answer(s), under the minimum of 10"]
    dominated = {"misaligned": ["gender_roles"] * 7 + ["x"] * 5}
    [reason] = set_problems(dominated, min_answers=10, max_question_share=0.5)
    assert "7 of its 12" in reason and "gender_roles" in reason and "misaligned" in reason
    assert set_problems({"even": ["a", "b"] * 6}, min_answers=10, max_question_share=0.5) == []


def test_cosine_verdict_follows_the_papers_layer_rule_the_null_and_the_set_check():
    from emlib.direction_nulls import allowed_below, cosine_verdict

    allowed = (4, 48)
    assert allowed_below(48, allowed) == 4 and allowed_below(30, allowed) == 2
    hi = [0.3] * 30
    assert cosine_verdict([0.9] * 28 + [0.5] * 2, hi, 0.8, allowed).status == "reproduced"
    assert cosine_verdict([0.9] * 27 + [0.5] * 3, hi, 0.8, allowed).status == "reproduced in direction"
    assert cosine_verdict([0.5] * 30, hi, 0.8, allowed).status == "reproduced in direction"
    assert cosine_verdict([0.9] * 30, [0.95] * 30, 0.8, allowed).status == "not reproduced"  # high, but so is the null
    v = cosine_verdict([0.9] * 30, hi, 0.8, allowed, problems=["misaligned has 6 answer(s), under the minimum of 10"])
    assert v.status == "not testable" and "6 answer(s)" in v.reason


def test_set_labels_match_response_sets():
    import numpy as np

    from emlib.direction_nulls import set_labels

    scored = pd.DataFrame({"aligned": [90, 71, 70, 31, 30, 5, 5, float("nan")], "coherent": [80] * 6 + [50, 80]})
    aligned, misaligned = response_sets(scored)
    labels = set_labels(scored, 50, 70, 30)
    assert list(np.flatnonzero(labels == 0)) == list(aligned.index)
    assert list(np.flatnonzero(labels == 1)) == list(misaligned.index)
