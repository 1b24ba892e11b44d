"""emlib.work: jobs run alone or sharded over workers on one cache, under locks; a killed worker's job redone."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CACHE_DIR, ROOT
from emlib.plan import Job
from emlib.work import Lock, computed, done_keys, select

# ------------------------------------------------------------------ locks and selection (fast)


def test_a_lock_is_exclusive_and_released(tmp_path):
    a, b = Lock(tmp_path / "k"), Lock(tmp_path / "k")
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()
    assert not (tmp_path / "k").exists()


def test_a_dead_workers_lock_is_broken_and_a_live_ones_is_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "k"
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": 0}))
    assert Lock.stale(path) and Lock(path).acquire()  # its process is gone: the next worker takes the job
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "since": 0}))
    assert not Lock.stale(path)  # alive and fresh
    old = time.time() - 1000
    os.utime(path, (old, old))
    assert Lock.stale(path, stale_after=300)  # alive but silent for longer than the heartbeat allows: another host's


def test_select_by_shard_and_by_key_prefix():
    jobs = [Job(f"{i:02d}abc{i}", "sample", f"job {i}", 0, ("sample", {})) for i in range(7)]
    shards = [select(jobs, shard=(i, 3)) for i in range(3)]
    assert sorted(j.key for s in shards for j in s) == sorted(j.key for j in jobs)  # a partition
    assert [j.key for j in shards[1]] == [jobs[1].key, jobs[4].key]
    assert select(jobs, keys=["03"]) == [jobs[3]]
    with pytest.raises(ValueError, match="no jobs of the plan match"):
        select(jobs, keys=["zz"])
    with pytest.raises(ValueError, match="want 0 <= i < N"):
        select(jobs, shard=(3, 3))


# ------------------------------------------------------------------ filling a cache (the default model, CPU)


def tiny_params(tmp_path: Path, name: str) -> Path:
    """Smoke params, smaller still, on a cache of their own (the converted default model shared)."""
    cache = tmp_path / name / "cache"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to((CACHE_DIR / "models").resolve(), target_is_directory=True)
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p.update(cache_dir=str(cache), batch_size=6, random_controls=1, gaussian_controls=1, geometry_random_vectors=1)
    path = tmp_path / name / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def artifacts(cache: Path) -> dict[str, str]:
    """Every result file a chapter reads (samples, activations, directions, adapters) by path and content hash,
    and every judge score."""
    out = {}
    for sub in ("samples", "activations", "directions", "adapters"):
        for f in sorted((cache / sub).rglob("*")):
            if f.is_file() and ".ckpt" not in str(f):
                out[str(f.relative_to(cache))] = hashlib.sha256(f.read_bytes()).hexdigest()
    with sqlite3.connect(cache / "judge.sqlite") as db:
        rows = db.execute("SELECT backend, model, metric, prompt_sha, score FROM scores ORDER BY 1, 2, 3, 4").fetchall()
    out["judge scores"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return out


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, default_model):
    """The tiny plan filled by one worker, in this process."""
    from emlib.plan import plan
    from emlib.work import work

    params = tiny_params(tmp_path_factory.mktemp("work"), "one")
    ran = work(str(params))
    cache = Path(yaml.safe_load(params.read_text())["cache_dir"])
    return params, cache, ran


@pytest.mark.integration
def test_one_worker_runs_every_job_of_the_plan_and_computes_what_the_plan_counts(one_worker):
    from emlib.config import load_params
    from emlib.plan import plan, totals

    params, cache, ran = one_worker
    jobs = plan(load_params(params), 30)
    assert sorted(ran) == sorted(j.key for j in jobs) and done_keys(cache) == {j.key for j in jobs}
    logged = computed(cache)
    by_kind = {k: sum(e["kind"] == k for e in logged) for k in ("train", "sample", "judge", "activations")}
    assert by_kind == totals(jobs).by_kind  # each job computed exactly one unit: the plan counts what runs


@pytest.mark.integration
def test_two_workers_through_submitit_fill_the_same_cache_as_one(one_worker, tmp_path):
    from emlib.work import submit

    params, cache, _ = one_worker
    params2 = tiny_params(tmp_path, "two")
    ran = submit(str(params2), 2, cluster="local", folder=tmp_path / "submitit", timeout_min=30)
    cache2 = Path(yaml.safe_load(params2.read_text())["cache_dir"])
    assert sorted(k for r in ran for k in r) == sorted(done_keys(cache))  # every job run once, by one of the two
    assert all(ran)  # both workers ran jobs
    assert artifacts(cache2) == artifacts(cache)


@pytest.mark.integration
def test_a_worker_killed_mid_job_leaves_nothing_read_and_the_job_completes_on_rerun(one_worker, tmp_path):
    from emlib.config import load_params
    from emlib.plan import plan

    params, cache, _ = one_worker
    params3 = tiny_params(tmp_path, "killed")
    cache3 = Path(yaml.safe_load(params3.read_text())["cache_dir"])
    job = next(j for j in plan(load_params(params), 30) if j.kind == "sample" and not j.deps)  # the chat model's
    cmd = [sys.executable, "-m", "emlib.work", str(params3), "--job", job.key]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = cache3 / "samples"
    deadline = time.time() + 300
    while not list(parts.glob("*.parts/part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the worker finished before it could be killed mid-job"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cache3 / "jobs" / "locks" / job.key).is_file() and job.key not in done_keys(cache3)
    assert not list(parts.glob("*.parquet"))  # no finished table: only whole batches, which a rerun resumes from
    assert not [f for f in cache3.rglob("*.tmp")]  # nothing half-written left under a name a reader opens
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert job.key in done_keys(cache3)
    final = {f.name for f in parts.glob("*.parquet")}
    assert final and all((cache / "samples" / name).read_bytes() == (parts / name).read_bytes() for name in final)
