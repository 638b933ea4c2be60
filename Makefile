# robustd — one entry point per job. Everything installs itself (scripts/setup.sh) on a fresh Debian machine.
#   make demo   set up, build, train + export a small CNN, run the daemon on it, print the report summary
#   make test   set up, generate fixtures, build with the crash tests' failpoints, run every test
#   make crosscheck  robustd vs reference implementations: robust accuracies vs torchattacks (~30 min on 2 cores),
#                    then memo-recall
#   make memo-recall memorization estimators' recall of flipped labels vs PyTorch, writes benches/MEMO_RECALL.md
#   make bench  robustd vs PyTorch eager / torchattacks and torchvision's image loading, writes benches/RESULTS.md
#               + results.png (~5 min on 2 cores)
#   make fuzz   run the cargo-fuzz targets (nightly) for FUZZ_SECONDS (default 600) in total
#   make fixtures  the test models: exports, the trained CNN, and their shipped forms (optimized, fp16, quantized)
#   make fixture-digests  regenerate the fixtures from scratch and rewrite tests/fixtures/DIGESTS.sha256
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CARGO ?= cargo
# onnxruntime's telemetry off for every tool make runs (the Python package in the fixture, bench and cross-check
# scripts too; robustd sets it itself, src/runtime.rs), unless the caller chose.
ORT_DISABLE_TELEMETRY ?= 1
export ORT_DISABLE_TELEMETRY
# One profile for everything so libtorch/onnxruntime bindings compile once.
CARGO_FLAGS := --release --locked
FIXTURES := tests/fixtures/generated
# A small CNN trained (standard training, 1 epoch on 3000 images) on Fashion-MNIST: the CLI tests' model.
TRAINED_FIXTURE := $(FIXTURES)/fmnist_cnn_small.onnx

.PHONY: setup build fixtures fixture-digests test lint demo bench fuzz clean crosscheck memo-recall

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build $(CARGO_FLAGS)

fixtures: setup
	@$(PY) scripts/export_fixtures.py --out $(FIXTURES)
	@$(PY) scripts/image_fixtures.py --out $(FIXTURES)/images
	@$(MAKE) --no-print-directory $(TRAINED_FIXTURE)
	@$(PY) scripts/export_shipped_fixtures.py --fixtures $(FIXTURES)

$(TRAINED_FIXTURE): scripts/train_demo_cnn.py scripts/fixture_models.py scripts/reproducible.py scripts/fmnist.py
	@$(PY) scripts/train_demo_cnn.py --out $@ --train-samples 3000 --epochs 1

# The fixtures are reproducible to the byte (tests/fixture_digests.rs checks them against the committed list);
# after a deliberate change to the fixture scripts or the op tables, rewrite the list from a fresh export.
fixture-digests: build
	rm -rf $(FIXTURES)
	@$(MAKE) --no-print-directory fixtures
	ROBUSTD_WRITE_DIGESTS=1 $(CARGO) test $(CARGO_FLAGS) --test fixture_digests

# The tests build with the named failpoints compiled in (src/failpoint.rs; tests/kill_matrix.rs kills the daemon at
# each); cargo builds every target, the robustd binary included, once with them. `make build` has none.
TEST_FEATURES := --features failpoints

test: setup fixtures
	$(CARGO) test $(CARGO_FLAGS) $(TEST_FEATURES) --no-fail-fast

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets -- -D warnings
	$(CARGO) clippy $(CARGO_FLAGS) --all-targets $(TEST_FEATURES) -- -D warnings

demo: build
	@scripts/demo.sh

# robustd's robust accuracies vs torchattacks on a standard and an adversarially trained CNN, and its memorization
# estimators vs the same estimators in PyTorch (measurements).
crosscheck: build fixtures
	@scripts/crosscheck.sh
	@scripts/memo_recall.sh
# Recall of flipped labels per memorization estimator and budget (~2 h on 2 cores; MEMO_QUICK=1 for ~15 min).
memo-recall: build fixtures
	@scripts/memo_recall.sh
# Numbers for benches/RESULTS.md: run on an otherwise idle machine.
bench: build fixtures
	$(CARGO) bench --locked --bench suite

FUZZ_SECONDS ?= 600
fuzz: setup
	@scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(FIXTURES) state
