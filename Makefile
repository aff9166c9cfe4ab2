# Two commands on a fresh machine: `make run` (the service) and `make test` (the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
RR := $(VENV)/bin/rr
HOST ?= 127.0.0.1
PORT ?= 8000
export RR_DATASETS_DIR ?= ../shared/datasets

.PHONY: install redis run test test-fast lint experts eval bench bench-latency bench-propagation clean

# torch==2.13.0 first: on CPU machines here it is the CPU build on disk; a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

# The Redis tests start their own redis-server on a free 127.0.0.1 port; this installs it.
redis:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

run: install
	$(RR) serve --host $(HOST) --port $(PORT)

test: install redis
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench

# Train the 10 domain experts, the multi-task baseline and the pilots from RR_DATASETS_DIR
# (one torch thread per process: two on these shared cores made steps ~5x slower).
experts: install
	OMP_NUM_THREADS=1 $(RR) train-all --benchmark $(RR_DATASETS_DIR)/benchmark.json
	OMP_NUM_THREADS=1 $(RR) train-multitask --benchmark $(RR_DATASETS_DIR)/benchmark.json
	OMP_NUM_THREADS=1 $(RR) build-pilots --benchmark $(RR_DATASETS_DIR)/benchmark.json

# The side-by-side evaluation (reports/eval.md, eval.json, plots).
eval: install
	OMP_NUM_THREADS=1 $(RR) eval --benchmark $(RR_DATASETS_DIR)/benchmark.json --out reports

# Serving benchmark (issue-4 table, reports/bench.md + reports/bench.png); run on a quiet machine.
bench: install redis
	$(PY) -m bench.serving

bench-latency: install
	$(PY) -m bench.search_latency

bench-propagation: install redis
	$(PY) -m bench.propagation

clean:
	rm -rf $(VENV) .pytest_cache
