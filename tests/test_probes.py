"""LoRA-scalar probes: the scalars are A·x, probes find the informative adapter, B-vector geometry."""

import numpy as np
import pandas as pd
import pytest
import torch

from emlib.activations import batches
from emlib.probes import adapter_roles, b_direction_cosines, fit_probe, lora_scalars, rank1_adapters
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
    r = fit_probe(x, y, names)
    coef = r.coefficients
    assert coef["coef"].abs().idxmax() == "a3"
    assert coef.loc["a3", "lo"] > 0
    assert ((coef.drop("a3")["lo"] < 0) & (coef.drop("a3")["hi"] > 0)).mean() >= 0.75  # the rest straddle 0
    assert r.auroc > 0.85 and r.auroc_ci[0] < r.auroc < r.auroc_ci[1] + 1e-9
    assert r.accuracy > 0.75 and r.folds == 5


def test_adapter_roles_from_two_probes():
    names = [f"a{i}" for i in range(9)]
    mis = fit_probe(*_synthetic(informative=1, seed=1), names)
    med = fit_probe(*_synthetic(informative=7, seed=2), names)
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
