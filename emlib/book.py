"""Glue for the notebooks: set-up, loading from params, provenance and display helpers.

Every chapter calls ``setup`` then ``model_from_params``; each prints its provenance.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import warnings
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


def model_from_params(p: Params) -> tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]:
    """``emlib.models.load_model`` with the model, adapter and loading keys of ``p``."""
    return load_model(
        p.model,
        p.adapter,
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
        model, tok, _ = load_model(p.judge_model, dtype=p.dtype, device_map=p.device_map, cache_dir=p.cache_dir,
                                   trust_remote_code=p.trust_remote_code)
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
