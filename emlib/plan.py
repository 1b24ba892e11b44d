"""The plan: every unit of work the book needs, from the params alone (no model, no weights).

``python -m emlib.plan PARAMS`` lists each job — a training run, a sampling run (with its intervention), an
activation pass, a judge batch — with its content key, the jobs it depends on, its size (answers, tokens decoded,
teacher-forced tokens, judge calls and judge input tokens) and whether a worker has done it (``emlib.work``); then
totals, and the hours and judge cost those sizes take at the throughputs measured in ``bench/`` (``THROUGHPUTS``).
``emlib.work`` runs the same jobs, one at a time or sharded over workers; ``book/full_scale.md`` quotes this output.

The jobs mirror what the chapters compute on a cache miss, in the book's order (chapter 1 trains and evaluates,
chapter 2 extracts and steers, chapter 3 ablates, chapter 4 reads activations; chapters 0 and 5 reuse these runs),
so a cold ``make book`` computes exactly these units (each appends a line to ``cache_dir/jobs/log.jsonl``:
``emlib.cache.log_computed``), beside one that is not here: chapter 4's LoRA-scalar pass over the probe sets
(teacher-forced, cached by content, ``emlib.probes.response_features``), whose rows the judge's labels choose, so the
chapter computes it as it renders. Sizes are upper bounds where the
run decides: tokens decoded assume every answer runs to its length limit (rows that end early decode less),
prompts are estimated at ``PROMPT_TOKENS`` a question, a token at ``CHARS_PER_TOKEN`` characters; the cross-model
passes of chapter 2 run only where both of a pair's direction sets are non-empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from emlib.cache import content_key
from emlib.config import Params, headline_cell, load_params, parse_overrides, steering_layers
from emlib.data import BUILTIN_MEDICAL_QUESTIONS, Question, dataset_path, load_chat_jsonl, load_questions
from emlib.organisms import Organism, TrainConfig, organisms

CHARS_PER_TOKEN = 4  # a token is about four characters of English (judge prompts, training rows)
PROMPT_TOKENS = 40  # chat template and question, per answer (the questions are one or two sentences)
KINDS = ("train", "sample", "judge", "activations")
# params that change where or how fast results are computed, never what they are: not in a job's key
NOT_IN_KEYS = ("cache_dir", "threads", "allow_cpu", "judge_concurrency", "judge_rpm", "judge_tpm", "judge_batch",
               "activation_batch_size")
THROUGHPUTS = Path(__file__).resolve().parent.parent / "bench" / "throughputs.json"


@dataclass(frozen=True)
class Job:
    """One unit of work. ``key``: a content key of what determines its result (its params and its dependencies'
    keys); ``target``: what ``emlib.work`` calls to run it (``kind`` and the arguments naming the run)."""

    key: str
    kind: str  # train | sample | judge | activations
    name: str
    chapter: int
    target: tuple[Any, ...]
    deps: tuple[str, ...] = ()
    answers: int = 0
    tokens_decoded: int = 0  # model evaluations of one token while decoding (amplified: two per token)
    forward_tokens: int = 0  # teacher-forced tokens (activation passes; training: tokens per epoch x epochs)
    judge_calls: int = 0  # one per answer and metric (the offline judge: local)
    judge_input_tokens: int = 0
    api: bool = False  # judge calls that go to a server (openai)


@dataclass(frozen=True)
class Run:
    """A sampling run as the chapters name it: which model, questions and setting, and under what intervention."""

    model: str  # "chat model" or an organism's name
    questions: str  # "evaluation" | "medical"
    samples_per_question: int
    max_new_tokens: int
    amplification: float = 1.0
    intervention: str = "none"  # e.g. "steer direction L15 x2", "units: steering (41)"


def questions_named(p: Params, which: str) -> list[Question]:
    """The questions a run answers: "evaluation" (the params' questions) or "medical" (this project's eight medical
    questions: chapter 2's topic set, and the interventions when ``intervention_questions: medical``)."""
    return load_questions(p.questions, p.include_variants) if which == "evaluation" else \
        load_questions(BUILTIN_MEDICAL_QUESTIONS)


def _judge_tokens(questions: Sequence[Question], metrics: Sequence[str], answer_tokens: int) -> int:
    """Judge input tokens of one answer to each of ``questions`` on ``metrics`` (an answer of ``answer_tokens``)."""
    per_q = [sum(len(q.judge_prompts[m]) + len(q.paraphrases[0]) for m in metrics) / CHARS_PER_TOKEN
             + answer_tokens * len(metrics) for q in questions]
    return round(sum(per_q) / max(len(per_q), 1))


def train_tokens(o: Organism, p: Params) -> tuple[int, int]:
    """(rows, tokens) one epoch of ``o``'s training reads: rows capped by ``max_rows``, each row's characters
    over ``CHARS_PER_TOKEN``, capped at ``train_max_length``; (0, 0) when the dataset file is not here."""
    try:
        rows = load_chat_jsonl(dataset_path(o.dataset))
    except (OSError, ValueError):
        return 0, 0
    if o.config.max_rows is not None:
        rows = rows[: o.config.max_rows]
    chars = [sum(len(m["content"]) for m in r) for r in rows]
    return len(rows), sum(min(c // CHARS_PER_TOKEN + 10, o.config.max_length) for c in chars)


@dataclass
class _Builder:
    p: Params
    jobs: list[Job] = field(default_factory=list)

    def add(self, job: Job) -> str:
        """Add ``job`` unless a job of the same key is in (a run two chapters share is one job)."""
        if all(j.key != job.key for j in self.jobs):
            self.jobs.append(job)
        return job.key

    def key(self, *parts: Any) -> str:
        """A job's key: what names it and every param but those that cannot change a result (``NOT_IN_KEYS``): a
        changed param gives every job a new key (work runs them again, each from the cache where its inputs are
        unchanged). Its dependencies are determined by the same params."""
        params = {k: v for k, v in asdict(self.p).items() if k not in NOT_IN_KEYS}
        return content_key({"parts": parts, "params": params})

    def sample(self, run: Run, chapter: int, deps: tuple[str, ...], qs: Sequence[Question], *,
               extraction: bool = False) -> tuple[str, ...]:
        """A sampling run and its judge batch; an extraction also has the set judge's batch (offline judge) and
        an activation pass through its model. Returns the keys of all of them (what uses the run depends on)."""
        p = self.p
        n = len(qs) * run.samples_per_question
        key = self.add(Job(self.key("sample", asdict(run)), "sample", _run_name(run), chapter,
                           ("sample", asdict(run)), deps, answers=n,
                           tokens_decoded=n * run.max_new_tokens * (2 if run.amplification != 1.0 else 1)))
        done = [key]
        judges = [("judge", p.judge == "openai")] + ([("set judge", False)] if extraction and p.judge == "offline" else [])
        for which, api in judges:  # the set judge's job reads the judged table: after the judge's
            done.append(self.add(Job(self.key(which, key), "judge", f"{which}: {_run_name(run)}", chapter,
                                     (which, asdict(run)), tuple(done[:2]), answers=n, judge_calls=n * len(p.judge_metrics),
                                     judge_input_tokens=n * _judge_tokens(qs, p.judge_metrics, run.max_new_tokens),
                                     api=api)))
        if extraction:
            done.append(self.activations(run, run.model, chapter, (key,), n))
        return tuple(done)

    def activations(self, run: Run, through: str, chapter: int, deps: tuple[str, ...], n: int,
                    what: str = "sums") -> str:
        """A teacher-forced pass over ``n`` of ``run``'s answers through ``through`` (a model, or the chat model
        under a steering vector): per-answer sums (chapter 2) or answer-token means (chapter 4)."""
        return self.add(Job(self.key("activations", what, asdict(run), through, n), "activations",
                            f"activations ({what}) of {n} answers of {_run_name(run)} through {through}", chapter,
                            ("activations", what, asdict(run), through, n), deps,
                            answers=n, forward_tokens=n * (PROMPT_TOKENS + run.max_new_tokens)))


def _run_name(run: Run) -> str:
    amp = f", α = {run.amplification:g}" if run.amplification != 1.0 else ""
    what = "" if run.intervention == "none" else f", {run.intervention}"
    return (f"{run.model} on the {run.questions} questions, {run.samples_per_question}/question × "
            f"{run.max_new_tokens} tokens{amp}{what}")


def n_gaussian(p: Params) -> int:
    """Gaussian random vectors per quoted cell: ``gaussian_controls``, or as many as ``random_controls``. Chapters 2
    and 3."""
    return p.random_controls if p.gaussian_controls is None else p.gaussian_controls


def n_transfer(p: Params, gaussian: bool) -> int:
    """Random vectors of one kind (anisotropy-matched, or ``gaussian``) ablated in each transfer target: at most
    ``transfer_random_controls`` anisotropy-matched ones (None: as many as in the direction organism) and
    ``transfer_gaussian_controls`` Gaussian ones (None: as many as the anisotropy-matched ones, at most the direction
    organism's). Chapter 3 (``emlib.book.transfer_ablation.n_controls``)."""
    most, cap = (p.random_controls, p.transfer_random_controls)
    if gaussian:
        most, cap = n_gaussian(p), cap if p.transfer_gaussian_controls is None else p.transfer_gaussian_controls
    return most if cap is None else min(cap, most)


def train_config(p: Params) -> TrainConfig:
    """The organisms' default ``TrainConfig``, named by the ``train_*`` keys of ``p``. Chapter 1 and the plan."""
    return TrainConfig(lr=p.train_lr, epochs=p.train_epochs, batch_size=p.train_batch_size,
                       grad_accum=p.train_grad_accum, warmup_steps=p.train_warmup_steps,
                       max_length=p.train_max_length, max_rows=p.train_max_rows, seed=p.seed)


def plan(p: Params, n_layers: int) -> list[Job]:
    """Every job the book runs on ``p`` for a model of ``n_layers`` blocks, in the book's order, dependencies
    first; a run two chapters share (the unsteered chat model of chapters 2 and 3) appears once."""
    b = _Builder(p)
    general, medical = questions_named(p, "evaluation"), questions_named(p, "medical")
    by_name = {"evaluation": general, "medical": medical}
    orgs = organisms(p.organisms, train_config(p), read_datasets=False)
    ready: dict[str, tuple[str, ...]] = {"chat model": ()}
    for o in orgs:  # chapter 1: training
        ready[o.name] = ()
        if o.kind == "trained":
            rows, tokens = train_tokens(o, p)
            ready[o.name] = (b.add(Job(b.key("train", o.name, o.preset, str(o.dataset), asdict(o.config)), "train",
                                       f"train {o.name} ({o.preset} on {Path(str(o.dataset)).name}, {rows} rows)", 1,
                                       ("train", o.name), forward_tokens=tokens * o.config.epochs)),)
    for m in ["chat model", *(o.name for o in orgs)]:  # chapters 0 and 1: the evaluation runs
        b.sample(Run(m, "evaluation", p.samples_per_question, p.max_new_tokens), 1 if m != "chat model" else 0,
                 ready[m], general)
    # chapter 2: the extraction sets (sampled, judged by both judges, one activation pass each)
    compare_n = p.compare_samples_per_question or p.direction_samples_per_question
    ext = {}
    for name, qs, n in ([(p.direction_organism, "evaluation", p.direction_samples_per_question)]
                        + [(c, "evaluation", compare_n) for c in p.compare_organisms]
                        + [(p.direction_organism, "medical", compare_n)]):
        run = Run(name, qs, n, p.intervention_max_new_tokens, p.direction_amplification)
        ext[(name, qs)] = (run, b.sample(run, 2, ready[name], by_name[qs], extraction=True))
    source_run, source = ext[(p.direction_organism, "evaluation")]
    for c in p.compare_organisms:  # the cross-model control: a compared set's texts through two other models
        run, done = ext[(c, "evaluation")]
        for through in ("chat model", p.direction_organism):
            b.activations(run, through, 2, tuple(dict.fromkeys(done + ready[through])),
                          len(general) * run.samples_per_question)
    # chapter 2: steering on the intervention questions (the headline, the sweep, the rank test's stacked units)
    iq, where, t = by_name[p.intervention_questions], p.intervention_questions, p.intervention_max_new_tokens
    layer, scale = headline_cell(p, n_layers)
    hn = p.headline_samples_per_question
    b.sample(Run("chat model", where, hn, t), 2, (), iq)
    b.sample(Run("chat model", where, hn, t, intervention=f"steer direction L{layer} x{scale:g}"), 2, source, iq)
    for lay in steering_layers(p, n_layers):
        for s in p.steer_scales:
            if (lay, s) != (layer, scale):
                b.sample(Run("chat model", where, p.steer_samples_per_question, t,
                             intervention=f"steer direction L{lay} x{s:g}"), 2, source, iq)
    units = 1 + p.random_controls + n_gaussian(p)
    b.sample(Run("chat model", where, units * p.control_samples_per_question, t,
                 intervention=f"stacked steering units ({units}) L{layer} x{scale:g}"), 2, source, iq)
    # chapter 3: ablation in the direction organism and every compared one
    for m in [p.direction_organism, *p.compare_organisms]:
        deps = tuple(dict.fromkeys(source + ready[m]))
        for arm in ["none", "single"] + (["layer-wise"] if m == p.direction_organism else []):
            b.sample(Run(m, where, p.ablation_samples_per_question, t,
                         intervention="none" if arm == "none" else f"ablate {arm}"), 3, ready[m] if arm == "none"
                     else deps, iq)
        units = 1 + (p.random_controls + n_gaussian(p) if m == p.direction_organism else
                     n_transfer(p, False) + n_transfer(p, True))
        b.sample(Run(m, where, units * p.control_samples_per_question, t,
                     intervention=f"stacked ablation units ({units})"), 3, deps, iq)
    # chapter 4: the induced-change geometry (teacher-forced passes over a sample of the source's answers)
    n_geo = len(general) * p.direction_samples_per_question
    n_geo = n_geo if p.geometry_answers is None else min(p.geometry_answers, n_geo)
    for through in ["chat model", p.direction_organism, "chat model steered by the direction",
                    *(f"chat model steered by random vector {i}" for i in range(p.geometry_random_vectors))]:
        b.activations(source_run, through, 4, tuple(dict.fromkeys(source + ready.get(through, ()))), n_geo,
                      what="means")
    return b.jobs


@dataclass(frozen=True)
class Totals:
    """Sums over a plan's jobs: answers counted once, at their sampling run."""

    jobs: int
    by_kind: dict[str, int]
    answers_sampled: int
    tokens_decoded: int
    forward_tokens: int  # activation passes
    train_tokens: int
    judge_calls: int
    judge_api_calls: int
    judge_api_input_tokens: int


def totals(jobs: Sequence[Job]) -> Totals:
    """The plan's totals."""
    return Totals(len(jobs), {k: sum(j.kind == k for j in jobs) for k in KINDS},
                  sum(j.answers for j in jobs if j.kind == "sample"), sum(j.tokens_decoded for j in jobs),
                  sum(j.forward_tokens for j in jobs if j.kind == "activations"),
                  sum(j.forward_tokens for j in jobs if j.kind == "train"), sum(j.judge_calls for j in jobs),
                  sum(j.judge_calls for j in jobs if j.api), sum(j.judge_input_tokens for j in jobs if j.api))


@dataclass(frozen=True)
class Throughput:
    """Measured rates of one model on one machine (``bench/throughputs.json``; the bench script named in
    ``source`` wrote them)."""

    machine: str
    decode_tokens_per_s: float
    forward_tokens_per_s: float
    train_tokens_per_s: float
    source: str


def throughput(model: str, path: Path = THROUGHPUTS) -> Throughput | None:
    """The measured throughput for ``model`` ("default" or a hub id), or None if ``bench/`` has not measured it."""
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(model)
    return None if entry is None else Throughput(**entry)


# GPT-4o (gpt-4o-2024-08-06) list prices in US dollars per million tokens; the Batch API halves both.
JUDGE_PRICE_INPUT, JUDGE_PRICE_OUTPUT = 2.50, 10.00


def estimate(t: Totals, rate: Throughput | None, *, batch_api: bool = False) -> dict[str, float | None]:
    """Device hours of the plan's decoding, activation passes and training at ``rate`` (None: not measured), and
    the judge's cost in dollars at list prices (one output token a call)."""
    price = (t.judge_api_input_tokens * JUDGE_PRICE_INPUT + t.judge_api_calls * JUDGE_PRICE_OUTPUT) / 1e6
    hours = None
    if rate is not None:
        hours = (t.tokens_decoded / rate.decode_tokens_per_s + t.forward_tokens / rate.forward_tokens_per_s
                 + t.train_tokens / rate.train_tokens_per_s) / 3600
    return {"device_hours": hours, "judge_dollars": price / 2 if batch_api else price}


def n_layers_of(p: Params) -> int:
    """The model's block count, from its config (no weights; the default model's config is converted once)."""
    from emlib.models import describe_model

    return describe_model(p.model, p.adapter, dtype=p.dtype, cache_dir=p.cache_dir,
                          trust_remote_code=p.trust_remote_code).n_layers


def show(jobs: Sequence[Job], done: set[str], p: Params, out=sys.stdout) -> None:
    """Print the plan: one line a job, then totals and the estimate."""
    for i, j in enumerate(jobs):
        size = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k in ("answers", "tokens_decoded", "forward_tokens",
                                                                   "judge_calls", "judge_input_tokens")
                         if (v := getattr(j, k)) and not (k == "answers" and j.kind != "sample"))
        print(f"{i:3d} {j.key} {'done' if j.key in done else 'todo'} ch{j.chapter} {j.kind:11s} {j.name}"
              f"{f' [{size}]' if size else ''}{f' after {len(j.deps)}' if j.deps else ''}", file=out)
    t = totals(jobs)
    print(f"\n{t.jobs} jobs ({', '.join(f'{v} {k}' for k, v in t.by_kind.items())}), {sum(j.key in done for j in jobs)}"
          f" done; {t.answers_sampled:,} answers sampled, {t.tokens_decoded:,} tokens decoded (at most), "
          f"{t.forward_tokens:,} teacher-forced tokens, {t.train_tokens:,} training tokens; {t.judge_calls:,} judge "
          f"calls ({t.judge_api_calls:,} to a server, {t.judge_api_input_tokens:,} input tokens)", file=out)
    rate = throughput(p.model)
    e = estimate(t, rate, batch_api=p.judge_batch)
    hours = (f"{e['device_hours']:.2f} device hours on {rate.machine} ({rate.source})" if rate is not None else
             f"device hours: not measured for {p.model} (bench/throughputs.json has no entry)")
    batch = p.judge_batch
    print(f"estimate: {hours}; judge ${e['judge_dollars']:,.0f} at list prices"
          f"{' through the Batch API (half)' if batch else ''}", file=out)


def main(argv: list[str] | None = None) -> int:
    """``python -m emlib.plan PARAMS [--json FILE]``: the plan of ``PARAMS``."""
    from emlib.work import done_keys

    ap = argparse.ArgumentParser(prog="python -m emlib.plan", description=__doc__.splitlines()[0])
    ap.add_argument("params")
    ap.add_argument("--json", help="also write the jobs and totals as JSON here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param (VALUE read as YAML), e.g. --set samples_per_question=25")
    ap.add_argument("--layers", type=int, help="the model's block count, when its config cannot be read here")
    a = ap.parse_args(argv)
    overrides = parse_overrides(a.set)
    p = load_params(a.params, overrides)
    try:
        n_layers = a.layers or n_layers_of(p)
    except OSError as e:
        raise SystemExit(f"error: cannot read {p.model}'s config here ({type(e).__name__}); pass --layers "
                         "(Qwen2.5-14B-Instruct: 48)") from None
    jobs = plan(p, n_layers)
    show(jobs, done_keys(p.cache_dir), p)
    if a.json:
        Path(a.json).write_text(json.dumps({"jobs": [asdict(j) for j in jobs], "totals": asdict(totals(jobs))},
                                           indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
