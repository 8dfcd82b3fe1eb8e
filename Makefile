# museserve: `make run` serves the local setup, `make test` runs the suite. Both install
# what is missing first: a .venv with torch 2.13.0 (CPU build) and the project, and for
# tests a redis-server from apt.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.museserve-installed
PYTEST_ARGS ?=

export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test unit integration bench proto lint install redis clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "museserve needs Python >= 3.11"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

redis:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server from apt"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

run: install
	$(VENV)/bin/museserve serve $(if $(CONFIG),--config $(CONFIG))

test: install redis
	$(PY) -m pytest tests $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install redis
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

bench: install redis
	$(PY) -m tests.bench.bench_stream_path --out .bench/stream_path.json
	$(PY) -m tests.bench.bench_engine --out .bench/engine.json
	$(PY) -m tests.bench.bench_gateway --out .bench/gateway.json
	$(PY) -m tests.bench.bench_modes --out .bench/modes.json

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=platform --pyi_out=platform --grpc_python_out=platform \
		$(wildcard proto/museserve/v1/*.proto)

lint: install
	$(VENV)/bin/ruff check platform tests
	$(VENV)/bin/ruff format --check platform tests

clean:
	rm -rf .bench .pytest_cache .ruff_cache
