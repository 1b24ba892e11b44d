"""Default-model load time: first load (GGUF dequantised by transformers, then saved as
safetensors) vs every later load (from the safetensors cache). One run, fresh cache dir.

    python bench/bench_load.py
"""

from __future__ import annotations

import json
import tempfile

from emlib.models import load_model


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        _, _, first = load_model("default", cache_dir=cache, device_map="cpu")
        _, _, cached = load_model("default", cache_dir=cache, device_map="cpu")
    print(json.dumps({"first_load_s": round(first.seconds, 2), "first_source": first.source,
                      "cached_load_s": round(cached.seconds, 2), "cached_source": cached.source,
                      "speedup": round(first.seconds / cached.seconds, 1)}))


if __name__ == "__main__":
    main()
