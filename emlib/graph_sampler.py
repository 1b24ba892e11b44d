"""Sampling with a static KV cache; on a GPU, every decoding step replayed from a CUDA graph.

``generate.sample_batch``'s contract; ``SamplingConfig.sampler`` chooses: ``"eager"`` (``generate.sample_batch``:
a DynamicCache, finished rows dropped at once, interventions by nnsight), ``"static"`` (this module's loop, op by
op, any device) or ``"graph"`` (the same loop, each step replayed from a CUDA graph: CUDA only; elsewhere, or when a
capture fails, ``SamplerError``, never a fallback to another sampler).

Each distinct prompt is prefilled once, as the eager sampler does, and its keys and values copied into buffers
preallocated per layer, [B, kv_heads, L, head_dim] (transformers' ``StaticCache`` layers bound to views of them).
A step runs at a *bucket* of rows (powers of two below B, and B): finished rows stay in place (their outputs
unread) until the live rows fit the next smaller bucket, then move to the front, in order. Attention reads a
*window* of the buffers (the first multiple of ``window`` slots covering the position), not all L slots. One graph
per (intervention layout, adapter state, bucket, window), captured on first use and kept with the buffers on the
model (``release`` frees them), in one memory pool. An ``Intervention`` or ``Stacked`` is copied once per batch
into device-resident buffers in the model's dtype, applied by forward hooks doing only tensor ops on them (the
formulas of ``Intervention.edit`` and ``Stacked.edit``), so the captured step holds it; a ``Stacked`` one keeps a
vector per row, moved with its row.

Greedy tokens equal the eager sampler's on tiny float32 models on the CPU (the tests), and in bfloat16 where
attention reads exactly the slots written (``window=1``): a wider window or another batch shape makes kernels
reduce in another order, which can change a row's logits in the last bits and so flip a near tie. Sampling draws
the same random numbers row for row, so sampled answers usually agree but are not promised to: the sampler is part
of the samples' cache key (``generate.sample_key``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

from emlib import generate
from emlib.interventions import Intervention, Stacked
from emlib.models import base_model, decoder_layers
from emlib.static_edits import Edits, Layout

SAMPLERS = ("eager", "static", "graph")
WINDOW = 128  # attention windows (and the buffers' length) are multiples of this many slots
_STATE = "_emlib_static_decoder"  # where the buffers and graphs are kept on the model


class SamplerError(RuntimeError):
    """A sampler that cannot run as asked (CUDA graphs without CUDA, a failed capture, an unsupported model)."""


def check_sampler(sampler: str, device: torch.device | str) -> None:
    """Raise unless ``sampler`` is one of ``SAMPLERS`` and can run with the model on ``device``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    if sampler == "graph" and torch.device(device).type != "cuda":
        raise SamplerError(f"sampler 'graph' captures CUDA graphs and needs the model on a CUDA device; it is on "
                           f"{device}. sampler 'static' runs the same static-cache loop without graphs on any device")


def buckets(max_batch: int) -> list[int]:
    """The batch sizes a decoding step runs at: every power of two below ``max_batch``, and ``max_batch``."""
    return sorted({max_batch} | {2**k for k in range(max_batch.bit_length()) if 2**k < max_batch})


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step  # the first multiple of step >= n


class _Decoder:
    """A model's decoding state: KV buffers per layer [B, kv_heads, L, head_dim], the step's inputs (token ids and
    positions [B, 1], attention mask [B, 1, 1, L]), intervention buffers and CUDA graphs. Holds no reference to
    the model, so it is freed with it."""

    def __init__(self, lm: nn.Module, max_batch: int, max_len: int, window: int):
        config = lm.config.get_text_config(decoder=True)
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
            raise SamplerError("the static-cache sampler supports full-attention models only (this one has sliding "
                               "or linear-attention layers): use sampler 'eager'")
        self.config, self.max_batch, self.max_len, self.window = config, max_batch, max_len, window
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dtype = lm.get_input_embeddings().weight.dtype
        self.devices = [next(block.parameters()).device for block in decoder_layers(lm)]
        self.keys = [torch.zeros((max_batch, heads, max_len, head_dim), dtype=self.dtype, device=d)
                     for d in self.devices]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.lengths = [torch.zeros((), dtype=torch.long, device=d) for d in self.devices]  # StaticLayer's write slot
        device = lm.get_input_embeddings().weight.device
        self.ids = torch.zeros((max_batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((max_batch, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.mask = torch.zeros((max_batch, 1, 1, max_len), dtype=torch.bool, device=device)
        self.caches: dict[tuple[int, int], StaticCache] = {}
        self.edits: dict[Layout, Edits] = {}
        self.graphs: dict[tuple[Hashable, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool: Any = None

    def edits_for(self, layout: Layout) -> Edits:
        if layout not in self.edits:
            self.edits[layout] = Edits(layout, self.devices, self.config.hidden_size, self.max_batch, self.dtype)
        return self.edits[layout]

    def cache(self, rows: int, window: int) -> StaticCache:
        """A ``StaticCache`` whose layers are views of the buffers' first ``rows`` rows and ``window`` slots."""
        if (rows, window) not in self.caches:
            cache = StaticCache(config=self.config, max_cache_len=window)
            if len(cache.layers) != len(self.keys) or any(type(ly) is not StaticLayer for ly in cache.layers):
                raise SamplerError(f"unexpected StaticCache layers for {type(self.config).__name__}")
            for layer, k, v, n in zip(cache.layers, self.keys, self.values, self.lengths):
                layer.keys, layer.values, layer.cumulative_length = k[:rows, :, :window], v[:rows, :, :window], n
                layer.device, layer.batch_size, layer.num_heads = k.device, rows, k.shape[1]
                layer.k_head_dim = layer.v_head_dim = k.shape[-1]
                layer.is_initialized = True
            self.caches[rows, window] = cache
        return self.caches[rows, window]

    def load(self, prefill: DynamicCache, inverse: torch.Tensor, mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        """Rows ``0..n`` take the prefilled rows ``inverse`` [n] of ``prefill``; ``mask`` [n, width] their
        padding, ``next_pos`` [n] their next positions. Rows beyond ``n`` attend to slot 0 only (no NaN)."""
        n, width = mask.shape
        for bufs, kind in ((self.keys, "keys"), (self.values, "values")):
            for buf, layer in zip(bufs, prefill.layers):
                buf[:n, :, :width] = getattr(layer, kind)[inverse.to(buf.device)]
        for length in self.lengths:
            length.fill_(width)
        self.slot.fill_(width)
        self.mask.zero_()
        self.mask[:n, 0, 0, :width] = mask.bool()
        self.mask[n:, 0, 0, 0] = True
        self.pos.zero_()
        self.pos[:n, 0] = next_pos

    def compact(self, keep: torch.Tensor, written: int) -> None:
        """Move rows ``keep`` [n] (ascending) to rows ``0..n``, in order; ``written``: slots filled so far."""
        n = len(keep)
        for buf in self.keys + self.values:
            buf[:n, :, :written] = buf[keep.to(buf.device), :, :written]
        self.mask[:n], self.pos[:n], self.ids[:n] = self.mask[keep], self.pos[keep], self.ids[keep]

    def step(self, lm: nn.Module, rows: int, window: int, variant: Hashable, graph: bool) -> torch.Tensor:
        """One decoding step of rows ``0..rows`` (tokens ``ids``, positions ``pos``) attending to the first
        ``window`` slots; returns next-token logits [rows, vocab]. Replayed from a CUDA graph if ``graph``, one per
        ``variant`` (what else the step's kernels depend on: the hooks' layout, the adapters' state)."""
        cache, mask = self.cache(rows, window), self.mask[:rows, :, :, :window]

        def forward() -> torch.Tensor:
            self.mask.index_fill_(3, self.slot, True)  # the slot this step writes
            out = lm(input_ids=self.ids[:rows], attention_mask=mask, position_ids=self.pos[:rows], cache=cache,
                     use_cache=True, logits_to_keep=1).logits[:, -1, :]
            self.pos.add_(1)
            self.slot.add_(1)
            return out

        if not graph:
            return forward()
        key = (variant, rows, window)
        if key not in self.graphs:
            self.graphs[key] = self._capture(forward)
        g, out = self.graphs[key]
        g.replay()
        return out

    def _capture(self, forward: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture ``forward`` as a CUDA graph after one warm-up run (whose counter updates are undone)."""
        state = [t.clone() for t in (*self.lengths, self.pos, self.slot)]
        try:
            side = torch.cuda.Stream(self.slot.device)
            side.wait_stream(torch.cuda.current_stream(self.slot.device))
            with torch.cuda.stream(side):
                forward()
            torch.cuda.current_stream(self.slot.device).wait_stream(side)
            for t, saved in zip((*self.lengths, self.pos, self.slot), state):
                t.copy_(saved)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                out = forward()
        except Exception as e:  # noqa: BLE001 - re-raised with what to do
            raise SamplerError(f"capturing the decoding step as a CUDA graph failed ({type(e).__name__}: {e}); "
                               "sampler 'static' runs the same loop without graphs") from e
        return g, out


def _adapter_state(lm: nn.Module) -> tuple[Any, ...]:
    """Each PEFT adapter layer's active, disabled and merged adapters: a step captured with adapters on must not
    be replayed with them off (``disable_adapter``)."""
    return tuple(sorted({(tuple(m.active_adapters), bool(m.disable_adapters), tuple(m.merged_adapters))
                         for m in lm.modules() if hasattr(m, "merged_adapters")}))


def _decoder(lm: nn.Module, rows: int, length: int, window: int) -> _Decoder:
    """The model's decoding state, rebuilt (the old one freed first) when it is too small or differs."""
    dec = lm.__dict__.get(_STATE)
    if dec is None or not (rows <= dec.max_batch and length <= dec.max_len and window == dec.window
                           and dec.dtype == lm.get_input_embeddings().weight.dtype):
        if dec is not None:
            rows, length = max(rows, dec.max_batch), max(length, dec.max_len)
        release(lm)
        dec = lm.__dict__[_STATE] = _Decoder(lm, rows, _round_up(length, window), window)
    return dec


def batch_sampler(sampler: str, intervention: Intervention | Stacked | None
                  ) -> tuple[Callable[..., list[tuple[list[int], str]]], Intervention | Stacked | None]:
    """The batch sampler ``sampler`` names (it takes ``generate.sample_batch``'s arguments) and the intervention
    ``interventions.run`` must apply around it: the eager sampler's (by nnsight), none for the static ones,
    which apply ``intervention`` themselves. ``generate.sample_responses`` calls it once per batch."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    if sampler == "eager":
        return generate.sample_batch, intervention
    return partial(sample_static, intervention=intervention, sampler=sampler), None


def release(model: nn.Module) -> None:
    """Free the static sampler's buffers and graphs kept on ``model``."""
    base_model(model).__dict__.pop(_STATE, None)


@torch.inference_mode()
def sample_static(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos: Sequence[int],
    pad_id: int,
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
    amplification: float = 1.0,
    units: Sequence[int] | None = None,
    stacked: Stacked | None = None,
    intervention: Intervention | Stacked | None = None,
    sampler: str = "static",
    window: int = WINDOW,
) -> list[tuple[list[int], str]]:
    """``generate.sample_batch`` with a static KV cache (``sampler`` "static", or "graph": CUDA graphs).

    Returns (response ids, finish reason) per prompt, as ``sample_batch`` does, whose arguments it takes;
    ``intervention`` (or ``stacked``, with ``units`` [n] naming each prompt's unit) is applied by this sampler's
    own hooks: do not also wrap the call in ``interventions.run``. ``window``: see the module's docstring.
    """
    lm, device = base_model(model), generate.input_device(model)
    check_sampler(sampler, device)
    if sampler == "eager":
        raise ValueError("sampler 'eager' is generate.sample_batch")
    if amplification != 1.0:
        raise SamplerError("model-diff amplification is sampled by sampler 'eager' only")
    if stacked is not None and intervention is not None and stacked is not intervention:
        raise ValueError("pass the stacked intervention once (stacked or intervention)")
    iv = intervention if intervention is not None else stacked
    iv = None if isinstance(iv, Intervention) and not iv.layers else iv
    if iv is not None:
        iv.check(model)
    per_row, n = isinstance(iv, Stacked), len(prompts)
    if per_row and (units is None or len(units) != n):
        raise ValueError("a stacked intervention needs one unit index per prompt")
    unit_of = [int(u) for u in units] if per_row else [0] * n
    unique: dict[tuple[int, tuple[int, ...]], int] = {}  # (unit, prompt): prefilled once
    inverse = torch.tensor([unique.setdefault((u, tuple(p)), len(unique)) for u, p in zip(unit_of, prompts)],
                           device=device)
    width = max(len(p) for _, p in unique)
    dec = _decoder(lm, n, width + max_new_tokens - 1, window)
    if sampler == "graph" and len({*dec.devices, torch.device(device)}) > 1:
        raise SamplerError("sampler 'graph' needs the whole model on one GPU; sampler 'static' runs across several")
    edits = dec.edits_for(layout := Layout.of(iv))
    edits.load(iv)
    row_units = torch.tensor(unit_of, device=device)
    if per_row:
        edits.set_rows(torch.tensor([u for u, _ in unique], device=device))
    blocks = decoder_layers(lm)
    hooks = [blocks[ly].register_forward_hook(edits.hook(ly)) for ly in sorted({*layout.add, *layout.ablate})]
    try:
        ids = torch.full((len(unique), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(unique), width), dtype=torch.long)
        for i, (_, p) in enumerate(unique):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        prefill = DynamicCache(config=dec.config)
        logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions, cache=prefill, use_cache=True,
                    logits_to_keep=1).logits[:, -1, :][inverse]
        dec.load(prefill, inverse, mask[inverse], positions[inverse, -1] + 1)
        del prefill
        if per_row:
            edits.set_rows(row_units)
        return _decode(lm, dec, logits, n=n, width=width, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, eos=torch.tensor(list(eos), device=device), generator=generator, on_step=on_step,
                       variant=(layout, _adapter_state(lm)), edits=edits if per_row else None, row_units=row_units,
                       graph=sampler == "graph")
    finally:
        for h in hooks:
            h.remove()


def _decode(lm: nn.Module, dec: _Decoder, logits: torch.Tensor, *, n: int, width: int, max_new_tokens: int,
            temperature: float, top_p: float, eos: torch.Tensor, generator: torch.Generator,
            on_step: Callable[[int], None] | None, variant: Hashable, edits: Edits | None, row_units: torch.Tensor,
            graph: bool) -> list[tuple[list[int], str]]:
    """The decoding loop of ``sample_static`` from the prefill's next-token ``logits`` [n, vocab]."""
    sizes = buckets(dec.max_batch)
    rows = next(b for b in sizes if b >= n)  # the bucket the steps run at
    origin = list(range(n))  # the prompt each buffer row holds
    live = list(range(n))  # buffer rows still decoding, ascending
    live_t = torch.arange(n, device=dec.ids.device)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    for step in range(max_new_tokens):
        tok = generate.sample_next(logits if len(live) == len(logits) else logits[live_t], temperature, top_p,
                                   generator)
        toks, dones = torch.stack([tok, torch.isin(tok, eos).long()]).tolist()  # one wait for the device a step
        for r, t, d in zip(live, toks, dones):
            if d:
                finish[origin[r]] = "stop"
            else:
                tokens[origin[r]].append(t)
        n_done = sum(dones)
        if on_step is not None:
            on_step(n_done if step < max_new_tokens - 1 else len(live))
        if step == max_new_tokens - 1 or n_done == len(live):
            break
        if n_done:
            kept = [i for i, d in enumerate(dones) if not d]
            live, kept_t = [live[i] for i in kept], torch.tensor(kept, device=tok.device)
            tok, live_t = tok[kept_t], live_t[kept_t]
            smaller = next(b for b in sizes if b >= len(live))
            if smaller < rows:  # the live rows fit a smaller bucket: move them to the front, in order
                dec.compact(live_t, written=width + step)
                origin, row_units = [origin[r] for r in live], row_units[live_t]
                if edits is not None:
                    edits.set_rows(row_units)
                live, live_t, rows = list(range(len(live))), torch.arange(len(live), device=live_t.device), smaller
        dec.ids[live_t, 0] = tok
        written = width + step + 1  # slots filled once this step has written its own
        logits = dec.step(lm, rows, min(_round_up(written, dec.window), dec.max_len), variant, graph)
    return list(zip(tokens, finish))
