import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import CACHE_DIR, TINY_CONFIGS, tiny_model
from emlib.models import (
    ModelError,
    PAPER_R1X9_LAYERS,
    adapter_sha256,
    base_model,
    decoder_layers,
    default_model_dir,
    load_model,
    map_layers,
    residual,
)


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_decoder_layers_are_the_residual_stream(arch):
    """Block i's output equals hidden_states[i + 1], for every supported architecture."""
    model = tiny_model(arch)
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    captured = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, residual(o))) for i, layer in enumerate(layers)]
    ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for h in hooks:
        h.remove()
    # the last hidden state has the final norm applied; compare the blocks before it
    for i in range(len(layers) - 1):
        torch.testing.assert_close(captured[i], out.hidden_states[i + 1])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decoder_layers_through_peft(arch):
    model = tiny_model(arch)
    wrapped = get_peft_model(model, LoraConfig(r=1, target_modules=["down_proj"]))
    assert decoder_layers(wrapped) is decoder_layers(model)
    assert base_model(wrapped) is model


def test_decoder_layers_unknown_model():
    with pytest.raises(ModelError, match="decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_map_layers_identity_on_paper_depth():
    assert map_layers(PAPER_R1X9_LAYERS, 48) == list(PAPER_R1X9_LAYERS)


def test_map_layers_to_smollm_depth_keeps_nine_distinct_in_order():
    mapped = map_layers(PAPER_R1X9_LAYERS, 30)
    assert len(set(mapped)) == 9 and mapped == sorted(mapped)
    assert mapped == [9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert map_layers((24,), 30) == [15]  # "layer 24" = relative depth 0.5
    assert map_layers((24,), 24) == [12]


def test_map_layers_shallow_model_and_errors():
    mapped = map_layers(PAPER_R1X9_LAYERS, 10)
    assert len(set(mapped)) == 9 and max(mapped) <= 9 and mapped == sorted(mapped)
    with pytest.raises(ModelError, match="cannot map"):
        map_layers(PAPER_R1X9_LAYERS, 8)
    with pytest.raises(ModelError, match="outside"):
        map_layers((48,), 30)


def _save_tiny(tmp_path, arch="llama"):
    model = tiny_model(arch)
    d = tmp_path / arch
    model.save_pretrained(d, safe_serialization=True)
    return model, d


def test_load_local_dir_with_adapter(tmp_path, default_tokenizer):
    model, d = _save_tiny(tmp_path)
    default_tokenizer.save_pretrained(d)
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    adir = tmp_path / "adapter"
    peft_model.save_pretrained(adir)
    loaded, tok, info = load_model(str(d), adir, device_map="cpu", cache_dir=tmp_path)
    assert info.adapter_sha256 == adapter_sha256(adir) and len(info.adapter_sha256) == 64
    assert info.n_layers == 4 and info.d_model == 64 and tok.padding_side == "left"
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model(ids).logits)


def test_bad_adapter_dir_is_clear(tmp_path, default_tokenizer):
    _, d = _save_tiny(tmp_path)
    default_tokenizer.save_pretrained(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_model(str(d), tmp_path / "empty", device_map="cpu")
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps({}))
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(d), tmp_path / "empty", device_map="cpu")


@pytest.mark.integration
def test_default_model_loads_from_gguf_then_cache(default_model):
    model, tok, info = default_model
    assert info.n_layers == 30 and info.d_model == 576 and info.dtype == "float32"
    assert (default_model_dir(CACHE_DIR) / "model.safetensors").is_file()
    again, _, info2 = load_model("default", cache_dir=CACHE_DIR, device_map="cpu")
    assert info2.source == "safetensors-cache"
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)
    # a real chat model: greedy continuation of a factual prompt mentions Paris
    out = again.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_describe_model_reports_what_load_model_would_without_weights(tmp_path, default_tokenizer, monkeypatch):
    from emlib import models

    model, d = _save_tiny(tmp_path)
    default_tokenizer.save_pretrained(d)
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    _, _, loaded = load_model(str(d), tmp_path / "adapter", device_map="cpu", cache_dir=tmp_path, merge=True)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("describe must not load weights")))
    info = models.describe_model(str(d), tmp_path / "adapter", cache_dir=tmp_path, merge=True)
    for field in ("spec", "adapter", "adapter_sha256", "dtype", "n_layers", "d_model", "merged"):
        assert getattr(info, field) == getattr(loaded, field), field
    assert info.source == "config"
    with pytest.raises(ModelError, match="adapter_config.json"):
        models.describe_model(str(d), tmp_path, cache_dir=tmp_path)


def test_paper_layers_at_the_same_relative_depth():
    from emlib.models import paper_layer, single_direction_layer

    assert single_direction_layer(48) == 24 and single_direction_layer(30) == 15 and paper_layer(40, 30) == 25
    assert paper_layer(40, 48) == 40


def test_a_device_map_is_honoured_or_refused_never_swapped_for_the_cpu(tmp_path, monkeypatch):
    """``cuda`` without a GPU is an error (it used to load on the CPU without a word); a misspelt device_map too;
    ``auto`` without a GPU is the CPU (the book's params ask for it explicitly: ``emlib.devices``)."""
    _, d = _save_tiny(tmp_path)
    with pytest.raises(ModelError, match="device_map 'gpu'"):
        load_model(str(d), device_map="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="'cuda:1', but torch sees no GPU"):
        load_model(str(d), device_map="cuda:1")
