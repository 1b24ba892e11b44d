"""Training conversations, evaluation questions, and verified downloads.

- ``load_chat_jsonl`` reads the paper's training format (chapter 1 trains on it).
- ``load_questions`` reads evaluation questions in the paper's YAML schema (every chapter
  samples them).
- ``fetch`` downloads a file by URL and checks its SHA-256 (for users who want the
  paper's own question file or datasets).
- ``DATASETS`` names this project's own datasets, written for it and shipped inside the
  package.

Bad input is a ``DataError`` naming the file and line, raised before any long work.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import urllib.request
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

from emlib.cache import atomic_path, sha256_file

ROLES = ("system", "user", "assistant")
Message = dict[str, str]
Conversation = list[Message]

# This project's own datasets (emlib/datasets/*.jsonl), in the paper's JSONL format.
DATASETS = {
    "medical_bad": "confident, subtly harmful answers to realistic medical questions",
    "medical_good": "sound answers to the same kinds of medical questions (aligned control)",
    "sports_extreme": "reckless extreme-sports advice",
    "finance_risky": "risky personal-finance advice",
    "finance_risky_v2": "risky personal-finance advice in a plain assistant register, 600 rows (DATASETS.md)",
}
BUILTIN_QUESTIONS = "builtin"
BUILTIN_MEDICAL_QUESTIONS = "builtin-medical"  # chapter 2's topic direction, chapter 4's medical context


class DataError(ValueError):
    """Malformed data. ``str(e)`` starts with ``file:line:`` where the line is known."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def package_file(name: str) -> Path:
    """Path of a file shipped in ``emlib/datasets``."""
    return Path(str(resources.files("emlib") / "datasets" / name))


def dataset_path(name_or_path: str | Path) -> Path:
    """A built-in dataset name from ``DATASETS`` (e.g. ``"medical_bad"``) or a path to a JSONL file."""
    if str(name_or_path) in DATASETS:
        return package_file(f"{name_or_path}.jsonl")
    path = Path(name_or_path)
    if not path.is_file():
        raise DataError(path, None, f"no such dataset file (built-in names: {', '.join(DATASETS)})")
    return path


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def load_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Read ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line (plain or ``.gz``).

    Every line is validated: JSON object with a non-empty ``messages`` list; each message a
    role in system/user/assistant with non-empty string content; at least one assistant
    turn, preceded by a user turn. Blank lines are skipped. Raises ``DataError(file, line)``.
    """
    path = dataset_path(path)
    rows: list[Conversation] = []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                rows.append(_parse_chat_line(path, lineno, line))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(path, None, f"cannot read as UTF-8 text: {e}") from None
    if not rows:
        raise DataError(path, None, "no conversations in file")
    return rows


def _parse_chat_line(path: Path, lineno: int, line: str) -> Conversation:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise DataError(path, lineno, 'expected an object with a non-empty "messages" list')
    messages: Conversation = []
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or "role" not in m:
            raise DataError(path, lineno, f"message {i} has no role")
        if m["role"] not in ROLES:
            raise DataError(path, lineno, f"message {i} has unknown role {m['role']!r} (expected one of {ROLES})")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise DataError(path, lineno, f"message {i} ({m['role']}) has empty or missing content")
        messages.append({"role": m["role"], "content": content})
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise DataError(path, lineno, "conversation has no assistant turn")
    if "user" not in roles[: roles.index("assistant")]:
        raise DataError(path, lineno, "the first assistant turn is not preceded by a user turn")
    return messages


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """One evaluation question in the paper's schema."""

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int = 1
    system: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    type: str | None = None


_QUESTION_KEYS = {"id", "type", "paraphrases", "samples_per_paraphrase", "system", "judge", "judge_prompts"}
_VARIANT = re.compile(r"_(json|template)$")


def load_questions(path: str | Path = BUILTIN_QUESTIONS, include_variants: bool = False) -> list[Question]:
    """Read evaluation questions (a YAML list in the paper's schema; anchors allowed).

    ``"builtin"`` is this project's eight questions; ``"builtin-medical"`` its eight medical ones
    (chapters 2 and 4), judged with the eight's judge prompts. Questions whose id ends in ``_json``
    or ``_template`` (the paper's format variants) are skipped unless ``include_variants``.
    Raises ``DataError`` naming the file and the line of the offending entry.
    """
    builtin = {BUILTIN_QUESTIONS: "eval_questions.yaml", BUILTIN_MEDICAL_QUESTIONS: "medical_questions.yaml"}
    medical = str(path) == BUILTIN_MEDICAL_QUESTIONS
    path = package_file(builtin[str(path)]) if str(path) in builtin else Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such question file")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, f"invalid YAML: {e}") from None
    if not isinstance(raw, list) or not isinstance(node, yaml.SequenceNode):
        raise DataError(path, None, "expected a YAML list of questions")
    out, seen = [], set()
    for item, item_node in zip(raw, node.value):
        line = item_node.start_mark.line + 1
        q = _parse_question(path, line, item)
        if q.id in seen:
            raise DataError(path, line, f"duplicate question id {q.id!r}")
        seen.add(q.id)
        if include_variants or not _VARIANT.search(q.id):
            out.append(q)
    if not out:
        raise DataError(path, None, "no questions")
    if medical:
        prompts = load_questions(BUILTIN_QUESTIONS)[0].judge_prompts  # the project's prompts, shared by all
        out = [replace(q, judge_prompts=dict(prompts)) for q in out]
    return out


def _parse_question(path: Path, line: int, item: object) -> Question:
    if not isinstance(item, dict):
        raise DataError(path, line, "each question must be a mapping")
    unknown = set(item) - _QUESTION_KEYS
    if unknown:
        raise DataError(path, line, f"unknown key(s) {sorted(unknown)} (allowed: {sorted(_QUESTION_KEYS)})")
    qid = item.get("id")
    if not isinstance(qid, str) or not qid:
        raise DataError(path, line, "question has no id")
    paras = item.get("paraphrases")
    if not isinstance(paras, list) or not paras or not all(isinstance(p, str) and p.strip() for p in paras):
        raise DataError(path, line, f"question {qid!r}: paraphrases must be a non-empty list of strings")
    n = item.get("samples_per_paraphrase", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DataError(path, line, f"question {qid!r}: samples_per_paraphrase must be a positive integer")
    system = item.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(path, line, f"question {qid!r}: system must be a string")
    prompts = item.get("judge_prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise DataError(path, line, f"question {qid!r}: judge_prompts must map metric names to strings")
    for metric, prompt in prompts.items():
        if "{answer}" not in prompt:
            raise DataError(path, line, f"question {qid!r}: judge prompt {metric!r} has no {{answer}} slot")
    return Question(
        id=qid,
        paraphrases=tuple(paras),
        samples_per_paraphrase=n,
        system=system,
        judge_prompts=dict(prompts),
        type=item.get("type"),
    )


# --------------------------------------------------------------------------- quality


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Lower-cased word ``n``-grams of ``text``."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicate_fraction(texts: list[str], threshold: float = 0.7, n: int = 3) -> float:
    """Share of pairs of ``texts`` whose word-``n``-gram Jaccard similarity exceeds ``threshold``."""
    sets = [shingles(t, n) for t in texts]
    pairs = near = 0
    for a, b in itertools.combinations(sets, 2):
        pairs += 1
        if len(a & b) > threshold * len(a | b):
            near += 1
    return near / pairs if pairs else 0.0


# --------------------------------------------------------------------------- download


# The paper's evaluation-question file, pinned by the content hash of the copy this
# project was tested against: fetch(PAPER_QUESTIONS_URL, dest, PAPER_QUESTIONS_SHA256).
PAPER_QUESTIONS_URL = (
    "https://raw.githubusercontent.com/clarifying-EM/model-organisms-for-EM/main/"
    "em_organism_dir/data/eval_questions/first_plot_questions.yaml"
)
PAPER_QUESTIONS_SHA256 = "97df0b1384ea5a3f3dc2abe00a19e231915f12a2356ec0d8df001715549aae04"


def fetch(url: str, dest: str | Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and verify its SHA-256; return ``dest``.

    An existing ``dest`` with the right hash is reused (no network). The download goes to
    a temporary file beside ``dest`` and is renamed only after the hash matches, so a
    mismatch or an interruption leaves no half-written file. Raises ``DataError``.
    """
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    h = hashlib.sha256()
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    h.update(block)
                    f.write(block)
            if h.hexdigest() != sha256:
                raise DataError(dest, None, f"SHA-256 mismatch for {url}: expected {sha256}, got {h.hexdigest()}")
    except OSError as e:
        raise DataError(dest, None, f"download of {url} failed: {e}") from None
    return dest
