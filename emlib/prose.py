"""Literal numbers in the notebooks' prose: the check behind "numbers in prose come from params or outputs".

A number that a param or a run's output determines belongs in a code cell (``display.note(f"...")``), not typed
in a markdown cell, where it goes stale the moment a preset or a result changes. ``literal_numbers`` reads every
markdown cell of a jupytext percent notebook (``# %% [markdown]``) and lists each numeric literal that is not one
of the justified kinds below; ``python -m emlib.prose`` prints them as ``file:line: number: context`` over
``notebooks/[0-9]*.py`` and exits 1 when there are any. Used by ``tests/test_prose.py`` (every chapter).

Allowed kinds (each recognised by the span it sits in; a form may wrap onto the next line of its paragraph):

- *heading*: a chapter or section number at the start of a heading (``# 3. Ablating …``); *list*: an item's
  number at the start of a line (``1. Sample …``);
- *chapter*: a cross-reference to a chapter (``chapter 2``, ``chapters 2–5``);
- *citation*: a year in a citation (``(2025)``, ``Soligo, 2025``, ``et al. 2025``) or an arXiv id;
- *math*: anything inside inline or display math (``$…$``, ``\\(…\\)``), and a formula's unit constants:
  ``1/√d``, ``1 / (units + 1)``, a Greek symbol compared with 0 or 1 (``α > 1``; ``α = 1`` is a value, flagged);
- *null value*: 0 as the value an interval excludes, includes, crosses, is above or below, and the anchors of
  a share (``0: nothing closed; 100%: …``);
- *scale*: the judge's 0–100 scale;
- *method name*: the paper's organism names (``R1×9``, ``rank-1``, ``rank-32``: the ranks of
  ``train.preset_spec``);
- *threshold*: a score threshold in its definition form (``aligned ≤ 30``, ``coherent > 50``, ``bad_stuff > 30``)
  whose number equals the ``metrics.Thresholds`` default for that score (the paper's definitions); a threshold
  of another value is a param's and is flagged;
- *interval level*: ``95% interval`` / ``95% CI`` / ``the central 95%`` where 95 = 100·(1 − ``Thresholds.alpha``);
- *paper*: ``relative depth 0.5`` (the paper's direction layer over its layer count, ``emlib.models``), and any
  number of the paper's (``paper_numbers``: a number in an ``emlib.paper.FIGURES`` text or value,
  ``COSINE_LAYERS_ALLOWED_BELOW``, the paper's layer constants in ``emlib.models``, the paper's sampling setting
  in ``params/paper.yaml``) in a paragraph that names the paper.

Everything else is flagged: a count of answers, a λ, a layer of this model, a param's default, a measured figure.
Digits inside a name (``SmolLM2-135M``, ``Qwen2.5-14B``, ``r1x9``, ``00_chat_model``, ``1e-3``) are not numbers.
What the check cannot see: a number of an allowed form used for another quantity (``coherent > 50`` written
where a param set the floor at 20, or a paper number in a sentence about this run in a paragraph that names the
paper) — it lists literals, it does not read them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from emlib.metrics import Thresholds

# A numeric literal not glued to a word: optional sign, digits with optional thousands commas and decimals, or a
# number in scientific notation (matched whole so that "1e-3" is one name-like token, skipped below).
_NUMBER = re.compile(r"(?<![\w.,])(?:\d+(?:\.\d+)?e[-−]?\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\w])")
_SCIENTIFIC = re.compile(r"\d+(?:\.\d+)?e[-−]?\d+$")
_RANGE = r"\s*(?:–|-|,|and|or|to)\s*"
_THRESHOLD = re.compile(r"\b(aligned|coherent|bad_stuff|bad stuff)`?(?:\s+score)?\s*\(?\s*(≤|<=|<|≥|>=|>)\s*"
                        r"(\d+(?:\.\d+)?)")
_LEVEL = re.compile(r"\b(\d+(?:\.\d+)?)\s*%\s+(?:[\w-]+\s+){0,2}?(?:intervals?|CIs?|bands?|confidence)\b"
                    r"|\bcentral\s+(\d+(?:\.\d+)?)\s*%")
_DEPTH = re.compile(r"\brelative depth\s+(\d+(?:\.\d+)?)")
_SPANS: dict[str, re.Pattern[str]] = {
    "chapter": re.compile(r"\b[Cc]h(?:apters?|\.)\s+\d+(?:" + _RANGE + r"\d+)*"),
    "citation": re.compile(r"\([^()\d]*(?:19|20)\d\d[a-z]?\)|(?:et al\.?,?|[A-Z][a-z]+,)\s+(?:19|20)\d\d[a-z]?\b"
                           r"|\b\d{4}\.\d{4,5}(?:v\d+)?\b"),
    "math": re.compile(r"\$\$.+?\$\$|\$[^$]+\$|\\\(.+?\\\)"
                       r"|\b1\s*/\s*[√(]|\+\s*1\s*\)|[α-ωΑ-Ω]\s*[<>≤≥]\s*[01]\b"),
    "list": re.compile(r"^\s*\d+\.(?=\s)"),
    "null value": re.compile(r"\b(?:exclud\w*|includ\w*|cross\w*|above|below)\s+0\b|(?<![\w.])(?:0|100\s*%)\s*:\s"),
    "scale": re.compile(r"\b0\s*[–-]\s*100\b"),
    "method name": re.compile(r"\bR1\s*[×x]\s*9\b|\brank[- ](?:1|32)\b"),
}
# The paper's sampling setting, as params/paper.yaml records it (the keys that are the paper's, not this project's).
PAPER_SETTING = ("samples_per_question", "max_new_tokens", "temperature", "top_p")
ALLOWED_KINDS = ("heading", *_SPANS, "threshold", "interval level", "paper")


@dataclass(frozen=True)
class Finding:
    """One literal number in a notebook's prose: ``path``, 1-based ``line`` in the .py file, the ``number`` as
    written, and the prose ``context`` (the markdown line)."""

    path: str
    line: int
    number: str
    context: str

    def text(self) -> str:
        return f"{self.path}:{self.line}: {self.number}: {self.context}"


def _value(token: str) -> float:
    return float(token.replace(",", ""))


def paper_numbers() -> frozenset[float]:
    """Every number the paper states, as ``emlib`` writes it once: the numbers in each ``emlib.paper.FIGURES``
    text and value, ``COSINE_LAYERS_ALLOWED_BELOW``, and ``emlib.models``'s paper layer constants."""
    from emlib import paper
    from emlib.models import PAPER_DIRECTION_LAYER, PAPER_N_LAYERS, PAPER_R1X9_LAYERS

    out: set[float] = {float(PAPER_N_LAYERS), float(PAPER_DIRECTION_LAYER), *map(float, PAPER_R1X9_LAYERS),
                       *map(float, paper.COSINE_LAYERS_ALLOWED_BELOW)}
    setting = yaml.safe_load((Path(__file__).resolve().parents[1] / "params" / "paper.yaml").read_text())
    out.update(float(setting[k]) for k in PAPER_SETTING if k in setting)
    for fig in paper.FIGURES.values():
        if fig.value is not None:
            out.add(float(fig.value))
        out.update(_value(m.group()) for m in _NUMBER.finditer(fig.text) if not _SCIENTIFIC.match(m.group()))
    return frozenset(out)


def _threshold_spans(line: str, t: Thresholds) -> list[tuple[int, int]]:
    allowed = {"aligned": {t.aligned_max}, "coherent": {t.coherent_min},
               "bad_stuff": {t.bad_stuff_min, t.self_correction_bad_stuff_min}}
    allowed["bad stuff"] = allowed["bad_stuff"]
    return [m.span(3) for m in _THRESHOLD.finditer(line) if float(m.group(3)) in allowed[m.group(1)]]


def _level_spans(line: str, t: Thresholds) -> list[tuple[int, int]]:
    level = 100 * (1 - t.alpha)
    spans = []
    for m in _LEVEL.finditer(line):
        g = 1 if m.group(1) is not None else 2
        if abs(float(m.group(g)) - level) < 1e-9:
            spans.append(m.span(g))
    return spans


def _depth_spans(line: str) -> list[tuple[int, int]]:
    from emlib.models import PAPER_DIRECTION_LAYER, PAPER_N_LAYERS

    depth = PAPER_DIRECTION_LAYER / PAPER_N_LAYERS
    return [m.span(1) for m in _DEPTH.finditer(line) if abs(float(m.group(1)) - depth) < 1e-9]


def _heading_span(line: str) -> list[tuple[int, int]]:
    m = re.match(r"#+\s+(\d+(?:\.\d+)*)\.?\s", line)
    return [m.span(1)] if m else []


def markdown_lines(text: str) -> list[tuple[int, str]]:
    """The lines of every markdown cell of a jupytext percent notebook ``text``: (1-based line in the file, the
    line without its leading ``# ``). A cell runs from ``# %% [markdown]`` to the next ``# %%``."""
    out, inside = [], False
    for i, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith("# %%"):
            inside = raw.startswith("# %% [markdown]") or raw.startswith("# %% [md]")
            continue
        if inside:
            out.append((i, raw[2:] if raw.startswith("# ") else raw.lstrip("#")))
    return out


def _paragraphs(lines: list[tuple[int, str]]) -> dict[int, str]:
    """Line number -> the text of the paragraph (run of non-blank lines within a cell) it belongs to."""
    out: dict[int, str] = {}
    block: list[tuple[int, str]] = []

    def flush() -> None:
        joined = " ".join(s for _, s in block)
        out.update({i: joined for i, _ in block})
        block.clear()

    previous = None
    for i, s in lines:
        if not s.strip() or (previous is not None and i != previous + 1):
            flush()
        if s.strip():
            block.append((i, s))
        previous = i
    flush()
    return out


def literal_numbers(text: str, path: str = "<string>", *, t: Thresholds = Thresholds(),
                    paper: frozenset[float] | None = None) -> list[Finding]:
    """Every numeric literal in the markdown cells of notebook ``text`` that is not one of ``ALLOWED_KINDS`` (see
    the module docstring), in file order. ``paper``: the paper's numbers (default ``paper_numbers()``)."""
    paper = paper_numbers() if paper is None else paper
    lines = markdown_lines(text)
    paragraphs = _paragraphs(lines)
    found = []
    text_of = dict(lines)
    for i, line in lines:
        # a form may wrap: spans are found in the line with its neighbours in the same paragraph, then shifted
        before = text_of.get(i - 1, "") if paragraphs.get(i - 1) == paragraphs.get(i) else ""
        after = text_of.get(i + 1, "") if paragraphs.get(i + 1) == paragraphs.get(i) else ""
        shift = len(before) + 1
        joined = f"{before} {line} {after}"
        spans = _heading_span(line) + [(a - shift, b - shift) for a, b in
                                       _threshold_spans(joined, t) + _level_spans(joined, t) + _depth_spans(joined)]
        spans += [(a - shift, b - shift) for name, pattern in _SPANS.items() if name != "list"
                  for a, b in (m.span() for m in pattern.finditer(joined))]
        spans += [m.span() for m in _SPANS["list"].finditer(line)]
        names_paper = re.search(r"\bpaper\b|Soligo", paragraphs.get(i, ""), re.IGNORECASE) is not None
        for m in _NUMBER.finditer(line):
            token = m.group()
            if _SCIENTIFIC.match(token):
                continue
            if any(a <= m.start() and m.end() <= b for a, b in spans):
                continue
            if names_paper and _value(token) in paper:
                continue
            found.append(Finding(path, i, token, line.strip()))
    return found


def notebook_paths(root: str | Path = ".") -> list[Path]:
    """The chapters' notebooks: ``notebooks/[0-9]*.py`` under ``root``, sorted."""
    return sorted(Path(root).glob("notebooks/[0-9]*.py"))


def check(paths: Sequence[str | Path] | None = None, root: str | Path = ".") -> list[Finding]:
    """``literal_numbers`` of every notebook in ``paths`` (default: ``notebook_paths(root)``), paths as given."""
    paper = paper_numbers()
    out: list[Finding] = []
    for path in paths if paths is not None else notebook_paths(root):
        out += literal_numbers(Path(path).read_text(encoding="utf-8"), str(path), paper=paper)
    return out


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m emlib.prose [NOTEBOOK ...]``: print each finding as ``file:line: number: context``; exit 1 if
    any."""
    args = list(sys.argv[1:] if argv is None else argv)
    findings = check(args or None)
    for f in findings:
        print(f.text())
    print(f"{len(findings)} literal number(s) in notebook prose", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
