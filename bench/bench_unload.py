"""Does switching models free the last one? The book's switch (emlib.book.session.load) before and after
``emlib.devices.unload``, on the CPU with the default model (SmolLM2-135M, float32: 0.54 GB of weights).

Each mode loads model A, runs one steered forward through nnsight (the wrapper and the traced run leave reference
cycles on it, as every chapter's intervention runs do), drops it the mode's way, loads model B, and reports whether
A is still alive and the process's resident memory. ``python bench/bench_unload.py [--cache-dir DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import weakref

import torch

from emlib.devices import unload
from emlib.interventions import run, steer
from emlib.models import load_model


def rss_gb() -> float:
    """Resident memory of this process, GB (Linux)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def trial(mode: str, cache_dir: str) -> dict[str, float | bool | str]:
    loaded = {}
    model, tok, _ = load_model("default", cache_dir=cache_dir, device_map="cpu", dtype="float32")
    ids = tok("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        run(model, steer(torch.randn(model.config.hidden_size), 10, 4.0), lambda: model(input_ids=ids).logits)
    loaded["a"] = (model, tok, None)
    alive = weakref.ref(model)
    del model, tok
    before = rss_gb()
    if mode == "clear (before)":
        loaded.clear()
    else:
        unload(loaded)
    after_drop = rss_gb()
    b = load_model("default", cache_dir=cache_dir, device_map="cpu", dtype="float32")
    out = {"mode": mode, "A alive after B loaded": alive() is not None, "RSS with A (GB)": round(before, 2),
           "RSS after dropping A (GB)": round(after_drop, 2), "RSS with B loaded (GB)": round(rss_gb(), 2)}
    del b
    unload(loaded)
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache-dir", default=".cache/emlib")
    args = ap.parse_args()
    for mode in ("clear (before)", "unload (now)"):
        print(trial(mode, args.cache_dir))


if __name__ == "__main__":
    main()
