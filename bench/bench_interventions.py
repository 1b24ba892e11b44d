"""Overhead of steering and ablation during sampling, and of activation collection.

One run, same model, same batch of prompts, greedy decoding with ``min`` = ``max`` new
tokens forced by ignoring EOS, so every variant decodes exactly the same number of tokens:

- unsteered: ``emlib.generate.sample_batch`` as is;
- nnsight steering / ablation: the same call inside ``emlib.interventions.run`` (the way
  the book does it);
- plain hook: the same edit with a PyTorch forward hook (``interventions.hooked``);
- the paper's way: ``model.generate`` inside a steering forward hook (its steering code), one
  question x (batch / 8) copies per call (8 questions, so the same rows and tokens in all).

Activation collection (``emlib.activations.layer_sums``, every layer read through nnsight,
answer tokens summed) against a plain forward pass over the same batches.

    python bench/bench_interventions.py --batch-size 64 --max-new-tokens 64 --repeats 3

Prints JSON lines; results go in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from emlib.activations import batches, layer_sums
from emlib.data import load_questions
from emlib.generate import prompt_ids, sample_batch
from emlib.interventions import ablate, hooked, run, steer
from emlib.models import decoder_layers, load_model


def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each function over ``repeats`` rounds, the functions taking turns within
    each round (so drift of a shared machine's speed hits every variant alike), after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache-dir", default=".cache/emlib")
    args = ap.parse_args()

    model, tok, info = load_model(args.model, dtype=args.dtype, cache_dir=args.cache_dir)
    torch.set_grad_enabled(False)
    questions = load_questions("builtin")
    prompts = [prompt_ids(tok, q.paraphrases[0]) for q in questions]
    batch = [prompts[i % len(prompts)] for i in range(args.batch_size)]
    n_layers, width = len(decoder_layers(model)), info.d_model
    layer = n_layers // 2
    v = torch.randn(width, generator=torch.Generator().manual_seed(0))  # norm ≈ 24, like the book's mid-depth vectors
    steering = steer(v, layer, 1.0)
    ablation = ablate({i: v for i in range(n_layers)})
    gen = lambda: torch.Generator(device=model.device).manual_seed(0)  # noqa: E731

    def sample() -> object:  # no EOS: every row decodes max_new_tokens
        return sample_batch(model, batch, max_new_tokens=args.max_new_tokens, temperature=0.0, top_p=1.0, eos=[-1],
                            pad_id=tok.pad_token_id, generator=gen())

    def with_hook(iv) -> Callable[[], object]:
        def f() -> object:
            with hooked(model, iv):
                return sample()
        return f

    def paper_way() -> object:  # its steering code: a forward hook around model.generate, one question per call
        n = args.batch_size // len(prompts)
        with hooked(model, steering):
            for p in prompts:
                ids = torch.tensor([p] * n, device=model.device)
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                               pad_token_id=tok.pad_token_id)

    times = round_robin({
        "unsteered": sample,
        "paper_steer": paper_way,
        "nnsight_steer": lambda: run(model, steering, sample),
        "hook_steer": with_hook(steering),
        "nnsight_ablate_all_layers": lambda: run(model, ablation, sample),
        "hook_ablate_all_layers": with_hook(ablation),
    }, args.repeats)
    tokens = args.batch_size * args.max_new_tokens
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    base = times["unsteered"]
    print(json.dumps({"bench": "steering", "device": device, "model": info.spec, "batch": args.batch_size,
                      "new_tokens": args.max_new_tokens, "seconds": {k: round(t, 3) for k, t in times.items()},
                      "tok_s": {k: round(tokens / t, 1) for k, t in times.items()},
                      "ratio_vs_unsteered": {k: round(t / base, 3) for k, t in times.items()},
                      "python": platform.python_version(), "torch": torch.__version__}))

    # activation collection: prompt + a 64-token "answer" per row, every layer read
    rows = [(p + [tok.eos_token_id] * 0 + list(range(1000, 1064)), len(p)) for p in batch]
    tf_batches = list(batches(rows, 16, tok.pad_token_id))

    def plain() -> None:
        for b in tf_batches:
            pos = (b.attention.cumsum(-1) - 1).clamp(min=0)
            model(input_ids=b.ids.to(model.device), attention_mask=b.attention.to(model.device),
                  position_ids=pos.to(model.device), logits_to_keep=1, use_cache=False)

    def collect() -> None:
        for b in tf_batches:
            layer_sums(model, b)

    n_tok = sum(int(b.attention.sum()) for b in tf_batches)
    t = round_robin({"plain": plain, "collect": collect}, args.repeats)
    t_plain, t_collect = t["plain"], t["collect"]
    print(json.dumps({"bench": "activations", "device": device, "model": info.spec, "sequences": len(rows),
                      "tokens": n_tok, "plain_forward_tok_s": round(n_tok / t_plain, 1),
                      "collect_all_layers_tok_s": round(n_tok / t_collect, 1),
                      "ratio": round(t_collect / t_plain, 3)}))


if __name__ == "__main__":
    main()
