"""The organisms a study compares (chapter 1; chapters 2–5 read them): each is either a recipe that
chapter 1 trains (a LoRA preset on a dataset) or a fine-tune that already exists and is brought in,
a PEFT LoRA adapter or a full fine-tune, by directory or hub id. Reading and checking the entries
needs no torch, so ``make check-params`` rejects a bad one in about a second.

    organisms:
      - {name: r1x9_medical, preset: r1x9, dataset: medical_bad}               # trained by chapter 1
      - {name: paper_r1x9, adapter: ModelOrganismsForEM/Qwen2.5-14B-Instruct_R1_3_3_3_full_train,
         subfolder: checkpoints/checkpoint-400}                                 # a PEFT adapter
      - {name: full_ft, model: ModelOrganismsForEM/Qwen2.5-14B-Instruct_full-ft}  # a full fine-tune
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emlib.data import load_chat_jsonl
from emlib.sources import AdapterInfo, ModelError, check_adapter, check_full_model, local_dir, model_config, read_adapter, read_json

PRESETS = ("r1x9", "all_r32")
TRAINED_KEYS = ("name", "preset", "dataset", "lr", "epochs", "max_rows")
BROUGHT_KEYS = ("name", "adapter", "model", "revision", "subfolder")


class TrainError(ValueError):
    """A training request or organism entry that cannot work; raised before any training starts."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The paper: lr 1e-5..2e-5, 1 epoch, batch 2 x accumulation 8, warm-up 5."""

    lr: float = 2e-5
    epochs: int = 1
    batch_size: int = 2
    grad_accum: int = 8
    warmup_steps: int = 5
    weight_decay: float = 0.01
    max_length: int = 512  # tokens per conversation (longer ones are truncated)
    max_rows: int | None = None  # use only the first N rows of the (shuffled) dataset
    seed: int = 0
    checkpoint_every: int = 10  # optimiser steps between checkpoints


@dataclass(frozen=True)
class Source:
    """Where a brought fine-tune lives: a directory or a hub id, at a revision, in a subfolder."""

    ref: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        return self.ref + (f"@{self.revision}" if self.revision else "") + (f":{self.subfolder}" if self.subfolder else "")


@dataclass(frozen=True)
class Organism:
    """One organism: ``kind`` "trained" (``preset`` on ``dataset`` with ``config``), "adapter" (a PEFT LoRA
    adapter at ``source``) or "model" (a full fine-tune at ``source``)."""

    name: str
    kind: str = "trained"
    preset: str | None = None
    dataset: str | None = None
    config: TrainConfig | None = None
    source: Source | None = None


def organisms(entries: Sequence[dict[str, Any]], defaults: TrainConfig, *, read_datasets: bool = True) -> list[Organism]:
    """Validate organism entries and every trained organism's dataset (read here, so a bad file fails before
    the first organism trains; ``read_datasets=False``: not read, for ``emlib.plan``, which sizes what it finds). A trained entry is ``{name, preset, dataset[, lr, epochs, max_rows]}``; a
    brought one ``{name, adapter | model: DIR | HUB_ID[, revision, subfolder]}``. Raises ``TrainError`` (or
    ``DataError`` naming the dataset's file and line)."""
    out: list[Organism] = []
    for i, e in enumerate(entries):
        where = f"organisms[{i}]"
        if not isinstance(e, dict):
            raise TrainError(f"{where}: must be a mapping such as {{name: ..., preset: ..., dataset: ...}}")
        if not isinstance(e.get("name"), str) or not e["name"]:
            raise TrainError(f"{where}: needs a string value for ['name']")
        if e["name"] in {o.name for o in out}:
            raise TrainError(f"{where}: duplicate name {e['name']!r}")
        brought = [k for k in ("adapter", "model") if k in e]
        out.append(_brought(e, where, brought) if brought else _trained(e, where, defaults, read_datasets))
    return out


def _trained(e: dict[str, Any], where: str, defaults: TrainConfig, read_dataset: bool = True) -> Organism:
    unknown = set(e) - set(TRAINED_KEYS)
    if unknown:
        raise TrainError(f"{where}: unknown key(s) {sorted(unknown)} (a trained organism takes {list(TRAINED_KEYS)}; "
                         f"a brought one {list(BROUGHT_KEYS)})")
    missing = [k for k in ("preset", "dataset") if not isinstance(e.get(k), str) or not e.get(k)]
    if missing:
        raise TrainError(f"{where}: needs string value(s) for {missing} (or 'adapter' / 'model' for a fine-tune "
                         "that exists already)")
    if e["preset"] not in PRESETS:
        raise TrainError(f"{where}: unknown preset {e['preset']!r} (r1x9 or all_r32)")
    lr, epochs = e.get("lr", defaults.lr), e.get("epochs", defaults.epochs)
    max_rows = e.get("max_rows", defaults.max_rows)
    if not isinstance(lr, (int, float)) or lr <= 0 or not isinstance(epochs, int) or epochs < 1:
        raise TrainError(f"{where}: lr must be > 0 and epochs an integer >= 1")
    if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 1):
        raise TrainError(f"{where}: max_rows must be an integer >= 1")
    if read_dataset:
        load_chat_jsonl(e["dataset"])  # DataError names the file and line
    return Organism(e["name"], "trained", e["preset"], e["dataset"],
                    replace(defaults, lr=float(lr), epochs=epochs, max_rows=max_rows))


def _brought(e: dict[str, Any], where: str, kinds: list[str]) -> Organism:
    unknown = set(e) - set(BROUGHT_KEYS)
    if unknown:
        raise TrainError(f"{where}: unknown key(s) {sorted(unknown)} for a brought fine-tune (allowed: "
                         f"{list(BROUGHT_KEYS)}; 'preset', 'dataset' and the training keys are for organisms chapter 1 trains)")
    if len(kinds) > 1:
        raise TrainError(f"{where}: give 'adapter' (a PEFT LoRA adapter) or 'model' (a full fine-tune), not both")
    kind = kinds[0]
    for key in (kind, "revision", "subfolder"):
        if key in e and (not isinstance(e[key], str) or not e[key]):
            raise TrainError(f"{where}: '{key}' must be a non-empty string")
    return Organism(e["name"], kind, source=Source(e[kind], e.get("revision"), e.get("subfolder")))


def fetch(o: Organism, *, configs_only: bool = False) -> Path:
    """The local directory of brought organism ``o`` (downloaded into the hub cache if need be, unless
    offline). ``configs_only``: only its JSON files (the checks). Chapter 1."""
    assert o.source is not None, f"{o.name} is trained, not brought"
    return local_dir(o.source.ref, revision=o.source.revision, subfolder=o.source.subfolder,
                     configs_only=configs_only, what=f"organism '{o.name}' ({o.kind})")


def check_brought(found: Sequence[Organism], *, model: str, cache_dir: str | Path,
                  base_cfg: dict[str, Any] | None = None) -> list[str]:
    """Check every brought organism against the base ``model`` from their files alone: it exists (locally or
    in the hub cache), an adapter is a LoRA adapter in safetensors whose shapes and layers fit the base model,
    a full fine-tune has the base model's architecture, width and depth. A hub adapter is fetched whole (its
    safetensors header holds the shapes; the chapters need it next), a hub full fine-tune only its configs.
    Raises ``ModelError`` naming the organism and the file; returns warnings (an adapter saved for a base model
    of another name)."""
    warnings: list[str] = []
    brought = [o for o in found if o.kind != "trained"]
    if not brought:
        return warnings
    base_cfg = base_cfg if base_cfg is not None else model_config(model, cache_dir=cache_dir)
    if base_cfg is None:
        raise ModelError(f"the config of {model!r} is not available yet to check the brought organisms against")
    for o in brought:
        d, where = fetch(o, configs_only=o.kind == "model"), f"organism '{o.name}'"  # an adapter's header is read
        try:
            if o.kind == "adapter":
                warnings += check_adapter(read_adapter(d), base_cfg, model, where=where)
            else:
                check_full_model(read_json(d / "config.json"), base_cfg, model, where=where, path=d)
        except ModelError as e:
            raise ModelError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return warnings


def describe_brought(o: Organism) -> dict[str, Any]:
    """What chapter 1's organism table shows of a brought organism: source, revision, kind, rank, layers and
    modules (read from its files). Chapter 1."""
    d = fetch(o, configs_only=o.kind == "model")
    row: dict[str, Any] = {"source": str(o.source), "kind": "PEFT LoRA adapter" if o.kind == "adapter" else "full fine-tune"}
    if o.kind == "adapter":
        info: AdapterInfo = read_adapter(d)
        row.update(rank=info.rank, alpha=info.alpha, rslora=info.rslora, modules=",".join(info.modules),
                   layers=",".join(map(str, info.layers)) or "all", base=info.base_model or "")
    else:
        cfg = read_json(d / "config.json")
        row.update(rank="full", modules="all weights", layers="all", base=cfg.get("_name_or_path", ""))
    return row
