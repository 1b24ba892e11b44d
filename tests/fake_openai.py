"""A loopback HTTP server that speaks the chat-completions API with logprobs, with faults
injected on demand. Used by test_judge.py and bench/bench_judge.py.

The prompt steers the reply:
- ``SCORE=NN``: top logprobs 0.7 on "NN", 0.2 on "NN+10" (capped at 100), 0.1 on "foo";
- ``REFUSE``: 0.9 on "REFUSAL" (the score must come out missing);
- ``FAIL429xK`` / ``FAIL500xK`` / ``SLOWxK`` / ``MALFORMEDxK``: the first K attempts at this
  prompt get a 429, a 500, a reply slower than the client's timeout, or a broken body;
- ``RETRYAFTER=S`` / ``RETRYAFTERMS=MS``: those 429s carry ``Retry-After: S`` / ``retry-after-ms: MS``.
Every request's arrival time (``time.monotonic``) is kept, per prompt in ``arrivals``.

The Batch API's minimum (``files`` upload and content, ``batches`` create and retrieve): a batch is
``in_progress`` for ``batch_polls`` retrievals, then ends as ``batch_outcome``: "completed" (every line
answered as a live call would be), "expired" (lines whose prompt holds ``LATE`` unanswered, code
``batch_expired``) or "failed" (nothing answered).
The key "bad-key" gets a 401 whose message echoes part of the key; model "no-such-model" a 404.
"""

from __future__ import annotations

import email
import email.policy
import http.server
import json
import math
import re
import threading
import time
from collections import Counter


def expected_score(nn: int) -> float:
    hi = min(nn + 10, 100)
    return (0.7 * nn + 0.2 * hi) / 0.9 if hi != nn else nn


class FakeOpenAI:
    def __init__(self, latency: float = 0.0, slow_seconds: float = 2.0):
        self.latency, self.slow_seconds = latency, slow_seconds
        self.attempts: Counter[str] = Counter()
        self.requests = 0
        self.arrivals: dict[str, list[float]] = {}
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls, self.batch_outcome = 2, "completed"
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                status, body = server.get(self.path)
                self._send(status, body, "application/octet-stream" if self.path.endswith("/content") else
                           "application/json")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/files"):
                    return self._send(*server.upload(self.headers.get("Content-Type", ""), raw))
                if self.path.endswith("/batches"):
                    return self._send(*server.create_batch(json.loads(raw)))
                status, body, *extra = server.handle(self.headers.get("Authorization", ""), json.loads(raw))
                try:
                    self._send(status, body, headers=extra[0] if extra else None)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, auth: str, req: dict) -> tuple:
        """(status, body) or (status, body, headers) for one chat-completions request."""
        prompt = req["messages"][-1]["content"]
        with self._lock:
            self.requests += 1
            self.attempts[prompt] += 1
            self.arrivals.setdefault(prompt, []).append(time.monotonic())
            attempt = self.attempts[prompt]
        if self.latency:
            time.sleep(self.latency)
        if auth.endswith("bad-key"):
            err = {"error": {"message": "Incorrect API key provided: bad-***key.", "type": "invalid_request_error",
                             "code": "invalid_api_key"}}
            return 401, json.dumps(err).encode()
        if req.get("model") == "no-such-model":
            return 404, json.dumps({"error": {"message": "The model does not exist", "code": "model_not_found"}}).encode()
        for kind, k in re.findall(r"(FAIL429|FAIL500|SLOW|MALFORMED)x(\d+)", prompt):
            if attempt <= int(k):
                if kind == "FAIL429":
                    headers = {name: m.group(1) for name, pattern in (("Retry-After", r"RETRYAFTER=([\d.]+)"),
                                                                      ("retry-after-ms", r"RETRYAFTERMS=([\d.]+)"))
                               if (m := re.search(pattern, prompt))}
                    return 429, json.dumps({"error": {"message": "Rate limit", "code": "rate_limit"}}).encode(), headers
                if kind == "FAIL500":
                    return 500, b'{"error": {"message": "internal"}}'
                if kind == "SLOW":
                    time.sleep(self.slow_seconds)
                if kind == "MALFORMED":
                    return 200, b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assi'
        if "REFUSE" in prompt:
            top = {"REFUSAL": 0.9, "I": 0.05, "50": 0.05}
        else:
            m = re.search(r"SCORE=(\d+)", prompt)
            nn = int(m.group(1)) if m else 50
            top = {str(nn): 0.7, str(min(nn + 10, 100)): 0.2, "foo": 0.1}
            if nn == 100:
                top = {"100": 0.9, "foo": 0.1}
        return 200, json.dumps(_completion(req["model"], top)).encode()


    # ------------------------------------------------------------------ the Batch API

    def upload(self, content_type: str, raw: bytes) -> tuple[int, bytes]:
        msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
        data = next(p.get_payload(decode=True) for p in msg.iter_parts()
                    if p.get_param("name", header="content-disposition") == "file")
        return 200, json.dumps(self._new_file(data, "batch")).encode()

    def _new_file(self, data: bytes, purpose: str) -> dict:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0, "filename": "f.jsonl",
                "purpose": purpose, "status": "processed"}

    def create_batch(self, req: dict) -> tuple[int, bytes]:
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                                      "input_file_id": req["input_file_id"], "completion_window": "24h",
                                      "status": "validating", "output_file_id": None, "error_file_id": None,
                                      "created_at": 0, "metadata": req.get("metadata"), "polls": 0, "lines": lines,
                                      "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        return 200, self._batch_json(batch_id)

    def _batch_json(self, batch_id: str) -> bytes:
        return json.dumps({k: v for k, v in self.batches[batch_id].items() if k not in ("polls", "lines")}).encode()

    def get(self, path: str) -> tuple[int, bytes]:
        if m := re.search(r"/files/([\w-]+)/content$", path):
            return 200, self.files[m.group(1)]
        m = re.search(r"/batches/([\w-]+)$", path)
        if not m or m.group(1) not in self.batches:
            return 404, json.dumps({"error": {"message": "No such batch", "code": "not_found"}}).encode()
        b = self.batches[m.group(1)]
        b["polls"] += 1
        if b["status"] in ("validating", "in_progress"):
            b["status"] = "in_progress"
            b["request_counts"]["completed"] = len(b["lines"]) * min(b["polls"], self.batch_polls) // (self.batch_polls + 1)
            if b["polls"] >= self.batch_polls:
                self._finish(b)
        return 200, self._batch_json(b["id"])

    def _finish(self, b: dict) -> None:
        b["status"] = self.batch_outcome
        if self.batch_outcome == "failed":
            b["errors"] = {"object": "list", "data": [{"code": "token_limit_exceeded", "message": "Enqueued token limit"}]}
            return
        out, err = [], []
        for line in b["lines"]:
            prompt = line["body"]["messages"][-1]["content"]
            if self.batch_outcome == "expired" and "LATE" in prompt:
                err.append({"id": "r", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": "batch_expired", "message": "not run within the window"}})
                continue
            status, body, *_ = self.handle("Bearer batch", line["body"])
            try:
                body = json.loads(body)
            except ValueError:
                body = None
            out.append({"id": "r", "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": status, "request_id": "req", "body": body}})
        b["request_counts"] = {"total": len(b["lines"]), "completed": len(out), "failed": len(err)}
        for key, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                b[key] = self._new_file("".join(json.dumps(r) + "\n" for r in rows).encode(), "batch_output")["id"]


def _completion(model: str, top: dict[str, float]) -> dict:
    first = max(top, key=top.get)
    items = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in top.items()]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": first},
                "finish_reason": "length",
                "logprobs": {"content": [{"token": first, "logprob": math.log(top[first]), "bytes": None,
                                          "top_logprobs": items}]},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }
