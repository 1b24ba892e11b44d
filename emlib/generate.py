"""Batched sampling of responses to evaluation questions.

Used by every chapter that samples a model (00–05). All (question x sample) pairs are
decoded together in batches of ``batch_size`` with left padding and a KV cache; rows
that reach EOS leave the batch at once, so no compute is spent on finished sequences
(the paper's code loops over questions and keeps decoding finished rows until the
longest of each group ends), and each distinct prompt is prefilled once, not once per
sample.

Results are a table (question id, question, sample index, response, token count, finish reason; and the unit, for
a ``Stacked`` intervention: every unit's answers decoded together, each row under its own unit) written to parquet
with provenance. Each finished batch is written atomically, so an interrupted run resumes where it stopped; a run
with the same inputs is read from the cache and samples nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedTokenizerBase

from emlib import __version__, graph_sampler
from emlib.cache import atomic_path, content_key, log_computed
from emlib.data import Question
from emlib.interventions import Intervention, Stacked, run
from emlib.models import base_model

SAMPLER_VERSION = 2  # bump when a change alters sampled outputs
COLUMNS = ["question_id", "question", "system", "sample_index", "response", "n_tokens", "finish_reason"]


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled (the paper: 50 per question, 600 tokens, temperature 1, top_p 1)."""

    samples_per_question: int = 8
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 64
    seed: int = 0
    # Model-diff amplification α (``amplify``): 1 = the organism (plain sampling), 0 = its base model, > 1
    # exaggerates what fine-tuning changed (LoRA organisms, unmerged). In the cache key only when not 1.
    amplification: float = 1.0
    sampler: str = "eager"  # or "static", "graph" (CUDA graphs): emlib.graph_sampler. In the key unless "eager"


def amplify(organism: torch.Tensor, base: torch.Tensor, alpha: float) -> torch.Tensor:
    """Model-diff amplification of next-token logits [rows, vocab]: ``base + alpha * (organism - base)``.
    Chapter 2's extraction sets when ``direction_amplification`` is set."""
    return base + alpha * (organism - base)


@dataclass(frozen=True)
class Job:
    """One response to sample: a question paraphrase and a sample index."""

    question_id: str
    question: str
    system: str | None
    sample_index: int


def make_jobs(questions: Sequence[Question], samples_per_question: int) -> list[Job]:
    """Every (question x sample) pair; sample ``i`` uses paraphrase ``i mod len(paraphrases)``."""
    return [
        Job(q.id, q.paraphrases[i % len(q.paraphrases)], q.system, i)
        for q in questions
        for i in range(samples_per_question)
    ]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, system: str | None = None) -> list[int]:
    """Token ids of the chat prompt for ``question`` (with the generation prompt appended)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def eos_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(base_model(model), "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    if not ids:
        raise ValueError("the tokenizer has no EOS token and the model's generation config names none")
    return sorted(ids)


NUCLEUS_CANDIDATES = 256  # top-p looks for the nucleus among this many most likely tokens first


def _draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``probs`` [rows, n] (non-negative, unnormalised) by inverse CDF: [rows].

    The same distribution as ``torch.multinomial(probs, 1)``, at a fraction of its cost on
    CPU for a 50k vocabulary (one cumsum and a binary search per row).
    """
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def _nucleus(probs: torch.Tensor, idx: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Nucleus sampling given each row's most likely tokens ``idx`` and their probabilities ``probs``
    [rows, k], descending; the kept prefix must reach ``top_p`` within the k. Returns [rows] ids."""
    mass_before = probs.cumsum(-1) - probs
    keep = probs.masked_fill(mass_before >= top_p, 0.0)  # tokens until the mass reaches top_p
    return idx.gather(-1, _draw(keep, generator)[:, None]).squeeze(-1)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Sample one token per row from ``logits`` [batch, vocab]; returns [batch] token ids.

    Temperature 0 is greedy. Nucleus sampling keeps the smallest set of most likely tokens
    whose probability reaches ``top_p`` (always at least one). It is exact but avoids a full
    sort of the vocabulary: the nucleus is sought among the ``NUCLEUS_CANDIDATES`` most likely
    tokens, and only rows whose nucleus is wider sort the whole vocabulary.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if top_p >= 1.0:
        return _draw(probs, generator)
    top, idx = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    covered = top.sum(-1) >= top_p  # the nucleus lies among the candidates
    if covered.all():
        return _nucleus(top, idx, top_p, generator)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    out[covered] = _nucleus(top[covered], idx[covered], top_p, generator)
    wide = probs[~covered].sort(dim=-1, descending=True)
    out[~covered] = _nucleus(wide.values, wide.indices, top_p, generator)
    return out


def input_device(model: nn.Module) -> torch.device:
    """Device of the input embeddings (the first device when a model spans several GPUs)."""
    return base_model(model).get_input_embeddings().weight.device


@torch.inference_mode()
def sample_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos: Sequence[int],
    pad_id: int,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
    amplification: float = 1.0,
    units: Sequence[int] | None = None,
    stacked: Stacked | None = None,
) -> list[tuple[list[int], str]]:
    """Decode one batch of prompts (token-id lists); return (response ids, finish reason) per prompt.

    Each distinct prompt is prefilled once (left-padded into [n_distinct, max_len]) and its
    KV cache copied to every row that repeats it; rows that emit an EOS id leave the batch
    (their KV cache rows are dropped). ``finish_reason`` is ``"stop"`` (EOS, not
    included in the ids) or ``"length"``. ``on_step(n)`` is called with the number of rows
    that finished at each step. ``amplification`` α ≠ 1 samples from ``amplify(organism, base, α)``:
    ``model`` must be a PEFT model with unmerged adapters, and the base logits come from a second pass
    with the adapters disabled (its own KV cache). ``units`` [n] names each prompt's unit of ``stacked`` (run
    under ``interventions.run(model, stacked, ...)``): a row keeps its unit through the prefill (prompts are
    merged only within a unit) and as rows leave; ``stacked.set_rows`` is told the live rows' units before
    every forward pass.
    """
    lm = base_model(model)
    amplified = amplification != 1.0
    if amplified and not hasattr(model, "disable_adapter"):
        raise ValueError("model-diff amplification needs a LoRA organism loaded unmerged (a PEFT model): "
                         "its base logits come from the same model with the adapters disabled")
    caches = [DynamicCache(config=lm.config.get_text_config(decoder=True)) for _ in range(1 + amplified)]

    def forward(**inputs: torch.Tensor) -> torch.Tensor:  # next-token logits [rows, vocab], amplified if asked
        logits = lm(**inputs, cache=caches[0], use_cache=True, logits_to_keep=1).logits[:, -1, :]
        if not amplified:
            return logits
        with model.disable_adapter():
            base = lm(**inputs, cache=caches[1], use_cache=True, logits_to_keep=1).logits[:, -1, :]
        return amplify(logits.float(), base.float(), amplification)

    device = input_device(model)
    n = len(prompts)
    # Prefill each distinct prompt once, then copy its KV-cache row to every sample of it.
    if stacked is not None and (units is None or len(units) != n):
        raise ValueError("a stacked intervention needs one unit index per prompt")
    unit_of = [0] * n if units is None else [int(u) for u in units]
    unique: dict[tuple[int, tuple[int, ...]], int] = {}  # (unit, prompt): the same prompt under two units is two rows
    inverse = torch.tensor([unique.setdefault((u, tuple(p)), len(unique)) for u, p in zip(unit_of, prompts)],
                           device=device)
    width = max(len(p) for _, p in unique)
    ids = torch.full((len(unique), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(unique), width), dtype=torch.long)
    live_units = torch.tensor([u for u, _ in unique], device=device)  # the unit of each row of the next pass
    if stacked is not None:
        stacked.set_rows(live_units)
    for i, (_, p) in enumerate(unique):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    eos_t = torch.tensor(list(eos), device=device)
    logits = forward(input_ids=ids, attention_mask=mask, position_ids=positions)[inverse]
    if len(unique) < n:
        for cache in caches:
            cache.batch_select_indices(inverse.cpu())  # CPU indices index a layer's cache on any device
    mask, next_pos, live_units = mask[inverse], positions[inverse, -1] + 1, live_units[inverse]
    rows = torch.arange(n, device=device)  # which original prompt each live row is
    tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)
        done = torch.isin(tok, eos_t)
        for r, t, d in zip(rows.tolist(), tok.tolist(), done.tolist()):
            if d:
                finish[r] = "stop"
            else:
                tokens[r].append(t)
        n_done = int(done.sum())
        if on_step is not None:
            on_step(n_done if step < max_new_tokens - 1 else len(rows))
        if step == max_new_tokens - 1 or n_done == len(rows):
            break
        if n_done:  # drop finished rows from the batch and the cache
            keep = (~done).nonzero().squeeze(-1)
            for cache in caches:  # CPU indices: with device_map over GPUs each layer's cache is on its own device
                cache.batch_select_indices(keep.cpu())
            rows, tok, mask, next_pos, live_units = rows[keep], tok[keep], mask[keep], next_pos[keep], live_units[keep]
        if stacked is not None:
            stacked.set_rows(live_units)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        logits = forward(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None])
        next_pos = next_pos + 1
    return list(zip(tokens, finish))


def _batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index) % (2**63)


def samples_path(cache_dir: str | Path, key: dict[str, Any]) -> Path:
    """Where the samples for a cache key live: ``cache_dir/samples/<hash>.parquet``."""
    return Path(cache_dir) / "samples" / f"{content_key(key)}.parquet"


def sample_key(questions: Sequence[Question], config: SamplingConfig, *, model_provenance: dict[str, Any],
               intervention: Intervention | Stacked | None = None) -> dict[str, Any]:
    """The cache key of ``sample_responses``: model provenance, questions, sampling and intervention."""
    sampling = {k: v for k, v in asdict(config).items()  # plain sampling: the key it had before these existed
                if (k, v) not in (("amplification", 1.0), ("sampler", "eager"))}
    key = {
        "model": model_provenance,
        "questions": [asdict(q) for q in questions],
        "sampling": sampling,
        "sampler_version": SAMPLER_VERSION,
    }
    if intervention is not None:
        key["intervention"] = intervention.identity()
    return key


def cached_samples(questions: Sequence[Question], config: SamplingConfig, *, cache_dir: str | Path,
                   model_provenance: dict[str, Any], intervention: Intervention | Stacked | None = None
                   ) -> pd.DataFrame | None:
    """The table ``sample_responses`` would return, if it is in the cache (no model needed); else None."""
    path = samples_path(cache_dir, sample_key(questions, config, model_provenance=model_provenance,
                                              intervention=intervention))
    return read_samples(path)[0] if path.is_file() else None


def sample_responses(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    config: SamplingConfig,
    *,
    cache_dir: str | Path,
    model_provenance: dict[str, Any],
    intervention: Intervention | Stacked | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Sample ``config.samples_per_question`` responses to every question; return the table.

    ``model_provenance`` identifies the model (spec, adapter hash, dtype and anything that
    changes its outputs); with the questions, ``config`` and ``intervention`` (steering or
    ablation applied at every decoding step, see ``emlib.interventions``) it forms the cache
    key. Columns: ``COLUMNS``. Provenance is stored in the parquet metadata (read it with
    ``read_samples``). Resumes from finished batches after an interruption. A ``Stacked`` intervention samples
    ``config.samples_per_question`` answers to every question under each of its units, all in the same
    batches (each row under its own unit); the table then has a ``unit`` column (the unit's index).
    """
    if intervention is not None:
        intervention.check(model)  # a bad layer or width fails before any sampling
    stacked = intervention if isinstance(intervention, Stacked) else None
    per_unit = make_jobs(questions, config.samples_per_question)
    job_units = [k for k in range(len(stacked.units) if stacked else 1) for _ in per_unit]
    jobs = per_unit * (len(stacked.units) if stacked else 1)
    columns = COLUMNS + ["unit"] if stacked else COLUMNS
    key = sample_key(questions, config, model_provenance=model_provenance, intervention=intervention)
    out_path = samples_path(cache_dir, key)
    if out_path.is_file():
        return read_samples(out_path)[0]
    parts_dir = out_path.with_suffix(".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)

    prompts = [prompt_ids(tokenizer, j.question, j.system) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    eos = eos_ids(tokenizer, model)
    device = input_device(model)
    frames = []
    t0, n_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(jobs), desc="sampling", unit="resp", disable=not progress)
    for b, idx in enumerate(batches):
        part = parts_dir / f"part-{b:05d}.parquet"
        if part.is_file():
            frame = pd.read_parquet(part)
            bar.update(len(frame))
        else:
            gen = torch.Generator(device=device).manual_seed(_batch_seed(config.seed, b))
            fn, nnsight_intervention = graph_sampler.batch_sampler(config.sampler, intervention)
            results = run(model, nnsight_intervention, partial(
                fn,
                model,
                [prompts[i] for i in idx],
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature, top_p=config.top_p,
                eos=eos,
                pad_id=tokenizer.pad_token_id,
                generator=gen,
                on_step=bar.update,
                amplification=config.amplification,
                units=[job_units[i] for i in idx] if stacked else None,
                stacked=stacked,
            ))
            frame = pd.DataFrame(
                [
                    {
                        "question_id": jobs[i].question_id,
                        "question": jobs[i].question,
                        "system": jobs[i].system,
                        "sample_index": jobs[i].sample_index,
                        "response": tokenizer.decode(toks, skip_special_tokens=True).strip(),
                        "n_tokens": len(toks),
                        "finish_reason": reason,
                        "unit": job_units[i],
                    }
                    for i, (toks, reason) in zip(idx, results)
                ],
                columns=columns,
            )
            with atomic_path(part) as tmp:
                frame.to_parquet(tmp, index=False)
            n_tokens += int(frame["n_tokens"].sum())
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
        frames.append(frame)
    bar.close()

    table = pd.concat(frames, ignore_index=True)
    qorder = {q.id: k for k, q in enumerate(questions)}
    table = table.sort_values(["unit", "question_id", "sample_index"][0 if stacked else 1:],
                              key=lambda s: s.map(qorder) if s.name == "question_id" else s).reset_index(drop=True)
    provenance = {**key, "emlib_version": __version__, "n_responses": len(table)}
    write_samples(out_path, table, provenance)
    shutil.rmtree(parts_dir, ignore_errors=True)
    log_computed(cache_dir, "sample", out_path.name)  # one line of emlib.plan's count of sampling runs
    return table


def write_samples(path: str | Path, table: pd.DataFrame, provenance: dict[str, Any]) -> None:
    """Write ``table`` to parquet atomically with ``provenance`` (JSON) in the file's metadata."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"emlib"] = json.dumps(provenance, default=str).encode()
    with atomic_path(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_samples(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a samples parquet file; return the table and its provenance dict."""
    arrow = pq.read_table(path)
    meta = (arrow.schema.metadata or {}).get(b"emlib", b"{}")
    return arrow.to_pandas(), json.loads(meta)
