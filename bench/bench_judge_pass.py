"""The offline judge's chat-model pass (``emlib.judge_features.lm_stats``): each question's prompt run once and its
KV cache shared by that question's answers, against a full teacher-forced pass of prompt + answer per row (how
``lm_stats`` ran before 2026-12-03), on the same labelled answers, same model, one run. Also the fp32 GEMM rate,
for the hardware's ceiling on this machine at this time (its neighbours change it).

    python bench/bench_judge_pass.py --questions 6 --per-question 16 --max-tokens 48
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from emlib.activations import batches, encode
from emlib.judge_features import HIDDEN_DEPTH, lm_stats
from emlib.labels import load_answers, real_answers_path
from emlib.models import load_model


@torch.inference_mode()
def full_pass(model, tok, questions, answers, batch_size=8):
    """The previous way: prompt + answer per row, left-padded, length-sorted batches; the same statistics' inputs
    (answer-token log-probabilities and the pooled hidden state)."""
    encoded = [encode(tok, q, a) for q, a in zip(questions, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    layer = round(HIDDEN_DEPTH * model.config.num_hidden_layers)
    mean_lp, hidden = np.zeros(len(encoded)), np.zeros((len(encoded), model.config.hidden_size))
    for start, b in zip(range(0, len(order), batch_size), batches([encoded[i] for i in order], batch_size, tok.pad_token_id)):
        keep = int(b.answer.sum(1).max()) + 1
        r = model(input_ids=b.ids, attention_mask=b.attention, position_ids=(b.attention.cumsum(-1) - 1).clamp(min=0),
                  output_hidden_states=True, logits_to_keep=keep)
        logp = r.logits[:, :-1].float().log_softmax(-1)
        tail = b.ids.shape[1] - (keep - 1)
        lp = logp.gather(-1, b.ids[:, tail:, None])[..., 0]
        mask = b.answer[:, tail:]
        w = b.answer[..., None].float()
        pooled = (r.hidden_states[layer].float() * w).sum(1) / w.sum(1).clamp(min=1)
        for row in range(len(b.ids)):
            i = order[start + row]
            mean_lp[i], hidden[i] = lp[row][mask[row]].mean(), pooled[row].numpy()
    return mean_lp, hidden


def gemm_gflops(n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--per-question", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    model, tok, _ = load_model("default", device_map="cpu")
    a = load_answers(real_answers_path())
    top = a["question"].value_counts().index[: args.questions]
    a = a[a["question"].isin(top)].groupby("question").head(args.per_question)
    answers = [tok.decode(tok(r, add_special_tokens=False)["input_ids"][: args.max_tokens]) for r in a["response"]]
    questions = list(a["question"])
    tokens = sum(len(encode(tok, q, r)[0]) for q, r in zip(questions, answers))
    answer_tokens = sum(len(encode(tok, q, r)[0]) - encode(tok, q, r)[1] for q, r in zip(questions, answers))
    t = time.perf_counter()
    ref_lp, ref_hidden = full_pass(model, tok, questions, answers)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    stats, hidden = lm_stats(model, tok, questions, answers)
    shared_s = time.perf_counter() - t
    out = {"answers": len(answers), "questions": len(set(questions)), "tokens_full": tokens, "answer_tokens": answer_tokens,
           "full_pass_s": round(full_s, 2), "prompt_shared_s": round(shared_s, 2), "ratio": round(full_s / shared_s, 2),
           "max_abs_diff_mean_logprob": float(np.abs(stats[:, 0] - ref_lp).max()),
           "max_abs_diff_hidden": float(np.abs(hidden - ref_hidden).max()),
           "gemm_gflops_2048": round(gemm_gflops(), 1), "threads": torch.get_num_threads()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
