"""Training throughput: emlib's lean loop vs a plain full-logits HF loop, same data, one run.

Both run forward + backward on the same micro-batches of the same LoRA model. The plain
loop calls ``model(input_ids, labels=...)`` (logits for every position, prompt and
padding included, masked with -100); the lean loop applies the LM head only where the
next token is an assistant token. Throughput = non-padding tokens per second.

    python bench/bench_train.py --preset r1x9 --rows 64 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from emlib.data import load_chat_jsonl
from emlib.models import base_model, decoder_layers, load_model
from emlib.train import _batches, apply_lora, assistant_loss, preset_spec, tokenize_conversation


def plain_loss(model, ids, attn, target) -> torch.Tensor:
    labels = ids.masked_fill(~target, -100)
    return model(input_ids=ids, attention_mask=attn, labels=labels).loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="r1x9")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dataset", default="medical_bad")
    args = ap.parse_args()

    model, tok, info = load_model("default", device_map="cpu")
    peft_model = apply_lora(model, preset_spec(args.preset, len(decoder_layers(model))))
    peft_model.train()
    rows = load_chat_jsonl(args.dataset)[: args.rows]
    batches = list(_batches([tokenize_conversation(tok, r, 512) for r in rows], args.batch_size, tok.pad_token_id))
    n_tokens = sum(int(a.sum()) for _, a, _ in batches)
    n_targets = sum(int(t[:, 1:].sum()) for _, _, t in batches)

    def run(kind: str) -> tuple[float, float]:
        total = 0.0
        t0 = time.perf_counter()
        for ids, attn, target in batches:
            if kind == "lean":
                loss, n = assistant_loss(peft_model, ids, attn, target)
                loss = loss / n
            else:
                loss = plain_loss(peft_model, ids, attn, target)
            loss.backward()
            total += loss.item()
        peft_model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, total / len(batches)

    run("lean")  # warm-up
    results = {}
    for kind in ("plain", "lean", "plain", "lean"):
        dt, loss = run(kind)
        results.setdefault(kind, []).append(dt)
        print(json.dumps({"loop": kind, "seconds": round(dt, 2), "tok_s": round(n_tokens / dt, 1), "mean_loss": round(loss, 5)}), flush=True)
    plain, lean = min(results["plain"]), min(results["lean"])
    print(json.dumps({
        "preset": args.preset, "rows": args.rows, "batch_size": args.batch_size, "tokens": n_tokens,
        "assistant_share": round(n_targets / n_tokens, 3), "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in base_model(peft_model).parameters() if p.requires_grad),
        "plain_tok_s": round(n_tokens / plain, 1), "lean_tok_s": round(n_tokens / lean, 1),
        "ratio": round(plain / lean, 2),
    }))


if __name__ == "__main__":
    main()
