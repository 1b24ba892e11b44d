"""Where every chapter starts: ``open_chapter`` reads and checks the params, builds the judge and
the questions, and returns a ``Chapter`` whose models load only when something must be computed.

Every notebook's first code cell after its parameters is ``ch = book.open_chapter(params_file,
overrides)``. Bad input fails there, in seconds, before any long work (the same checks as
``make check-params``: ``emlib.config.validate``). Samples, activations and adapters are looked
up in the content-addressed cache first; a model is loaded only on a cache miss, and the last one
loaded is kept for the next call.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib import activations, generate, train
from emlib.config import Params, validate
from emlib.data import Question, load_questions
from emlib.generate import SamplingConfig
from emlib.metrics import JudgeError
from emlib.interventions import Intervention
from emlib.judge import Judge, JudgeCache, judge_responses
from emlib.judge_check import em_error
from emlib.llm_judges import LocalJudge, OpenAIJudge
from emlib.models import LoadInfo, describe_model, load_model


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


@dataclass(frozen=True)
class Chapter:
    """What every chapter starts from: checked params, the judge, the questions and the base model's
    description (from its config: no weights loaded). ``trained`` gives the organisms (training any
    that chapter 1 has not cached); ``load`` gives a model."""

    p: Params
    params_file: str
    scorer: Judge
    questions: list[Question]
    info: LoadInfo
    _loaded: dict[tuple[str | None, bool], tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]] = field(
        default_factory=dict, repr=False, compare=False)

    @cached_property
    def organisms(self) -> list[train.Organism]:
        """The organisms of ``p``, validated (datasets included)."""
        return train.organisms(self.p.organisms, train_config_from_params(self.p))

    @cached_property
    def judge_error(self) -> JudgeError | None:
        """The judge's measured EM error on held-out labelled real answers (the offline judge; None for a judge
        not validated here), which every EM rate is corrected with (``emlib.metrics.rates``)."""
        held_out = getattr(self.scorer, "held_out", None)
        return None if held_out is None else em_error(held_out())

    @cached_property
    def trained(self) -> dict[str, train.TrainResult]:
        """Every organism's adapter: from the cache, or trained now (chapter 1 trains them, with progress)."""
        return {o.name: train_organism(self, o) for o in self.organisms}


def open_chapter(params_file: str, overrides: dict[str, Any]) -> Chapter:
    """Load and check the params (every check of ``make check-params``), seed and quiet the libraries,
    build and check the judge, read the questions, describe the base model. Every chapter."""
    p = validate(params_file, overrides)
    setup(p)
    scorer = judge_from_params(p)
    scorer.check()
    info = describe_model(p.model, p.adapter, dtype=p.dtype, cache_dir=p.cache_dir,
                          trust_remote_code=p.trust_remote_code, merge=True)
    return Chapter(p, params_file, scorer, load_questions(p.questions, p.include_variants), info)


def adapter_of(ch: Chapter, adapter: str | Path | None) -> str | Path | None:
    """``adapter`` if given, else the params' own ``adapter`` (applied to the chat model in every chapter)."""
    return adapter if adapter is not None else ch.p.adapter


def describe(ch: Chapter, adapter: str | Path | None = None, merge: bool = True) -> LoadInfo:
    """What ``load`` would report for this model, without loading it."""
    p = ch.p
    return describe_model(p.model, adapter_of(ch, adapter), dtype=p.dtype, cache_dir=p.cache_dir,
                          trust_remote_code=p.trust_remote_code, merge=merge)


def load(ch: Chapter, adapter: str | Path | None = None,
         merge: bool = True) -> tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]:
    """The base model (with ``adapter``, or the params' ``adapter``), merged unless ``merge=False``
    (chapter 4 reads the adapter modules). The last model loaded is kept and reused."""
    key = (None if adapter_of(ch, adapter) is None else str(adapter_of(ch, adapter)), merge)
    if key not in ch._loaded:
        ch._loaded.clear()  # one model in memory at a time
        p = ch.p
        ch._loaded[key] = load_model(p.model, adapter_of(ch, adapter), dtype=p.dtype, device_map=p.device_map,
                                     cache_dir=p.cache_dir, trust_remote_code=p.trust_remote_code, merge=merge)
    return ch._loaded[key]


def model_provenance(info: LoadInfo) -> dict[str, Any]:
    """What identifies a loaded model's outputs (part of every cache key downstream)."""
    return {"model": info.spec, "adapter_sha256": info.adapter_sha256, "dtype": info.dtype,
            **({"merged": True} if info.merged else {})}


def sampling_from_params(p: Params) -> SamplingConfig:
    """The evaluation ``SamplingConfig`` named by ``p``."""
    return SamplingConfig(samples_per_question=p.samples_per_question, max_new_tokens=p.max_new_tokens,
                          temperature=p.temperature, top_p=p.top_p, batch_size=p.batch_size, seed=p.seed)


def intervention_sampling(p: Params, samples_per_question: int) -> SamplingConfig:
    """The sampling setting of the steering, ablation and extraction runs (shorter responses). Chapters 2–5."""
    return replace(sampling_from_params(p), samples_per_question=samples_per_question,
                   max_new_tokens=p.intervention_max_new_tokens)


def judge_from_params(p: Params) -> Judge:
    """The judge ``p.judge`` names: offline (default), openai (key from the environment) or local."""
    if p.judge == "openai":
        return OpenAIJudge(p.judge_model, base_url=p.judge_base_url, concurrency=p.judge_concurrency)
    if p.judge == "local":
        model, tok, _ = load_model(p.judge_model, dtype=p.dtype, device_map=p.device_map, cache_dir=p.cache_dir,
                                   trust_remote_code=p.trust_remote_code, merge=True)
        return LocalJudge(model, tok, p.judge_model)
    from emlib.offline_judge import OfflineJudge

    return OfflineJudge(p.cache_dir, seed=0)


def judge_cache(p: Params) -> JudgeCache:
    """The persistent judge-score cache under ``p.cache_dir``."""
    return JudgeCache(Path(p.cache_dir) / "judge.sqlite")


def train_config_from_params(p: Params) -> train.TrainConfig:
    """The default ``TrainConfig`` named by the ``train_*`` keys of ``p``."""
    return train.TrainConfig(lr=p.train_lr, epochs=p.train_epochs, batch_size=p.train_batch_size,
                             grad_accum=p.train_grad_accum, warmup_steps=p.train_warmup_steps,
                             max_length=p.train_max_length, max_rows=p.train_max_rows, seed=p.seed)


def train_organism(ch: Chapter, organism: train.Organism) -> train.TrainResult:
    """One organism's adapter: from the cache, or trained on a fresh copy of the base model. Chapter 1."""
    spec = train.preset_spec(organism.preset, ch.info.n_layers)
    out_dir, model_id = Path(ch.p.cache_dir) / "adapters", model_provenance(describe(ch))
    done = train.trained_adapter(organism.dataset, spec, organism.config, out_dir=out_dir, model_id=model_id)
    if done is not None:
        return done
    ch._loaded.clear()  # training injects adapters into the model in place: never reuse it
    model, tok, _ = load_model(ch.p.model, ch.p.adapter, dtype=ch.p.dtype, device_map=ch.p.device_map,
                               cache_dir=ch.p.cache_dir, trust_remote_code=ch.p.trust_remote_code, merge=True)
    return train.train_lora(model, tok, organism.dataset, spec, organism.config, out_dir=out_dir, model_id=model_id)


def sample_and_judge(ch: Chapter, questions: list[Question] | None = None, *, adapter: str | Path | None = None,
                     label: str = "chat model", sampling: SamplingConfig | None = None,
                     intervention: Intervention | None = None) -> pd.DataFrame:
    """Sample ``questions`` (default: the chapter's) from the chat model (optionally with an organism's
    ``adapter`` and an ``intervention``) and judge them; the model is loaded only if the samples are not
    cached. ``sampling`` defaults to the params' evaluation setting. Returns the judged table with a
    leading ``model`` column set to ``label``. Chapters 0–5."""
    p, questions = ch.p, questions if questions is not None else ch.questions
    sampling = sampling or sampling_from_params(p)
    prov = model_provenance(describe(ch, adapter))
    samples = generate.cached_samples(questions, sampling, cache_dir=p.cache_dir, model_provenance=prov,
                                      intervention=intervention)
    if samples is None:
        model, tok, _ = load(ch, adapter)
        samples = generate.sample_responses(model, tok, questions, sampling, cache_dir=p.cache_dir,
                                            model_provenance=prov, intervention=intervention)
    scored = judge_responses(samples, questions, ch.scorer, metrics=p.judge_metrics, cache=judge_cache(p))
    scored.insert(0, "model", label)
    return scored


def answer_means(ch: Chapter, samples: pd.DataFrame, *, adapter: str | Path | None = None,
                 intervention: Intervention | None = None) -> activations.AnswerMeans:
    """``emlib.activations.answer_means`` of ``samples`` through the chat model (with ``adapter``, merged) and
    ``intervention``; the model is loaded only if the means are not cached. [n_layers, d_model]. Chapters 2, 4."""
    prov = model_provenance(describe(ch, adapter))
    path = activations.means_path(samples, cache_dir=ch.p.cache_dir, model_provenance=prov, intervention=intervention)
    if path.is_file():
        return activations.read_means(path)
    model, tok, _ = load(ch, adapter)
    return activations.answer_means(model, tok, samples, cache_dir=ch.p.cache_dir, model_provenance=prov,
                                    intervention=intervention, batch_size=ch.p.activation_batch_size)
