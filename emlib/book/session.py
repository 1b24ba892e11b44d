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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib import activations, devices, generate, train
from emlib.cache import log_computed
from emlib.config import Params, validate
from emlib.data import Question, load_questions
from emlib.generate import SamplingConfig
from emlib.interventions import Intervention, Stacked
from emlib.judge import Judge, JudgeCache, JudgeFailure, judge_responses
from emlib.judge_check import em_error
from emlib.llm_judges import LocalJudge, OpenAIJudge
from emlib.metrics import JudgeError
from emlib.models import LoadInfo, describe_model, load_model
from emlib.organisms import Organism, TrainConfig, fetch, organisms
from emlib.plan import train_config
from emlib.sources import fingerprint

T = TypeVar("T")


def setup(p: Params) -> None:
    """Seed every RNG, set CPU threads, show table cells whole, and quiet library chatter in the rendered book."""
    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    if p.threads:
        torch.set_num_threads(p.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    pd.set_option("display.max_colwidth", None)  # every value shown whole: no "…" in a table cell
    for name in ("transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


class Lazy(Mapping[str, T]):
    """A read-only mapping of ``keys`` (in order) whose value for a key is ``make(key)``, computed on first access."""

    def __init__(self, keys: list[str], make: Callable[[str], T]):
        self._keys, self._make, self._got = keys, make, {}

    def __getitem__(self, key: str) -> T:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._got:
            self._got[key] = self._make(key)
        return self._got[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class FineTune:
    """A model to sample or read: ``model`` (the params' base model, or a full fine-tune's directory) with an
    optional PEFT ``adapter`` directory. ``model_sha256`` identifies a full fine-tune's weights in cache keys."""

    name: str
    model: str
    adapter: str | None = None
    model_sha256: str | None = None


@dataclass(frozen=True)
class Chapter:
    """What every chapter starts from: checked params, the judge, the questions and the base model's
    description (from its config: no weights loaded). ``ready`` gives every organism as a ``FineTune``
    (training any that chapter 1 has not cached, fetching any brought one); ``load`` gives a model.
    ``judge_failures``: every score this chapter's judging could not obtain (``emlib.book.display.judge_failures``
    shows them at the chapter's end; the next run asks for them again)."""

    p: Params
    params_file: str
    scorer: Judge
    questions: list[Question]
    info: LoadInfo
    _loaded: dict[tuple[str, str | None, bool], tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]] = field(
        default_factory=dict, repr=False, compare=False)
    judge_failures: list[JudgeFailure] = field(default_factory=list, repr=False, compare=False)

    @cached_property
    def organisms(self) -> list[Organism]:
        """The organisms of ``p``, validated (datasets included; brought ones were checked by ``validate``)."""
        return organisms(self.p.organisms, train_config_from_params(self.p))

    @property
    def chat(self) -> FineTune:
        """The chat model: the params' ``model`` with its ``adapter``, if any."""
        return FineTune("chat model", self.p.model, None if self.p.adapter is None else str(self.p.adapter))

    @cached_property
    def judge_error(self) -> JudgeError | None:
        """The judge's measured EM error on held-out labelled real answers (the offline judge; None for a judge
        not validated here), which every EM rate is corrected with (``emlib.metrics.rates``)."""
        held_out = getattr(self.scorer, "held_out", None)
        return None if held_out is None else em_error(held_out())

    @cached_property
    def set_scorer(self) -> Judge:
        """The judge whose labels select the answers averaged into a direction or probed (chapters 2 and 4): the
        offline judge reads the chat model's residual stream in its "hidden" view, so a label from it would be a
        function of (nearly) the activations it selects; this one is the same offline judge without that view
        (embedding, text and the chat model's log-likelihoods). Its cache entries are its own: the judge cache
        key holds the judge's ``model``, and ``OfflineJudge.model`` holds a content key of its views. An openai
        or local judge reads no residual stream: it is ``scorer`` itself."""
        if self.p.judge != "offline":
            return self.scorer
        from emlib.offline_judge import OfflineJudge

        return OfflineJudge(self.p.cache_dir, seed=0, views=SET_JUDGE_VIEWS)

    @cached_property
    def trained(self) -> Mapping[str, train.TrainResult]:
        """Every trained organism's adapter and card, each from the cache or trained now (chapter 1, with progress)
        when first asked for: reading one organism trains no other (``emlib.work`` runs one job at a time)."""
        by_name = {o.name: o for o in self.organisms if o.kind == "trained"}
        return Lazy(list(by_name), lambda name: train_organism(self, by_name[name]))

    @cached_property
    def ready(self) -> Mapping[str, FineTune]:
        """Every organism, trained or brought, as a ``FineTune``, in the params' order, each made ready when first
        asked for. Chapters 1–5."""
        by_name = {o.name: o for o in self.organisms}
        return Lazy(list(by_name), lambda name: self._ready(by_name[name]))

    def _ready(self, o: Organism) -> FineTune:
        if o.kind == "trained":
            return FineTune(o.name, self.p.model, str(self.trained[o.name].adapter_dir))
        d = fetch(o)  # a hub id is downloaded once, into the hub cache
        if o.kind == "adapter":
            return FineTune(o.name, self.p.model, str(d))
        return FineTune(o.name, str(d), None, fingerprint(d, cache_dir=self.p.cache_dir))


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


def describe(ch: Chapter, ft: FineTune | None = None, merge: bool = True) -> LoadInfo:
    """What ``load`` would report for ``ft`` (default: the chat model), without loading it."""
    p, ft = ch.p, ft or ch.chat
    info = describe_model(ft.model, ft.adapter, dtype=p.dtype, cache_dir=p.cache_dir,
                          trust_remote_code=p.trust_remote_code, merge=merge)
    return replace(info, model_sha256=ft.model_sha256)


def load(ch: Chapter, ft: FineTune | None = None,
         merge: bool = True) -> tuple[nn.Module, PreTrainedTokenizerBase, LoadInfo]:
    """``ft`` (default: the chat model), its adapter merged unless ``merge=False`` (chapter 4 reads the
    adapter modules). The last model loaded is kept and reused; loading another frees it first (``devices.unload``:
    its memory is back before the next model's weights arrive, if the caller keeps no reference to it)."""
    p, ft = ch.p, ft or ch.chat
    key = (ft.model, ft.adapter, merge)
    if key not in ch._loaded:
        devices.unload(ch._loaded)  # one model in memory at a time
        model, tok, info = load_model(ft.model, ft.adapter, dtype=p.dtype,
                                      device_map=devices.device_map_for(p.device_map, p.allow_cpu),
                                      cache_dir=p.cache_dir, trust_remote_code=p.trust_remote_code, merge=merge)
        ch._loaded[key] = (model, tok, replace(info, model_sha256=ft.model_sha256))
    return ch._loaded[key]


def model_provenance(info: LoadInfo) -> dict[str, Any]:
    """What identifies a loaded model's outputs (part of every cache key downstream)."""
    return {"model": info.spec, "adapter_sha256": info.adapter_sha256, "dtype": info.dtype,
            **({"merged": True} if info.merged else {}), **({"model_sha256": info.model_sha256} if info.model_sha256 else {})}


def sampling_from_params(p: Params) -> SamplingConfig:
    """The evaluation ``SamplingConfig`` named by ``p``."""
    return SamplingConfig(samples_per_question=p.samples_per_question, max_new_tokens=p.max_new_tokens,
                          temperature=p.temperature, top_p=p.top_p, batch_size=p.batch_size, seed=p.seed,
                          sampler=p.sampler)


def intervention_sampling(p: Params, samples_per_question: int) -> SamplingConfig:
    """The sampling setting of the steering, ablation and extraction runs (shorter responses). Chapters 2–5."""
    return replace(sampling_from_params(p), samples_per_question=samples_per_question,
                   max_new_tokens=p.intervention_max_new_tokens)


# The offline judge's views for labels that select activations (``Chapter.set_scorer``): all but "hidden".
SET_JUDGE_VIEWS = ("embedding", "text", "lm")


def judge_table(ch: Chapter, table: pd.DataFrame, questions: list[Question] | None = None, *,
                scorer: Judge | None = None) -> pd.DataFrame:
    """``table`` (sampled answers; any judge columns are replaced) judged again by ``scorer`` (default:
    ``ch.set_scorer``) on the params' metrics, through the judge cache (each judge its own entries: the cache key
    holds the judge's backend and model). ``questions``: those the answers reply to (default: the chapter's).
    Chapter 2's direction sets."""
    scorer = scorer or ch.set_scorer
    scorer.check()
    samples = table.drop(columns=[m for m in ch.p.judge_metrics if m in table.columns])
    questions = questions if questions is not None else ch.questions
    return judge_responses(samples, questions, scorer, metrics=ch.p.judge_metrics, cache=judge_cache(ch.p),
                           failures=ch.judge_failures)


def judge_from_params(p: Params) -> Judge:
    """The judge ``p.judge`` names: offline (default), openai (key from the environment; paced by ``judge_rpm`` /
    ``judge_tpm``, or through the Batch API with ``judge_batch``, its in-flight batches recorded under the cache)
    or local."""
    if p.judge == "openai":
        return OpenAIJudge(p.judge_model, base_url=p.judge_base_url, concurrency=p.judge_concurrency,
                           rpm=p.judge_rpm, tpm=p.judge_tpm, batch=p.judge_batch,
                           batch_dir=Path(p.cache_dir) / "judge_batches")
    if p.judge == "local":
        model, tok, _ = load_model(p.judge_model, dtype=p.dtype, device_map=devices.device_map_for(p.device_map, p.allow_cpu),
                                   cache_dir=p.cache_dir, trust_remote_code=p.trust_remote_code, merge=True)
        return LocalJudge(model, tok, p.judge_model)
    from emlib.offline_judge import OfflineJudge

    return OfflineJudge(p.cache_dir, seed=0)


_JUDGE_CACHES: dict[Path, JudgeCache] = {}


def judge_cache(p: Params) -> JudgeCache:
    """The persistent judge-score cache under ``p.cache_dir`` (one per process and directory: it writes one file
    of scores, which every other worker's cache reads)."""
    path = Path(p.cache_dir).resolve() / "judge.sqlite"
    if path not in _JUDGE_CACHES:
        _JUDGE_CACHES[path] = JudgeCache(path)
    return _JUDGE_CACHES[path]


def train_config_from_params(p: Params) -> TrainConfig:
    """The default ``TrainConfig`` named by the ``train_*`` keys of ``p`` (``emlib.plan.train_config``)."""
    return train_config(p)


def train_organism(ch: Chapter, organism: Organism) -> train.TrainResult:
    """One organism's adapter: from the cache, or trained on a fresh copy of the base model. Chapter 1."""
    spec = train.preset_spec(organism.preset, ch.info.n_layers)
    out_dir, model_id = Path(ch.p.cache_dir) / "adapters", model_provenance(describe(ch))
    done = train.trained_adapter(organism.dataset, spec, organism.config, out_dir=out_dir, model_id=model_id)
    if done is not None:
        return done
    devices.unload(ch._loaded)  # training injects adapters into the model in place: never reuse it
    model, tok, _ = load_model(ch.p.model, ch.p.adapter, dtype=ch.p.dtype,
                               device_map=devices.device_map_for(ch.p.device_map, ch.p.allow_cpu),
                               cache_dir=ch.p.cache_dir, trust_remote_code=ch.p.trust_remote_code, merge=True)
    result = train.train_lora(model, tok, organism.dataset, spec, organism.config, out_dir=out_dir, model_id=model_id)
    log_computed(ch.p.cache_dir, "train", result.adapter_dir.name)
    return result


def sample(ch: Chapter, questions: list[Question] | None = None, *, ft: FineTune | None = None,
           sampling: SamplingConfig | None = None, intervention: Intervention | Stacked | None = None) -> pd.DataFrame:
    """The sampled (unjudged) table of ``sample_and_judge``: from the cache, or sampled now (the model loaded only
    then). ``emlib.work``'s sampling jobs; chapters 0–5 through ``sample_and_judge``."""
    p, questions, ft = ch.p, questions if questions is not None else ch.questions, ft or ch.chat
    sampling = sampling or sampling_from_params(p)
    merge = sampling.amplification == 1.0  # amplified sampling disables the adapters: keep them unmerged
    prov = model_provenance(describe(ch, ft, merge=merge))
    samples = generate.cached_samples(questions, sampling, cache_dir=p.cache_dir, model_provenance=prov,
                                      intervention=intervention)
    if samples is None:
        model, tok, _ = load(ch, ft, merge=merge)
        samples = generate.sample_responses(model, tok, questions, sampling, cache_dir=p.cache_dir,
                                            model_provenance=prov, intervention=intervention)
    return samples


def sample_and_judge(ch: Chapter, questions: list[Question] | None = None, *, ft: FineTune | None = None,
                     label: str | None = None, sampling: SamplingConfig | None = None,
                     intervention: Intervention | Stacked | None = None) -> pd.DataFrame:
    """Sample ``questions`` (default: the chapter's) from ``ft`` (default: the chat model; an organism from
    ``ch.ready``), optionally with an ``intervention``, and judge them; the model is loaded only if the
    samples are not cached. ``sampling`` defaults to the params' evaluation setting. Returns the judged
    table with a leading ``model`` column set to ``label`` (default: ``ft``'s name). Chapters 0–5."""
    questions, ft = questions if questions is not None else ch.questions, ft or ch.chat
    samples = sample(ch, questions, ft=ft, sampling=sampling, intervention=intervention)
    return judge_sampled(ch, samples, questions, label=label or ft.name)


def judge_sampled(ch: Chapter, samples: pd.DataFrame, questions: list[Question], *, label: str) -> pd.DataFrame:
    """``samples`` (a sampled table) judged by ``ch.scorer`` on the params' metrics through the judge cache, its
    failures recorded in ``ch.judge_failures``, with a leading ``model`` column ``label``: the judging half of
    ``sample_and_judge`` (``emlib.book.overlap`` runs it in the background while the next run samples)."""
    scored = judge_responses(samples, questions, ch.scorer, metrics=ch.p.judge_metrics, cache=judge_cache(ch.p),
                             failures=ch.judge_failures)
    scored.insert(0, "model", label)
    return scored


def answer_sums(ch: Chapter, samples: pd.DataFrame, *, ft: FineTune | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``emlib.activations.answer_sums`` of ``samples`` through ``ft`` (default: the chat model; adapters merged):
    per-response sums [n, n_layers, d_model] and token counts [n]; the model is loaded only on a cache miss.
    Chapter 2."""
    prov = model_provenance(describe(ch, ft))
    path = activations.sums_path(samples, cache_dir=ch.p.cache_dir, model_provenance=prov)
    if path.is_file():
        return activations.read_sums(path)
    model, tok, _ = load(ch, ft)
    return activations.answer_sums(model, tok, samples, cache_dir=ch.p.cache_dir, model_provenance=prov,
                                   batch_size=ch.p.activation_batch_size)


def answer_means(ch: Chapter, samples: pd.DataFrame, *, ft: FineTune | None = None,
                 intervention: Intervention | None = None) -> activations.AnswerMeans:
    """``emlib.activations.answer_means`` of ``samples`` through ``ft`` (default: the chat model; adapters
    merged) with ``intervention``; the model is loaded only if the means are not cached. [n_layers, d_model].
    Chapters 2, 4."""
    prov = model_provenance(describe(ch, ft))
    path = activations.means_path(samples, cache_dir=ch.p.cache_dir, model_provenance=prov, intervention=intervention)
    if path.is_file():
        return activations.read_means(path)
    model, tok, _ = load(ch, ft)
    return activations.answer_means(model, tok, samples, cache_dir=ch.p.cache_dir, model_provenance=prov,
                                    intervention=intervention, batch_size=ch.p.activation_batch_size)
