"""Content hashing and atomic writes, shared by every long stage.

A stage's result lives at a path derived from a hash of everything that determines
it (model, adapter, data, params), so a re-run with nothing changed finds it and
recomputes nothing. Files appear only complete: written to a temporary name in the
same directory, then renamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_key(obj: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-serialisable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    On an exception the temporary file (or directory) is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.unlink(tmp)  # the caller creates a file or a directory there
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(dest: str | Path, text: str) -> None:
    """Write ``text`` to ``dest`` so that readers see the old file or the whole new one."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def log_computed(cache_dir: str | Path, kind: str, what: str) -> None:
    """Append one line to ``cache_dir/jobs/log.jsonl``: a result of ``kind`` (train, sample, judge, activations)
    was computed, not read from the cache. ``emlib.plan`` counts the same units; a cold ``make book`` or
    ``emlib.work`` leaves one line per unit it computed (one ``write`` of a short line: whole under ``O_APPEND``)."""
    import socket
    import time

    path = Path(cache_dir) / "jobs" / "log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"kind": kind, "what": what, "host": socket.gethostname(), "pid": os.getpid(),
                       "time": round(time.time(), 3)}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
