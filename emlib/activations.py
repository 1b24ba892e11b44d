"""Residual-stream means over answer tokens, from teacher-forced passes (read with nnsight).

Used by chapter 02 (the aligned and misaligned sets of each organism) and chapter 04
(the activation changes induced by steering and by the rank-1 adapters). Each response
is re-encoded as chat prompt + response and run through the model in left-padded
batches; the output of every decoder block is summed over *answer* tokens only (prompt
and padding masked out) into running float64 sums, so memory does not grow with the
number of responses. Means are cached as safetensors, keyed by the model's provenance
and the exact texts, and partial sums are checkpointed so an interrupted run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from emlib.cache import atomic_path, content_key, log_computed
from emlib.generate import input_device, prompt_ids
from emlib.interventions import Intervention, wrap
from emlib.models import decoder_layers, residual

ACTIVATIONS_VERSION = 1  # bump when a change alters the means


@dataclass(frozen=True)
class AnswerMeans:
    """Per-layer mean residual stream over the answer tokens of a set of responses.

    ``mean`` [n_layers, d_model] (float32): row ℓ is the mean output of decoder block ℓ.
    """

    mean: torch.Tensor
    n_tokens: int
    n_responses: int


@dataclass(frozen=True)
class Batch:
    """Teacher-forced inputs: ``ids``/``attention`` [batch, seq] left-padded; ``answer`` [batch, seq] bool."""

    ids: torch.Tensor
    attention: torch.Tensor
    answer: torch.Tensor


def encode(tokenizer: PreTrainedTokenizerBase, question: str, response: str, system: str | None = None,
           max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of chat prompt + response, and the number of prompt tokens (the answer starts there)."""
    prompt = prompt_ids(tokenizer, question, system)
    answer = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = prompt + answer
    return (ids[:max_length] if max_length else ids), len(prompt)


def pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded to one width: (ids [n, width], attention [n, width]); left padding for teacher-forced
    passes and generation, right padding for training (positions then run 0..len−1)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        attention[i, span] = 1
    return ids, attention


def batches(encoded: Sequence[tuple[list[int], int]], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Left-padded batches of ``encoded`` (ids, prompt length) pairs, in the given order."""
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, attention = pad([row for row, _ in chunk], pad_id)
        answer = torch.zeros_like(attention, dtype=torch.bool)
        for i, (row, n_prompt) in enumerate(chunk):
            answer[i, ids.shape[1] - len(row) + n_prompt :] = True
        yield Batch(ids, attention, answer)


@torch.inference_mode()
def layer_sums(model: nn.Module, batch: Batch, intervention: Intervention | None = None,
               per_response: bool = False) -> tuple[torch.Tensor, int]:
    """Sum of every decoder block's output over the batch's answer tokens.

    Returns (sums [n_layers, d_model] float64, number of answer tokens); ``per_response``: sums
    [n_layers, batch, d_model], one per response. ``intervention``, if given, is applied during
    the pass (its edits show in the sums of later layers and of the edited layer itself).
    """
    device = input_device(model)
    ids, attention, answer = (t.to(device) for t in (batch.ids, batch.attention, batch.answer))
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    weights = answer.to(torch.float64)[..., None]
    envoy, blocks = wrap(model)
    n_layers = len(blocks)
    sums: list[torch.Tensor] = []
    edits = intervention.layers if intervention is not None else []

    def forward(inputs: torch.Tensor) -> None:
        model(input_ids=inputs, attention_mask=attention, position_ids=positions, logits_to_keep=1, use_cache=False)

    if intervention is not None:
        intervention.check(model)
    with envoy.trace(ids, fn=forward):
        for layer in range(n_layers):
            out = blocks[layer].output
            h = residual(out)
            if layer in edits:
                h = intervention.edit(layer, h)
                blocks[layer].output = (h, *out[1:]) if isinstance(out, tuple) else h
            weighted = h.to(torch.float64) * weights.to(h.device)
            sums.append((weighted.sum(1) if per_response else weighted.sum((0, 1))).cpu())
    return torch.stack(sums), int(answer.sum())


def _texts(samples: pd.DataFrame) -> list[tuple[str, str | None, str]]:
    system = samples["system"] if "system" in samples else [None] * len(samples)
    return [(q, s if isinstance(s, str) else None, r) for q, s, r in zip(samples["question"], system, samples["response"])]


def means_path(samples: pd.DataFrame, *, cache_dir: str | Path, model_provenance: dict[str, Any],
               intervention: Intervention | None = None, max_length: int | None = None) -> Path:
    """Where ``answer_means`` caches the means of ``samples``: keyed by model, intervention and texts.
    ``read_means`` of an existing file gives them without a model."""
    key = {"model": model_provenance, "texts": _texts(samples), "max_length": max_length,
           "version": ACTIVATIONS_VERSION, "intervention": intervention.identity() if intervention is not None else None}
    return Path(cache_dir) / "activations" / f"{content_key(key)}.safetensors"


def answer_means(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: pd.DataFrame,
    *,
    cache_dir: str | Path,
    model_provenance: dict[str, Any],
    intervention: Intervention | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
) -> AnswerMeans:
    """Per-layer means of the residual stream over the answer tokens of ``samples``' responses.

    ``samples`` needs columns ``question`` and ``response`` (``system`` optional). Cached at
    ``cache_dir/activations/<key>.safetensors`` by model provenance, intervention and texts;
    partial sums are saved after each batch, so an interrupted run resumes.
    """
    texts = _texts(samples)
    if not texts:
        raise ValueError("answer_means needs at least one response (the set is empty)")
    path = means_path(samples, cache_dir=cache_dir, model_provenance=model_provenance, intervention=intervention,
                      max_length=max_length)
    if path.is_file():
        return read_means(path)
    encoded = [encode(tokenizer, q, r, s, max_length) for q, s, r in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths pad less
    all_batches = list(batches([encoded[i] for i in order], batch_size, tokenizer.pad_token_id))
    partial = path.with_suffix(".partial.safetensors")
    done, total, n_tokens = 0, None, 0
    if partial.is_file():
        state = load_file(partial)
        done, total, n_tokens = int(state["batches_done"]), state["sums"], int(state["n_tokens"])
    bar = tqdm(total=len(all_batches), initial=done, desc="activations", unit="batch", disable=not progress)
    for b in all_batches[done:]:
        sums, n = layer_sums(model, b, intervention)
        total = sums if total is None else total + sums
        n_tokens += n
        done += 1
        _save(partial, {"sums": total, "n_tokens": torch.tensor(n_tokens), "batches_done": torch.tensor(done)}, {})
        bar.update(1)
    bar.close()
    if n_tokens == 0:
        raise ValueError("every response is empty: there are no answer tokens to average")
    means = AnswerMeans((total / n_tokens).float(), n_tokens, len(texts))
    _save(path, {"mean": means.mean, "n_tokens": torch.tensor(n_tokens), "n_responses": torch.tensor(len(texts))},
          {"model": model_provenance, "n_layers": len(decoder_layers(model))})
    partial.unlink(missing_ok=True)
    log_computed(cache_dir, "activations", path.name)
    return means


def sums_path(samples: pd.DataFrame, *, cache_dir: str | Path, model_provenance: dict[str, Any]) -> Path:
    """Where ``answer_sums`` caches the per-response sums of ``samples`` (``read_sums`` reads it, no model)."""
    means = means_path(samples, cache_dir=cache_dir, model_provenance=model_provenance)
    return means.with_name("sums-" + means.name)


def read_sums(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response sums [n, n_layers, d_model] and answer-token counts [n] written by ``answer_sums``."""
    state = load_file(str(path))
    return state["sums"], state["tokens"]


def answer_sums(model: nn.Module, tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame, *, cache_dir: str | Path,
                model_provenance: dict[str, Any], batch_size: int = 16, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response: the residual stream summed over its answer tokens [n, n_layers, d_model] (float32) and its
    answer-token count [n], in ``samples``' order, so that the token-weighted mean of any subset of responses
    is cheap (chapter 2's within-question null, ``emlib.direction_nulls.within_question_null``). Cached beside
    the means."""
    path = sums_path(samples, cache_dir=cache_dir, model_provenance=model_provenance)
    if path.is_file():
        return read_sums(path)
    encoded = [encode(tokenizer, q, r, s) for q, s, r in _texts(samples)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    sums, tokens = [None] * len(encoded), torch.zeros(len(encoded), dtype=torch.long)
    starts = range(0, len(order), batch_size)
    for start, b in tqdm(zip(starts, batches([encoded[i] for i in order], batch_size, tokenizer.pad_token_id)),
                         total=len(starts), desc="activations per answer", unit="batch", disable=not progress):
        s, _ = layer_sums(model, b, per_response=True)
        for row, i in enumerate(order[start : start + batch_size]):
            sums[i], tokens[i] = s[:, row].float(), int(b.answer[row].sum())
    out = torch.stack(sums)
    _save(path, {"sums": out, "tokens": tokens}, {"model": model_provenance})
    log_computed(cache_dir, "activations", path.name)
    return out, tokens


def _save(path: Path, tensors: dict[str, torch.Tensor], provenance: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"emlib": json.dumps(provenance, default=str)})


def read_means(path: str | Path) -> AnswerMeans:
    """Load means written by ``answer_means``."""
    state = load_file(str(path))
    return AnswerMeans(state["mean"], int(state["n_tokens"]), int(state["n_responses"]))
