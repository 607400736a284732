# Foundry: `make run` starts the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := proto/foundry.proto proto/fleetforge/runtime/v1/runtime.proto \
	proto/foundry/analytics/v1/analytics.proto

.PHONY: run test proto proto-check bench lint clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/foundry serve --config foundry.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the committed betterproto2 code from the .proto sources.
proto: $(STAMP)
	rm -rf proto/generated
	mkdir -p proto/generated
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I proto \
	  --python_betterproto2_out=proto/generated \
	  --python_betterproto2_opt=client_generation=async,server_generation=async \
	  $(PROTOS)

bench: $(STAMP)
	$(BIN)/python -m bench

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
