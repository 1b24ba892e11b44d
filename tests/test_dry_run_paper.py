"""The arithmetic of bench/dry_run_paper.py (the script itself needs a GPU, or --tiny: not run here)."""

import importlib.util
import sys

import pytest
from transformers import Qwen2Config

from conftest import ROOT

spec = importlib.util.spec_from_file_location("dry_run_paper", ROOT / "bench" / "dry_run_paper.py")
D = sys.modules["dry_run_paper"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(D)
CFG = Qwen2Config(**D.QWEN14B)


def test_kv_bytes_and_the_step_bound_of_the_14b_shape():
    assert D.kv_bytes_per_token(CFG) == 48 * 2 * 8 * 128 * 2  # 192 KiB a token
    w = 14_000_000_000
    one = D.step_bound(CFG, w, rows=1, context=0)  # one row: the weights' bytes bound it
    assert one == pytest.approx((2 * w + D.kv_bytes_per_token(CFG)) / 4.8e12)
    many = D.step_bound(CFG, w, rows=1024, context=0)  # 1024 rows: the FLOPs do
    assert many == pytest.approx((2 * w * 1024 + 4 * 48 * 5120 * 1024) / 989e12)
    assert D.step_bound(CFG, w, rows=200, context=660) > D.step_bound(CFG, w, rows=200, context=60)


def test_live_rows_and_the_runs_bound():
    assert D.live_rows(4, [0, 1, 0, 3]) == [4, 3, 3]  # no forward after the last sampled token
    w = 10**9
    got = D.decode_bound(CFG, w, prefill_rows=2, width=60, live=[4, 3, 0])
    want = D.step_bound(CFG, w, 2, 0, 60) + D.step_bound(CFG, w, 4, 60) + D.step_bound(CFG, w, 3, 61)
    assert got == pytest.approx(want)
