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


def test_the_random_subset_null_sits_below_a_planted_shared_direction():
    """Responses share a common offset whose size varies by response (anisotropy); the first 10 also carry a
    planted direction v. Another fine-tune's direction sharing v (and the offset) has a cosine with the labelled
    mean-diff above the band of label-free splits at every layer; one sharing only the offset does not."""
    from emlib.directions import Directions, null_band, subset_null

    g = torch.Generator().manual_seed(0)
    n, layers, d = 60, 3, 64
    tokens = torch.randint(5, 30, (n,), generator=g)
    offset, v = torch.randn(layers, d, generator=g), 2 * torch.randn(layers, d, generator=g)
    per_token = torch.randn(n, layers, d, generator=g) + (1 + torch.randn(n, 1, 1, generator=g)) * offset[None]
    per_token[:10] += v
    sums = per_token * tokens[:, None, None]
    labelled = Directions(sums[:10].sum(0) / tokens[:10].sum() - sums[10:].sum(0) / tokens[10:].sum(), {})
    other = Directions(v + offset + 0.3 * torch.randn(layers, d, generator=g), {})
    null = subset_null(sums, tokens, 10, 50, draws=200, seed=1)
    assert null.shape == (200, layers, d)
    lo, hi = null_band(null, other)
    cos = torch.nn.functional.cosine_similarity(labelled.vectors, other.vectors, dim=-1)
    assert (cos > hi).all() and (lo < hi).all()
    unrelated = Directions(offset + torch.randn(layers, d, generator=g), {})  # shares the offset, not v
    lo2, hi2 = null_band(null, unrelated)
    cos2 = torch.nn.functional.cosine_similarity(labelled.vectors, unrelated.vectors, dim=-1)
    assert (cos2 <= hi2).all()  # the labels add nothing it shares: inside (or below) the band
    with pytest.raises(Exception, match="pool has 60"):
        subset_null(sums, tokens, 30, 31)
