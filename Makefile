# Med-ST book and library. `make book` builds the book, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
BUILD  ?= _build
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv browser lint test test-fast book execute html student reproduce bench benchmarks gpu-check clean

venv: $(VENV)/.installed

# Torch first (the pinned release lies on the project's machines' disk), then the
# package with loose ranges so that Colab and other environments keep their torch.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev,book,offline-text]"
	touch $@

# Headless Chromium for the browser test (installed with apt-get when root; otherwise the test skips).
browser:
	@.ci/install-browser.sh

# ruff's lint rules and format check (configured in pyproject.toml); `make test` runs it first.
lint: venv
	$(PY) -m ruff check medst tests benchmarks && $(PY) -m ruff format --check medst tests benchmarks

test: venv browser lint
	$(PY) -m pytest -q tests --durations=15

test-fast: venv
	$(PY) -m pytest -q tests -m "not notebooks"

# Execute every chapter with papermill under $(PROFILE), then render with Jupyter Book.
execute: venv
	$(PY) -m medst.book execute --profile $(PROFILE) --out $(BUILD)/executed

html: venv
	$(PY) -m medst.book html --executed $(BUILD)/executed --out $(BUILD)

book: execute html

# The students' edition: every exercise solution replaced by its stub, outputs cleared.
student: venv
	$(PY) -m medst.book.student --src book --out $(BUILD)/student

reproduce: PROFILE = gpu
reproduce: book

bench: venv
	$(VENV)/bin/medst bench --profile $(PROFILE)

# Every speed benchmark of the repository on this machine; results go to benchmarks/results/.
benchmarks: venv
	PYTHON=$(PY) benchmarks/run_all.sh

# The GPU check (benchmarks/gpu_check.sh): GPU-only tests, `medst bench --profile gpu` over a batch sweep and a
# short gpu-profile run, results in $$OUT. Needs no venv, so that it runs as is on a GPU machine's python3;
# `make gpu-check GPU_CHECK_ARGS=--dry-run` runs it on tiny shapes on a CPU.
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(BUILD) .pytest_cache
