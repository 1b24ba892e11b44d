"""The rendered book in a real browser. A book is built from the smoke-executed chapters
(conftest's ``smoke_chapters``) and the book's own pages, served on loopback, and every page
of _toc.yml is rendered in Debian's headless Chromium (packages chromium and chromium-driver,
which `make test` installs), driven by Selenium. Chapter pages must show their figures, loaded,
and no error output; a canary book with a failing cell proves that the check catches one."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_notebook
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
REQUIRED = bool(os.environ.get("EMLIB_REQUIRE_BROWSER"))  # set by `make test`: never skip there
pytestmark = [
    pytest.mark.notebooks,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER) and not REQUIRED,
        reason="needs Debian's chromium and chromium-driver (`make test` installs them)",
    ),
]

# Headless, as root, on a machine without network: nothing may phone home or wait for a GPU.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1024",
]
# What myst-nb renders for a failed cell (div.output.traceback), for stderr were the book
# to show it (div.output.stderr), papermill's marker at the cell that stopped the run, and
# docutils' inline reports of broken markup.
ERROR_OUTPUT = "div.output.traceback, div.output.stderr, #papermill-error-cell, .system-message"
IMAGES = """return Array.from(document.images).map(img => ({
    src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
    figure: img.closest('.cell_output') !== null}));"""
LOADED = "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);"
CANARY = '''# ---
# jupyter:
#   kernelspec: {display_name: Python 3, language: python, name: python3}
# ---

# %% [markdown]
# # Canary chapter
# %% tags=["parameters"]
params_file = ""
# %%
import matplotlib.pyplot as plt
plt.plot([1, 3, 2])
plt.show()
# %%
raise ValueError("deliberate canary failure")
'''


def toc_pages(toc: dict) -> list[str]:
    """Every document of a jb-book _toc.yml (root first, then reading order), without suffix."""
    pages = [toc["root"]]

    def walk(entry: dict) -> None:
        if "file" in entry:
            pages.append(entry["file"])
        for key in ("parts", "chapters", "sections"):
            for child in entry.get(key, []):
                walk(child)

    walk(toc)
    return [p.removesuffix(".md").removesuffix(".ipynb") for p in pages]


PAGES = toc_pages(yaml.safe_load((ROOT / "_toc.yml").read_text()))


@dataclass
class Site:
    """A built book's HTML folder, served at ``base``; ``failed`` collects request paths answered >= 400."""

    html: Path
    base: str
    failed: list[str] = field(default_factory=list)


@contextmanager
def serve(html: Path) -> Iterator[Site]:
    """Serve ``html`` on an ephemeral loopback port in a thread, for as long as the context lasts."""
    site = Site(html, "")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(html), **kwargs)

        def end_headers(self) -> None:
            self.send_header("Cache-Control", "no-store")  # every page load fetches afresh
            super().end_headers()

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if int(code) >= 400 and not self.path.endswith("favicon.ico"):
                site.failed.append(f"{int(code)} {self.path}")

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: failures are collected by log_request instead."""

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        site.base = f"http://127.0.0.1:{server.server_address[1]}/"
        try:
            yield site
        finally:
            server.shutdown()


def build_book(src: Path) -> Path:
    """Render the book in ``src`` with jupyter-book (which executes nothing); return its HTML folder."""
    proc = subprocess.run([Path(sys.executable).parent / "jupyter-book", "build", src, "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return src / "_build" / "html"


def page_problems(driver: webdriver.Chrome, site: Site, page: str, chapter: bool) -> list[str]:
    """Open ``page`` in the browser and list what is wrong with it: no title or heading, error
    output, a traceback in the visible text, an image or other resource that did not load, and,
    for a ``chapter``, no figure among the cell outputs."""
    if not (site.html / f"{page}.html").is_file():
        return [f"{page}.html was not built (is its source missing?)"]
    site.failed.clear()
    driver.get(f"{site.base}{page}.html")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(LOADED))
    problems = []
    if not driver.title.strip():
        problems.append("no <title>")
    if not any(h.text.strip() for h in driver.find_elements(By.CSS_SELECTOR, "article h1")):
        problems.append("no <h1> heading")
    problems += [f"error output: {e.text[:500]}" for e in driver.find_elements(By.CSS_SELECTOR, ERROR_OUTPUT)]
    if "Traceback" in driver.find_element(By.TAG_NAME, "body").text:
        problems.append("'Traceback' in the visible text")
    images = driver.execute_script(IMAGES)
    problems += [f"image did not load: {img['src']}" for img in images if not img["loaded"]]
    if chapter and not any(img["loaded"] and img["figure"] for img in images):
        problems.append("no figure in the cell outputs")
    problems += [f"request failed: {f}" for f in site.failed]
    return problems


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    """Headless Debian Chromium with a fresh profile; the driver paths are given, so Selenium
    Manager never looks for (or downloads) a browser or driver of its own."""
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromedriver must be on PATH: run `make browser` (Debian packages)"
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def site(smoke_chapters: dict[str, Path], tmp_path_factory) -> Iterator[Site]:
    """The book's config, toc and pages with the smoke-executed chapters, built and served."""
    src = tmp_path_factory.mktemp("book")
    shutil.copy(ROOT / "_config.yml", src)
    shutil.copy(ROOT / "_toc.yml", src)
    shutil.copytree(ROOT / "book", src / "book", ignore=lambda d, _: ["chapters"] if Path(d) == ROOT / "book" else [])
    (src / "book" / "chapters").mkdir()
    for stem, executed in smoke_chapters.items():
        if executed.is_file():
            shutil.copy(executed, src / "book" / "chapters" / f"{stem}.ipynb")
    with serve(build_book(src)) as served:
        yield served


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(driver: webdriver.Chrome, site: Site, page: str) -> None:
    """Every page of _toc.yml renders; chapter pages show loaded figures and no error output."""
    problems = page_problems(driver, site, page, chapter=page.startswith("book/chapters/"))
    assert not problems, f"{page}:\n" + "\n".join(problems)


def test_index_opens_the_root_page(driver: webdriver.Chrome, site: Site) -> None:
    driver.get(site.base)
    WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith(f"/{PAGES[0]}.html"))


def test_the_check_flags_a_failing_cell_and_a_chapter_without_figures(driver, tmp_path_factory) -> None:
    """The check catches what it is for: a canary chapter executed by papermill up to a cell that
    raises (as a failing chapter would be) is flagged for its error output, a page without
    figures is flagged as a chapter, a page missing from the build is flagged, and once the
    figure's file is gone the chapter is flagged for an image that did not load."""
    work, src = tmp_path_factory.mktemp("canary"), tmp_path_factory.mktemp("canary_book")
    (work / "canary.py").write_text(CANARY)
    proc = run_notebook(work / "canary.py", work, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "deliberate canary failure" in proc.stderr
    (src / "book" / "chapters").mkdir(parents=True)
    shutil.copy(work / "canary.out.ipynb", src / "book" / "chapters" / "canary.ipynb")
    (src / "book" / "intro.md").write_text("# Canary book\n\nNo figures here.\n")
    shutil.copy(ROOT / "_config.yml", src)
    (src / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: book/chapters/canary\n")
    with serve(build_book(src)) as canary:
        failing = page_problems(driver, canary, "book/chapters/canary", chapter=True)
        intro = page_problems(driver, canary, "book/intro", chapter=True)
        missing = page_problems(driver, canary, "book/chapters/absent", chapter=True)
        for png in (canary.html / "_images").glob("*.png"):
            png.unlink()
        broken = page_problems(driver, canary, "book/chapters/canary", chapter=True)
    assert any(p.startswith("error output:") and "deliberate canary failure" in p for p in failing), failing
    assert "'Traceback' in the visible text" in failing
    assert not [p for p in failing if "figure" in p or "image" in p], "the figure before the failure shows"
    assert intro == ["no figure in the cell outputs"]
    assert missing == ["book/chapters/absent.html was not built (is its source missing?)"]
    assert {p.split(":")[0] for p in broken} >= {"image did not load", "no figure in the cell outputs", "request failed"}
