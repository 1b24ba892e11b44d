"""Where a model runs: a GPU asked for and not there is an error naming the override; a switched-out model is freed."""

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from emlib import devices
from emlib.devices import DeviceError, asks_for_gpu, check_device, device_map_for, unload, valid_device_map

ROOT = Path(__file__).resolve().parents[1]


def test_which_device_maps_ask_for_a_gpu():
    assert [asks_for_gpu(d) for d in ("cpu", "auto", "cuda", "cuda:3")] == [False, True, True, True]
    assert [valid_device_map(d) for d in ("cpu", "auto", "cuda", "cuda:12", "gpu", "cuda:x", "cuda:", "mps")] == [
        True, True, True, True, False, False, False, False]


def test_a_gpu_asked_for_and_not_seen_is_an_error_naming_the_override(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: (0, "torch 2.13.0+cpu, a CPU build"))
    for asked in ("auto", "cuda", "cuda:0"):
        with pytest.raises(DeviceError) as e:
            check_device(asked, False, "my.yaml")
        msg = str(e.value)
        assert msg.startswith("my.yaml: key 'device_map'") and "no GPU is visible" in msg and "allow_cpu: true" in msg
        assert "make install-gpu" in msg  # a CPU build of torch: the command that installs the CUDA one
        check_device(asked, True, "my.yaml")  # the override: the CPU on purpose
        assert device_map_for(asked, True) == "cpu" and device_map_for(asked, False) == asked
    check_device("cpu", False, "my.yaml")


def test_a_gpu_index_beyond_those_seen_is_an_error(monkeypatch):
    monkeypatch.setattr(devices, "visible_gpus", lambda: (2, "torch 2.13.0 built for CUDA 12.8"))
    check_device("cuda:1", False, "p.yaml")
    assert device_map_for("auto", True) == "auto"  # GPUs there: the override changes nothing
    with pytest.raises(DeviceError, match=r"only 2 GPUs visible \(cuda:0..cuda:1\)") as e:
        check_device("cuda:2", False, "p.yaml")
    assert "make install-gpu" not in str(e.value)


def test_checking_a_cpu_preset_does_not_import_torch():
    code = ("import sys; from emlib.devices import check_device; check_device('cpu', False, 'x'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_unload_frees_a_model_nnsight_has_wrapped():
    """A model the nnsight wrapper and a traced run refer to (reference cycles) is freed by ``unload``, not
    later by a collection that may come after the next model's weights are in memory."""
    from conftest import tiny_model

    from emlib.interventions import run, steer

    model = tiny_model("llama")
    with torch.no_grad():
        run(model, steer(torch.randn(64), 1, 2.0), lambda: model(input_ids=torch.tensor([[3, 4, 5]])).logits)
    assert "_emlib_nnsight" in vars(model)
    loaded = {("a", None, True): (model, None, None)}
    alive = weakref.ref(model)
    del model
    gc.disable()  # no automatic collection: what frees the model is unload (or nothing)
    try:
        gc.collect()
        kept = {("b", None, True): loaded.pop(("a", None, True))}  # cleared without unload: the cycle keeps it
        kept.clear()
        assert alive() is not None
        loaded[("a", None, True)] = (alive(), None, None)
        unload(loaded)
        assert alive() is None and not loaded
    finally:
        gc.enable()


def test_switching_models_in_a_chapter_frees_the_last_one(monkeypatch):
    """``session.load`` of another model frees the one it held (the weakref is dead before the next is built),
    and asks ``device_map_for`` where to put it: a GPU preset with ``allow_cpu`` loads on the CPU."""
    from conftest import tiny_model

    from emlib.book import session
    from emlib.config import Params
    from emlib.interventions import wrap

    built, placed = [], []

    def fake_load_model(spec, adapter, *, dtype, device_map, cache_dir, trust_remote_code, merge):
        if built:
            assert built[-1]() is None, "the previous model is still alive while the next one loads"
        model = tiny_model("llama")
        wrap(model)  # the nnsight wrapper, as any intervention run leaves on the model
        built.append(weakref.ref(model))
        placed.append(device_map)
        return model, None, session.LoadInfo(spec, None, None, "pretrained", 0.0, "float32", 4, 64)

    monkeypatch.setattr(session, "load_model", fake_load_model)
    monkeypatch.setattr(devices, "visible_gpus", lambda: (0, "torch 2.13.0+cpu, a CPU build"))
    ch = session.Chapter(Params(device_map="auto", allow_cpu=True), "p.yaml", None, [], None)
    gc.disable()
    try:
        for name in ("a", "b", "a"):
            session.load(ch, session.FineTune(name, name))
        assert [r() is None for r in built] == [True, True, False] and placed == ["cpu"] * 3
    finally:
        gc.enable()
