# robustd — one entry point per job. Everything installs itself (scripts/setup.sh) on a fresh Debian machine.
#   make demo   set up, build, train + export a small CNN, run the daemon on it, print the report summary
#   make test   set up, build, generate fixtures, run every test
#   make fuzz   run the cargo-fuzz targets (nightly) for FUZZ_SECONDS (default 600) in total
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
# One profile for everything so libtorch/onnxruntime bindings compile once.
CARGO_FLAGS := --release --locked
FIXTURES := tests/fixtures/generated

.PHONY: setup build fixtures test lint demo bench fuzz clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build $(CARGO_FLAGS)

fixtures: setup
	@$(PY) scripts/export_fixtures.py --out $(FIXTURES)

test: build fixtures
	$(CARGO) test $(CARGO_FLAGS) --no-fail-fast

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings

demo: build
	@scripts/demo.sh

FUZZ_SECONDS ?= 600
fuzz: setup
	@scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(FIXTURES) state
