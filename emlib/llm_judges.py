"""The LLM judges behind ``emlib.judge``'s interface (chapters 00–05 with ``judge: openai`` or ``local``).

- ``OpenAIJudge``: the paper's judge on any OpenAI-compatible server (OpenAI, Azure
  OpenAI, vLLM, llama.cpp, Ollama): one completion token at temperature 0, the top-20
  log-probabilities, and the probability-weighted mean over tokens that are the integers
  0–100 (``emlib.judge.aggregate_logprobs``). Async with bounded concurrency, paced by
  requests- and tokens-per-minute buckets (``emlib.ratelimit``); retries 429, 5xx, timeouts
  and malformed replies, waiting what a ``Retry-After`` / ``retry-after-ms`` header asks
  (every request held that long), else exponential backoff with jitter; an authentication
  or model-name error stops the run at once. Or, with ``batch=True``, the OpenAI Batch API
  (``emlib.judge_batch``). The key comes only from the environment.
- ``LocalJudge``: any local chat model with the same prompts, scoring the distribution
  over the whole numbers 0–100 from the log-probability of each number's *full* token
  sequence (plus the end-of-turn token), so digit-splitting tokenizers score correctly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from emlib.judge import (
    Failed,
    JudgeConfigError,
    JudgeItem,
    OnResult,
    Score,
    aggregate_logprobs,
    number_distribution_score,
)
from emlib.models import base_model
from emlib.ratelimit import RateLimiter, estimate_tokens, retry_after_seconds


def _run_coroutine(coro_factory: Callable[[], object]) -> object:
    """Run an async job to completion from sync code, also inside Jupyter's running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()


class OpenAIJudge:
    """The paper's logprob judge on an OpenAI-compatible chat-completions endpoint.

    ``base_url``: None for OpenAI itself (or Azure, when ``AZURE_OPENAI_ENDPOINT`` is set),
    else any compatible server. The key is read from ``OPENAI_API_KEY`` (Azure:
    ``AZURE_OPENAI_API_KEY``) and never stored in results, messages or logs.

    ``concurrency`` caps the requests in flight; ``rpm`` / ``tpm`` (None: unbounded) the pace at which
    they start, shared by every call of this judge (threads included). A ``Retry-After`` wait is capped
    at ``max_retry_after`` seconds. ``batch``: score through the Batch API instead, its in-flight batch
    ids kept under ``batch_dir`` (required then), polled every ``batch_poll_s`` seconds.
    """

    backend = "openai"
    metrics = None

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        concurrency: int = 16,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retry_after: float = 120.0,
        rpm: int | None = None,
        tpm: int | None = None,
        batch: bool = False,
        batch_dir: str | Path | None = None,
        batch_poll_s: float = 30.0,
    ):
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.model_name = model  # what the server is asked for
        self.model = f"{model}@{self.base_url}" if self.base_url else model  # identity in the cache
        self.azure_endpoint = None if self.base_url else os.environ.get("AZURE_OPENAI_ENDPOINT")
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.backoff, self.max_backoff, self.max_retry_after = backoff, max_backoff, max_retry_after
        self.limiter = RateLimiter(rpm, tpm)
        if batch and batch_dir is None:
            raise JudgeConfigError("the batch judge needs a batch_dir to keep its in-flight batch ids in")
        self.batch, self.batch_poll_s = batch, batch_poll_s
        self.batch_dir = None if batch_dir is None else Path(batch_dir)
        key_var = "AZURE_OPENAI_API_KEY" if self.azure_endpoint else "OPENAI_API_KEY"
        self._key = os.environ.get(key_var)
        if not self._key and not self.base_url:
            raise JudgeConfigError(
                f"the 'openai' judge needs {key_var} in the environment (or a base_url for a local "
                "OpenAI-compatible server); without one, use judge: offline"
            )

    def _client(self, sync: bool = False):
        import openai

        if self.azure_endpoint:
            return (openai.AzureOpenAI if sync else openai.AsyncAzureOpenAI)(
                azure_endpoint=self.azure_endpoint,
                api_key=self._key,
                api_version=os.environ.get("OPENAI_API_VERSION", "2024-10-21"),
                max_retries=0,
                timeout=self.timeout,
            )
        return (openai.OpenAI if sync else openai.AsyncOpenAI)(
            api_key=self._key or "not-needed", base_url=self.base_url, max_retries=0, timeout=self.timeout
        )

    def _where(self) -> str:
        return self.base_url or self.azure_endpoint or "api.openai.com"

    async def _score_one(self, client, prompt: str) -> Score:
        import openai

        fatal = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError, openai.BadRequestError)
        last, tokens = "no attempt", estimate_tokens(prompt)
        for attempt in range(self.max_retries + 1):
            wait = None
            await self.limiter.acquire(tokens)
            try:
                reply = await client.chat.completions.create(**chat_request(self.model_name, prompt))
                return completion_score(reply)
            except fatal as e:
                # the status and error type only: servers echo parts of a bad key in messages
                raise JudgeConfigError(
                    f"judge server {self._where()} refused model {self.model_name!r}: HTTP {e.status_code} "
                    f"({type(e).__name__}); check the key in the environment and the model name"
                ) from None
            except openai.APIStatusError as e:
                last = f"HTTP {e.status_code} {type(e).__name__}"
                wait = retry_after_seconds(e.response.headers)
            except (openai.APIError, AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
                last = type(e).__name__
            if wait:  # the server said when (a Retry-After of 0: the backoff): every request of this judge waits
                self.limiter.hold(min(wait, self.max_retry_after))
            elif attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter
        return Failed(f"gave up after {self.max_retries + 1} attempts (last: {last})")

    async def _score_all(self, prompts: Sequence[str], on_result: OnResult) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        client = self._client()

        async def one(i: int, prompt: str) -> None:
            async with sem:
                score = await self._score_one(client, prompt)
            on_result(i, score)

        try:
            tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(prompts)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                raise
        finally:
            await client.close()

    def check(self) -> None:
        """One tiny request: surfaces a bad key, a wrong model name or a server without logprobs."""
        got: list[Score] = []
        _run_coroutine(lambda: self._score_all(["Reply with the number 50 and nothing else."], lambda i, s: got.append(s)))
        if isinstance(got[0], Failed):
            raise JudgeConfigError(f"judge server {self._where()} did not answer a test request: {got[0].reason}")

    def score_items(self, items: Sequence[JudgeItem], on_result: OnResult) -> None:
        if self.batch:
            from emlib.judge_batch import score_batch

            with self._client(sync=True) as client:
                score_batch(client, self.model_name, [it.prompt for it in items], on_result,
                            state_dir=self.batch_dir, poll_s=self.batch_poll_s)
            return
        _run_coroutine(lambda: self._score_all([it.prompt for it in items], on_result))


def chat_request(model: str, prompt: str) -> dict:
    """The judge's chat-completions request body: one token at temperature 0 with the top-20 logprobs."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": 20, "seed": 0}


def completion_score(reply) -> float | None:
    """The score of a chat completion (``openai.types.chat.ChatCompletion``; live or from a batch's output)."""
    top = reply.choices[0].logprobs.content[0].top_logprobs
    return aggregate_logprobs({t.token: t.logprob for t in top})


# --------------------------------------------------------------------------- local


class LocalJudge:
    """A local Hugging Face chat model as judge, scoring whole numbers 0–100.

    For each prompt, log p(n) = log p(tokens(str(n)) + end-of-turn | prompt) for every
    n in 0..100: the prompt is prefilled once, its KV cache copied to 101 rows, and the
    number continuations scored in one batched forward pass.
    """

    backend = "local"
    metrics = None

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, name: str):
        self.lm, self.tok, self.model = base_model(model), tokenizer, name
        end = tokenizer.eos_token_id
        if end is None:
            raise JudgeConfigError(f"judge tokenizer of {name!r} has no end-of-turn (EOS) token")
        self.sequences = [tokenizer(str(n), add_special_tokens=False)["input_ids"] + [end] for n in range(101)]

    def check(self) -> None:
        return None

    @torch.inference_mode()
    def number_logprobs(self, prompt: str) -> dict[int, float]:
        """``{n: log p(n as a complete answer | prompt)}`` for n = 0..100."""
        device = self.lm.get_input_embeddings().weight.device
        text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.tok(text, add_special_tokens=False)["input_ids"]], device=device)
        cache = DynamicCache(config=self.lm.config.get_text_config(decoder=True))
        first = self.lm(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        n_seq, width = len(self.sequences), max(len(s) for s in self.sequences)
        cont = torch.zeros((n_seq, width - 1), dtype=torch.long, device=device)
        for i, s in enumerate(self.sequences):
            cont[i, : len(s) - 1] = torch.tensor(s[:-1])
        cache.batch_select_indices(torch.zeros(n_seq, dtype=torch.long, device=device))
        length = ids.shape[1]
        mask = torch.ones((n_seq, length + width - 1), dtype=torch.long, device=device)
        pos = torch.arange(length, length + width - 1, device=device).expand(n_seq, -1)
        logp = self.lm(input_ids=cont, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True).logits.float().log_softmax(-1)
        out = {}
        for n, s in enumerate(self.sequences):
            total = first[s[0]].item()
            for k in range(1, len(s)):
                total += logp[n, k - 1, s[k]].item()
            out[n] = total
        return out

    def score_items(self, items: Sequence[JudgeItem], on_result: OnResult) -> None:
        for i, it in enumerate(items):
            on_result(i, number_distribution_score(self.number_logprobs(it.prompt)))
