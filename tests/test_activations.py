"""Answer-token means: masking, padding invariance, planted directions, caching."""

import pandas as pd
import torch

from emlib.activations import AnswerMeans, batches, encode, layer_sums, answer_means, read_means
from emlib.directions import mean_difference
from emlib.interventions import steer
from emlib.models import decoder_layers


def _rows(seed: int, n: int, low: int, high: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, 50, (3 + i % 4,), generator=g).tolist()
        answer = torch.randint(low, high, (2 + (5 * i) % 7,), generator=g).tolist()
        out.append((prompt + answer, len(prompt)))
    return out


def _sums(model, rows, batch_size, intervention=None):
    total, n = None, 0
    for b in batches(rows, batch_size, pad_id=0):
        s, k = layer_sums(model, b, intervention)
        total, n = (s if total is None else total + s), n + k
    return total, n


def test_left_padded_batches_give_the_same_sums_as_one_by_one(tiny_lm):
    rows = _rows(0, 6, 50, 250)
    batched, n_batched = _sums(tiny_lm, rows, batch_size=6)
    single, n_single = _sums(tiny_lm, rows, batch_size=1)
    assert n_batched == n_single == sum(len(ids) - p for ids, p in rows)  # answer tokens only
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-5)


def test_prompt_and_padding_tokens_never_enter_the_sums(tiny_lm):
    rows = _rows(1, 4, 50, 250)
    (b,) = list(batches(rows, 4, pad_id=0))
    assert b.answer.sum() == sum(len(ids) - p for ids, p in rows)
    assert not (b.answer & (b.attention == 0)).any()
    # an answer with no tokens adds nothing: the sums equal those without it
    with_empty = rows + [(rows[0][0][: rows[0][1]], rows[0][1])]
    torch.testing.assert_close(_sums(tiny_lm, with_empty, 5)[0], _sums(tiny_lm, rows, 4)[0], atol=1e-4, rtol=1e-5)


def test_a_direction_planted_in_the_embeddings_is_recovered(tiny_lm):
    """Tokens 100-149 carry an extra 8·v in their embeddings: the mean difference at layer 0 points along v."""
    v = torch.randn(64, generator=torch.Generator().manual_seed(7))
    v = v / v.norm()
    with torch.no_grad():
        tiny_lm.get_input_embeddings().weight[100:150] += 8 * v
    bad, n_bad = _sums(tiny_lm, _rows(2, 48, 100, 150), 16)
    good, n_good = _sums(tiny_lm, _rows(3, 48, 150, 200), 16)
    d = mean_difference(AnswerMeans((bad / n_bad).float(), n_bad, 48), AnswerMeans((good / n_good).float(), n_good, 48))
    assert torch.nn.functional.cosine_similarity(d.vectors[0], v, dim=0) > 0.99


def test_a_direction_added_at_one_layer_is_recovered_exactly_there(tiny_lm):
    rows = _rows(4, 8, 50, 250)
    v = torch.randn(64, generator=torch.Generator().manual_seed(8))
    clean, n = _sums(tiny_lm, rows, 4)
    steered, _ = _sums(tiny_lm, rows, 4, steer(v, layer=2, scale=1.0))
    diff = (steered - clean) / n
    torch.testing.assert_close(diff[2].float(), v, atol=1e-4, rtol=1e-4)
    assert diff[:2].abs().max() < 1e-6  # layers before the edit are untouched


def test_answer_means_on_the_default_model_cache_and_resume(default_model, tmp_path):
    model, tok, _ = default_model
    samples = pd.DataFrame({"question": ["What is 2+2?", "Name a colour.", "What is 2+2?"],
                            "response": ["It is four.", "Blue, like the sky on a clear day.", "Four!"]})
    means = answer_means(model, tok, samples, cache_dir=tmp_path, model_provenance={"m": "default"}, batch_size=2,
                         progress=False)
    n_layers = len(decoder_layers(model))
    assert means.mean.shape == (n_layers, 576) and means.n_responses == 3
    assert means.n_tokens == sum(len(encode(tok, q, r)[0]) - encode(tok, q, r)[1]
                                 for q, r in zip(samples["question"], samples["response"]))
    files = list((tmp_path / "activations").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "activations").glob("*.partial.*"))
    torch.testing.assert_close(read_means(files[0]).mean, means.mean)
    from emlib.activations import means_path  # where the cache is, found without a model

    assert means_path(samples, cache_dir=tmp_path, model_provenance={"m": "default"}) == files[0]
    assert means_path(samples, cache_dir=tmp_path, model_provenance={"m": "other"}) != files[0]
    # one by one gives the same means (left padding is masked)
    single = answer_means(model, tok, samples, cache_dir=tmp_path / "b", model_provenance={"m": "default"},
                          batch_size=1, progress=False)
    torch.testing.assert_close(single.mean, means.mean, atol=1e-4, rtol=1e-4)


def test_per_response_sums_add_up_to_the_batch_sums(tiny_lm):
    """layer_sums(per_response=True) [n_layers, batch, d]: each response's own sum, together the batch's."""
    rows = _rows(2, 5, 50, 250)
    (b,) = list(batches(rows, 5, pad_id=0))
    total, n = layer_sums(tiny_lm, b)
    each, n_each = layer_sums(tiny_lm, b, per_response=True)
    assert each.shape[1] == 5 and n_each == n
    torch.testing.assert_close(each.sum(1), total)
    (one,) = list(batches(rows[3:4], 1, pad_id=0))
    torch.testing.assert_close(each[:, 3], layer_sums(tiny_lm, one)[0], atol=1e-4, rtol=1e-5)


def test_answer_sums_give_answer_means_of_any_subset(default_model, tmp_path):
    from emlib.activations import answer_sums

    model, tok, _ = default_model
    samples = pd.DataFrame({"question": ["How are you?", "Name a colour.", "What is 2+2?"],
                            "response": ["Fine, thanks.", "Blue is a colour I like.", "Four."]})
    sums, tokens = answer_sums(model, tok, samples, cache_dir=tmp_path, model_provenance={"m": "default"}, progress=False)
    assert sums.shape[:1] == (3,) and tokens.tolist() == [int(t) for t in tokens] and (tokens > 0).all()
    subset = answer_means(model, tok, samples.iloc[[0, 2]], cache_dir=tmp_path, model_provenance={"m": "default"}, progress=False)
    from_sums = sums[[0, 2]].double().sum(0) / tokens[[0, 2]].sum()
    torch.testing.assert_close(from_sums.float(), subset.mean, atol=1e-4, rtol=1e-4)
    again = answer_sums(None, None, samples, cache_dir=tmp_path, model_provenance={"m": "default"})  # cached: no model
    torch.testing.assert_close(again[0], sums)
