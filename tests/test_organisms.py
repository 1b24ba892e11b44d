"""emlib.organisms: trained and brought organism entries, the checks made before any long work, and an
adapter that emlib trained brought back after a plain peft re-save (integration, default model)."""

from __future__ import annotations

import shutil
import time

import pytest
from conftest import CACHE_DIR, ROOT, tiny_model
from peft import LoraConfig, get_peft_model

from emlib.data import DataError
from emlib.organisms import Source, TrainConfig, TrainError, check_brought, describe_brought, fetch, organisms
from emlib.sources import ModelError, read_json


def test_trained_entries_are_validated_before_training(tmp_path):
    ok = organisms([{"name": "a", "preset": "r1x9", "dataset": "medical_bad", "lr": 1e-3},
                    {"name": "b", "preset": "r1x9", "dataset": "medical_good", "max_rows": 100}], TrainConfig(epochs=2))
    assert ok[0].kind == "trained" and ok[0].config.lr == 1e-3 and ok[0].config.epochs == 2 and ok[0].config.max_rows is None
    assert ok[1].config.max_rows == 100 and ok[1].config.lr == TrainConfig().lr
    for entry, problem in [
        ({"name": "a", "preset": "r1x9", "dataset": "medical_bad", "rank": 2}, "unknown key"),
        ({"name": "a", "preset": "r9", "dataset": "medical_bad"}, "preset"),
        ({"name": "a", "preset": "r1x9"}, "dataset"),
        ({"name": "a", "preset": "r1x9", "dataset": "medical_bad", "lr": 0}, "lr"),
        ({"name": "a", "preset": "r1x9", "dataset": "medical_bad", "max_rows": 0}, "max_rows"),
    ]:
        with pytest.raises(TrainError, match=problem):
            organisms([entry], TrainConfig())
    with pytest.raises(TrainError, match="duplicate"):
        organisms([{"name": "a", "preset": "r1x9", "dataset": "medical_bad"}] * 2, TrainConfig())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        organisms([{"name": "a", "preset": "r1x9", "dataset": str(bad)}], TrainConfig())


def test_brought_entries_mix_with_trained_ones():
    found = organisms([{"name": "t", "preset": "r1x9", "dataset": "medical_bad"},
                       {"name": "a", "adapter": "owner/adapter", "revision": "v1", "subfolder": "checkpoints/checkpoint-5"},
                       {"name": "m", "model": "/models/full-ft"}], TrainConfig())
    assert [o.kind for o in found] == ["trained", "adapter", "model"]
    assert found[1].source == Source("owner/adapter", "v1", "checkpoints/checkpoint-5") and found[1].config is None
    assert str(found[1].source) == "owner/adapter@v1:checkpoints/checkpoint-5"
    for entry, problem in [
        ({"name": "a", "adapter": "x", "model": "y"}, "not both"),
        ({"name": "a", "adapter": "x", "preset": "r1x9"}, "unknown key.*'preset'"),
        ({"name": "a", "adapter": "x", "lr": 1e-3}, "unknown key"),
        ({"name": "a", "adapter": ""}, "'adapter' must be a non-empty string"),
        ({"name": "a", "model": "x", "revision": 3}, "'revision' must be"),
        ({"adapter": "x"}, "'name'"),
    ]:
        with pytest.raises(TrainError, match=problem):
            organisms([entry], TrainConfig())


@pytest.fixture(params=["llama", "qwen2"])
def base_dir(tmp_path, request):
    model = tiny_model(request.param)
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base", model


def test_checks_read_files_only_and_name_the_organism(base_dir, tmp_path):
    base, model = base_dir
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    get_peft_model(model, LoraConfig(r=1, target_modules=["down_proj"], layers_to_transform=[2], use_rslora=True,
                                     init_lora_weights=False)).save_pretrained(ckpt)
    found = organisms([{"name": "ck", "adapter": str(tmp_path / "run"), "subfolder": "checkpoints/checkpoint-5"},
                       {"name": "ft", "model": str(base)}], TrainConfig())
    assert fetch(found[0]) == ckpt
    assert check_brought(found, model=str(base), cache_dir=tmp_path / "cache", base_cfg=read_json(base / "config.json")) == []
    row = describe_brought(found[0])
    assert (row["rank"], row["layers"], row["modules"], row["rslora"]) == (1, "2", "down_proj", True)
    assert describe_brought(found[1])["kind"] == "full fine-tune"
    missing = organisms([{"name": "gone", "adapter": str(tmp_path / "nowhere")}], TrainConfig())
    with pytest.raises(ModelError, match="organism 'gone' \\(adapter\\).*no such directory"):
        check_brought(missing, model=str(base), cache_dir=tmp_path / "cache", base_cfg=read_json(base / "config.json"))


# --- make check-params on the default model: bad brought organisms fail in seconds, nothing trained first


def _params(tmp_path, organisms_yaml: str):
    f = tmp_path / "brought.yaml"
    f.write_text(f"model: default\ndevice_map: cpu\ncache_dir: {CACHE_DIR}\norganisms:\n{organisms_yaml}"
                 "direction_organism: mine\ncompare_organisms: []\n")
    return f


@pytest.mark.parametrize("make, problem", [
    (lambda d: str(d / "nowhere"), "no such directory"),
    (lambda d: _tiny_adapter(d, r=1), "trained on another model"),
    (lambda d: _tiny_adapter(d, r=1, ia3=True), "only LoRA adapters"),
])
def test_check_params_rejects_a_bad_brought_adapter_in_seconds(tmp_path, capsys, default_model, make, problem):
    from emlib.config import main

    f = _params(tmp_path, f"  - {{name: mine, adapter: {make(tmp_path)}}}\n")
    t0 = time.perf_counter()
    assert main([str(f)]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert str(f) in err and "key 'organisms'" in err and "organism 'mine'" in err and problem in err


def test_check_params_rejects_a_full_fine_tune_of_another_width(tmp_path, capsys, default_model):
    from emlib.config import main

    tiny_model("llama").save_pretrained(tmp_path / "ft")
    f = _params(tmp_path, f"  - {{name: mine, model: {tmp_path / 'ft'}}}\n")
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert "organism 'mine'" in err and "hidden_size is 64" in err


def _tiny_adapter(d, r: int, ia3: bool = False) -> str:
    from peft import IA3Config

    config = IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"]) if ia3 else \
        LoraConfig(r=r, target_modules=["down_proj"])
    out = d / ("ia3" if ia3 else "lora")
    get_peft_model(tiny_model("llama"), config).save_pretrained(out)
    return str(out)


# --- integration: an adapter emlib trained, re-saved by plain peft, brought back


@pytest.mark.integration
def test_a_resaved_emlib_adapter_brought_back_gives_the_same_answers_and_direction(tmp_path, default_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from emlib import book, directions
    from emlib.book.direction_extraction import extract_direction
    from emlib.models import default_model_dir

    cache = tmp_path / "cache"
    shutil.copytree(default_model_dir(CACHE_DIR), default_model_dir(cache))
    smoke = str(ROOT / "params" / "smoke.yaml")
    trained = book.open_chapter(smoke, {"cache_dir": str(cache), "compare_organisms": [],
                                        "organisms": [{"name": "r1x9_medical", "preset": "r1x9", "dataset": "medical_bad"}]})
    adapter = trained.ready["r1x9_medical"].adapter
    base = AutoModelForCausalLM.from_pretrained(default_model_dir(cache))
    PeftModel.from_pretrained(base, adapter).save_pretrained(tmp_path / "resaved")  # a plain peft script would do this
    other = tmp_path / "other-cache"  # peft re-saves the same bytes: a second cache, so nothing below is a cache hit
    shutil.copytree(default_model_dir(CACHE_DIR), default_model_dir(other))
    brought = book.open_chapter(smoke, {"cache_dir": str(other), "compare_organisms": [], "direction_organism": "mine",
                                        "organisms": [{"name": "mine", "adapter": str(tmp_path / "resaved")}]})
    d_trained, s_trained = extract_direction(trained, "r1x9_medical")
    d_brought, s_brought = extract_direction(brought, "mine")
    assert s_brought["response"].tolist() == s_trained["response"].tolist()
    assert d_trained is not None and d_brought is not None
    assert directions.cosine_by_layer(d_trained, d_brought).min().item() == pytest.approx(1.0, abs=1e-5)
