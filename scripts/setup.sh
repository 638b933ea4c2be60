#!/usr/bin/env bash
# Sets up everything robustd needs on a fresh Debian machine, idempotently (a second run takes seconds):
#   - Debian packages: python3-venv (for the venv), dataset-fashion-mnist (the embedded default dataset),
#     fonts-dejavu-core (the font the report plots are drawn with; plotters renders it in pure Rust),
#     postgresql (its server binaries: the fleet tests start a throwaway cluster of their own; no service is
#     enabled or started here) and chromium (the headless browser tests/http_dashboard.rs reads the dashboard with);
#   - a project-local .venv with the pinned wheels (scripts/requirements.txt): torch==2.11.0 carries libtorch,
#     onnxruntime==1.31.1 carries libonnxruntime.so -- or, on a host with an NVIDIA GPU (or with ROBUSTD_GPU=1;
#     ROBUSTD_GPU=0 forces the CPU wheel), onnxruntime-gpu==1.31.1, the same library with the CUDA execution
#     provider (the two wheels install the same `onnxruntime` package, so one replaces the other);
#   - .venv/libtorch -> the wheel's torch/ directory, a python-version-independent path that
#     .cargo/config.toml points LIBTORCH at, so a plain `cargo build` works.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages. dpkg-query is cheap, so the second run never touches apt.
need_pkgs=()
for pkg in python3-venv dataset-fashion-mnist fonts-dejavu-core postgresql chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    log "apt-get not found: install ${need_pkgs[*]} by other means" >&2; exit 1
  fi
  log "installing Debian packages: ${need_pkgs[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# 2. The venv with pinned wheels; a stamp holding the requirements' hash (and the onnxruntime flavour) makes re-runs
#    instant.
PY=${PYTHON:-python3}
stamp=.venv/.robustd-requirements.sha256
# An NVIDIA GPU: the driver's device nodes or its /proc entry (no nvidia-smi needed).
has_nvidia_gpu() { [ -e /dev/nvidia0 ] || ls /proc/driver/nvidia/gpus/* >/dev/null 2>&1; }
case "${ROBUSTD_GPU:-auto}" in
  1|yes|true) ort_wheel=onnxruntime-gpu ;;
  0|no|false) ort_wheel=onnxruntime ;;
  *) if has_nvidia_gpu; then ort_wheel=onnxruntime-gpu; else ort_wheel=onnxruntime; fi ;;
esac
requirements=scripts/requirements.txt
if [ "$ort_wheel" = onnxruntime-gpu ]; then
  requirements=$(mktemp)
  trap 'rm -f "$requirements"' EXIT
  sed 's/^onnxruntime==/onnxruntime-gpu==/' scripts/requirements.txt >"$requirements"
fi
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
[ "$ort_wheel" = onnxruntime ] || want="$want $ort_wheel"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned wheels with $ort_wheel (torch is large: a few GB on first install)"
  other=$([ "$ort_wheel" = onnxruntime-gpu ] && echo onnxruntime || echo onnxruntime-gpu)
  if .venv/bin/python -m pip show -q "$other" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y "$other"
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r "$requirements"
  echo "$want" > "$stamp"
fi

# 3. Stable paths into the wheels for the build (LIBTORCH) and the run time (ORT library).
torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
# Relative links inside .venv: they stay right when the checkout moves or when .venv is a link to another
# checkout's (an absolute link made from a second worktree dangled once that worktree was removed).
ln -sfn "$(realpath --relative-to=.venv "$torch_dir")" .venv/libtorch
ort_lib=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n 1)
[ -n "$ort_lib" ] || { log "libonnxruntime.so not found in the onnxruntime wheel" >&2; exit 1; }
ln -sfn "$(realpath --relative-to=.venv "$ort_lib")" .venv/libonnxruntime.so
log "ready: libtorch $(.venv/bin/python -c 'import torch; print(torch.__version__)') at .venv/libtorch, onnxruntime at .venv/libonnxruntime.so"
