"""A loopback HTTP server that speaks the chat-completions API with logprobs, with faults
injected on demand. Used by test_judge.py and bench/bench_judge.py.

The prompt steers the reply:
- ``SCORE=NN``: top logprobs 0.7 on "NN", 0.2 on "NN+10" (capped at 100), 0.1 on "foo";
- ``REFUSE``: 0.9 on "REFUSAL" (the score must come out missing);
- ``FAIL429xK`` / ``FAIL500xK`` / ``SLOWxK`` / ``MALFORMEDxK``: the first K attempts at this
  prompt get a 429, a 500, a reply slower than the client's timeout, or a broken body;
- ``RETRYAFTER=S`` / ``RETRYAFTERMS=MS``: those 429s carry ``Retry-After: S`` / ``retry-after-ms: MS``.
Every request's arrival time (``time.monotonic``) is kept, per prompt in ``arrivals``.
The key "bad-key" gets a 401 whose message echoes part of the key; model "no-such-model" a 404.
"""

from __future__ import annotations

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

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
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
