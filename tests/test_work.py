"""emlib.work: jobs run alone or sharded over workers on one cache, under locks; a killed worker's job redone."""

import hashlib
import json
import os
import signal
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


# ------------------------------------------------------------------ every job of a plan resolves (no model)


@pytest.mark.parametrize("preset, overrides, n_layers", [
    ("smoke", {}, 30), ("default", {}, 30), ("paper", {"questions": "builtin"}, 48),
    ("default", {"intervention_questions": "evaluation", "compare_samples_per_question": None,
                 "steer_layers": [10, 15], "steer_scales": [1.0, 2.0]}, 30)])
def test_every_sampling_job_of_the_plan_is_a_run_the_chapters_make(monkeypatch, preset, overrides, n_layers):
    """``emlib.work.spec_for`` finds each sampling job's run among the chapters' own (the chapters' ``RunSpec``s
    under a random direction and random controls), and the chapters make no intervention run the plan lacks."""
    import types

    import torch

    from emlib.book import direction_extraction, steering, transfer_ablation
    from emlib.book.session import FineTune
    from emlib.config import load_params
    from emlib.data import load_questions
    from emlib.directions import Directions
    from emlib.plan import Run, n_gaussian, plan
    from emlib.work import spec_for

    p = load_params(f"params/{preset}.yaml", overrides)
    width = 64
    direction = Directions(torch.randn(n_layers, width))
    random = {"anisotropy-matched": [Directions(torch.randn(n_layers, width)) for _ in range(p.random_controls)],
              "Gaussian": [Directions(torch.randn(n_layers, width)) for _ in range(n_gaussian(p))]}
    monkeypatch.setattr(direction_extraction, "source_of", lambda ch: (direction, None))
    for module in (steering, transfer_ablation):
        monkeypatch.setattr(module, "control_vectors", lambda ch, d: random)
    ch = types.SimpleNamespace(p=p, questions=load_questions(p.questions, p.include_variants),
                               chat=FineTune("chat model", p.model),
                               ready={o["name"]: FineTune(o["name"], p.model, f"/adapters/{o['name']}") for o in p.organisms})
    jobs = [j for j in plan(p, n_layers) if j.kind == "sample"]
    for job in jobs:
        run = Run(**job.target[1])
        spec = spec_for(ch, run)
        assert spec.run == run and spec.sampling.max_new_tokens == run.max_new_tokens
        assert len(spec.questions) * spec.sampling.samples_per_question * (
            len(spec.intervention.units) if spec.units else 1) == job.answers
    planned = {Run(**j.target[1]) for j in jobs}
    made = {s.run for s in steering.steering_specs(ch, direction) + transfer_ablation.ablation_specs(ch, direction)}
    assert made <= planned


# ------------------------------------------------------------------ filling a cache (the default model, CPU)


def fresh_params(tmp_path: Path, name: str, **changes) -> tuple[Path, Path]:
    """params/smoke.yaml on a cache of its own (the converted default model shared): (params file, cache dir)."""
    cache = tmp_path / name / "cache"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to((CACHE_DIR / "models").resolve(), target_is_directory=True)
    p = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    p.update(cache_dir=str(cache), **changes)
    path = tmp_path / name / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path, cache


PATH_BEARING = ("adapter_config.json", "README.md")  # PEFT writes the base model's path (under cache_dir) there


def artifacts(cache: Path, names: set[str] | None = None) -> dict[str, str]:
    """Result files a chapter reads (samples, activations, directions, adapters; only ``names`` if given) by path
    and content hash."""
    out = {}
    for sub in ("samples", "activations", "directions", "adapters"):
        for f in sorted((cache / sub).rglob("*")):
            rel = str(f.relative_to(cache))
            if f.is_file() and ".ckpt" not in rel and f.name not in PATH_BEARING and (names is None or rel in names):
                out[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, smoke_chapters):
    """The smoke plan filled by two workers at once (a submitit job array on the local executor), beside the cache
    the smoke chapters (``make book``'s way, one process) filled."""
    from emlib.work import submit

    tmp = tmp_path_factory.mktemp("work")
    params, cache = fresh_params(tmp, "two")
    ran = submit(str(params), 2, cluster="local", folder=tmp / "submitit", timeout_min=40, chapters=CHAPTERS)
    return params, cache, ran


CHAPTERS = (0, 1)  # training and the evaluation runs: on 2 cores two workers' every job would outlast a test


@pytest.mark.integration
@pytest.mark.notebooks
def test_two_workers_run_every_job_once_and_compute_what_the_plan_counts(two_workers):
    """Chapters 0 and 1's jobs (their dependencies are among them) split over two workers."""
    from emlib.config import load_params
    from emlib.plan import plan, totals

    params, cache, ran = two_workers
    jobs = [j for j in plan(load_params(params), 30) if j.chapter in CHAPTERS]
    assert all(ran) and sorted(k for r in ran for k in r) == sorted(j.key for j in jobs)  # each job once, by one
    assert done_keys(cache) == {j.key for j in jobs}
    logged = computed(cache)
    by_kind = {k: sum(e["kind"] == k for e in logged) for k in ("train", "sample", "judge", "activations")}
    assert by_kind == totals(jobs).by_kind  # one unit computed per job: the plan counts what runs


@pytest.mark.integration
@pytest.mark.notebooks
def test_two_workers_fill_the_cache_the_chapters_fill(two_workers):
    """Every result the workers wrote is, byte for byte, the one the smoke chapters wrote in the shared test cache;
    every judge score the same."""
    from emlib.judge import JudgeCache

    _, cache, _ = two_workers
    mine = artifacts(cache)
    assert mine and artifacts(CACHE_DIR, set(mine)) == mine
    theirs = JudgeCache(CACHE_DIR / "judge.sqlite").scores()
    scored = JudgeCache(cache / "judge.sqlite").scores()
    assert scored and {k: theirs.get(k, "absent") for k in scored} == scored


@pytest.mark.integration
def test_a_worker_killed_mid_job_leaves_nothing_read_and_the_job_completes_on_rerun(tmp_path, default_model):
    from emlib.config import load_params
    from emlib.plan import plan

    params, cache = fresh_params(tmp_path, "killed", batch_size=2)  # the chat model's 16 answers in 8 batches
    reference, ref_cache = fresh_params(tmp_path, "reference", batch_size=2)
    job = next(j for j in plan(load_params(params), 30) if j.kind == "sample" and not j.deps)  # the chat model's
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "emlib.work", "--job", job.key]
    proc = subprocess.Popen([*cmd, str(params)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = cache / "samples"
    deadline = time.time() + 300
    while not list(samples.glob("*.parts/part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the worker finished before it could be killed mid-job"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cache / "jobs" / "locks" / job.key).is_file() and job.key not in done_keys(cache)
    assert not list(samples.glob("*.parquet"))  # no table yet: only whole batches, which the rerun resumes from
    assert not list(cache.rglob("*.tmp"))  # nothing half-written under a name a reader opens
    for p in (params, reference):
        rerun = subprocess.run([*cmd, str(p)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert job.key in done_keys(cache) and not (cache / "jobs" / "locks" / job.key).exists()
    final = artifacts(cache)
    assert final and final == artifacts(ref_cache)  # the same table as a run never killed
