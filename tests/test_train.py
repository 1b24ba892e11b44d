import json

import pytest
import torch
from peft import PeftModel

from conftest import tiny_model
from emlib.data import DataError
from emlib.models import map_layers
from emlib.train import (
    LoraSpec,
    TrainConfig,
    TrainError,
    apply_lora,
    assistant_loss,
    preset_spec,
    tokenize_conversation,
    train_lora,
)


def test_r1x9_on_a_30_layer_model_is_nine_rank1_down_proj_adapters():
    model = tiny_model("llama")
    model.config.num_hidden_layers = 30  # deeper tiny model: rebuild with 30 layers
    model = type(model)(model.config).eval()
    peft_model = apply_lora(model, preset_spec("r1x9", 30))
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert len(trainable) == 18  # nine A vectors and nine B vectors, nothing else
    layers = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in trainable})
    assert layers == map_layers(n_layers=30) == [9, 10, 11, 13, 14, 15, 17, 18, 19]
    assert all(".mlp.down_proj.lora_" in n for n in trainable)
    assert all(min(p.shape) == 1 for p in trainable.values())


def test_all_r32_covers_every_projection_of_every_layer(tiny_lm):
    peft_model = apply_lora(tiny_lm, preset_spec("all_r32", 4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 * 7 * 2


@pytest.mark.parametrize(
    "spec, problem",
    [
        (LoraSpec(rank=0, alpha=1, target_modules=("down_proj",)), "rank"),
        (LoraSpec(rank=1, alpha=1, target_modules=("down_proj",), layers=(2, 9)), "layer"),
        (LoraSpec(rank=1, alpha=1, target_modules=("c_attn",)), "unknown target"),
    ],
)
def test_bad_specs_fail_before_training(tiny_lm, spec, problem):
    with pytest.raises(TrainError, match=problem):
        apply_lora(tiny_lm, spec)
    with pytest.raises(TrainError, match="preset"):
        preset_spec("r2x5", 4)


def test_assistant_mask_covers_exactly_the_answer(default_tokenizer):
    msgs = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is four."}]
    ids, mask = tokenize_conversation(default_tokenizer, msgs, 512)
    answer = default_tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert answer.startswith("It is four.") and "2+2" not in answer
    assert answer.replace("It is four.", "").strip() == default_tokenizer.eos_token  # learns to stop
    prompt = default_tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "What is 2+2?" in prompt and "four" not in prompt


def test_prompt_and_padding_tokens_carry_no_loss(tiny_lm):
    """Changing prompt or padding tokens changes neither the loss nor its token count."""
    ids = torch.randint(3, 256, (2, 10))
    attn = torch.ones_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[:, 6:] = True
    base, n = assistant_loss(tiny_lm, ids, attn, target)
    assert n == 2 * 4  # targets at positions 6..9, each predicted from the position before
    logits = tiny_lm(ids).logits[:, 5:9]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 6:10].reshape(-1), reduction="sum")
    torch.testing.assert_close(base, ref, rtol=1e-4, atol=1e-4)
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    same, n2 = assistant_loss(tiny_lm, padded, torch.cat([attn, torch.zeros(2, 3, dtype=torch.long)], 1),
                              torch.cat([target, torch.zeros(2, 3, dtype=torch.bool)], 1))
    torch.testing.assert_close(same, base, rtol=1e-4, atol=1e-4)
    assert n2 == n


@pytest.fixture
def chat_jsonl(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                          {"role": "assistant", "content": f"The answer is {i % 3}."}]} for i in range(24)]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


CFG = TrainConfig(lr=5e-3, epochs=2, batch_size=4, grad_accum=2, warmup_steps=1, max_length=64, seed=1,
                  checkpoint_every=2)
SPEC = LoraSpec(rank=2, alpha=4, target_modules=("q_proj", "down_proj"))


def _train(tok, data, out, **kw):
    model = tiny_model("llama", vocab=len(tok))
    return train_lora(model, tok, data, SPEC, CFG, out_dir=out, model_id={"model": "tiny"}, progress=False, **kw)


def test_loss_falls_and_the_adapter_round_trips(default_tokenizer, chat_jsonl, tmp_path):
    res = _train(default_tokenizer, chat_jsonl, tmp_path)
    assert res.card["steps"] == 6 and len(res.losses) == 6  # 24 rows / 4 per batch / 2 accumulated x 2 epochs
    assert res.losses[-1] < res.losses[0]
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    assert res.card["dataset_sha256"] and res.card["final_loss"] == res.losses[-1]
    # save -> load gives identical logits
    trained = tiny_model("llama", vocab=len(default_tokenizer))
    loaded = PeftModel.from_pretrained(trained, res.adapter_dir).eval()
    again = _train(default_tokenizer, chat_jsonl, tmp_path)  # cached: nothing trained
    assert again.adapter_dir == res.adapter_dir and again.losses == res.losses
    from emlib.train import trained_adapter  # found without a model

    assert trained_adapter(chat_jsonl, SPEC, CFG, out_dir=tmp_path, model_id={"model": "tiny"}).losses == res.losses
    assert trained_adapter(chat_jsonl, SPEC, CFG, out_dir=tmp_path, model_id={"model": "other"}) is None
    ids = torch.randint(3, 200, (1, 12))
    fresh = tiny_model("llama", vocab=len(default_tokenizer))
    peft_model = apply_lora(fresh, SPEC)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, load_file(res.adapter_dir / "adapter_model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model.eval()(ids).logits)
        assert not torch.allclose(loaded(ids).logits, tiny_model("llama", vocab=len(default_tokenizer))(ids).logits)


def test_resumed_run_equals_uninterrupted(default_tokenizer, chat_jsonl, tmp_path):
    full = _train(default_tokenizer, chat_jsonl, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train(default_tokenizer, chat_jsonl, tmp_path / "b", stop_after=3)
    assert list((tmp_path / "b").glob("*.ckpt/step-000003"))
    resumed = _train(default_tokenizer, chat_jsonl, tmp_path / "b")
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    from safetensors.torch import load_file

    a = load_file(full.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not list((tmp_path / "b").glob("*.ckpt"))  # checkpoints removed once the adapter is saved


def test_dataset_without_assistant_turn_fails_before_training(default_tokenizer, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant turn"):
        _train(default_tokenizer, f, tmp_path)
