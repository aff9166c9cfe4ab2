# Two commands on a fresh machine: `make run` (the service) and `make test` (the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RR := $(VENV)/bin/rr
HOST ?= 127.0.0.1
PORT ?= 8000
export RR_DATASETS_DIR ?= ../shared/datasets

.PHONY: install lock test-latest redis browser containers compose-test run test test-fast lint experts eval bench bench-smoke bench-filters \
	bench-latency bench-propagation bench-first-search bench-ingest soak clean

# Installs come from the lock (requirements/*.lock, made by `make lock`): every package pinned
# with its hashes, so a fresh clone gets what CI tested. torch is not in the lock: it is the CPU
# build here (this workplace's pip finds it on disk; elsewhere PyTorch's CPU index) and the CUDA
# build on GPU hosts: `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128`.
TORCH_VERSION := 2.13.0
TORCH_WHEELS := $(wildcard /opt/wheels/torch-$(TORCH_VERSION)*)
TORCH_INDEX ?= $(if $(TORCH_WHEELS),,https://download.pytorch.org/whl/cpu)
# Where uv (which reads no pip.conf) finds the same CPU torch when it resolves.
UV_TORCH := $(if $(TORCH_WHEELS),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV := $(VENV)/bin/uv
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-emit-package torch
LATEST_VENV ?= $(or $(TMPDIR),/tmp)/rr-test-latest

# A new venv whenever the lock changes: packages a previous lock left behind must not linger.
$(VENV)/.installed: pyproject.toml requirements/dev.lock
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PIP) install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q --no-deps --require-hashes -r requirements/dev.lock
	$(PIP) install -q --no-deps -e .
	$(PIP) check
	touch $@

install: $(VENV)/.installed

# The Redis tests start their own redis-server on a free 127.0.0.1 port; this installs it.
redis:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

# The playground tests drive Debian's Chromium (Playwright's own browser download fails here).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

# The deployment test (tests/test_compose.py) needs a container engine: Docker where its
# engine answers, else Podman from Debian (with runc, buildah and debootstrap for local base
# images). A failed install leaves the test skipped, saying why.
containers:
	@docker info >/dev/null 2>&1 || command -v podman >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO apt-get install -y -qq podman buildah runc debootstrap; } || \
	  echo "containers: podman not installed; tests/test_compose.py will skip"

# Build the CPU image, start the whole stack and check it from outside (docs/DEPLOY.md).
compose-test: install containers
	$(PY) -m pytest -q -s tests/test_compose.py

run: install
	$(RR) serve --host $(HOST) --port $(PORT)

test: install redis browser containers
	$(PY) -m pytest -q

# Refresh the lock after changing a dependency in pyproject.toml (pins still allowed are kept),
# or with UPGRADE=1 to take the newest releases (after `make test-latest` passes).
# dev.lock: service + train + dev extras (make, CI); service.lock: the service alone at the
# same versions (Docker images).
lock: install
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile -q pyproject.toml --extra train \
	  --extra dev --generate-hashes $(if $(UPGRADE),--upgrade) $(UV_TORCH) $(LOCK_TARGET) \
	  -o requirements/dev.lock
	UV_CUSTOM_COMPILE_COMMAND="make lock" $(UV) pip compile -q pyproject.toml \
	  -c requirements/dev.lock --generate-hashes $(UV_TORCH) $(LOCK_TARGET) \
	  -o requirements/service.lock

# The suite on the newest versions pyproject.toml allows, in a throwaway venv: drift shows
# here before a user meets it. Prints what differs from the lock first.
test-latest: install redis browser
	rm -rf $(LATEST_VENV)
	$(UV) venv -q -p python3 $(LATEST_VENV)
	$(UV) pip compile -q pyproject.toml --extra train --extra dev $(UV_TORCH) \
	  --python-version 3.11 --no-emit-package torch -o $(LATEST_VENV)/latest.txt
	$(PY) requirements/drift.py requirements/dev.lock $(LATEST_VENV)/latest.txt
	VIRTUAL_ENV=$(LATEST_VENV) $(UV) pip install -q $(UV_TORCH) torch==$(TORCH_VERSION) \
	  -r $(LATEST_VENV)/latest.txt
	VIRTUAL_ENV=$(LATEST_VENV) $(UV) pip install -q --no-deps -e .
	$(LATEST_VENV)/bin/python -m pytest -q -p no:cacheprovider

# The fast tier: the API and services on the fake encoder, no model and no torch.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# ruff; mypy on app/; lint-imports: the layer contract in pyproject.toml (no import cycles).
lint: install
	$(VENV)/bin/ruff check app tests bench requirements docker
	$(VENV)/bin/ruff format --check app tests bench requirements docker
	$(VENV)/bin/mypy
	PYTHONPATH=. $(VENV)/bin/lint-imports

# Train the 10 domain experts, the multi-task baseline and the pilots from RR_DATASETS_DIR
# (one torch thread per process: two on these shared cores made steps ~5x slower).
experts: install
	OMP_NUM_THREADS=1 $(RR) train-all --benchmark $(RR_DATASETS_DIR)/benchmark.json
	OMP_NUM_THREADS=1 $(RR) train-multitask --benchmark $(RR_DATASETS_DIR)/benchmark.json
	OMP_NUM_THREADS=1 $(RR) build-pilots --benchmark $(RR_DATASETS_DIR)/benchmark.json
	$(RR) tune-fusion --benchmark $(RR_DATASETS_DIR)/benchmark.json

# The side-by-side evaluation (reports/eval.md, eval.json, plots).
eval: install
	OMP_NUM_THREADS=1 $(RR) eval --benchmark $(RR_DATASETS_DIR)/benchmark.json --out reports

# Serving benchmark (reports/bench.md + reports/bench.png): routed dense, base-only, routed
# hybrid and all-layer experts, one gateway each, the in-process bound and the router refit;
# ~8-10 min on the 2-core machine. Run it on a quiet machine. bench-smoke: a small run to
# $TMPDIR/rr-bench-smoke (the committed report untouched).
bench: install redis
	$(PY) -m bench.serving

bench-smoke: install
	$(PY) -m bench.serving --quick

# The first minutes of `make run` on a new machine: seconds until each small domain answers.
bench-first-search: install
	$(PY) -m bench.first_search

bench-latency: install
	$(PY) -m bench.search_latency

bench-propagation: install redis
	$(PY) -m bench.propagation

# Write cost at 10k / 100k / 1M documents in one index, search latency while ingesting, restart
# time (reports/ingest.md; 3 min here, a 1M-document store and its snapshot on temp disk).
bench-ingest: install
	$(PY) -m bench.ingest

# Filtered against unfiltered search on a 100k-document index (reports/filters.md).
bench-filters: install
	$(PY) -m bench.filters

# Faults with figures, exit 1 on any loss: kill -9 during writes (20 rounds), searches under
# expert churn at c=32, Redis restarted under two gateways, a full index volume (a small tmpfs:
# needs root), schemathesis with more cases. `make test` runs a smaller version.
soak: install redis
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache
