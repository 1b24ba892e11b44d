"""emlib.sources: brought fine-tunes read from their files (plain peft saves on tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from emlib.models import load_model
from emlib.sources import (
    ModelError,
    check_adapter,
    check_full_model,
    fingerprint,
    local_dir,
    read_adapter,
    read_json,
    safetensors_shapes,
)

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_base(arch: str, path, **overrides):
    """A tiny random model saved as a local model directory (config + safetensors)."""
    model = tiny_model(arch)
    for key, value in overrides.items():
        setattr(model.config, key, value)
    if overrides:
        model = type(model)(model.config).eval()
    model.save_pretrained(path)
    return model


def save_adapter(base, path, **lora):
    """A LoRA adapter saved by plain peft (random B, so the adapter changes the outputs)."""
    peft_model = get_peft_model(base, LoraConfig(init_lora_weights=False, **lora))
    peft_model.save_pretrained(path)
    return peft_model


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rank1_adapter_with_layers_to_transform_and_rslora(arch, tmp_path):
    base = save_base(arch, tmp_path / "base")
    save_adapter(base, tmp_path / "r1", r=1, lora_alpha=16, use_rslora=True, target_modules=["down_proj"],
                 layers_to_transform=[1, 2])
    info = read_adapter(tmp_path / "r1")
    assert info.rank1 and info.rank == 1 and info.rslora and info.alpha == 16
    assert info.modules == ("down_proj",) and info.layers == (1, 2)
    assert check_adapter(info, read_json(tmp_path / "base" / "config.json"), str(tmp_path / "base"), where="o") == []


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rank8_adapter_on_all_modules(arch, tmp_path):
    base = save_base(arch, tmp_path / "base")
    save_adapter(base, tmp_path / "r8", r=8, lora_alpha=16, target_modules=ALL7)
    info = read_adapter(tmp_path / "r8")
    assert not info.rank1 and info.rank == 8 and not info.rslora
    assert set(info.modules) == set(ALL7) and info.layers == (0, 1, 2, 3)
    check_adapter(info, read_json(tmp_path / "base" / "config.json"), "base", where="o")


def test_shapes_come_from_the_header_alone(tmp_path):
    base = save_base("qwen2", tmp_path / "base")
    save_adapter(base, tmp_path / "a", r=4, target_modules=["q_proj", "down_proj"])
    file = tmp_path / "a" / "adapter_model.safetensors"
    assert safetensors_shapes(file) == {k: tuple(v.shape) for k, v in load_file(file).items()}


def test_adapter_for_another_width_is_rejected_naming_the_tensor(tmp_path):
    save_base("qwen2", tmp_path / "wide", hidden_size=96)
    narrow = tiny_model("qwen2")
    save_adapter(narrow, tmp_path / "a", r=1, target_modules=["down_proj"])
    with pytest.raises(ModelError, match=r"organism 'x'.*adapter_model.safetensors.*down_proj.*trained on another model"):
        check_adapter(read_adapter(tmp_path / "a"), read_json(tmp_path / "wide" / "config.json"), "wide", where="organism 'x'")


def test_adapter_beyond_the_base_models_depth_is_rejected(tmp_path):
    save_base("llama", tmp_path / "shallow", num_hidden_layers=2)
    save_adapter(tiny_model("llama"), tmp_path / "a", r=1, target_modules=["down_proj"], layers_to_transform=[3])
    with pytest.raises(ModelError, match=r"layers \[3\].*2 layers"):
        check_adapter(read_adapter(tmp_path / "a"), read_json(tmp_path / "shallow" / "config.json"), "s", where="o")


def test_a_base_model_of_another_name_only_warns(tmp_path):
    base = save_base("llama", tmp_path / "base")
    save_adapter(base, tmp_path / "a", r=1, target_modules=["down_proj"])
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/Other-Model"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    warnings = check_adapter(read_adapter(tmp_path / "a"), read_json(tmp_path / "base" / "config.json"), "mine/Base", where="o")
    assert len(warnings) == 1 and "someone/Other-Model" in warnings[0] and "mine/Base" in warnings[0]


def test_non_lora_and_pickle_adapters_are_rejected(tmp_path):
    base = save_base("llama", tmp_path / "base")
    get_peft_model(base, IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"])).save_pretrained(tmp_path / "ia3")
    with pytest.raises(ModelError, match="peft_type 'IA3'; only LoRA"):
        read_adapter(tmp_path / "ia3")
    get_peft_model(tiny_model("llama"), LoraConfig(r=1, target_modules=["down_proj"])).save_pretrained(
        tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        read_adapter(tmp_path / "pickled")


def test_full_fine_tune_must_share_architecture_and_width(tmp_path):
    save_base("qwen2", tmp_path / "base")
    save_base("qwen2", tmp_path / "ft")
    base_cfg = read_json(tmp_path / "base" / "config.json")
    check_full_model(read_json(tmp_path / "ft" / "config.json"), base_cfg, "base", where="o", path=tmp_path / "ft")
    save_base("qwen2", tmp_path / "wide", hidden_size=96)
    with pytest.raises(ModelError, match="hidden_size is 96.*has 64"):
        check_full_model(read_json(tmp_path / "wide" / "config.json"), base_cfg, "base", where="o", path=tmp_path / "wide")
    save_base("llama", tmp_path / "llama")
    with pytest.raises(ModelError, match="model_type is 'llama'"):
        check_full_model(read_json(tmp_path / "llama" / "config.json"), base_cfg, "base", where="o", path=tmp_path / "llama")


def test_local_dir_subfolders_and_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "a" / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    assert local_dir(str(tmp_path / "a"), subfolder="checkpoints/checkpoint-5") == tmp_path / "a" / "checkpoints" / "checkpoint-5"
    with pytest.raises(ModelError, match="no subfolder 'checkpoint-9'"):
        local_dir(str(tmp_path / "a"), subfolder="checkpoint-9")
    with pytest.raises(ModelError, match="no such directory"):
        local_dir(str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not found locally; set HF_HUB_OFFLINE=0"):
        local_dir("nobody/no-such-adapter-xyz", what="organism 'x' (adapter)")


def test_fingerprint_follows_the_weights(tmp_path):
    save_base("llama", tmp_path / "ft")
    first = fingerprint(tmp_path / "ft", cache_dir=tmp_path / "cache")
    assert fingerprint(tmp_path / "ft", cache_dir=tmp_path / "cache") == first and len(first) == 64
    save_base("llama", tmp_path / "ft", rms_norm_eps=1e-5)  # new weights (reinitialised), new file
    assert fingerprint(tmp_path / "ft", cache_dir=tmp_path / "cache") != first


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_plain_peft_adapter_loads_as_peft_built_it(arch, tmp_path, default_tokenizer):
    """rsLoRA with layers_to_transform, saved by peft, loaded (and merged) by emlib: the same logits."""
    base = save_base(arch, tmp_path / "base")
    default_tokenizer.save_pretrained(tmp_path / "base")
    peft_model = save_adapter(base, tmp_path / "a", r=1, lora_alpha=16, use_rslora=True, target_modules=["down_proj"],
                              layers_to_transform=[0, 3])
    ids = torch.randint(1, 256, (2, 9))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        merged, _, info = load_model(str(tmp_path / "base"), tmp_path / "a", dtype="float32", device_map="cpu",
                                     cache_dir=tmp_path / "cache", merge=True)
        unmerged, _, _ = load_model(str(tmp_path / "base"), tmp_path / "a", dtype="float32", device_map="cpu",
                                    cache_dir=tmp_path / "cache", merge=False)
        assert isinstance(unmerged, PeftModel) and info.adapter_sha256
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(unmerged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
