# prefloop: `make run` starts the demo, `make test` runs the suite. Both set themselves up.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= prefloop-data
# The CPU wheel of torch; an unpinned torch would pull gigabytes of CUDA packages.
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install dev run test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[postgres]"
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,postgres]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

run: install
	$(VENV)/bin/prefloop init --demo --data-dir $(DATA_DIR)
	$(VENV)/bin/prefloop status --data-dir $(DATA_DIR)
	$(VENV)/bin/prefloop serve --data-dir $(DATA_DIR)

test: dev
	$(PY) -m pytest

test-fast: dev
	$(PY) -m pytest -m "not slow and not browser"

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: dev
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) $(DATA_DIR)
