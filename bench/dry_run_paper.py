"""A paper-shaped dry run: Qwen2.5-14B-Instruct's shape with random bf16 weights, every stage of the book.

    python bench/dry_run_paper.py [--out bench/dry_run_paper.json]   # one H200, about 10 minutes
    python bench/dry_run_paper.py --tiny                              # CPU: a tiny 12-layer Qwen2, about a minute

The model is built from its configuration in code (48 layers, d_model 5120, 40 heads, 8 KV heads, head dim 128,
MLP 13824, vocabulary 152064), directly on the device (no download, no copy of the weights in CPU memory). Every
stage of the book runs at reduced counts with the paper's token lengths (prompts of about 60 tokens, 600 new
tokens, batches of ``params/paper.yaml``'s 200 answers): LoRA training steps of the rank-1 R1x9 preset and the
rank-32 all-adapter preset (2 x 512 tokens a step), the LoRA-scalar reads of the R1x9 adapters, an activation
pass, sampling with emlib's eager sampler and its CUDA-graph sampler (plain, steered, ablated at all 48 layers,
a stacked run), and ``model.generate`` the paper's way (one batch per question with all its samples, sampling at
temperature 1 and top-p 1, finished rows kept to the end). Per stage: wall time, peak GPU memory (reset per
stage), tokens/s; for the decoding stages the GPU's busy fraction (kernel time over wall time, torch.profiler, on
a short run of the same sampler) and the bound a step cannot beat: the larger of the bytes it must read
(weights at 2 bytes a parameter + the KV cache at the current length) over HBM bandwidth and its FLOPs over
peak bf16 dense throughput (H200: 4.8 TB/s, 989 TFLOP/s), summed over the run's steps, and the measured time's
ratio to it. A greedy check compares the graph sampler with the static and eager ones on the same model. The
plan's device hours for ``params/paper.yaml`` (``emlib.plan``) are recomputed from the measured rates. Random
weights never say EOS: every answer runs to its limit. A stage that fails is recorded (error, traceback) and the
run goes on, with exit status 1. Writes JSON (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config

from emlib import graph_sampler, plan
from emlib.activations import Batch, layer_sums
from emlib.config import load_params
from emlib.data import DataError
from emlib.generate import sample_batch
from emlib.interventions import Stacked, ablate, run, steer
from emlib.models import PAPER_DIRECTION_LAYER, map_layers
from emlib.probes import lora_scalars, rank1_adapters
from emlib.train import apply_lora, assistant_loss, preset_spec

ROOT = Path(__file__).resolve().parent.parent
HBM_BYTES_PER_S, BF16_FLOPS = 4.8e12, 989e12  # H200 SXM: HBM3e bandwidth, dense bf16 tensor-core peak
QWEN14B = dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
               num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-6,
               tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
TINY = dict(QWEN14B, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=12,  # R1x9: 9 layers
            num_attention_heads=4, num_key_value_heads=2)
EOS = (151643, 151645)  # Qwen2.5's <|endoftext|> and <|im_end|>


@dataclass(frozen=True)
class Sizes:
    """Counts of one dry run (tokens are the paper's; counts are reduced)."""

    prompt_tokens: int = 60
    new_tokens: int = 600
    batch: int = 200  # params/paper.yaml batch_size
    questions: int = 4  # distinct prompts of a sampling batch (each sampled batch / questions times)
    paper_questions: int = 2  # model.generate calls the paper's way, each with paper_samples rows
    paper_samples: int = 50
    train_steps: int = 3
    train_seq: int = 512
    train_batch: int = 2
    act_batches: int = 2
    act_batch: int = 16  # params/paper.yaml activation_batch_size
    greedy_prompts: int = 8
    greedy_tokens: int = 48
    profile_tokens: int = 32  # new tokens of the short run a busy fraction is measured on
    nnsight_tokens: int = 64  # new tokens of the eager (nnsight) ablated run
    mean_answer: int = 250  # "answers ending" runs: ids 0..vocab/mean_answer end an answer (about 1 in mean_answer)


TINY_SIZES = Sizes(prompt_tokens=12, new_tokens=16, batch=8, questions=2, paper_questions=2, paper_samples=4,
                   train_steps=2, train_seq=32, train_batch=2, act_batches=1, act_batch=4, greedy_prompts=4,
                   greedy_tokens=8, profile_tokens=4, nnsight_tokens=4, mean_answer=8)


def kv_bytes_per_token(cfg: Qwen2Config, bytes_per_value: int = 2) -> int:
    """KV-cache bytes of one token across all layers (keys and values)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * bytes_per_value


def step_bound(cfg: Qwen2Config, weight_params: int, rows: int, context: int, new: int = 1) -> float:
    """Seconds a forward of ``rows`` x ``new`` tokens at ``context`` tokens of history cannot beat on an H200:
    max(bytes read / HBM bandwidth, FLOPs / bf16 peak); bytes = 2 x weights + KV cache read and written."""
    tokens = rows * new
    bytes_read = 2 * weight_params + kv_bytes_per_token(cfg) * rows * (context + new)
    flops = 2 * weight_params * tokens + 4 * cfg.num_hidden_layers * cfg.hidden_size * tokens * (context + new)
    return max(bytes_read / HBM_BYTES_PER_S, flops / BF16_FLOPS)


def decode_bound(cfg: Qwen2Config, weight_params: int, prefill_rows: int, width: int, live: Sequence[int]) -> float:
    """The bound of a sampling run: one prefill of ``prefill_rows`` x ``width`` tokens, then one step per entry of
    ``live`` (the rows decoding at that step; step s attends to ``width + s`` tokens)."""
    return step_bound(cfg, weight_params, prefill_rows, 0, width) + sum(
        step_bound(cfg, weight_params, r, width + s) for s, r in enumerate(live) if r)


def live_rows(n: int, finished_per_step: Sequence[int]) -> list[int]:
    """Rows decoding at each forward after the prefill, from ``on_step``'s counts of rows finished per step."""
    out, left = [], n
    for done in finished_per_step[:-1]:  # the last sampled token needs no forward
        left -= done
        out.append(left)
    return out


def busy_fraction(fn: Callable[[], Any]) -> float | None:
    """Fraction of ``fn``'s wall time during which a kernel (or copy) ran on the GPU (torch.profiler); None off CUDA."""
    if not torch.cuda.is_available():
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    if not spans:  # the profiler recorded no kernel: unknown, not idle
        return None
    busy, end = 0.0, float("-inf")
    for s, e in spans:  # union of the intervals, in microseconds
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy / (wall * 1e6)


class Recorder:
    """Stages' figures, printed and written as they come."""

    def __init__(self, device: torch.device):
        self.device, self.stages = device, []

    @contextmanager
    def stage(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"stage": name, **fields}
        if cuda := self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield row
        except Exception as e:  # noqa: BLE001 - recorded, shown, and the exit status says so
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc()[-3000:]
            print(row["traceback"], file=sys.stderr)
        if cuda:
            torch.cuda.synchronize()
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row.setdefault("wall_s", time.perf_counter() - t0)
        if row.get("tokens") and "tokens_per_s" not in row:
            row["tokens_per_s"] = row["tokens"] / row["wall_s"]
        if row.get("bound_s") and cuda:  # the bound is an H200's: off CUDA it is shown, not compared
            row["ratio_to_bound"] = row["wall_s"] / row["bound_s"]
        self.stages.append(row)
        print(f"  {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in row.items() if k not in ("stage", "traceback")), flush=True)


def build(cfg: Qwen2Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The model with random weights (transformers' init), created directly on ``device``."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = cfg.eos_token_id, cfg.pad_token_id
    return model.eval()


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``n`` token rows of ``length`` - 3 .. ``length`` + 3 tokens (ragged: left padding is exercised)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(2, length - 3), length + 4, (n,), generator=g)
    return [torch.randint(0, min(vocab, 150000), (int(k),), generator=g).tolist() for k in lengths]


def train_steps(rec: Recorder, model, preset: str, sz: Sizes, n_layers: int, vocab: int):
    """A few AdamW steps of LoRA ``preset`` on random 2 x 512-token rows (loss on the last half); the PEFT model
    (None if the stage failed)."""
    device, peft = rec.device, None
    with rec.stage(f"train {preset}", steps=sz.train_steps, batch=f"{sz.train_batch}x{sz.train_seq}") as row:
        peft = apply_lora(model, preset_spec(preset, n_layers))
        peft.train()
        params = [p for p in peft.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        ids = torch.randint(0, vocab, (sz.train_batch, sz.train_seq), device=device)
        attn, target = torch.ones_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        target[:, sz.train_seq // 2:] = True
        assistant_loss(peft, ids, attn, target)[0].backward()  # warm-up step, not timed
        opt.zero_grad(set_to_none=True)
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        sync()
        t0 = time.perf_counter()
        for _ in range(sz.train_steps):
            loss, n = assistant_loss(peft, ids, attn, target)
            (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        row["step_s"] = (time.perf_counter() - t0) / sz.train_steps
        row["tokens_per_s"] = sz.train_batch * sz.train_seq / row["step_s"]
        row["trainable_params"] = sum(p.numel() for p in params)
        peft.eval()
    return peft


def sampling(rec: Recorder, model, name: str, sz: Sizes, *, sampler: str, cfg, weight_params: int, prompts,
             max_new: int, iv=None, units=None, profile: bool = False, eos: Sequence[int] = EOS) -> None:
    """One batch through emlib's ``sampler``; tokens/s, the bound and its ratio, and (``profile``) busy %."""
    def call(n_new: int, on_step=None):
        kw = dict(max_new_tokens=n_new, temperature=1.0, top_p=1.0, eos=list(eos), pad_id=cfg.pad_token_id,
                  generator=torch.Generator(rec.device).manual_seed(0), on_step=on_step)
        if sampler == "eager":
            st = iv if isinstance(iv, Stacked) else None
            return run(model, iv, lambda: sample_batch(model, prompts, units=units, stacked=st, **kw))
        return graph_sampler.sample_static(model, prompts, intervention=iv, units=units, sampler=sampler, **kw)

    with rec.stage(name, sampler=sampler, rows=len(prompts), new_tokens=max_new) as row:
        finished: list[int] = []
        t0 = time.perf_counter()
        row["tokens"] = sum(len(t) for t, _ in call(max_new, finished.append))
        row["wall_s"] = time.perf_counter() - t0  # the profiled run below is not timed
        distinct = len({(u, tuple(p)) for u, p in zip(units or [0] * len(prompts), prompts)})  # prefilled rows
        row["bound_s"] = decode_bound(cfg, weight_params, distinct, max(len(p) for p in prompts),
                                      live_rows(len(prompts), finished))
        if profile:
            row["busy"] = busy_fraction(lambda: call(sz.profile_tokens))


def paper_way(rec: Recorder, model, sz: Sizes, cfg, weight_params: int, eos: Sequence[int] = EOS,
              name: str = "paper way: model.generate") -> None:
    """``model.generate`` per question with all its samples: sampling at temperature 1, top-p 1, 600 tokens."""
    prompts = random_prompts(sz.paper_questions, sz.prompt_tokens, cfg.vocab_size, seed=3)

    def generate(n_new: int) -> tuple[int, float]:
        tokens, bound = 0, 0.0
        for p in prompts:
            ids = torch.tensor([p], device=rec.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_p=1.0, max_new_tokens=n_new, num_return_sequences=sz.paper_samples,
                                 eos_token_id=list(eos), pad_token_id=cfg.pad_token_id)[:, ids.shape[1]:].tolist()
            ends = [next((i for i, t in enumerate(r) if t in eos), len(r)) for r in out]
            tokens += sum(ends)
            live = [sum(e > s for e in ends) for s in range(max(ends))]
            bound += decode_bound(cfg, weight_params, sz.paper_samples, len(p), live)
        return tokens, bound

    with rec.stage(name, rows=f"{sz.paper_questions}x{sz.paper_samples}", new_tokens=sz.new_tokens) as row:
        t0 = time.perf_counter()
        row["tokens"], row["bound_s"] = generate(sz.new_tokens)
        row["wall_s"] = time.perf_counter() - t0  # the profiled run below is not timed
        row["busy"] = busy_fraction(lambda: generate(sz.profile_tokens))


def greedy_check(rec: Recorder, model, sz: Sizes, cfg) -> None:
    """Greedy answers of the graph sampler (static off CUDA) against the static and eager samplers, and the eager
    sampler in a batch against itself one prompt at a time (how far batching alone moves bf16 greedy tokens)."""
    prompts = random_prompts(sz.greedy_prompts, sz.prompt_tokens, cfg.vocab_size, seed=5)
    kw = dict(max_new_tokens=sz.greedy_tokens, temperature=0, top_p=1.0, eos=[-1], pad_id=cfg.pad_token_id,
              generator=torch.Generator(rec.device))
    fast = "graph" if rec.device.type == "cuda" else "static"

    def agree(a, b) -> dict[str, float]:
        first = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), len(s)) for (s, _), (t, _) in zip(a, b)]
        return {"rows_equal": sum(f == len(s) for f, (s, _) in zip(first, a)) / len(a),
                "mean_first_difference": sum(first) / len(first)}

    with rec.stage("greedy check", sampler=fast, rows=len(prompts), new_tokens=sz.greedy_tokens) as row:
        eager = sample_batch(model, prompts, **kw)
        got = graph_sampler.sample_static(model, prompts, sampler=fast, **kw)
        row[f"{fast}_vs_eager"] = agree(got, eager)
        if fast == "graph":
            row["graph_vs_static"] = agree(got, graph_sampler.sample_static(model, prompts, sampler="static", **kw))
        row["eager_batch_vs_alone"] = agree(eager, [sample_batch(model, [p], **kw)[0] for p in prompts])
        row["note"] = "; ".join(f"{k}: {v['rows_equal']:.0%} rows equal, first difference at "
                                f"{v['mean_first_difference']:.1f}" for k, v in row.items() if isinstance(v, dict))
    graph_sampler.release(model)


def plan_hours(rates: dict[str, float | None], machine: str) -> dict[str, Any]:
    """``emlib.plan``'s totals for ``params/paper.yaml`` and its device hours at the measured ``rates``."""
    overrides: dict[str, Any] = {} if torch.cuda.is_available() else {"allow_cpu": True}
    out: dict[str, Any] = {}
    try:
        p = load_params(ROOT / "params/paper.yaml", overrides)
        jobs = plan.plan(p, QWEN14B["num_hidden_layers"])
    except DataError as e:  # the paper's question file is supplied by the user; the built-in eight count the same
        out["note"] = f"{e}: counted with questions: builtin (eight questions, as the paper's file without variants)"
        p = load_params(ROOT / "params/paper.yaml", {**overrides, "questions": "builtin"})
        jobs = plan.plan(p, QWEN14B["num_hidden_layers"])
    t = plan.totals(jobs)
    out["totals"] = asdict(t)
    if not t.train_tokens:
        out["note_train"] = "training datasets not here: the plan counts no training tokens (hours exclude training)"
    for name, decode in ((f"{k} sampler" if k != "paper" else "paper way", rates.get(k))
                         for k in ("graph", "static", "eager", "paper")):
        if decode and rates.get("forward") and rates.get("train"):
            rate = plan.Throughput(machine, decode, rates["forward"], rates["train"], "bench/dry_run_paper.py")
            out[f"device_hours ({name})"] = plan.estimate(t, rate)["device_hours"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench/dry_run_paper.json"))
    ap.add_argument("--tiny", action="store_true", help="a tiny model of the same family on the CPU, few tokens")
    a = ap.parse_args(argv)
    device = torch.device("cpu" if a.tiny else "cuda")
    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("the dry run needs a CUDA GPU (none is visible); --tiny runs a small model on the CPU")
    sz = TINY_SIZES if a.tiny else Sizes()
    shape = TINY if a.tiny else QWEN14B
    eos = (shape["vocab_size"] - 1,) if a.tiny else EOS
    cfg = Qwen2Config(**shape, eos_token_id=eos[-1], pad_token_id=eos[0])
    dtype = torch.bfloat16 if not a.tiny else torch.float32
    rec = Recorder(device)
    info = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "shape": {k: v for k, v in shape.items() if k != "rope_parameters"}, "sizes": asdict(sz),
            "bound": {"hbm_bytes_per_s": HBM_BYTES_PER_S, "bf16_flops": BF16_FLOPS}}
    print(f"dry run on {info['device']}: {info['shape']}", flush=True)
    with rec.stage("build (random weights)") as row:
        model = build(cfg, device, dtype)
        n_params = sum(p.numel() for p in model.parameters())
        weight_params = n_params - model.get_input_embeddings().weight.numel()  # read per decoding step
        row.update(params=n_params, weight_params_read_per_step=weight_params)
    n_layers, layer = cfg.num_hidden_layers, map_layers([PAPER_DIRECTION_LAYER], cfg.num_hidden_layers)[0]

    peft = train_steps(rec, model, "r1x9", sz, n_layers, cfg.vocab_size)  # stages below skip what a failure lost
    act_ids = torch.randint(0, cfg.vocab_size, (sz.act_batch, sz.prompt_tokens + sz.new_tokens))
    answers = torch.arange(act_ids.shape[1]).expand_as(act_ids) >= sz.prompt_tokens  # the 600 tokens after the prompt
    act_batch = Batch(act_ids, torch.ones_like(act_ids), answers)
    with rec.stage("LoRA scalars (r1x9)", rows=sz.act_batch, tokens=act_ids.numel()) as row:
        row["adapters"] = lora_scalars(peft, act_batch, rank1_adapters(peft)).shape[-1]
    model = peft.unload() if peft is not None else model
    peft = train_steps(rec, model, "all_r32", sz, n_layers, cfg.vocab_size)
    model = peft.unload() if peft is not None else model
    with rec.stage("activation pass", rows=sz.act_batches * sz.act_batch,
                   tokens=sz.act_batches * act_ids.numel()) as row:
        for _ in range(sz.act_batches):
            layer_sums(model, act_batch)
    greedy_check(rec, model, sz, cfg)

    per_q = sz.batch // sz.questions
    prompts = [p for p in random_prompts(sz.questions, sz.prompt_tokens, cfg.vocab_size, seed=1) for _ in range(per_q)]
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(cfg.hidden_size, generator=g)
    steering = steer(direction / direction.norm() * 8, layer=layer, scale=1.0)
    ablation = ablate({ly: direction for ly in range(n_layers)}, label="single direction, every layer")
    fast = "graph" if device.type == "cuda" else "static"  # the graph sampler is CUDA only: never implied on a CPU
    stacked, units = Stacked((steering, ablation), "two units"), [i % 2 for i in range(len(prompts))]
    for name, sampler, iv, profile in (("emlib eager", "eager", None, True),
                                       (f"emlib {fast} (cold)", fast, None, False), (f"emlib {fast}", fast, None, True),
                                       (f"emlib {fast} steered L{layer}", fast, steering, True),
                                       (f"emlib {fast} ablated x{n_layers}", fast, ablation, True),
                                       (f"emlib {fast} stacked (2 units)", fast, stacked, False)):
        sampling(rec, model, name, sz, sampler=sampler, max_new=sz.new_tokens, iv=iv, profile=profile, cfg=cfg,
                 units=units if iv is stacked else None, weight_params=weight_params, prompts=prompts, eos=eos)
    graph_sampler.release(model)
    sampling(rec, model, f"emlib eager ablated x{n_layers} (nnsight)", sz, sampler="eager", max_new=sz.nnsight_tokens,
             iv=ablation, cfg=cfg, weight_params=weight_params, prompts=prompts, eos=eos)
    paper_way(rec, model, sz, cfg, weight_params, eos)
    # Random weights never end an answer; here ~1 token in mean_answer does, as real answers end at varied lengths
    ending = tuple(range(cfg.vocab_size // sz.mean_answer)) + tuple(eos)
    sampling(rec, model, f"emlib {fast}, answers ending", sz, sampler=fast, max_new=sz.new_tokens, cfg=cfg,
             weight_params=weight_params, prompts=prompts, eos=ending)
    graph_sampler.release(model)
    paper_way(rec, model, sz, cfg, weight_params, ending, name="paper way, answers ending")

    by = {r["stage"]: r for r in rec.stages}
    rate = lambda name: by.get(name, {}).get("tokens_per_s")  # noqa: E731
    decode_fast = [rate(f"emlib {fast}"), rate(f"emlib {fast} steered L{layer}"),
                   rate(f"emlib {fast} ablated x{n_layers}")]  # plain, steered, ablated: the harmonic mean below
    rates = {fast: len(decode_fast) / sum(1 / r for r in decode_fast) if all(decode_fast) else None,
             "eager": rate("emlib eager"), "paper": rate("paper way: model.generate"),
             "forward": rate("activation pass"),
             "train": (2 / (1 / rate("train r1x9") + 1 / rate("train all_r32"))
                       if rate("train r1x9") and rate("train all_r32") else None)}
    with rec.stage("plan hours (params/paper.yaml)") as row:
        row.update(plan_hours(rates, info["device"]))
        row["note"] = "; ".join(f"{k}: {v:.1f}" for k, v in row.items() if k.startswith("device_hours"))
    if rates[fast] and rates["paper"]:
        info[f"{fast}_over_paper_way"] = rates[fast] / rates["paper"]
    if rate(f"emlib {fast}, answers ending") and rate("paper way, answers ending"):
        info[f"{fast}_over_paper_way_answers_ending"] = rate(f"emlib {fast}, answers ending") / rate(
            "paper way, answers ending")
    result = {"info": info, "rates_tokens_per_s": rates, "stages": rec.stages}
    Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    if not a.tiny and rates[fast] and rates["forward"] and rates["train"]:  # what emlib.plan's estimate reads
        path = ROOT / "bench" / "throughputs.json"
        known = json.loads(path.read_text()) if path.is_file() else {}
        known["Qwen/Qwen2.5-14B-Instruct"] = {
            "machine": str(info["device"]), "decode_tokens_per_s": rates[fast], "forward_tokens_per_s": rates["forward"],
            "train_tokens_per_s": rates["train"], "source": f"bench/dry_run_paper.py ({fast} sampler; random weights)"}
        path.write_text(json.dumps(known, indent=1) + "\n")
    print(table(rec.stages), f"\nrates (tokens/s): {json.dumps(rates)}\nwritten to {a.out}", sep="\n")
    return 1 if any("error" in r for r in rec.stages) else 0


def table(stages: Sequence[dict[str, Any]]) -> str:
    """The stages as a markdown table."""
    cols = ("stage", "wall_s", "peak_gib", "tokens", "tokens_per_s", "busy", "bound_s", "ratio_to_bound", "note",
            "error")
    fmt = lambda v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in stages]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
