import math

import pandas as pd
import pytest
import torch

import emlib.generate as G
from conftest import tiny_model
from emlib.interventions import Stacked, ablate, run, steer
from emlib.data import Question, load_questions
from emlib.generate import (
    COLUMNS,
    SamplingConfig,
    make_jobs,
    read_samples,
    sample_batch,
    sample_next,
    sample_responses,
)


def _prompts():
    # ragged (exercises left padding) and repeated (exercises the shared prefill)
    return [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [11, 12]]


def _hf_greedy(model, prompts, n):
    """Reference: transformers' own generate, one prompt at a time (no padding at all)."""
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
        out.append(g[0, len(p):].tolist())
    return out


def test_greedy_batched_left_padded_equals_hf_generate(tiny_lm):
    prompts = _prompts()
    res = sample_batch(tiny_lm, prompts, max_new_tokens=12, temperature=0, top_p=1.0, eos=[255], pad_id=0,
                       generator=torch.Generator().manual_seed(0))
    ref = _hf_greedy(tiny_lm, prompts, 12)
    for (toks, reason), r in zip(res, ref):
        cut = r.index(255) if 255 in r else len(r)
        assert toks == r[:cut]
        assert reason == ("stop" if 255 in r else "length")


def test_finished_rows_leave_the_batch_without_disturbing_others(tiny_lm):
    """Make one row hit EOS early: it stops there; every other row is unchanged."""
    prompts = _prompts()
    ref = _hf_greedy(tiny_lm, prompts, 10)
    eos_tok = ref[1][3]  # row 1's 4th greedy token becomes EOS
    res = sample_batch(tiny_lm, prompts, max_new_tokens=10, temperature=0, top_p=1.0, eos=[eos_tok], pad_id=0,
                       generator=torch.Generator().manual_seed(0))
    for (toks, reason), r in zip(res, ref):
        cut = r.index(eos_tok) if eos_tok in r else len(r)
        assert toks == r[:cut] and reason == ("stop" if eos_tok in r else "length")
    assert res[1][1] == "stop" and len(res[1][0]) <= 3 and res[3] == res[1]


def test_on_step_counts_every_row_once(tiny_lm):
    counts = []
    sample_batch(tiny_lm, _prompts(), max_new_tokens=5, temperature=1.0, top_p=1.0, eos=[1, 2, 3], pad_id=0,
                 generator=torch.Generator().manual_seed(0), on_step=counts.append)
    assert sum(counts) == 4


def test_sample_next_greedy_and_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4000))
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits[:2], 0, 1.0, g).tolist() == [0, 0]
    assert set(sample_next(logits, 1.0, 0.4, g).tolist()) == {0}  # 0.5 >= 0.4: only the top token
    s = sample_next(logits, 1.0, 0.75, g)  # 0.5 + 0.3 reaches 0.75: tokens 0 and 1
    assert set(s.tolist()) == {0, 1}
    assert (s == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)
    full = sample_next(logits, 1.0, 1.0, g)
    assert (full == 3).float().mean().item() == pytest.approx(0.05, abs=0.015)


def _exact_nucleus(logits, top_p):
    """Reference: the nucleus distribution by a full sort, per row [rows, vocab]."""
    p = logits.softmax(-1)
    sp, order = p.sort(-1, descending=True)
    sp = sp.masked_fill(sp.cumsum(-1) - sp >= top_p, 0)
    return torch.zeros_like(p).scatter(-1, order, sp / sp.sum(-1, keepdim=True))


@pytest.mark.parametrize("spread", ["peaked", "flat", "mixed"])
def test_sample_next_matches_the_exact_nucleus_distribution(spread):
    """Rows whose nucleus lies among the top candidates, rows that need the whole vocabulary, and both at once."""
    from emlib.generate import NUCLEUS_CANDIDATES

    vocab, n = 4 * NUCLEUS_CANDIDATES, 20000
    gen = torch.Generator().manual_seed(1)
    peaked = torch.randn(vocab, generator=gen) * 4
    flat = torch.randn(vocab, generator=gen) * 0.3
    rows = {"peaked": [peaked], "flat": [flat], "mixed": [peaked, flat]}[spread]
    logits = torch.stack([rows[i % len(rows)] for i in range(n)])
    s = sample_next(logits, 0.8, 0.9, torch.Generator().manual_seed(0))
    exact = _exact_nucleus(logits / 0.8, 0.9)
    for i, row in enumerate(rows):
        got = torch.bincount(s[i::len(rows)], minlength=vocab).float() / len(s[i::len(rows)])
        assert got[exact[i] == 0].sum() == 0  # never outside the nucleus
        m = len(s[i::len(rows)])
        noise = (2 * exact[i] * (1 - exact[i]) / (math.pi * m)).sqrt().sum().item()  # expected L1 of sampling noise
        assert (got - exact[i]).abs().sum().item() < 1.5 * noise


def test_make_jobs_cycles_paraphrases():
    q = Question("q", ("a", "b"))
    jobs = make_jobs([q], 5)
    assert [j.question for j in jobs] == ["a", "b", "a", "b", "a"] and [j.sample_index for j in jobs] == list(range(5))


@pytest.fixture
def tiny_chat(default_tokenizer):
    """A tiny random Llama over the real default tokenizer (so chat templates and decoding are real)."""
    return tiny_model("llama", vocab=len(default_tokenizer)), default_tokenizer


CFG = SamplingConfig(samples_per_question=3, max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=4, seed=7)


def _run(tiny_chat, cache_dir, cfg=CFG):
    model, tok = tiny_chat
    return sample_responses(model, tok, load_questions()[:3], cfg, cache_dir=cache_dir,
                            model_provenance={"model": "tiny"}, progress=False)


def test_sample_responses_table_seeded_and_cached(tiny_chat, tmp_path, monkeypatch):
    a = _run(tiny_chat, tmp_path / "a")
    assert list(a.columns) == COLUMNS and len(a) == 9
    assert a["question_id"].tolist() == [q.id for q in load_questions()[:3] for _ in range(3)]
    assert (a["n_tokens"] <= 6).all() and set(a["finish_reason"]) <= {"stop", "length"}
    b = _run(tiny_chat, tmp_path / "b")
    pd.testing.assert_frame_equal(a, b)  # same seed, same responses
    c = _run(tiny_chat, tmp_path / "c", SamplingConfig(**{**CFG.__dict__, "seed": 8}))
    assert not a["response"].equals(c["response"])

    def boom(*args, **kwargs):
        raise AssertionError("a cached run must not sample")

    monkeypatch.setattr(G, "sample_batch", boom)
    pd.testing.assert_frame_equal(_run(tiny_chat, tmp_path / "a"), a)
    (path,) = (tmp_path / "a" / "samples").glob("*.parquet")
    table, prov = read_samples(path)
    assert prov["model"] == {"model": "tiny"} and prov["sampling"]["seed"] == 7 and prov["emlib_version"]


def test_interrupted_run_resumes_with_identical_results(tiny_chat, tmp_path, monkeypatch):
    full = _run(tiny_chat, tmp_path / "full")
    real, calls = G.sample_batch, []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(G, "sample_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_chat, tmp_path / "resumed")
    parts = list((tmp_path / "resumed" / "samples").glob("*.parts/part-*.parquet"))
    assert len(parts) == 1  # the finished batch survived; nothing half-written
    calls.clear()
    monkeypatch.setattr(G, "sample_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = _run(tiny_chat, tmp_path / "resumed")
    assert len(calls) == 2  # 9 jobs in batches of 4: the first batch was not redone
    pd.testing.assert_frame_equal(resumed, full)


def test_length_summary():
    from emlib.book.chat_model import length_summary

    s = pd.DataFrame({"question_id": ["a", "a", "b"], "n_tokens": [2, 4, 6], "finish_reason": ["stop", "length", "stop"]})
    t = length_summary(s)
    assert t.loc["a", "mean_tokens"] == 3 and t.loc["a", "pct_ended_at_eos"] == 50 and t.loc["all", "responses"] == 3


@pytest.mark.integration
def test_default_model_samples_real_text(default_model, tmp_path):
    model, tok, info = default_model
    cfg = SamplingConfig(samples_per_question=2, max_new_tokens=24, temperature=0, batch_size=16)
    t = sample_responses(model, tok, load_questions(), cfg, cache_dir=tmp_path, model_provenance={"model": "default"},
                         progress=False)
    assert len(t) == 16 and t["response"].str.len().min() > 10
    # greedy: both samples of a question agree, and match transformers' generate
    assert (t.groupby("question_id")["response"].nunique() == 1).all()
    q = load_questions()[0]
    ids = torch.tensor([G.prompt_ids(tok, q.paraphrases[0])])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    expected = tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert t.loc[t.question_id == q.id, "response"].iloc[0] == expected


def test_cached_samples_need_no_model(tiny_chat, tmp_path):
    from emlib.generate import cached_samples

    questions = load_questions()[:3]
    assert cached_samples(questions, CFG, cache_dir=tmp_path, model_provenance={"model": "tiny"}) is None
    table = _run(tiny_chat, tmp_path)
    pd.testing.assert_frame_equal(cached_samples(questions, CFG, cache_dir=tmp_path, model_provenance={"model": "tiny"}),
                                  table)
    assert cached_samples(questions, CFG, cache_dir=tmp_path, model_provenance={"model": "other"}) is None


def test_amplify_is_base_plus_alpha_times_the_difference():
    organism, base = torch.randn(3, 11), torch.randn(3, 11)
    torch.testing.assert_close(G.amplify(organism, base, 1.0), organism)
    torch.testing.assert_close(G.amplify(organism, base, 0.0), base)
    torch.testing.assert_close(G.amplify(organism, base, 2.5), base + 2.5 * (organism - base))


def _organism(arch):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lora = LoraConfig(r=2, lora_alpha=8, target_modules=["down_proj", "q_proj"], init_lora_weights=False)
    return get_peft_model(tiny_model(arch), lora).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_amplified_greedy_decoding_follows_the_formula(arch):
    """α = 1 decodes as the organism, α = 0 as its base model (adapters off), and α = 3 picks, at every step,
    the argmax of base + 3·(organism − base) computed by hand from full forward passes."""
    model, prompts = _organism(arch), _prompts()
    kw = dict(max_new_tokens=6, temperature=0, top_p=1.0, eos=[255], pad_id=0, generator=torch.Generator())
    organism = sample_batch(model, prompts, **kw)
    assert sample_batch(model, prompts, amplification=1.0, **kw) == organism
    with model.disable_adapter():
        base = sample_batch(model, prompts, **kw)
    assert sample_batch(model, prompts, amplification=0.0, **kw) == base
    assert base != organism  # the adapter matters, so the next check can fail
    for prompt, (tokens, _) in zip(prompts, sample_batch(model, prompts, amplification=3.0, **kw)):
        ids = list(prompt)
        for t in tokens:
            with torch.no_grad():
                o = model(input_ids=torch.tensor([ids])).logits[0, -1]
                with model.disable_adapter():
                    b = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert t == int((b + 3.0 * (o - b)).argmax())
            ids.append(t)


def test_amplification_needs_an_unmerged_lora_organism_and_has_its_own_cache_key():
    with pytest.raises(ValueError, match="needs a LoRA organism loaded unmerged"):
        sample_batch(tiny_model("llama"), _prompts(), max_new_tokens=2, temperature=0, top_p=1.0, eos=[255],
                     pad_id=0, generator=torch.Generator(), amplification=2.0)
    q = load_questions()[:1]
    plain = G.sample_key(q, SamplingConfig(), model_provenance={"m": 1})
    assert "amplification" not in plain["sampling"]  # plain runs keep the keys they had
    assert G.sample_key(q, SamplingConfig(amplification=2.0), model_provenance={"m": 1})["sampling"]["amplification"] == 2.0


def _stack_units(d: int = 64):
    g = torch.Generator().manual_seed(5)
    return (steer(torch.randn(d, generator=g), layer=1, scale=8.0), None,
            ablate({0: torch.randn(d, generator=g), 2: torch.randn(d, generator=g)}),
            steer(torch.randn(d, generator=g), layer=2, scale=-8.0))


def _greedy_alone(model, iv, prompt, n, eos=(255,)):
    fn = lambda: sample_batch(model, [prompt], max_new_tokens=n, temperature=0, top_p=1.0, eos=list(eos),  # noqa: E731
                              pad_id=0, generator=torch.Generator().manual_seed(0))[0]
    return fn() if iv is None else run(model, iv, fn)


def test_stacked_greedy_rows_equal_each_units_run_alone_and_keep_their_unit_as_rows_leave(tiny_lm):
    """Each row of one stacked batch (the same prompt under several units, so the prefill must not merge them)
    decodes as its unit's intervention alone would; with an EOS that one unit's row reaches early, that row
    stops there and the rows still running keep their own units."""
    ivs = _stack_units()
    prompts = [[11, 12], [11, 12], [11, 12], [11, 12], [5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [13, 14, 15]]
    units = [0, 1, 2, 3, 0, 2, 3]
    ref = [_greedy_alone(tiny_lm, ivs[u], p, 10)[0] for p, u in zip(prompts, units)]
    assert len({tuple(r) for r in ref[:4]}) > 1  # the units differ on the same prompt
    st = Stacked(ivs, "stacked")
    eos_tok = next(r[2] for r in ref if r[2] not in r[:2])  # a row that reaches this token third stops early
    res = run(tiny_lm, st, lambda: sample_batch(tiny_lm, prompts, max_new_tokens=10, temperature=0, top_p=1.0,
                                                eos=[eos_tok], pad_id=0, generator=torch.Generator().manual_seed(0),
                                                units=units, stacked=st))
    for (toks, reason), r in zip(res, ref):
        cut = r.index(eos_tok) if eos_tok in r else len(r)
        assert toks == r[:cut] and reason == ("stop" if eos_tok in r else "length")
    lengths = [len(t) for t, _ in res]
    assert min(lengths) <= 2 and max(lengths) == 10  # rows left early while others ran on under their units
    with pytest.raises(ValueError, match="one unit index per prompt"):
        sample_batch(tiny_lm, prompts, max_new_tokens=2, temperature=0, top_p=1.0, eos=[255], pad_id=0,
                     generator=torch.Generator().manual_seed(0), units=units[:2], stacked=st)


def test_stacked_sample_responses_table_equals_separate_runs_at_temperature_0(tiny_chat, tmp_path, monkeypatch):
    model, tok = tiny_chat
    ivs = _stack_units(model.config.hidden_size)
    cfg = SamplingConfig(samples_per_question=2, max_new_tokens=5, temperature=0, batch_size=8, seed=7)
    qs = load_questions()[:3]
    kw = dict(cache_dir=tmp_path, model_provenance={"model": "tiny"}, progress=False)
    st = Stacked(ivs, "four units")
    table = sample_responses(model, tok, qs, cfg, intervention=st, **kw)
    assert list(table.columns) == COLUMNS + ["unit"] and len(table) == 4 * 6
    assert table["unit"].tolist() == [u for u in range(4) for _ in range(6)]
    for u, iv in enumerate(ivs):
        alone = sample_responses(model, tok, qs, cfg, intervention=iv, **kw)
        got = table[table["unit"] == u].drop(columns="unit").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone)
    assert table.groupby("unit")["response"].apply(tuple).nunique() > 1
    monkeypatch.setattr(G, "sample_batch", lambda *a, **k: pytest.fail("a cached stacked run must not sample"))
    pd.testing.assert_frame_equal(sample_responses(model, tok, qs, cfg, intervention=st, **kw), table)
    other = G.sample_key(qs, cfg, model_provenance={"model": "tiny"}, intervention=Stacked(ivs[::-1], "four units"))
    assert G.samples_path(tmp_path, other) != G.samples_path(
        tmp_path, G.sample_key(qs, cfg, model_provenance={"model": "tiny"}, intervention=st))
