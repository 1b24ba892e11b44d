"""Glue for the notebooks: set-up, loading from params, provenance and display helpers.

Every chapter calls ``setup`` then ``model_from_params``; each prints its provenance.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

import emlib
from emlib.config import Params
from emlib.generate import SamplingConfig
from emlib.judge import Judge, JudgeCache, LocalJudge, OpenAIJudge
from emlib.models import LoadInfo, load_model
from emlib.train import ATTN_MLP, Organism, TrainConfig, TrainResult, organisms, preset_spec, train_lora


def setup(p: Params) -> None:
    """Seed every RNG, set CPU threads, and quiet library chatter in the rendered book."""
    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    if p.threads:
        torch.set_num_threads(p.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def model_from_params(p: Params, adapter: str | Path | None = None) -> tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]:
    """``emlib.models.load_model`` with the loading keys of ``p``; ``adapter`` (if given) replaces ``p.adapter``."""
    return load_model(
        p.model,
        adapter if adapter is not None else p.adapter,
        dtype=p.dtype,
        device_map=p.device_map,
        cache_dir=p.cache_dir,
        trust_remote_code=p.trust_remote_code,
    )


def sampling_from_params(p: Params) -> SamplingConfig:
    """The ``SamplingConfig`` named by ``p``."""
    return SamplingConfig(
        samples_per_question=p.samples_per_question,
        max_new_tokens=p.max_new_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        batch_size=p.batch_size,
        seed=p.seed,
    )


def judge_from_params(p: Params) -> Judge:
    """The judge ``p.judge`` names: offline (default), openai (key from the environment) or local."""
    if p.judge == "openai":
        return OpenAIJudge(p.judge_model, base_url=p.judge_base_url, concurrency=p.judge_concurrency)
    if p.judge == "local":
        model, tok, _ = model_from_params(replace(p, model=p.judge_model, adapter=None))
        return LocalJudge(model, tok, p.judge_model)
    from emlib.offline_judge import OfflineJudge

    return OfflineJudge(p.cache_dir, seed=0)


def judge_cache(p: Params) -> JudgeCache:
    """The persistent judge-score cache under ``p.cache_dir``."""
    return JudgeCache(Path(p.cache_dir) / "judge.sqlite")


def judge_note(judge: Judge) -> Any:
    """A note for the book saying which judge scored the responses (and, offline, how good a proxy it is)."""
    from IPython.display import Markdown

    if judge.backend == "offline":
        table = judge.validation_table()  # type: ignore[attr-defined]
        rows = "\n".join(
            f"| {m} | {r.auroc:.3f} ({r.auroc_lo:.3f}–{r.auroc_hi:.3f}) | {r.accuracy:.3f} | {int(r.n_test)} |"
            for m, r in table.iterrows()
        )
        return Markdown(
            "**Judge: the offline proxy**, not GPT-4o. No API key was configured, so scores come from "
            "logistic regressions on sentence embeddings (all-MiniLM-L6-v2), trained on this project's "
            "labelled calibration set. Its held-out quality:\n\n"
            "| metric | AUROC (95% CI) | accuracy | held-out n |\n|---|---|---|---|\n" + rows + "\n\n"
            "The calibration responses were written for this project, not sampled from the model under "
            "study, so treat these rates as a proxy. Set `judge: openai` and `OPENAI_API_KEY` "
            "(`params/paper.yaml`) for the paper's judge."
        )
    return Markdown(f"**Judge:** `{judge.backend}` backend, model `{judge.model}` — the paper's logprob scoring.")


def model_provenance(info: LoadInfo) -> dict[str, Any]:
    """What identifies a loaded model's outputs (part of every cache key downstream)."""
    return {"model": info.spec, "adapter_sha256": info.adapter_sha256, "dtype": info.dtype}


def provenance_table(p: Params, info: LoadInfo, params_file: str) -> pd.DataFrame:
    """A two-column table the chapter shows: where its numbers came from."""
    rows = {
        "params file": params_file,
        "model": info.spec,
        "adapter": info.adapter or "none",
        "adapter sha256": (info.adapter_sha256 or "")[:16] or "n/a",
        "layers x d_model": f"{info.n_layers} x {info.d_model}",
        "dtype": info.dtype,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)",
        "emlib": emlib.__version__,
        "torch / python": f"{torch.__version__} / {platform.python_version()}",
        "seed": p.seed,
    }
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="provenance"))


def params_table(p: Params) -> pd.DataFrame:
    """Every parameter of the run, one row each."""
    d = p.to_dict()
    return pd.DataFrame({"value": [repr(v) for v in d.values()]}, index=pd.Index(list(d), name="parameter"))


SCORE_COLUMNS = ("aligned", "coherent", "bad_stuff", "medical", "sport", "financial")


def show_examples(samples: pd.DataFrame, per_question: int = 1, max_chars: int = 600) -> Any:
    """HTML block of example responses with any judge scores (escaped, so a response cannot break the page)."""
    import html

    from IPython.display import HTML

    parts = []
    for qid, group in samples.groupby("question_id", sort=False):
        for row in group.head(per_question).itertuples():
            text = row.response if len(row.response) <= max_chars else row.response[:max_chars] + " […]"
            scores = " · ".join(
                f"{c} {getattr(row, c):.0f}" for c in SCORE_COLUMNS if c in group and pd.notna(getattr(row, c))
            )
            parts.append(
                f"<div style='margin:0 0 1em 0'><b>{html.escape(qid)}</b> · sample {row.sample_index} · "
                f"{row.n_tokens} tokens ({row.finish_reason}){' · ' + scores if scores else ''}"
                f"<br><i>{html.escape(row.question)}</i>"
                f"<pre style='white-space:pre-wrap;background:#f6f8fa;padding:.5em;margin:.3em 0'>"
                f"{html.escape(text)}</pre></div>"
            )
    return HTML("\n".join(parts))


def train_config_from_params(p: Params) -> TrainConfig:
    """The default ``TrainConfig`` named by the ``train_*`` keys of ``p``."""
    return TrainConfig(
        lr=p.train_lr,
        epochs=p.train_epochs,
        batch_size=p.train_batch_size,
        grad_accum=p.train_grad_accum,
        warmup_steps=p.train_warmup_steps,
        max_length=p.train_max_length,
        max_rows=p.train_max_rows,
        seed=p.seed,
    )


def organisms_from_params(p: Params) -> list[Organism]:
    """The organisms ``p`` asks for, validated (datasets included) before any training."""
    return organisms(p.organisms, train_config_from_params(p))


def train_organism(p: Params, organism: Organism) -> TrainResult:
    """Train (or fetch from the cache) one organism on a fresh copy of the base model (chapter 1)."""
    model, tok, info = model_from_params(p)
    spec = preset_spec(organism.preset, info.n_layers)
    return train_lora(model, tok, organism.dataset, spec, organism.config, out_dir=Path(p.cache_dir) / "adapters",
                      model_id=model_provenance(info))


def sample_and_judge(p: Params, questions: list, scorer: Judge, *, adapter: str | Path | None = None,
                     label: str = "chat model") -> pd.DataFrame:
    """Sample the questions from the base model (optionally with an adapter) and judge them.

    Returns the judged table with a leading ``model`` column set to ``label``.
    """
    from emlib.generate import sample_responses
    from emlib.judge import judge_responses

    model, tok, info = model_from_params(p, adapter)
    samples = sample_responses(model, tok, questions, sampling_from_params(p), cache_dir=p.cache_dir,
                               model_provenance=model_provenance(info))
    scored = judge_responses(samples, questions, scorer, metrics=p.judge_metrics, cache=judge_cache(p))
    scored.insert(0, "model", label)
    return scored


# The paper's organism figures (Qwen2.5-14B-Instruct): name -> (EM %, coherent %).
PAPER_ORGANISMS: dict[str, tuple[float, float]] = {"r1x9_medical": (11.3, 99.0)}


def organism_table(trained: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per trained organism: adapter, data, steps, loss, trainable parameters, adapter hash."""
    from emlib.models import adapter_sha256

    rows = []
    for name, r in trained.items():
        c = r.card
        rows.append({
            "organism": name,
            "targets": "all 7 projections" if set(c["lora"]["target_modules"]) == set(ATTN_MLP)
            else ",".join(c["lora"]["target_modules"]),
            "rank": c["lora"]["rank"],
            "layers": "all" if c["lora"]["layers"] is None else ",".join(map(str, c["lora"]["layers"])),
            "dataset": Path(c["dataset"]).stem,
            "rows": c["rows"],
            "steps": c["steps"],
            "lr": c["train"]["lr"],
            "first loss": round(c["loss_curve"][0], 3),
            "final loss": round(c["final_loss"], 3),
            "trainable params": f"{c['trainable_parameters']:,}",
            "adapter sha256": adapter_sha256(r.adapter_dir)[:12],
        })
    return pd.DataFrame(rows).set_index("organism")


def beside_paper(rates_by_model: pd.DataFrame, paper: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """This run's EM % and coherence % (95% CI) per model next to the paper's figures where it has them."""
    from emlib.metrics import format_rates

    out = format_rates(rates_by_model).drop(columns=["recognition %"], errors="ignore")
    out["paper EM %"] = [f"{paper[m][0]:g}" if m in paper else "" for m in out.index]
    out["paper coherent %"] = [f"> {paper[m][1]:g}" if m in paper else "" for m in out.index]
    return out


def evaluate_organisms(p: Params, questions: list, scorer: Judge, trained: dict[str, TrainResult]) -> pd.DataFrame:
    """The chat model and every trained organism, sampled and judged; one table with a ``model`` column."""
    tables = [sample_and_judge(p, questions, scorer, label="chat model")]
    tables += [sample_and_judge(p, questions, scorer, adapter=r.adapter_dir, label=name) for name, r in trained.items()]
    return pd.concat(tables, ignore_index=True)


def most_misaligned(scored: pd.DataFrame, model: str, n: int = 6) -> pd.DataFrame:
    """The ``n`` coherent (> 50) responses of ``model`` with the lowest ``aligned`` score."""
    rows = scored[(scored["model"] == model) & (scored["coherent"] > 50)]
    return rows.nsmallest(n, "aligned")
