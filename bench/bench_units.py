"""Rank-test units sampled in one stacked run against one run per unit (chapters 2 and 3).

Each random control vector is one unit of a rank test, answering each of the eight medical questions
``--answers`` times. Sampled one run per unit (how chapters 2 and 3 did it before ``interventions.Stacked``),
every run is a tiny batch whose every decode step still reads all the weights; stacked, all units' rows share
batches of ``--batch-size``, each row under its own unit. Same sampling setting as ``params/default.yaml``'s
interventions (48 tokens, temperature 0.7, top-p 0.9), a fresh cache each time, so both sample everything.

    python bench/bench_units.py --units 20 --answers 1

Prints one JSON line (seconds, tokens decoded, speedup).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from emlib.data import BUILTIN_MEDICAL_QUESTIONS, load_questions
from emlib.generate import SamplingConfig, sample_responses
from emlib.interventions import Stacked, steer
from emlib.models import decoder_layers, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--answers", type=int, default=1, help="answers per question per unit")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=".cache/emlib")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, info = load_model(args.model, dtype="float32", cache_dir=args.cache_dir)
    questions = load_questions(BUILTIN_MEDICAL_QUESTIONS)
    layer = len(decoder_layers(model)) // 2
    g = torch.Generator().manual_seed(0)
    units = [steer(torch.randn(info.d_model, generator=g), layer, 2.0, label=f"unit {k}") for k in range(args.units)]
    cfg = SamplingConfig(samples_per_question=args.answers, max_new_tokens=args.max_new_tokens, temperature=0.7,
                         top_p=0.9, batch_size=args.batch_size, seed=0)

    def timed(fn) -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            tables = fn(d)
            return time.perf_counter() - t, sum(int(x["n_tokens"].sum()) for x in tables)

    kw = dict(model_provenance={"model": args.model}, progress=False)
    separate, sep_tokens = timed(lambda d: [sample_responses(model, tok, questions, cfg, cache_dir=d, intervention=u,
                                                             **kw) for u in units])
    stacked, st_tokens = timed(lambda d: [sample_responses(model, tok, questions, cfg, cache_dir=d,
                                                           intervention=Stacked(tuple(units), "units"), **kw)])
    print(json.dumps({"model": info.spec, "units": args.units, "answers_per_unit": args.answers * len(questions),
                      "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                      "separate_s": round(separate, 1), "separate_tokens": sep_tokens,
                      "stacked_s": round(stacked, 1), "stacked_tokens": st_tokens,
                      "speedup": round(separate / stacked, 2), "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
