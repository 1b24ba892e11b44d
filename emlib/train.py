"""LoRA supervised fine-tuning of model organisms (chapter 1).

- Presets: ``r1x9`` (rank-1 adapters on ``mlp.down_proj`` at the paper's nine layers,
  mapped to the model's depth by relative position), ``all_r32`` (rank 32 on every
  attention and MLP projection of every layer), or any custom targets / layers / rank /
  alpha. rsLoRA throughout.
- Loss on assistant tokens only. The lean loop runs the decoder once and applies the
  LM head only at positions whose next token is an assistant token, so the
  [tokens × vocabulary] logits are never formed for prompt or padding positions.
- Seeded and deterministic; gradient accumulation; linear warm-up and decay; a progress
  bar with the running loss.
- Checkpoints (adapter, optimiser, scheduler, step) are written atomically every
  ``checkpoint_every`` optimiser steps; an interrupted run resumes from the last one and
  ends where an uninterrupted run would.
- The result is a PEFT adapter directory (safetensors) with ``card.json``: the config,
  dataset hash, steps, final loss and loss curve, cached by content.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from emlib.cache import atomic_path, content_key, sha256_file
from emlib.data import Conversation, dataset_path, load_chat_jsonl
from emlib.models import PAPER_R1X9_LAYERS, base_model, decoder_layers, map_layers
from emlib.organisms import Organism, TrainConfig, TrainError, organisms  # noqa: F401 (re-exported)

ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINER_VERSION = 1


@dataclass(frozen=True)
class LoraSpec:
    """Which modules get adapters, and their shape. ``layers`` None = every layer."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    layers: tuple[int, ...] | None = None
    rslora: bool = True


def preset_spec(preset: str, n_layers: int) -> LoraSpec:
    """``r1x9``: rank 1 (alpha 256, as in the public R1x9 organisms) on ``down_proj`` at the
    paper's nine layers mapped to ``n_layers``; ``all_r32``: rank 32, alpha 64 on all seven
    projections of every layer (the public all-adapter configs)."""
    if preset == "r1x9":
        return LoraSpec(rank=1, alpha=256.0, target_modules=("down_proj",), layers=tuple(map_layers(PAPER_R1X9_LAYERS, n_layers)))
    if preset == "all_r32":
        return LoraSpec(rank=32, alpha=64.0, target_modules=ATTN_MLP)
    raise TrainError(f"unknown LoRA preset {preset!r} (known: r1x9, all_r32; or give a LoraSpec)")


@dataclass
class TrainResult:
    """Where the adapter is and how training went."""

    adapter_dir: Path
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return self.card["loss_curve"]


# --------------------------------------------------------------------------- data


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: Conversation, max_length: int) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-formatted conversation and a mask that is True on assistant tokens.

    Assistant spans are located in characters (the rendered prefix before each assistant
    turn vs the rendering that includes it) and mapped to tokens with offsets, so the mask
    is exact whatever the tokenizer does at span boundaries. The end-of-turn token counts
    as assistant (the model must learn to stop).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not text.startswith(prefix) or not text.startswith(upto):
                raise TrainError("the chat template does not render conversations prefix by prefix")
            spans.append((len(prefix), len(upto.rstrip())))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length)
    mask = [any(s <= a < e for s, e in spans) for a, _ in enc["offset_mapping"]]
    return enc["input_ids"], mask


def _batches(examples: list[tuple[list[int], list[bool]]], batch_size: int, pad_id: int):
    from emlib.activations import pad

    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ids, attn = pad([x for x, _ in chunk], pad_id, left=False)  # right padding: positions 0..len-1
        target = torch.zeros_like(attn, dtype=torch.bool)
        for r, (_, m) in enumerate(chunk):
            target[r, : len(m)] = torch.tensor(m)
        yield ids, attn, target


# --------------------------------------------------------------------------- model


def apply_lora(model: nn.Module, spec: LoraSpec):
    """Wrap ``model`` with trainable LoRA adapters per ``spec`` (validated against the model first)."""
    from peft import LoraConfig, get_peft_model

    n_layers = len(decoder_layers(model))
    if spec.rank < 1:
        raise TrainError(f"LoRA rank must be >= 1, got {spec.rank}")
    bad_layers = [layer for layer in spec.layers or () if not 0 <= layer < n_layers]
    if bad_layers:
        raise TrainError(f"layer(s) {bad_layers} do not exist: the model has layers 0..{n_layers - 1}")
    present = {name.rsplit(".", 1)[-1] for name, mod in decoder_layers(model).named_modules() if isinstance(mod, nn.Linear)}
    unknown = sorted(set(spec.target_modules) - present)
    if unknown:
        raise TrainError(f"unknown target module(s) {unknown}; this model's decoder has {sorted(present)}")
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        layers_to_transform=list(spec.layers) if spec.layers is not None else None,
        lora_dropout=0.0,
        bias="none",
        use_rslora=spec.rslora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def assistant_loss(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over assistant tokens, and their count.

    ``ids``, ``attn``, ``target``: [batch, seq]. The decoder runs once; the LM head is
    applied only to the hidden states [n_targets, d_model] that predict an assistant token.
    """
    lm = base_model(model)
    hidden = lm.model(input_ids=ids, attention_mask=attn).last_hidden_state  # [B, T, d]
    select = target[:, 1:]  # position t predicts token t+1
    h = hidden[:, :-1][select]  # [N, d]
    logits = lm.lm_head(h).float()  # [N, vocab]
    loss = nn.functional.cross_entropy(logits, ids[:, 1:][select], reduction="sum")
    return loss, int(select.sum())


# --------------------------------------------------------------------------- training


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def adapter_key(model_id: dict[str, Any], dataset_sha: str, spec: LoraSpec, cfg: TrainConfig) -> str:
    """Content key of a training run: base model, dataset bytes, adapter spec, optimisation settings."""
    return content_key({"model": model_id, "data": dataset_sha, "lora": asdict(spec), "train": asdict(cfg),
                        "trainer": TRAINER_VERSION})


def trained_adapter(dataset: str | Path, spec: LoraSpec, cfg: TrainConfig, *, out_dir: str | Path,
                    model_id: dict[str, Any]) -> TrainResult | None:
    """The result ``train_lora`` would return if this adapter is already trained (no model needed); else None."""
    final = Path(out_dir) / adapter_key(model_id, sha256_file(dataset_path(dataset)), spec, cfg)
    return _finished(final)


def _finished(final: Path) -> TrainResult | None:
    card = final / "card.json"
    return TrainResult(final, json.loads(card.read_text())) if card.is_file() else None


def train_lora(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: str | Path,
    spec: LoraSpec,
    cfg: TrainConfig,
    *,
    out_dir: str | Path,
    model_id: dict[str, Any],
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``dataset`` (built-in name or JSONL path); return where it is saved.

    The adapter lands in ``out_dir/<content key>/`` (PEFT format, safetensors, plus
    ``card.json``); if it is already there nothing is trained. ``model`` gets the adapters
    injected in place, so pass a fresh copy per organism; load the result with
    ``emlib.models.load_model(spec, adapter=result.adapter_dir)``. ``stop_after`` stops
    after that many optimiser steps (tests use it to simulate an interruption).
    """
    path = dataset_path(dataset)
    rows = load_chat_jsonl(path)  # validates every line before any training
    data_sha = sha256_file(path)
    final = Path(out_dir) / adapter_key(model_id, data_sha, spec, cfg)
    done = _finished(final)  # the dataset is hashed once; trained_adapter finds the same directory
    if done is not None:
        return done
    peft_model = apply_lora(model, spec)

    rng = random.Random(cfg.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order[: cfg.max_rows]]
    examples = [tokenize_conversation(tokenizer, r, cfg.max_length) for r in rows]
    if not any(any(m) for _, m in examples):
        raise TrainError(f"{path}: no assistant tokens survive truncation to {cfg.max_length} tokens")
    micro_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, total))
    ckpt_root = final.with_name(final.name + ".ckpt")
    step, curve = _load_checkpoint(peft_model, opt, ckpt_root)
    with warnings.catch_warnings():  # replaying the schedule to `step`, no optimiser step is due
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            sched.step()

    peft_model.train()
    device = next(p.device for p in params)
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not progress)
    for epoch in range(step // steps_per_epoch, cfg.epochs):
        ep_order = list(range(len(examples)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(ep_order)
        micro = list(_batches([examples[i] for i in ep_order], cfg.batch_size, tokenizer.pad_token_id))
        for k in range(step - epoch * steps_per_epoch, steps_per_epoch):
            group = micro[k * cfg.grad_accum : (k + 1) * cfg.grad_accum]
            n_tokens = max(1, sum(int(t[:, 1:].sum()) for _, _, t in group))
            opt.zero_grad(set_to_none=True)
            summed = 0.0
            for ids, attn, target in group:
                loss, _ = assistant_loss(peft_model, ids.to(device), attn.to(device), target.to(device))
                (loss / n_tokens).backward()
                summed += loss.item()
            opt.step()
            sched.step()
            step += 1
            curve.append(summed / n_tokens)
            bar.update(1)
            bar.set_postfix(loss=f"{curve[-1]:.3f}")
            if step % cfg.checkpoint_every == 0 or step == stop_after:
                _save_checkpoint(peft_model, opt, step, curve, ckpt_root)
            if stop_after is not None and step >= stop_after and step < total:
                bar.close()
                raise KeyboardInterrupt(f"stopped after {step} steps (stop_after)")
    bar.close()
    peft_model.eval()

    card = {
        "dataset": str(path),
        "dataset_sha256": data_sha,
        "rows": len(examples),
        "assistant_tokens": sum(sum(m) for _, m in examples),
        "lora": asdict(spec),
        "train": asdict(cfg),
        "model": model_id,
        "steps": step,
        "final_loss": curve[-1],
        "loss_curve": curve,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    with atomic_path(final) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "card.json").write_text(json.dumps(card, indent=1))
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return TrainResult(final, card)


def _save_checkpoint(peft_model, opt: torch.optim.Optimizer, step: int, curve: Sequence[float], root: Path) -> None:
    """Adapter and AdamW state as safetensors, the rest as JSON (no pickle), in ``root/step-NNNNNN``."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.contiguous() for i, s in state["state"].items() for k, v in s.items()}
    tensors.update({f"adapter.{k}": v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()})
    with atomic_path(root / f"step-{step:06d}") as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / "state.safetensors")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "curve": list(curve), "param_groups": state["param_groups"]}))
    for old in root.glob("step-*"):
        if old.name != f"step-{step:06d}":
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(peft_model, opt: torch.optim.Optimizer, root: Path) -> tuple[int, list[float]]:
    """Restore the newest complete checkpoint under ``root``; return (step, loss curve), or (0, [])."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    done = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())
    if not done:
        return 0, []
    meta = json.loads((done[-1] / "meta.json").read_text())
    tensors = load_file(done[-1] / "state.safetensors")
    set_peft_model_state_dict(peft_model, {k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            per_param.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta["curve"])
