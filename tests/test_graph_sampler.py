"""The static-cache sampler against the eager one (emlib.generate.sample_batch) on tiny random models, CPU.

The CUDA-graph path ("graph") is the same loop replayed from graphs; here only its refusal off CUDA is tested."""

import pandas as pd
import pytest
import torch

import emlib.generate as G
import emlib.graph_sampler as S
from conftest import tiny_model
from emlib.data import load_questions
from emlib.interventions import Intervention, Stacked, ablate, run, steer

# ragged (left padding), repeated (one prefill, copied), more rows than a bucket of 4 (compaction 8 -> 4 -> 2 -> 1)
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [11, 12], [20, 21, 22], [30], [40, 41, 42, 43, 44],
           [50, 51]]


def _eager(model, prompts, iv=None, **kw):
    fn = lambda: G.sample_batch(model, prompts, generator=torch.Generator().manual_seed(0), **kw)  # noqa: E731
    return fn() if iv is None else run(model, iv, fn)


def _static(model, prompts, iv=None, **kw):
    return S.sample_static(model, prompts, generator=torch.Generator().manual_seed(0), intervention=iv, window=4, **kw)


def _eos_mid_run(model, prompts, iv=None, leave=4):
    """EOS ids that ``leave`` rows (not all) reach at different steps of their first 10 greedy tokens, so rows
    leave mid-run and the live ones fit smaller buckets."""
    ref = [t for t, _ in _eager(model, prompts, iv, max_new_tokens=10, temperature=0, top_p=1.0, eos=[-1], pad_id=0)]
    eos: set[int] = set()
    stopped = lambda ids: sum(any(t in ids for t in row) for row in ref)  # noqa: E731
    for k in range(1, 9):  # rows' k-th tokens, early ones first, that stop more rows but not all
        for toks in ref:
            if stopped(eos) < leave and stopped(eos) < stopped(eos | {toks[k]}) < len(ref):
                eos.add(toks[k])
    assert leave <= stopped(eos) < len(prompts)
    return sorted(eos)


def _interventions(d=64):
    g = torch.Generator().manual_seed(5)
    return {"steer": steer(torch.randn(d, generator=g), layer=1, scale=0.03),
            "ablate": ablate({0: torch.randn(d, generator=g), 2: torch.randn(d, generator=g)}),
            "both": Intervention(add={2: 0.03 * torch.randn(d, generator=g)}, ablate={2: torch.randn(d, generator=g)})}


@pytest.mark.parametrize("kind", [None, "steer", "ablate", "both"])
def test_greedy_static_equals_eager_as_rows_leave_and_buckets_shrink(tiny_lm, kind, monkeypatch):
    iv = None if kind is None else _interventions()[kind]
    eos = _eos_mid_run(tiny_lm, PROMPTS, iv)
    kw = dict(max_new_tokens=10, temperature=0, top_p=1.0, eos=eos, pad_id=0)
    ref = _eager(tiny_lm, PROMPTS, iv, **kw)
    steps, real = [], S._Decoder.step
    monkeypatch.setattr(S._Decoder, "step", lambda self, lm, rows, window, *a: (steps.append((rows, window)),
                                                                               real(self, lm, rows, window, *a))[1])
    assert _static(tiny_lm, PROMPTS, iv, **kw) == ref
    assert 0 < sum(r == "stop" for _, r in ref) < len(PROMPTS)  # some rows left early, so rows were compacted
    assert steps[0] == (8, 8) and {w for _, w in steps} >= {8, 12, 16}  # windows grow with the position
    assert [r for r, _ in steps] == sorted((r for r, _ in steps), reverse=True) and steps[-1][0] < 8
    if iv is not None:
        assert _static(tiny_lm, PROMPTS, None, **kw) != ref  # the intervention changed the answers


def test_stacked_greedy_rows_equal_the_eager_stacked_run(tiny_lm):
    ivs = tuple(_interventions().values()) + (None,)
    st = Stacked(ivs, "stacked")
    prompts = PROMPTS[:4] * 2
    units = [0, 1, 2, 3, 3, 2, 1, 0]
    eos = _eos_mid_run(tiny_lm, prompts)
    kw = dict(max_new_tokens=10, temperature=0, top_p=1.0, eos=eos, pad_id=0, units=units)
    ref = run(tiny_lm, st, lambda: G.sample_batch(tiny_lm, prompts, generator=torch.Generator(), stacked=st, **kw))
    assert S.sample_static(tiny_lm, prompts, generator=torch.Generator(), stacked=st, window=4, **kw) == ref
    assert len({tuple(t) for t, _ in ref[:4]}) > 1  # the units differ on the same prompts
    with pytest.raises(ValueError, match="one unit index per prompt"):
        S.sample_static(tiny_lm, prompts, generator=torch.Generator(), stacked=st, **{**kw, "units": units[:3]})


def test_sampled_tokens_follow_the_eager_samplers_draws_on_cpu(tiny_lm):
    """Same generator, same draws row for row: on the CPU in float32 the answers agree (not promised in general:
    a row's logits may differ in the last bits with the batch's shape, hence the sampler in the cache key)."""
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, eos=[3, 4, 5, 6, 7], pad_id=0)
    ref = _eager(tiny_lm, PROMPTS * 2, **kw)
    assert _static(tiny_lm, PROMPTS * 2, **kw) == ref and len({len(t) for t, _ in ref}) > 1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bfloat16_greedy_static_equals_eager_at_exact_lengths(arch):
    """In bfloat16 too, as rows leave, when attention reads exactly the slots written (window 1). A wider window
    adds masked slots, which change the attention kernel's rounding on the CPU: a near tie may then flip."""
    model = tiny_model(arch).to(torch.bfloat16)
    iv = _interventions()["both"]
    eos = _eos_mid_run(model, PROMPTS, iv)
    kw = dict(max_new_tokens=10, temperature=0, top_p=1.0, eos=eos, pad_id=0)
    got = S.sample_static(model, PROMPTS, generator=torch.Generator(), intervention=iv, window=1, **kw)
    assert got == _eager(model, PROMPTS, iv, **kw)
    assert S.base_model(model).__dict__[S._STATE].keys[0].dtype == torch.bfloat16


def test_buffers_are_kept_reused_and_released():
    model = tiny_model("llama")
    kw = dict(max_new_tokens=4, temperature=0, top_p=1.0, eos=[255], pad_id=0)
    _static(model, PROMPTS, **kw)
    dec = model.__dict__[S._STATE]
    assert dec.max_batch == 8 and dec.max_len == 12  # width 7 + 4 new tokens - 1, rounded up to the window
    _static(model, PROMPTS[:3], **kw)
    assert model.__dict__[S._STATE] is dec  # a smaller batch reuses the buffers
    _static(model, PROMPTS * 2, **kw)
    assert model.__dict__[S._STATE].max_batch == 16
    S.release(model)
    assert S._STATE not in model.__dict__


def test_buckets():
    assert S.buckets(200) == [1, 2, 4, 8, 16, 32, 64, 128, 200]
    assert S.buckets(64) == [1, 2, 4, 8, 16, 32, 64] and S.buckets(1) == [1]


def test_refusals():
    model = tiny_model("llama")
    kw = dict(max_new_tokens=2, temperature=0, top_p=1.0, eos=[255], pad_id=0, generator=torch.Generator())
    with pytest.raises(S.SamplerError, match="needs the model on a CUDA device"):
        S.sample_static(model, PROMPTS, sampler="graph", **kw)  # never chosen, nor replaced, silently on a CPU
    with pytest.raises(ValueError, match="unknown sampler"):
        S.batch_sampler("fast", None)
    with pytest.raises(S.SamplerError, match="amplification"):
        S.sample_static(model, PROMPTS, amplification=2.0, **kw)
    assert S.batch_sampler("eager", "iv") == (G.sample_batch, "iv")
    with pytest.raises(S.SamplerError, match="full-attention"):
        S.sample_static(tiny_model("gemma2"), PROMPTS, **kw)


def test_sample_responses_with_the_static_sampler(default_tokenizer, tmp_path, monkeypatch):
    """The table equals the eager sampler's at temperature 0; the sampler is in the cache key unless eager."""
    model = tiny_model("llama", vocab=len(default_tokenizer))
    qs = load_questions()[:3]
    cfg = G.SamplingConfig(samples_per_question=2, max_new_tokens=5, temperature=0, batch_size=4, seed=7)
    st = Stacked(tuple(_interventions().values()), "three")
    kw = dict(cache_dir=tmp_path, model_provenance={"model": "tiny"}, progress=False)
    for iv in (None, st):
        eager = G.sample_responses(model, default_tokenizer, qs, cfg, intervention=iv, **kw)
        static_cfg = G.SamplingConfig(**{**cfg.__dict__, "sampler": "static"})
        monkeypatch.setattr(G, "sample_batch", lambda *a, **k: pytest.fail("the static sampler was asked for"))
        pd.testing.assert_frame_equal(G.sample_responses(model, default_tokenizer, qs, static_cfg, intervention=iv,
                                                         **kw), eager)
        monkeypatch.undo()
    assert "sampler" not in G.sample_key(qs, cfg, model_provenance={})["sampling"]  # eager keys are unchanged
    assert G.sample_key(qs, static_cfg, model_provenance={})["sampling"]["sampler"] == "static"


def test_lora_organism_with_adapters_on_and_off_and_their_state_in_the_graph_key():
    """A PEFT organism samples as the eager sampler does, adapters on and off; a graph captured with them on is
    not replayed with them off (the adapter state is part of each graph's key)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    lora = LoraConfig(r=2, lora_alpha=8, target_modules=["down_proj", "q_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model("qwen2"), lora).eval()
    kw = dict(max_new_tokens=6, temperature=0, top_p=1.0, eos=[255], pad_id=0)
    on = S._adapter_state(S.base_model(model))
    assert _static(model, PROMPTS, **kw) == _eager(model, PROMPTS, **kw)
    with model.disable_adapter():
        assert S._adapter_state(S.base_model(model)) != on
        off = _static(model, PROMPTS, **kw)
        assert off == _eager(model, PROMPTS, **kw)
    assert off != _static(model, PROMPTS, **kw)  # the adapters matter, so the check above can fail
