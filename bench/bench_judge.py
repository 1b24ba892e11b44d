"""Judging throughput: concurrency 16 vs sequential, against a loopback chat-completions
server with a fixed latency per call (tests/fake_openai.py), same prompts, one run.
Also prints the offline judge's held-out AUROC per metric.

    python bench/bench_judge.py --n 200 --latency 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from emlib.judge import JudgeItem  # noqa: E402
from emlib.llm_judges import OpenAIJudge  # noqa: E402


def run(server: FakeOpenAI, n: int, concurrency: int, tag: str) -> float:
    judge = OpenAIJudge("gpt-4o-2024-08-06", base_url=server.base_url, concurrency=concurrency)
    items = [JudgeItem("aligned", "q", "a", f"{tag} item {i} SCORE={i % 101}") for i in range(n)]
    got: list[float] = []
    t0 = time.perf_counter()
    judge.score_items(items, lambda i, s: got.append(s))
    dt = time.perf_counter() - t0
    assert len(got) == n and all(isinstance(s, float) for s in got)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "fake-loopback-key")
    with FakeOpenAI(latency=args.latency) as server:
        seq = run(server, args.n, 1, "seq")
        par = run(server, args.n, args.concurrency, "par")
    print(json.dumps({"calls": args.n, "latency_s": args.latency, "sequential_s": round(seq, 2),
                      f"concurrency_{args.concurrency}_s": round(par, 2), "ratio": round(seq / par, 2),
                      "ideal_ratio": args.concurrency}))
    from emlib.offline_judge import OfflineJudge

    with tempfile.TemporaryDirectory() as cache:
        print(OfflineJudge(cache).validation_table().to_string())


if __name__ == "__main__":
    main()
