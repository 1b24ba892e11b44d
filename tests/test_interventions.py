"""Steering and ablation: nnsight against plain hooks, and the geometry of ablation."""

import pytest
import torch

from emlib.generate import sample_batch
from emlib.interventions import Intervention, InterventionError, Stacked, ablate, hooked, run, steer
from emlib.models import decoder_layers, residual
from emlib.train import LoraSpec, apply_lora


def _ids(vocab: int = 256, batch: int = 3, seq: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _vector(d: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _layer_outputs(model, fn) -> dict[int, torch.Tensor]:
    """Every decoder block's output during ``fn()``, read with plain hooks registered after any edit."""
    seen: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, residual(o).detach().clone()))
               for i, b in enumerate(decoder_layers(model))]
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def test_nnsight_steering_matches_a_plain_hook_teacher_forced(tiny_lm):
    ids = _ids()
    iv = steer(_vector(), layer=2, scale=4.0)
    clean = tiny_lm(input_ids=ids).logits
    via_nnsight = run(tiny_lm, iv, lambda: tiny_lm(input_ids=ids).logits)
    with hooked(tiny_lm, iv):
        via_hook = tiny_lm(input_ids=ids).logits
    assert (via_hook - clean).abs().max() > 1e-2  # the edit does something
    torch.testing.assert_close(via_nnsight, via_hook, atol=1e-5, rtol=0)


def _greedy(model, prompts, steps=12):
    return sample_batch(model, prompts, max_new_tokens=steps, temperature=0.0, top_p=1.0, eos=[255], pad_id=0,
                        generator=torch.Generator().manual_seed(0))


def test_nnsight_steering_matches_a_plain_hook_in_generation_every_step(tiny_lm):
    prompts = [[5, 6, 7, 8], [9, 10], [9, 10]]
    iv = steer(_vector(), layer=1, scale=6.0)
    clean = _greedy(tiny_lm, prompts)
    with hooked(tiny_lm, iv):
        reference = _greedy(tiny_lm, prompts)
    via_nnsight = run(tiny_lm, iv, lambda: _greedy(tiny_lm, prompts))
    assert via_nnsight == reference and reference != clean

    # every step is steered: steering only the prefill gives different tokens
    calls = {"n": 0}

    def first_call_only(module, args, out):
        calls["n"] += 1
        return iv.edit(1, out) if calls["n"] == 1 else out

    handle = decoder_layers(tiny_lm)[1].register_forward_hook(first_call_only)
    try:
        prefill_only = _greedy(tiny_lm, prompts)
    finally:
        handle.remove()
    assert calls["n"] > 1 and prefill_only != reference


def test_nnsight_steering_composes_with_a_peft_adapter(tiny_lm):
    model = apply_lora(tiny_lm, LoraSpec(rank=1, alpha=8, target_modules=("down_proj",), layers=(1, 2)))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # a non-trivial adapter
    ids = _ids()
    iv = steer(_vector(), layer=3, scale=3.0)
    with torch.no_grad():
        with hooked(model, iv):
            reference = model(input_ids=ids).logits
        via_nnsight = run(model, iv, lambda: model(input_ids=ids).logits)
    torch.testing.assert_close(via_nnsight, reference, atol=1e-5, rtol=0)


@torch.no_grad()
def test_after_ablation_no_component_along_the_direction_remains(tiny_lm):
    ids = _ids(batch=4, seq=9)
    n = len(decoder_layers(tiny_lm))
    dirs = {layer: _vector(seed=10 + layer) for layer in range(n)}
    iv = ablate(dirs)
    # read each block's output after the edit: nnsight's edit happens inside the block's call
    outputs = _layer_outputs(tiny_lm, lambda: run(tiny_lm, iv, lambda: tiny_lm(input_ids=ids)))
    for layer, x in outputs.items():
        u = dirs[layer] / dirs[layer].norm()
        proj = (x @ u).abs()
        assert (proj <= 1e-4 * x.norm(dim=-1)).all(), f"layer {layer}: component {proj.max():.2e} remains"

    # a single direction at every layer (the paper's "single-direction" ablation)
    v = _vector(seed=99)
    outputs = _layer_outputs(tiny_lm, lambda: run(tiny_lm, ablate({i: v for i in range(n)}),
                                                  lambda: tiny_lm(input_ids=ids)))
    for x in outputs.values():
        assert ((x @ (v / v.norm())).abs() <= 1e-4 * x.norm(dim=-1)).all()


@torch.no_grad()
def test_ablating_a_direction_orthogonal_to_every_activation_changes_nothing(tiny_lm):
    ids = _ids()
    clean = _layer_outputs(tiny_lm, lambda: tiny_lm(input_ids=ids))
    layer = 2
    acts = clean[layer].reshape(-1, clean[layer].shape[-1])
    # the activations span < d_model dimensions here (21 positions, width 64): take a null-space direction
    _, _, vh = torch.linalg.svd(acts, full_matrices=True)
    ortho = vh[-1]
    assert (acts @ ortho).abs().max() < 1e-4 * acts.norm(dim=-1).max()
    logits = run(tiny_lm, ablate({layer: ortho}), lambda: tiny_lm(input_ids=ids).logits)
    torch.testing.assert_close(logits, tiny_lm(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_bad_interventions_are_clear_errors(tiny_lm):
    with pytest.raises(InterventionError, match="layer 9"):
        run(tiny_lm, steer(_vector(), layer=9, scale=1.0), lambda: None)
    with pytest.raises(InterventionError, match="32 wide|64 wide"):
        run(tiny_lm, steer(_vector(d=32), layer=1, scale=1.0), lambda: None)
    with pytest.raises(InterventionError, match="zero"):
        ablate({1: torch.zeros(64)})


def test_identity_names_vectors_and_layers():
    a, b = steer(_vector(seed=1), 2, 4.0), steer(_vector(seed=2), 2, 4.0)
    assert a.identity() != b.identity() and a.identity() == steer(_vector(seed=1), 2, 4.0).identity()
    assert Intervention().layers == []
    assert run(torch.nn.Linear(2, 2), None, lambda: 7) == 7


def test_run_steers_hf_generate_too(tiny_lm):
    """``run`` wraps any function: transformers' own generate is steered at every step as well."""
    ids = _ids(batch=2, seq=4)
    iv = steer(_vector(), layer=1, scale=6.0)
    gen = lambda: tiny_lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,  # noqa: E731
                                   do_sample=False, pad_token_id=0)
    with hooked(tiny_lm, iv):
        reference = gen()
    assert torch.equal(run(tiny_lm, iv, gen), reference) and not torch.equal(gen(), reference)


def _units(d: int = 64) -> list[Intervention | None]:
    """Units of every shape a stacked run mixes: steering at two layers, ablations, none."""
    return [steer(_vector(d, 1), layer=1, scale=6.0), None, ablate({0: _vector(d, 2), 2: _vector(d, 3)}),
            steer(_vector(d, 4), layer=2, scale=-5.0)]


@torch.no_grad()
def test_stacked_edit_is_each_rows_own_intervention(tiny_lm):
    """Row i of a stacked pass equals a pass of that row alone under its unit (plain hooks, teacher forced),
    through nnsight and through the hooked reference."""
    ivs, ids = _units(), _ids(batch=6, seed=3)
    units = torch.tensor([0, 1, 2, 3, 2, 0])
    st = Stacked(tuple(ivs), "stacked")
    st.set_rows(units)
    via_nnsight = run(tiny_lm, st, lambda: tiny_lm(input_ids=ids).logits)
    with hooked(tiny_lm, st):
        via_hook = tiny_lm(input_ids=ids).logits
    torch.testing.assert_close(via_nnsight, via_hook, atol=1e-5, rtol=0)
    for i, u in enumerate(units.tolist()):
        iv = ivs[u]
        if iv is None:
            alone = tiny_lm(input_ids=ids[i : i + 1]).logits
        else:
            with hooked(tiny_lm, iv):
                alone = tiny_lm(input_ids=ids[i : i + 1]).logits
        torch.testing.assert_close(via_hook[i : i + 1], alone, atol=1e-4, rtol=0)
    h = torch.randn(6, 5, 64)  # the edit itself: per row x − (x·û)û + add, as each unit's own edit
    for layer in range(3):
        out = st.edit(layer, h, units)
        for i, u in enumerate(units.tolist()):
            ref = h[i : i + 1] if ivs[u] is None else ivs[u].edit(layer, h[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=0)


def test_stacked_identity_names_every_unit_and_needs_row_units(tiny_lm):
    ivs = _units()
    st = Stacked(tuple(ivs), "s")
    assert [u["label"] for u in st.identity()["units"]] == [ivs[0].label, "", ivs[2].label, ivs[3].label]
    assert Stacked(tuple(ivs[::-1]), "s").identity() != st.identity()
    assert st.layers == [0, 1, 2]
    with pytest.raises(InterventionError, match="unit indices"):
        st.edit(1, torch.zeros(2, 3, 64), torch.tensor([0]))
    with pytest.raises(InterventionError, match="outside"):
        Stacked((steer(_vector(), layer=9, scale=1.0),)).check(tiny_lm)


@torch.no_grad()
def test_vectors_are_copied_to_the_models_device_and_dtype_once(tiny_lm):
    """A hook reuses one copy of each vector per (device, dtype) (on a GPU: no host→device copy per layer per
    decoding step); the copies stay out of identity and pickles, and the edits are the plain ones."""
    import pickle

    model, ids = tiny_lm.double(), _ids()  # float64: a "device" the float32 vectors must be copied to
    iv = Intervention(add={1: 3.0 * _vector(seed=5)}, ablate={0: _vector(seed=6), 2: _vector(seed=7)}, label="both")
    before = iv.identity()
    first = run(model, iv, lambda: model(input_ids=ids).logits)
    copies = dict(iv._copies)
    assert sorted(k[:2] for k in copies) == [("ablate", 0), ("ablate", 2), ("add", 1)]
    assert all(v.dtype == torch.float64 and v.device == ids.device for v in copies.values())
    again = run(model, iv, lambda: model(input_ids=ids).logits)
    assert iv._copies.keys() == copies.keys() and all(iv._copies[k] is copies[k] for k in copies)  # made once
    with hooked(model, Intervention(add=iv.add, ablate=iv.ablate)):  # a fresh one: its own copies, same edit
        reference = model(input_ids=ids).logits
    torch.testing.assert_close(first, reference, atol=1e-6, rtol=0)  # (renormalised float32 directions)
    assert torch.equal(first, again) and iv.identity() == before
    assert "_copies" not in vars(pickle.loads(pickle.dumps(iv)))

    st = Stacked((iv, None, steer(_vector(seed=8), layer=2, scale=-2.0)), "s")
    st.set_rows(torch.tensor([0, 1, 2]))
    out = run(model, st, lambda: model(input_ids=ids).logits)
    stacked_copies = dict(st._copies)
    assert sorted(k[:2] for k in stacked_copies) == [("ablate", 0), ("ablate", 2), ("add", 1), ("add", 2)]
    run(model, st, lambda: model(input_ids=ids).logits)
    assert all(st._copies[k] is stacked_copies[k] for k in stacked_copies)
    torch.testing.assert_close(out[0], first[0], atol=1e-10, rtol=0)
