"""Run the plan's jobs (``emlib.plan``) one at a time, on any number of workers sharing one cache.

``python -m emlib.work PARAMS`` runs every job not yet done; ``--job KEY`` one job (and what it needs first);
``--shard i/N`` every N-th job from the i-th, so N workers (processes, GPUs, machines) split the plan. A job fills
only its own cache entries, which are written atomically (a reader sees a whole file or none), and a job runs under
a lock (``cache_dir/jobs/locks/<key>``, created exclusively, its time refreshed while the job runs): a second worker
waits for a job another holds, and a lock whose worker died (its process gone, or its heartbeat older than
``STALE_AFTER``) is broken, so a killed worker's job is redone by the next. Sampling and activation passes resume
from their last finished batch. A finished job leaves ``cache_dir/jobs/done/<key>.json``; ``make book`` then renders
from the filled cache. ``--submitit local|slurm --workers N`` spreads the shards as one submitit job array
(``submit``): SLURM on a cluster, subprocesses on one machine (README: "Many GPUs").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from emlib.cache import write_text_atomic
from emlib.plan import Job, Run, plan, questions_named

if TYPE_CHECKING:  # the book's modules import torch and models: loaded only when a job runs
    from emlib.book.runs import RunSpec
    from emlib.book.session import Chapter

HEARTBEAT = 15.0  # seconds between a running job's lock refreshes
STALE_AFTER = 300.0  # a lock not refreshed for this long belongs to a dead worker (on any host)
POLL = 2.0  # seconds between looks at a job another worker holds


def jobs_dir(cache_dir: str | Path) -> Path:
    """Where the workers keep their locks, done markers and the log of computed units."""
    return Path(cache_dir) / "jobs"


def done_keys(cache_dir: str | Path) -> set[str]:
    """Keys of the jobs a worker finished under ``cache_dir``."""
    d = jobs_dir(cache_dir) / "done"
    return {f.stem for f in d.glob("*.json")} if d.is_dir() else set()


def computed(cache_dir: str | Path) -> list[dict[str, Any]]:
    """The log of units computed under ``cache_dir`` (``emlib.cache.log_computed``): one dict a unit."""
    path = jobs_dir(cache_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


class Lock:
    """An exclusive lock on one job: a file created with ``O_EXCL`` holding the worker's host, pid and a random
    token, its modification time refreshed every ``HEARTBEAT`` seconds by a thread while held."""

    def __init__(self, path: Path):
        self.path = path
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()

    @staticmethod
    def stale(path: Path, stale_after: float = STALE_AFTER) -> bool:
        """Whether the lock at ``path`` belongs to a dead worker: its process is gone (same host), or it has not
        been refreshed for ``stale_after`` seconds (also a lock left empty by a worker killed while writing it)."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        try:
            holder = json.loads(path.read_text())
            same_host, pid = holder["host"] == socket.gethostname(), int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return age > stale_after
        if same_host:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        return age > stale_after

    def _break_stale(self, stale_after: float) -> None:
        """Remove the lock if it is stale, one worker at a time: under ``<key>.break`` (itself ``O_EXCL``), the
        lock is looked at again before it goes, so a lock another worker just took is never removed."""
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:  # a worker killed while breaking a lock leaves the guard: it is old after a heartbeat or two
                if time.time() - guard.stat().st_mtime > 4 * HEARTBEAT:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            if self.stale(self.path, stale_after):
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self, stale_after: float = STALE_AFTER) -> bool:
        """Take the lock if it is free, or stale (broken first); False if another live worker holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._break_stale(stale_after)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "since": time.time()}, f)
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), daemon=True).start()
        return True

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this worker's (its token in it)."""
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass


def run_job(ch: "Chapter", job: Job) -> None:
    """Compute ``job``'s cache entries with the chapters' own functions (``ch``: an ``emlib.book.Chapter``)."""
    from emlib.book import direction_extraction as dx
    from emlib.book import session
    from emlib.book.geometry import geometry_pass

    kind = job.target[0]
    if kind == "train":
        session.train_organism(ch, next(o for o in ch.organisms if o.name == job.target[1]))
        return
    if kind == "activations":
        _, what, run, through, _ = job.target
        run = Run(**run)
        if what == "means":
            source, texts = dx.source_of(ch)
            geometry_pass(ch, texts, source, through)
        else:  # an extraction set's texts through its own model, or through another (the cross-model control)
            spec = spec_for(ch, run)
            samples = session.sample(ch, spec.questions, ft=spec.ft, sampling=spec.sampling)
            session.answer_sums(ch, samples, ft=None if through == "chat model" else ch.ready[through])
        return
    spec = spec_for(ch, Run(**job.target[1]))
    if kind == "sample":
        session.sample(ch, spec.questions, ft=spec.ft, sampling=spec.sampling, intervention=spec.intervention)
    elif kind == "judge":
        session.sample_and_judge(ch, spec.questions, ft=spec.ft, sampling=spec.sampling, intervention=spec.intervention)
    elif kind == "set judge":
        full = session.sample_and_judge(ch, spec.questions, ft=spec.ft, sampling=spec.sampling).reset_index(drop=True)
        session.judge_table(ch, full, spec.questions)
    else:
        raise ValueError(f"job {job.key}: unknown target {job.target!r}")


def spec_for(ch: "Chapter", run: Run) -> "RunSpec":
    """The chapters' ``RunSpec`` of the sampling run the plan calls ``run``: an evaluation or extraction run (no
    direction needed), else a steering or ablation run (the direction read from chapter 2's cache)."""
    from emlib.book import direction_extraction as dx
    from emlib.book import session
    from emlib.book.runs import RunSpec
    from emlib.book.steering import steering_specs
    from emlib.book.transfer_ablation import ablation_specs

    p = ch.p
    ft = None if run.model == "chat model" else ch.ready[run.model]
    if run.intervention == "none" and run.amplification == 1.0 and run.max_new_tokens == p.max_new_tokens \
            and run.questions == "evaluation" and run.samples_per_question == p.samples_per_question:
        return RunSpec(run, ch.questions, ft, None, session.sampling_from_params(p))
    if run.intervention == "none" and run.max_new_tokens == p.intervention_max_new_tokens:
        sampling = replace(session.intervention_sampling(p, run.samples_per_question), amplification=run.amplification)
        return RunSpec(run, questions_named(ch.p, run.questions), ft, None, sampling)
    direction, _ = dx.source_of(ch)
    specs = steering_specs if run.model == "chat model" else ablation_specs  # the chat model is steered, organisms ablated
    for spec in specs(ch, direction):
        if spec.run == run:
            return spec
    raise ValueError(f"no chapter samples the run the plan names {run}: emlib.plan and the chapters disagree")


def ensure(ch: "Chapter", job: Job, by_key: dict[str, Job], *, stale_after: float = STALE_AFTER,
           log: list[str] | None = None) -> bool:
    """``job`` done under the shared cache: its dependencies first (each run here or waited for), then the job
    itself under its lock, unless another worker did it meanwhile. A job whose judging had failures (a score the
    judge could not give: NaN, not cached) is not marked done, so the next ``work`` asks for those scores again.
    Returns whether the job is done; ``log`` collects the keys run here."""
    cache = ch.p.cache_dir
    if job.key in done_keys(cache):
        return True
    if not all([ensure(ch, by_key[d], by_key, stale_after=stale_after, log=log) for d in job.deps]):
        return False
    lock = Lock(jobs_dir(cache) / "locks" / job.key)
    while job.key not in done_keys(cache):
        if not lock.acquire(stale_after):
            time.sleep(POLL)
            continue
        try:
            if job.key in done_keys(cache):
                break
            t0, failed = time.time(), len(ch.judge_failures)
            run_job(ch, job)
            if len(ch.judge_failures) > failed:
                warnings.warn(f"job {job.key} ({job.name}): {len(ch.judge_failures) - failed} judge scores failed "
                              "(shown by the chapters); not marked done, the next run asks for them again", stacklevel=2)
                return False
            write_text_atomic(jobs_dir(cache) / "done" / f"{job.key}.json", json.dumps(
                {**asdict(job), "seconds": round(time.time() - t0, 2), "host": socket.gethostname(),
                 "pid": os.getpid()}, default=str))
            if log is not None:
                log.append(job.key)
        finally:
            lock.release()
    return True


def select(jobs: Sequence[Job], *, keys: Sequence[str] = (), shard: tuple[int, int] = (0, 1),
           chapters: Sequence[int] | None = None) -> list[Job]:
    """The jobs named by ``keys`` (a unique prefix of a key is enough), else shard ``i`` of ``n`` (every n-th job
    from the i-th, in the plan's order) of the jobs of ``chapters`` (default: all)."""
    if keys:
        out = []
        for k in keys:
            hits = [j for j in jobs if j.key.startswith(k)]
            if len(hits) != 1:
                raise ValueError(f"--job {k}: {'no' if not hits else len(hits)} jobs of the plan match "
                                 "(python -m emlib.plan PARAMS lists them)")
            out += hits
        return out
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"--shard {i}/{n}: want 0 <= i < N")
    jobs = [j for j in jobs if chapters is None or j.chapter in chapters]
    return [j for k, j in enumerate(jobs) if k % n == i]


def work(params_file: str, *, keys: Sequence[str] = (), shard: tuple[int, int] = (0, 1),
         chapters: Sequence[int] | None = None, overrides: dict[str, Any] | None = None,
         stale_after: float = STALE_AFTER) -> list[str]:
    """Run the selected jobs of ``params_file``'s plan (and what they need), with the chapters' own code; returns
    the keys this worker ran. Used by ``python -m emlib.work`` and each ``submit`` worker."""
    from emlib.book.session import open_chapter

    ch = open_chapter(params_file, overrides or {})
    jobs = plan(ch.p, ch.info.n_layers)
    by_key = {j.key: j for j in jobs}
    ran: list[str] = []
    for job in tqdm(select(jobs, keys=keys, shard=shard, chapters=chapters), desc=f"jobs (shard {shard[0]}/{shard[1]})", unit="job"):
        ensure(ch, job, by_key, stale_after=stale_after, log=ran)
    return ran


def submit(params_file: str, workers: int, *, cluster: str, folder: str | Path,
           overrides: dict[str, Any] | None = None, timeout_min: int = 24 * 60, slurm_partition: str | None = None,
           gpus_per_node: int = 0, cpus_per_task: int = 2, chapters: Sequence[int] | None = None,
           wait: bool = True) -> list[Any]:
    """``work`` on ``workers`` shards as one submitit job array: ``cluster`` "slurm" (one array task a shard, each
    with ``gpus_per_node`` GPUs), "local" (subprocesses here) or "debug" (in this process). Returns each shard's
    ``work`` result (``wait``), else the submitit jobs."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    ex.update_parameters(timeout_min=timeout_min, cpus_per_task=cpus_per_task, gpus_per_node=gpus_per_node,
                         slurm_array_parallelism=workers, **({"slurm_partition": slurm_partition}
                                                              if slurm_partition else {}))
    jobs = ex.map_array(_shard, [params_file] * workers, list(range(workers)), [workers] * workers,
                        [overrides or {}] * workers, [chapters] * workers)
    return [j.result() for j in jobs] if wait else jobs


def _shard(params_file: str, i: int, n: int, overrides: dict[str, Any], chapters: Sequence[int] | None) -> list[str]:
    return work(params_file, shard=(i, n), chapters=chapters, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """``python -m emlib.work PARAMS [--job KEY ...] [--shard i/N] [--submitit local|slurm --workers N]``."""
    ap = argparse.ArgumentParser(prog="python -m emlib.work", description=__doc__.splitlines()[0])
    ap.add_argument("params")
    ap.add_argument("--job", action="append", default=[], help="a job's key (or a unique prefix); repeatable")
    ap.add_argument("--shard", default="0/1", help="i/N: run every N-th job from the i-th")
    ap.add_argument("--chapters", help="only these chapters' jobs (and what they need), e.g. 0,1")
    ap.add_argument("--submitit", choices=["local", "slurm"], help="spread --workers shards as a submitit array")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--folder", default="_build/submitit", help="submitit's logs and pickles")
    ap.add_argument("--partition", help="SLURM partition")
    ap.add_argument("--gpus-per-worker", type=int, help="GPUs each worker gets (default: 1 on SLURM, 0 locally)")
    ap.add_argument("--compact-judge", action="store_true", help="merge the judge's score files into one (run it "
                    "when no worker is running) and exit")
    a = ap.parse_args(argv)
    if a.compact_judge:
        from emlib.config import load_params
        from emlib.judge import JudgeCache

        cache = Path(load_params(a.params).cache_dir)
        held = [f.name for f in (jobs_dir(cache) / "locks").glob("*") if not f.name.endswith(".break")
                and not Lock.stale(f)] if (jobs_dir(cache) / "locks").is_dir() else []
        if held:
            raise SystemExit(f"error: {len(held)} jobs are running (their locks are fresh): compact when no worker runs")
        n = JudgeCache(cache / "judge.sqlite").compact()
        print(f"{n} judge scores in one file")
        return 0
    chapters = [int(c) for c in a.chapters.split(",")] if a.chapters else None
    if a.submitit:
        if a.job or a.shard != "0/1":
            raise SystemExit("error: --submitit makes its own shards (--workers N); --job and --shard are for one worker")
        done = submit(a.params, a.workers, cluster=a.submitit, folder=a.folder, slurm_partition=a.partition,
                      gpus_per_node=a.gpus_per_worker if a.gpus_per_worker is not None else int(a.submitit == "slurm"),
                      chapters=chapters)
        print(f"{sum(map(len, done))} jobs run by {a.workers} workers")
        return 0
    i, n = (int(x) for x in a.shard.split("/"))
    ran = work(a.params, keys=a.job, shard=(i, n), chapters=chapters)
    print(f"{len(ran)} jobs run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
