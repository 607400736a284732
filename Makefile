# Foundry: `make run` starts the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two install stamps: `make run` needs only the runtime dependencies (RUN_STAMP); `make test` and
# the tool targets need the dev extras too (STAMP), which also satisfy `make run`.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-runtime
PROTOS := proto/foundry.proto proto/fleetforge/runtime/v1/runtime.proto \
	proto/foundry/analytics/v1/analytics.proto proto/foundry/admin/v1/admin.proto

.PHONY: run test proto proto-check bench bench-peers lint clean fuzz

$(BIN)/python:
	@echo "==> creating $(VENV) and upgrading pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing foundry and its runtime dependencies into $(VENV)"
	$(BIN)/python -m pip install -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing foundry with the dev tools (pytest, ruff, mypy, grpcio-tools) into $(VENV)"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	@echo "==> serving foundry.toml on 127.0.0.1:50051 (Ctrl-C stops it). In another terminal:"
	@echo "      source $(VENV)/bin/activate    # puts foundry on PATH (or call $(BIN)/foundry)"
	@echo "      foundry emit greet_requested --project demo --payload '{\"name\": \"Ada\"}'"
	$(BIN)/foundry serve --config foundry.toml

# The distribution's headless Chromium for the dashboard's browser tests (tests/e2e/test_dashboard.py:
# Playwright drives /usr/bin/chromium, no browser is downloaded). CI runs as root on Debian;
# elsewhere `apt-get install chromium` (or your system's package) once by hand.
CHROMIUM_STAMP := $(VENV)/.chromium
$(CHROMIUM_STAMP): | $(BIN)/python
	@echo "==> making sure the distribution's chromium is installed (browser tests)"
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	touch $(CHROMIUM_STAMP)

# Two workers (pytest-xdist), each taking whole test files: a file's tests share its module-scoped
# daemon, and most of a test's time is a daemon's start or a wait, which the other worker fills.
# `make test TEST_WORKERS=0` runs the suite in one process.
# compileall first: where PYTHONDONTWRITEBYTECODE is set (as on this project's machines), every
# daemon and CLI process the suite starts would compile our modules again (~0.4 s a daemon start).
TEST_WORKERS ?= 2
test: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/python -m compileall -q kernel plugins analytics proto
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Regenerate the committed betterproto2 code from the .proto sources.
proto: $(STAMP)
	rm -rf proto/generated
	mkdir -p proto/generated
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_betterproto2_out=proto/generated \
	  --python_betterproto2_opt=client_generation=async,server_generation=async \
	  $(PROTOS)
	# The descriptors server reflection answers from (kernel/edge/grpc/reflection.py).
	$(BIN)/python -m grpc_tools.protoc -I proto --include_imports --include_source_info \
	  --descriptor_set_out=proto/descriptors.binpb $(PROTOS)

bench: $(STAMP)
	$(BIN)/python -m bench

# LangGraph and its SQLite checkpointer beside our runtime (bench/peers): they are installed into
# a virtualenv of their own, never into $(VENV). `make bench-peers ARGS=--quick` for a short run.
PEERS_VENV := .peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed
$(PEERS_STAMP): bench/peers/requirements.txt
	@echo "==> installing LangGraph and langgraph-checkpoint-sqlite into $(PEERS_VENV)"
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers/requirements.txt
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python -m bench.peers --peers-python $(PEERS_VENV)/bin/python $(ARGS)

# A long fuzz campaign over every RPC of both services (tests/e2e/test_fuzz.py, random seed);
# prints examples run, per-status counts per RPC, the slowest answers and wall time at the end.
FUZZ_EXAMPLES ?= 20000
fuzz: $(STAMP)
	FOUNDRY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s -p no:cacheprovider \
	  -o faulthandler_timeout=0 tests/e2e/test_fuzz.py

# mypy cannot follow setuptools' package-dir mapping, so it checks a symlinked foundry/ tree.
TYPECHECK := build/typecheck/foundry

lint: $(STAMP)
	$(BIN)/ruff check kernel plugins analytics tests bench
	$(BIN)/ruff format --check kernel plugins analytics tests bench
	mkdir -p $(TYPECHECK)
	for d in kernel plugins analytics proto; do ln -sfn ../../../$$d $(TYPECHECK)/$$d; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p foundry.kernel -p foundry.plugins -p foundry.analytics

clean:
	rm -rf $(VENV) build *.egg-info
