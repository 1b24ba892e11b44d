"""LoRA-scalar probes: the scalars are A·x, probes find the informative adapter, B-vector geometry."""

import numpy as np
import pandas as pd
import pytest
import torch

from emlib.activations import batches
from emlib.adapter_geometry import b_direction_cosines
from emlib.probes import adapter_roles, fit_probe, lora_scalars, rank1_adapters
from emlib.train import LoraSpec, apply_lora


@pytest.fixture
def r1_model(tiny_lm):
    model = apply_lora(tiny_lm, LoraSpec(rank=1, alpha=8, target_modules=("down_proj",), layers=(1, 3)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    return model.eval()


def test_lora_scalar_equals_a_dot_x_computed_by_hand(r1_model):
    adapters = rank1_adapters(r1_model)
    assert [a.name for a in adapters] == ["L1.down_proj", "L3.down_proj"]
    rows = [([5, 6, 7, 8, 9, 10], 2), ([11, 12, 13], 1)]
    (batch,) = list(batches(rows, 2, pad_id=0))
    inputs = {}
    handles = [r1_model.get_submodule(ad.module).register_forward_hook(
        lambda m, args, out, k=ad.name: inputs.__setitem__(k, args[0].detach())) for ad in adapters]
    scalars = lora_scalars(r1_model, batch, adapters)
    for h in handles:
        h.remove()
    assert scalars.shape == (2, 6, 2)
    for k, ad in enumerate(adapters):
        by_hand = inputs[ad.name].float() @ ad.a  # x [b, t, d_in] · A [d_in]
        torch.testing.assert_close(scalars[..., k], by_hand, atol=1e-5, rtol=1e-5)


def test_b_vector_includes_the_lora_scaling(r1_model):
    (ad,) = [a for a in rank1_adapters(r1_model) if a.layer == 1]
    module = r1_model.get_submodule(ad.module)
    x = torch.randn(4, module.in_features)
    with torch.no_grad():
        delta = module(x) - module.base_layer(x)
    torch.testing.assert_close(delta, (x @ ad.a)[:, None] * ad.b, atol=1e-5, rtol=1e-4)
    cos = b_direction_cosines([ad], torch.stack([ad.b] * 4))
    assert cos.iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_rank1_adapters_refuses_models_without_rank1_adapters(tiny_lm):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        rank1_adapters(tiny_lm)
    model = apply_lora(tiny_lm, LoraSpec(rank=4, alpha=8, target_modules=("down_proj",), layers=(1,)))
    with pytest.raises(ValueError, match="rank 4"):
        rank1_adapters(model)


def _synthetic(informative: int, n: int = 240, k: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    x = rng.normal(size=(n, k))
    x[:, informative] += 2.0 * y
    return x, y


def test_a_probe_selects_the_one_informative_adapter():
    x, y = _synthetic(informative=3)
    names = [f"a{i}" for i in range(9)]
    r = fit_probe(x, y, names, n_perm=0)
    coef = r.coefficients
    assert coef["coef"].abs().idxmax() == "a3"
    assert coef.loc["a3", "lo"] > 0
    assert ((coef.drop("a3")["lo"] < 0) & (coef.drop("a3")["hi"] > 0)).mean() >= 0.75  # the rest straddle 0
    assert r.auroc > 0.85 and r.auroc_ci[0] < r.auroc < r.auroc_ci[1] + 1e-9
    assert r.accuracy > 0.75 and r.folds == 5


def test_adapter_roles_from_two_probes():
    names = [f"a{i}" for i in range(9)]
    mis = fit_probe(*_synthetic(informative=1, seed=1), names, n_perm=400)
    med = fit_probe(*_synthetic(informative=7, seed=2), names, n_perm=400)
    roles = adapter_roles(mis, med)
    assert roles["a1"] == "general" and roles["a7"] == "medical-specific"


def test_a_probe_needs_two_examples_of_each_class():
    with pytest.raises(ValueError, match="at least 2"):
        fit_probe(np.zeros((10, 2)), np.array([1] + [0] * 9, bool), ["a", "b"])


def test_token_scalars_are_the_answer_tokens_of_lora_scalars(default_tokenizer):
    from conftest import tiny_model
    from emlib.activations import encode
    from emlib.probes import token_scalars

    tok = default_tokenizer
    model = apply_lora(tiny_model("llama", vocab=len(tok)), LoraSpec(rank=1, alpha=8, target_modules=("down_proj",),
                                                                      layers=(1, 3))).eval()
    adapters = rank1_adapters(model)
    question, response = "How do I treat a burn?", "Put butter on it and wait."
    table = token_scalars(model, tok, question, response, adapters)
    assert "".join(table.index) == response and list(table.columns) == [a.name for a in adapters]
    ids, n_prompt = encode(tok, question, response)
    (batch,) = list(batches([(ids, n_prompt)], 1, tok.pad_token_id))
    whole = lora_scalars(model, batch, adapters)[0]  # every position, prompt included
    np.testing.assert_allclose(table.to_numpy(), whole[n_prompt:].numpy(), atol=1e-6)


def test_probe_datasets_label_the_direction_sets_and_the_medical_context():
    from emlib.probes import probe_datasets

    general = pd.DataFrame({"aligned": [90, 80, 10, 50, 5], "coherent": [90, 90, 90, 90, 30], "response": list("abcde")})
    medical = pd.DataFrame({"aligned": [90, 90], "coherent": [90, 90], "response": ["m1", "m2"]})
    d = probe_datasets(general, medical)
    rows, labels = d["misaligned vs aligned"]
    assert rows["response"].tolist() == ["c", "a", "b"] and labels.tolist() == [True, False, False]
    rows, labels = d["medical vs general context"]
    assert len(rows) == 7 and labels.tolist() == [True, True] + [False] * 5


def test_a_probe_is_fittable_with_five_answers_in_each_class():
    from emlib.probes import MIN_PROBE_CLASS, fittable

    assert MIN_PROBE_CLASS == 5
    assert fittable(np.r_[np.ones(5), np.zeros(9)].astype(bool))
    assert not fittable(np.r_[np.ones(4), np.zeros(90)].astype(bool))


def test_roles_table_says_which_probe_was_not_fitted():
    from emlib.probes import fit_probe, roles_table

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.r_[np.ones(30), np.zeros(30)].astype(bool)
    x[:, 1] += 3 * y  # feature b carries the label
    fitted = fit_probe(x, y, ["a", "b", "c"], n_boot=30)
    both = roles_table(fitted, fitted)
    assert both.loc["b", "role"] == "general + medical" and "general + medical" in both.attrs["summary"]
    one = roles_table(None, fitted)
    assert list(one.index) == ["a", "b", "c"] and set(one["role"]) == {"n/a (a probe was not fitted)"}
    assert one["misalignment coef"].isna().all() and one.loc["b", "medical coef"] > 0
    assert roles_table(None, None).attrs["summary"] == "no probe fitted"


def test_lora_scalars_are_what_each_lora_A_outputs(r1_model):
    adapters = rank1_adapters(r1_model)
    rows = [([5, 6, 7, 8, 9, 10], 2), ([11, 12, 13], 1)]
    (batch,) = list(batches(rows, 2, pad_id=0))
    outputs = {}
    handles = [next(iter(r1_model.get_submodule(ad.module).lora_A.values())).register_forward_hook(
        lambda m, args, out, k=ad.name: outputs.__setitem__(k, out[..., 0].detach())) for ad in adapters]
    scalars = lora_scalars(r1_model, batch, adapters)
    for h in handles:
        h.remove()
    for k, ad in enumerate(adapters):
        torch.testing.assert_close(scalars[..., k], outputs[ad.name], atol=1e-5, rtol=1e-5)


def test_random_readouts_read_along_same_norm_random_directions_in_the_same_pass(r1_model):
    from emlib.probes import random_readouts

    adapters = rank1_adapters(r1_model)
    rows = [([5, 6, 7, 8, 9, 10], 2), ([11, 12, 13], 1)]
    (batch,) = list(batches(rows, 2, pad_id=0))
    control = random_readouts(adapters, seed=3)
    for trained, random in zip(adapters, control):
        assert (random.module, random.layer) == (trained.module, trained.layer)
        torch.testing.assert_close(random.a.norm(), trained.a.norm())
        assert abs(torch.nn.functional.cosine_similarity(random.a, trained.a, dim=0)) < 0.9
    both = lora_scalars(r1_model, batch, adapters + control)  # one pass, each module's input read once
    torch.testing.assert_close(both[..., :2], lora_scalars(r1_model, batch, adapters))
    torch.testing.assert_close(both[..., 2:], lora_scalars(r1_model, batch, control))
    assert not torch.allclose(both[..., :2], both[..., 2:])
    torch.testing.assert_close(random_readouts(adapters, seed=3)[0].a, control[0].a)  # seeded


# --- chapter 4's nulls and verdicts (issue 21, item 6) ---

def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_random_direction_band_holds_five_percent_outside_at_d_576():
    from emlib.adapter_geometry import random_cosine_band, random_cosine_p

    d, rng = 576, np.random.default_rng(0)
    v = _unit_rows(rng, 1, d)[0]
    cos = _unit_rows(rng, 20000, d) @ v
    band = random_cosine_band(d, 0.95)
    assert band == pytest.approx(1.96 / np.sqrt(d), rel=0.02)  # sd of the cosine ≈ 1/√d
    assert np.mean(np.abs(cos) > band) == pytest.approx(0.05, abs=0.006)
    assert np.std(cos) * np.sqrt(d) == pytest.approx(1.0, abs=0.02)
    p = random_cosine_p(cos, d)  # uniform under the null
    assert np.mean(p < 0.05) == pytest.approx(0.05, abs=0.006) and np.mean(p < 0.5) == pytest.approx(0.5, abs=0.015)


def test_b_cosine_band_is_family_wise_and_flags_a_planted_b_vector():
    from emlib.adapter_geometry import b_cosine_test

    d, k, rng = 576, 9, np.random.default_rng(1)
    v = _unit_rows(rng, 1, d)[0]
    sets = 2000
    any_outside = np.mean([b_cosine_test(pd.Series(_unit_rows(rng, k, d) @ v), d)["outside"].any() for _ in range(sets)])
    assert any_outside == pytest.approx(0.05, abs=0.015)  # family-wise 5% over the nine adapters
    b = _unit_rows(rng, k, d)
    b[4] = 0.3 * v + b[4] * np.sqrt(1 - 0.3 ** 2)  # one B vector writes partly along the direction (cos ≈ 0.3 = 7/√d)
    test = b_cosine_test(pd.Series(b @ v, index=[f"L{i}" for i in range(k)]), d)
    assert test["outside"].tolist() == [i == 4 for i in range(k)]
    assert test.attrs["family_band"] > test.attrs["band"] and test.loc["L4", "cos·√d"] > 6
    assert (test["outside"] == (test["p (Bonferroni)"] < 0.05)).all()  # the band and the p-values agree


def test_b_verdict_and_plot_read_the_same_band():
    from emlib.book.lora_probes import b_cosines, b_verdict

    d = 576
    def table(cosines):
        from emlib.adapter_geometry import b_cosine_test
        t = b_cosine_test(pd.Series(cosines, index=["L1.down_proj", "L2.down_proj"]), d)
        out = pd.DataFrame({"cos·√d": t["cos·√d"], "outside the band": t["outside"]})
        out.attrs.update(t.attrs)
        return out

    inside = table([0.08, -0.05])  # 1.9/√d: inside the two adapters' family-wise band (2.24/√d)
    assert b_verdict(inside).status == "reproduced"
    # 2.9/√d, the paper's own 0.04 at its width, lies outside the random band but is what the paper calls orthogonal
    assert b_verdict(table([0.121, 0.0])).status == "reproduced"
    assert b_verdict(table([0.16, 0.0])).status == "not reproduced"  # 3.8/√d: further than the paper's printed 0.04
    units = b_cosines(inside)
    assert units.attrs["band"] == pytest.approx(inside.attrs["family_band"] * np.sqrt(d))
    assert f"{inside.attrs['family_band']:.3f}" in units.attrs["band_label"]
    assert f"{units.attrs['band']:.2f}" in b_verdict(inside).reason and f"{units.attrs['band']:.2f}/√d" in units.attrs["band_label"]
    out = table([0.4, 0.0])
    v = b_verdict(out)
    assert v.status == "not reproduced" and "L1.down_proj" in v.reason and "L2.down_proj" not in v.reason


def test_auroc_rows_match_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from emlib.probes import auroc_rows

    rng = np.random.default_rng(2)
    y = rng.random((5, 40)) < 0.4
    s = rng.integers(0, 4, (5, 40)).astype(float)  # many ties
    np.testing.assert_allclose(auroc_rows(y, s), [roc_auc_score(a, b) for a, b in zip(y, s)])
    assert np.isnan(auroc_rows(np.zeros((1, 4), bool), s[:1, :4]))[0]


def test_trained_minus_random_auroc_interval_clears_zero_only_with_signal():
    from emlib.probes import auroc_difference

    rng = np.random.default_rng(3)
    n = 200
    y = rng.random(n) < 0.4
    planted = rng.normal(size=(n, 4))
    planted[:, 0] += 1.5 * y  # the trained readouts carry the label
    noise, other_noise = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    names = list("abcd")
    trained, random_ = fit_probe(planted, y, names, n_perm=0), fit_probe(noise, y, names, n_perm=0)
    e = auroc_difference(trained.labels, trained.scores, random_.scores)
    assert e.low > 0 and e.estimate == pytest.approx(trained.auroc - random_.auroc) and e.p < 0.01
    null = auroc_difference(random_.labels, random_.scores, fit_probe(other_noise, y, names, n_perm=0).scores)
    assert null.low < 0 < null.high and null.p > 0.05


def test_holm_roles_on_a_planted_case():
    from emlib.probes import role_tests

    rng = np.random.default_rng(5)  # (at seed 4 noise feature a5 correlates with the label at t-test p = 0.001: a
    # family-wise 5% error, which Holm allows; the quiet case below is the null check)
    n, names = 300, [f"a{i}" for i in range(9)]
    y_mis, y_med = rng.random(n) < 0.4, rng.random(n) < 0.5
    x_mis, x_med = rng.normal(size=(n, 9)), rng.normal(size=(n, 9))
    x_mis[:, [1, 2]] += 1.2 * y_mis[:, None]
    x_med[:, 7] += 1.2 * y_med
    x_med[:, 2] += 1.2 * y_med
    tests = role_tests(fit_probe(x_mis, y_mis, names, n_perm=400), fit_probe(x_med, y_med, names, n_perm=400))
    assert tests.loc["a1", "role"] == "general" and tests.loc["a2", "role"] == "general + medical"
    assert tests.loc["a7", "role"] == "medical-specific"
    assert (tests.drop(["a1", "a2", "a7"])["role"] == "neither").all()
    assert (tests["misalignment p (Holm)"] >= tests["misalignment p"]).all()  # adjusted over the family of 18
    quiet = role_tests(fit_probe(rng.normal(size=(n, 9)), y_mis, names, n_perm=400),
                       fit_probe(rng.normal(size=(n, 9)), y_med, names, n_perm=400))
    assert (quiet["role"] == "neither").all()


def test_coefficient_p_values_are_calibrated_at_small_sizes():
    """At the sizes of chapter 4's smaller sets a null coefficient's p stays near uniform (a bootstrap-sd Wald p gave
    p < 0.05 for 15% of them)."""
    rng = np.random.default_rng(6)
    y = np.r_[np.ones(8), np.zeros(22)].astype(bool)
    p = np.concatenate([fit_probe(rng.normal(size=(30, 9)), y, [f"a{i}" for i in range(9)], n_boot=20, n_perm=200)
                        .coefficients["p"].to_numpy() for _ in range(8)])  # 72 null coefficients
    assert np.mean(p < 0.05) < 0.12 and np.mean(p < 0.5) == pytest.approx(0.5, abs=0.15)


def test_roles_verdict_needs_both_probes_to_beat_random_readouts():
    from emlib.book.lora_probes import roles_verdict
    from emlib.inference import Effect

    def effect(lo, hi):
        return Effect("d", (lo + hi) / 2, lo, hi, 0.5, 100, 100, "m")

    roles_ = pd.DataFrame({"role": ["general"] * 6 + ["medical-specific"] * 2 + ["neither"]})
    roles_.attrs["counts"] = {"general": 6, "medical-specific": 2, "neither": 1}
    strong = {"misaligned vs aligned": effect(0.05, 0.2), "medical vs general context": effect(0.1, 0.3)}
    assert roles_verdict(roles_, strong).status == "reproduced"
    weak = {**strong, "misaligned vs aligned": effect(-0.05, 0.18)}
    v = roles_verdict(roles_, weak)
    assert v.status == "not reproduced" and "not supported" in v.reason and "no evidence" in v.reason
    assert roles_verdict(roles_, {**strong, "misaligned vs aligned": None}).status == "not testable"
    roles_.attrs["counts"] = {"general": 3, "medical-specific": 1, "neither": 5}
    assert roles_verdict(roles_, strong).status == "reproduced in direction"


def test_downstream_verdict_plot_and_text_share_one_band():
    from emlib.book.lora_probes import Downstream, downstream_note, downstream_verdict

    layers = 12
    null = np.tile(np.linspace(0, 0.3, layers), (5, 1)) + np.linspace(-0.1, 0.1, 5)[:, None]
    above = Downstream(np.full(layers, 0.8), null, steer_layer=6, paper_at=10, n_answers=32)
    cos, lo, hi = above.at_paper
    assert (lo, hi) == pytest.approx((null[:, 10].min(), null[:, 10].max()))
    v = downstream_verdict(above)
    assert v.status == "reproduced in direction" and f"{lo:.2f} to {hi:.2f}" in v.reason
    assert f"{lo:.2f} to {hi:.2f}" in downstream_note(above) and above.rank_p == pytest.approx(1 / 6)
    inside = Downstream(np.full(layers, 0.25), null, steer_layer=6, paper_at=10, n_answers=32)
    assert downstream_verdict(inside).status == "not reproduced"
    early = Downstream(np.full(layers, 0.8), null, steer_layer=6, paper_at=4, n_answers=32)
    assert downstream_verdict(early).status == "not testable"


def test_response_features_are_cached_by_model_readouts_and_texts(default_tokenizer, tmp_path):
    """A second call reads the cached features without a pass (no model); another readout or model is another key;
    a cache without the model's provenance is refused."""
    from conftest import tiny_model
    from emlib.probes import features_path, random_readouts, response_features

    tok = default_tokenizer
    model = apply_lora(tiny_model("llama", vocab=len(tok)), LoraSpec(rank=1, alpha=8, target_modules=("down_proj",),
                                                                      layers=(1, 3))).eval()
    samples = pd.DataFrame({"question": ["q1", "q2", "q1"], "response": ["an answer", "another", "a third one"]})
    adapters = rank1_adapters(model)
    prov = {"model": "tiny", "adapter_sha256": "x"}
    first = response_features(model, tok, samples, adapters, progress=False, cache_dir=tmp_path, model_provenance=prov)
    assert first.shape == (3, len(adapters)) and np.abs(first).sum() > 0
    again = response_features(None, tok, samples, adapters, progress=False, cache_dir=tmp_path, model_provenance=prov)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(response_features(model, tok, samples, adapters, progress=False), first)
    texts = [(q, None, r) for q, r in zip(samples["question"], samples["response"])]
    path = features_path(texts, adapters, cache_dir=tmp_path, model_provenance=prov)
    assert path.is_file()
    assert features_path(texts, random_readouts(adapters), cache_dir=tmp_path, model_provenance=prov) != path
    assert features_path(texts, adapters, cache_dir=tmp_path, model_provenance={**prov, "adapter_sha256": "y"}) != path
    with pytest.raises(ValueError, match="provenance"):
        response_features(model, tok, samples, adapters, cache_dir=tmp_path)
