"""Where a model runs: the params' ``device_map``, checked against the GPUs torch can see, with no silent fallback.

A params file asks for a GPU with ``device_map: auto`` (every visible GPU, the model spread over them when one is
not enough), ``cuda`` or ``cuda:N``; ``device_map: cpu`` (the default) runs on the CPU. A file that asks for a GPU
on a machine where torch sees none is an error in ``make check-params`` (``check_device``, from
``emlib.config.validate``), naming the override ``allow_cpu: true``: with it the same file runs on the CPU on
purpose (``device_map_for`` gives ``"cpu"``). Only a file that asks for a GPU imports torch here: checking
``device_map: cpu`` stays a matter of reading files.

``unload`` empties a table of loaded models and gives their memory back (the book keeps one model at a time).
"""

from __future__ import annotations

import gc
import re
from collections.abc import MutableMapping
from typing import Any

DEVICE_MAPS = "cpu | auto | cuda | cuda:N"
_CUDA = re.compile(r"cuda(:\d+)?")
OVERRIDE = "allow_cpu: true"


class DeviceError(ValueError):
    """A ``device_map`` this machine cannot honour (no GPU, or fewer than it names)."""


def valid_device_map(device_map: str) -> bool:
    """Whether ``device_map`` is one of ``DEVICE_MAPS``."""
    return device_map in ("cpu", "auto") or _CUDA.fullmatch(device_map) is not None


def asks_for_gpu(device_map: str) -> bool:
    """Whether ``device_map`` (``auto``, ``cuda``, ``cuda:N``) asks for a GPU; ``cpu`` does not."""
    return device_map == "auto" or _CUDA.fullmatch(device_map) is not None


def visible_gpus() -> tuple[int, str]:
    """The number of CUDA devices torch sees, and torch's build in words ("torch 2.13.0+cpu, a CPU build").
    Imports torch (seconds): called only for a ``device_map`` that asks for a GPU."""
    import torch

    build = (f"torch {torch.__version__}, a CPU build" if torch.version.cuda is None
             else f"torch {torch.__version__} built for CUDA {torch.version.cuda}")
    return (torch.cuda.device_count() if torch.cuda.is_available() else 0), build


def check_device(device_map: str, allow_cpu: bool, source: str) -> None:
    """Raise ``DeviceError`` naming ``source``, the key and the override when ``device_map`` asks for a GPU that
    torch cannot see (``cuda:N``: fewer than N + 1), unless ``allow_cpu``. ``make check-params`` and every chapter's
    ``open_chapter`` run it (``emlib.config.validate``)."""
    if not asks_for_gpu(device_map) or allow_cpu:
        return
    count, build = visible_gpus()
    index = int(device_map.split(":")[1]) if ":" in device_map else 0
    if count > index:
        return
    seen = "no GPU is visible" if count == 0 else f"only {count} GPU{'s' * (count > 1)} visible (cuda:0..cuda:{count - 1})"
    hint = " Install torch's CUDA build: make install-gpu." if "CPU build" in build else ""
    raise DeviceError(
        f"{source}: key 'device_map': {device_map!r} asks for a GPU, but {seen} ({build}).{hint} To run on the CPU "
        f"on purpose (a large model is slow there), set the override {OVERRIDE} in the params file, or pass it: "
        f"python -m emlib.config FILE allow_cpu=true; in a notebook overrides={{'allow_cpu': True}}.")


def device_map_for(device_map: str, allow_cpu: bool) -> str:
    """The ``device_map`` to load with: ``"cpu"`` where ``device_map`` asks for a GPU, none is visible and
    ``allow_cpu`` says the CPU is wanted; else ``device_map`` itself (``emlib.models.load_model`` then fails loudly
    on a ``cuda`` it cannot have). Every model the book loads."""
    if allow_cpu and asks_for_gpu(device_map) and visible_gpus()[0] == 0:
        return "cpu"
    return device_map


def unload(loaded: MutableMapping[Any, tuple[Any, ...]]) -> None:
    """Empty ``loaded`` (key -> (model, tokenizer, info)) and give the models' memory back: each model's
    emlib-owned attributes (``_emlib_*``: the nnsight wrapper, which refers back to the model, a reference
    cycle) are dropped, then ``gc.collect()`` frees what only cycles still held and, when CUDA is in use,
    ``torch.cuda.empty_cache()`` returns the freed blocks to the driver. A model the caller still refers to stays
    alive, of course. ``emlib.book.session.load`` calls it before loading another model."""
    while loaded:
        _, entry = loaded.popitem()
        model = entry[0]
        for name in [k for k in vars(model) if k.startswith("_emlib_")]:
            vars(model).pop(name)
        del model, entry
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
