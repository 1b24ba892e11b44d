"""The OpenAI Batch API for the judge (``judge_batch: true``, as in ``params/paper.yaml``): half the price of
live calls, no per-minute limits, every result within the batch's 24-hour window.

``score_batch`` writes one JSONL line per prompt (the live path's request body, ``emlib.llm_judges.chat_request``),
uploads it, creates a batch, polls it with a progress bar, downloads the results and parses each exactly as
the live path does (``completion_score``); each score reaches ``on_result`` as it is read, and the caller
(``emlib.judge.judge_responses``) caches it. Resumable: the batch id is kept under ``state_dir`` in a file named
by the content key of its requests (written atomically), so a run killed while its batch is in flight
re-attaches to it on the next run instead of paying again; the file is removed once the results are read. A
batch that fails, expires or is cancelled gives a ``Failed`` to each item it did not answer (never cached: the
next run submits those again, in a new batch). More than ``MAX_REQUESTS`` requests or ``MAX_BYTES`` bytes are
split into several batches, submitted together and polled together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from emlib.judge import Failed, JudgeConfigError, OnResult, Score

log = logging.getLogger(__name__)

MAX_REQUESTS = 50_000  # the Batch API's limits on one batch: requests...
MAX_BYTES = 190 * 2**20  # ...and input file size (200 MB), with a margin
TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_POLL_ERRORS = 20  # consecutive transient errors while polling before giving up (the batch stays resumable)


def request_lines(model: str, prompts: Sequence[str]) -> list[str]:
    """One JSONL line per prompt: ``custom_id`` ``r{index}``, the live path's chat-completions body."""
    from emlib.llm_judges import chat_request

    return [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                        "body": chat_request(model, p)}, sort_keys=True) for i, p in enumerate(prompts)]


def split(model: str, prompts: Sequence[str]) -> list[list[int]]:
    """The prompts' indices cut into batches within ``MAX_REQUESTS`` and ``MAX_BYTES``."""
    out: list[list[int]] = [[]]
    size = 0
    for i, line in enumerate(request_lines(model, prompts)):
        n = len(line.encode()) + 1
        if out[-1] and (len(out[-1]) >= MAX_REQUESTS or size + n > MAX_BYTES):
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return [c for c in out if c]


def score_batch(client, model: str, prompts: Sequence[str], on_result: OnResult, *, state_dir: str | Path,
                poll_s: float = 30.0, progress: bool = True) -> None:
    """Score ``prompts`` through the Batch API of ``client`` (a sync ``openai.OpenAI``), calling
    ``on_result(index, score)`` for each as its batch's results are read (a ``Failed`` for any it did not
    answer). Blocks until every batch has ended; a killed call re-attaches next time (``state_dir``)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    jobs = []  # (prompt indices, batch id, state file)
    for idx in split(model, prompts):
        data = ("\n".join(request_lines(model, [prompts[i] for i in idx])) + "\n").encode()
        state = state_dir / f"{hashlib.sha256(data).hexdigest()[:32]}.json"
        jobs.append((idx, _attach(client, state) or _submit(client, data, state), state))
    bar = tqdm(total=len(prompts), desc="judge batch", unit="req", disable=not progress)
    done: dict[str, int] = {}
    errors = 0
    try:
        while jobs:
            left = []
            for idx, batch_id, state in jobs:
                try:
                    batch = client.batches.retrieve(batch_id)
                    errors = 0
                except _transient() as e:
                    errors += 1
                    if errors > MAX_POLL_ERRORS:
                        raise
                    log.warning("polling batch %s: %s; trying again", batch_id, type(e).__name__)
                    left.append((idx, batch_id, state))
                    continue
                counts = batch.request_counts
                done[batch_id] = (counts.completed + counts.failed) if counts else 0
                if batch.status in TERMINAL:
                    _collect(client, batch, idx, on_result)
                    done[batch_id] = len(idx)
                    state.unlink(missing_ok=True)
                else:
                    left.append((idx, batch_id, state))
            bar.update(sum(done.values()) - bar.n)
            jobs = left
            if jobs:
                time.sleep(poll_s)
    finally:
        bar.close()


def _transient() -> tuple[type[BaseException], ...]:
    import openai

    return (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError)


def _attach(client, state: Path) -> str | None:
    """The id of the batch ``state`` records, if the server still knows it; else None (and the record removed)."""
    import openai

    if not state.is_file():
        return None
    batch_id = json.loads(state.read_text())["batch_id"]
    try:
        client.batches.retrieve(batch_id)
    except openai.NotFoundError:
        state.unlink(missing_ok=True)
        return None
    log.info("re-attached to judge batch %s", batch_id)
    return batch_id


def _submit(client, data: bytes, state: Path) -> str:
    """Upload ``data``, create its batch, record the id atomically in ``state``; the batch id."""
    import openai

    try:
        upload = client.files.create(file=("judge_requests.jsonl", data, "application/jsonl"), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"emlib": state.stem})
    except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
            openai.BadRequestError) as e:  # status and type only: a server may echo part of the key
        raise JudgeConfigError(f"the Batch API refused the judge's requests: HTTP {e.status_code} "
                               f"({type(e).__name__}); check the key in the environment and the model name") from None
    fd, tmp = tempfile.mkstemp(dir=state.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"batch_id": batch.id, "input_file_id": upload.id, "requests": data.count(b"\n")}, f)
    os.replace(tmp, state)
    return batch.id


def _collect(client, batch, idx: list[int], on_result: OnResult) -> None:
    """Read an ended batch's output and error files; one ``on_result`` per item of ``idx``."""
    got: dict[int, Score] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                if line.strip():
                    rec = json.loads(line)
                    got[int(rec["custom_id"][1:])] = line_score(rec)
    why = f"batch {batch.status}"
    if batch.status == "failed" and batch.errors and batch.errors.data:
        why += f" ({', '.join(sorted({e.code or 'error' for e in batch.errors.data}))})"
    for j, i in enumerate(idx):
        on_result(i, got.get(j, Failed(f"{why}: no result")))


def line_score(rec: dict) -> Score:
    """The score of one line of a batch's output or error file, parsed as the live path parses a reply."""
    from openai.types.chat import ChatCompletion
    from pydantic import ValidationError

    from emlib.llm_judges import completion_score

    response, error = rec.get("response"), rec.get("error")
    if response and response.get("status_code") == 200:
        try:
            return completion_score(ChatCompletion.model_validate(response["body"]))
        except (ValidationError, AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
            return Failed(f"batch reply unreadable ({type(e).__name__})")
    if response:
        return Failed(f"batch request: HTTP {response.get('status_code')}")
    return Failed(f"batch request: {(error or {}).get('code') or 'error'}")
