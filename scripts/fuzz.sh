#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a set time (issue 9): `make fuzz` (FUZZ_SECONDS, default 600, split
# 3:1 between the ONNX parser/graph builder and the sidecar config). Needs the nightly toolchain and cargo-fuzz
# (installed here on first use). New inputs go to fuzz/work/<target>/ (ignored); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. A crash leaves its input in fuzz/artifacts/<target>/ and stops the
# run with libFuzzer's report; `FUZZ_SANITIZER=none` skips AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-${FUZZ_SECONDS:-600}}
sanitizer=${FUZZ_SANITIZER:-address}
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# libtorch: $LIBTORCH when set (as for the main build), else the project venv's torch.
if [ -z "${LIBTORCH:-}" ]; then export LIBTORCH_USE_PYTORCH=1; fi
export PATH="$PWD/.venv/bin:$PATH"
# The fuzz binaries link libtorch without the main crate's rpath.
torch_lib=$(.venv/bin/python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Sanitized runs: libtorch's allocations are not instrumented; leak checking would flag its static caches.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
onnx_seconds=$(( total * 3 / 4 ))
config_seconds=$(( total - onnx_seconds ))
cd fuzz
for spec in "onnx_model:$onnx_seconds" "sidecar_config:$config_seconds"; do
    target=${spec%%:*}
    seconds=${spec##*:}
    mkdir -p "work/$target"
    echo "== cargo fuzz run $target for ${seconds} s (sanitizer: $sanitizer)"
    cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1
done
