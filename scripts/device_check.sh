#!/usr/bin/env bash
# The device check: robustd on a GPU next to PyTorch eager on the same card, in one command (issue 14).
#
#   scripts/device_check.sh pack [DIR]   here: builds what travels into DIR (default target/device-check, < 64 MiB):
#                                        the stripped release binary (xz), the demo CNN and a full-width ResNet-18
#                                        at 32x32 as ONNX, Fashion-MNIST npz files, these scripts
#   scripts/device_check.sh run [DIR]    there (or anywhere): runs every workload and writes the results into $OUT
#                                        (default DIR/out): device_check.jsonl, the reports, the logs
#   scripts/device_results.py OUTDIR     here again: the GPU section of benches/RESULTS.md from those files
#
# On the GPU machine (PyTorch 2.11.0+cu130 in /opt/torch/.venv: its torch/lib is the libtorch robustd binds, and
# its onnxruntime the library robustd loads; nothing is downloaded there), run from the repository root with
# target/device-check carried:
#   bash scripts/device_check.sh run target/device-check
# Workloads, on cuda:0 (or on the CPU with a tiny budget when libtorch sees no GPU: the fallback path):
#   robustd info; per model, robustd eval (PGD-20 then APGD-CE 100, standalone, fixed batch) and one BAT epoch
#   (`robustd finetune`, 1 epoch, imported atypicality), fp32 and for the ResNet also bf16 autocast + channels-last;
#   the same in PyTorch eager (scripts/device_eager.py); one daemon job end to end (automatic batch size).
# DEVICE_CHECK_BUDGET=full|tiny (default: full on CUDA, tiny on the CPU); DEVICE_CHECK_SECONDS (default 480) bounds
# the whole check: each step gets at most 150 s and never runs past it (later steps are recorded as skipped), so it
# stays well under 10 minutes. DEVICE_CHECK_MODELS="cnn" runs only the small model.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '[device-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

pack() {
  local dir=${1:-target/device-check}
  set -e
  mkdir -p "$dir"
  log "building the release binary"
  cargo build --release --locked --bin robustd >&2
  strip -o "$dir/robustd" target/release/robustd
  xz -T2 -6 -f "$dir/robustd"
  log "exporting the models and data"
  .venv/bin/python scripts/device_pack.py --out "$dir" >"$dir/pack.json"
  cp scripts/device_eager.py scripts/device_check.sh "$dir/"
  local bytes
  bytes=$(du -sb "$dir" | cut -f1)
  log "packed $(ls "$dir" | tr '\n' ' ')($((bytes / 1024 / 1024)) MiB)"
  if [ "$bytes" -ge $((64 * 1024 * 1024)) ]; then
    log "too large to travel: $bytes bytes >= 64 MiB" >&2
    exit 1
  fi
}

# Seconds left of the whole check's budget (DEVICE_CHECK_SECONDS, default 480), capped at $1.
left() {
  local rest=$((DEADLINE - $(date +%s)))
  [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}

# Runs "$@" with a time limit (never past the check's deadline), recording its wall time and exit status as one
# JSON line; a step with under 15 s left is skipped.
timed() {
  local name=$1 limit
  limit=$(left "$2")
  shift 2
  if [ "$limit" -lt 15 ]; then
    printf '{"side": "robustd", "step": "%s", "rc": -1, "skipped": "out of time"}\n' "$name" >>"$RESULTS"
    log "$name skipped: out of time"
    return 0
  fi
  local start end rc
  start=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.out" 2>"$OUT/logs/$name.err"
  rc=$?
  end=$(date +%s.%N)
  printf '{"side": "robustd", "step": "%s", "rc": %d, "wall_s": %s}\n' "$name" "$rc" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')" >>"$RESULTS"
  [ "$rc" -eq 0 ] || log "$name failed (exit $rc): $(tail -n 3 "$OUT/logs/$name.err" | tr '\n' ' ')"
  return 0
}

eval_config() { # model amp channels_last batch n -> YAML
  cat <<YAML
runtime: {device: $DEVICE, threads: 0}
dataset: {name: npz, path: $PACK/$1.npz, train_samples: 0, eval_samples: $5}
threat: {norm: linf, eps: 0.1}
eval:
  attacks: [pgd, apgd-ce]
  mode: standalone
  apgd_steps: $APGD_STEPS
  eps_curve: []
  batch_size: $4
  amp: $2
  examples: {max: 0, grid: 0}
train: {method: none, channels_last: $3}
YAML
}

train_config() { # model amp channels_last samples -> YAML
  cat <<YAML
runtime: {device: $DEVICE, threads: 0}
dataset: {name: npz, path: $PACK/$1.npz, train_samples: $4, eval_samples: 64}
threat: {norm: linf, eps: 0.1}
eval: {attacks: [fgsm], mode: standalone, eps_curve: [], batch_size: 256, examples: {max: 0, grid: 0}}
train:
  method: bat
  epochs: 1
  batch_size: 128
  val_fraction: 0.0
  augmentation: none
  amp: $2
  channels_last: $3
  bat: {atypicality: $PACK/atypical.npy}
memorization: {threshold: 0.5}
YAML
}

# PyTorch eager's side of a step, bounded like `timed`; its JSON line goes to the results.
eager() {
  local name=$1 limit
  limit=$(left "$2")
  shift 2
  if [ "$limit" -lt 15 ]; then
    log "eager $name skipped: out of time"
    return 0
  fi
  timeout --kill-after=10 "$limit" "$PY" "$PACK/device_eager.py" "$@" >>"$RESULTS" 2>"$OUT/logs/eager-$name.err" ||
    log "eager $name failed: $(tail -n 3 "$OUT/logs/eager-$name.err" | tr '\n' ' ')"
}

run() {
  DEADLINE=$(($(date +%s) + ${DEVICE_CHECK_SECONDS:-480}))
  PACK=$(cd "${1:-target/device-check}" && pwd)
  OUT=${OUT:-$PACK/out}
  # Scratch (the binary, the jobs' outputs) stays outside $OUT: only results travel back.
  WORK=${DEVICE_CHECK_WORK:-$(mktemp -d)}
  mkdir -p "$OUT/logs" "$OUT/reports" "$WORK"
  RESULTS=$OUT/device_check.jsonl
  : >"$RESULTS"
  local py=${DEVICE_PYTHON:-}
  for candidate in /opt/torch/.venv/bin/python "$ROOT/.venv/bin/python"; do
    [ -n "$py" ] || { [ -x "$candidate" ] && py=$candidate; }
  done
  [ -n "$py" ] || { log "no Python with torch found (set DEVICE_PYTHON)"; exit 1; }
  PY=$py
  local torch_lib ort_lib
  torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  ort_lib=$(ls "$("$py" -c 'import os, onnxruntime; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so.* 2>/dev/null | head -n 1)
  export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export ROBUSTD_ORT_LIB=$ort_lib
  local bin=$WORK/robustd
  "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$PACK/robustd.xz" "$bin"
  chmod +x "$bin"
  log "python $py; libtorch $torch_lib; onnxruntime ${ort_lib:-none}"
  "$bin" info >"$OUT/info.txt" 2>&1 || { log "robustd info failed: $(tail -n 5 "$OUT/info.txt")"; exit 1; }
  cat "$OUT/info.txt" >&2
  if grep -q '^ *cuda:0' "$OUT/info.txt"; then DEVICE=cuda:0; else DEVICE=cpu; fi
  BUDGET=${DEVICE_CHECK_BUDGET:-$([ "$DEVICE" = cpu ] && echo tiny || echo full)}
  local n samples limit
  if [ "$BUDGET" = tiny ]; then
    n=16 samples=256 APGD_STEPS=5 limit=300
  else
    n=1000 samples=2048 APGD_STEPS=100 limit=150
  fi
  log "device $DEVICE, budget $BUDGET"
  "$py" -c 'import json, sys; print(json.dumps({"side": "host", "device": sys.argv[1], "budget": sys.argv[2], "n": int(sys.argv[3]), "samples": int(sys.argv[4]), "apgd_steps": int(sys.argv[5])}))' \
    "$DEVICE" "$BUDGET" "$n" "$samples" "$APGD_STEPS" >>"$RESULTS"

  local eager_device=${DEVICE%%:*}
  [ "$eager_device" = cuda ] && eager_device=cuda:0
  # model amp channels_last label
  local variants=("cnn false false fp32" "resnet18 false false fp32" "resnet18 true true bf16-cl")
  for v in "${variants[@]}"; do
    read -r model amp cl label <<<"$v"
    # DEVICE_CHECK_MODELS="cnn" runs a subset (a quick look at the fallback path on a CPU).
    case " ${DEVICE_CHECK_MODELS:-cnn resnet18} " in *" $model "*) ;; *) continue ;; esac
    local flags=()
    [ "$amp" = true ] && flags+=(--amp)
    [ "$cl" = true ] && flags+=(--channels-last)
    local name="eval-$model-$label"
    eval_config "$model" "$amp" "$cl" 256 "$n" >"$WORK/$name.yaml"
    timed "$name" "$limit" "$bin" eval "$PACK/$model.onnx" --config "$WORK/$name.yaml" --out "$WORK/$name"
    find "$WORK/$name" -name report.yaml -exec cp {} "$OUT/reports/$name.yaml" \; 2>/dev/null
    eager "$name" "$limit" eval --model "$model" --data "$PACK/$model.npz" --n "$n" --batch 256 \
      --device "$eager_device" --apgd-steps "$APGD_STEPS" "${flags[@]}"
    name="epoch-$model-$label"
    train_config "$model" "$amp" "$cl" "$samples" >"$WORK/$name.yaml"
    timed "$name" "$limit" "$bin" finetune "$PACK/$model.onnx" --config "$WORK/$name.yaml" --out "$WORK/$name"
    find "$WORK/$name" -name report.yaml -exec cp {} "$OUT/reports/$name.yaml" \; 2>/dev/null
    eager "$name" "$limit" epoch --model "$model" --data "$PACK/$model.npz" --samples "$samples" --batch 128 \
      --device "$eager_device" "${flags[@]}"
  done
  daemon_job "$bin" "$n" "$(left "$limit")"
  log "done: $RESULTS"
}

# One job through the daemon, end to end: drop, queue, device lease, evaluation with the automatic batch size.
daemon_job() {
  local bin=$1 n=$2 limit=$3 dir=$WORK/daemon
  if [ "$limit" -lt 15 ]; then
    printf '{"side": "robustd", "step": "daemon-job", "state": "skipped: out of time"}\n' >>"$RESULTS"
    log "daemon job skipped: out of time"
    return 0
  fi
  mkdir -p "$dir"
  cat >"$dir/daemon.yaml" <<YAML
paths: {watch: $dir/watch, models: $dir/models, state: $dir/state}
runtime: {devices: auto}
dataset: {name: npz, path: $PACK/cnn.npz, eval_samples: $n}
eval: {attacks: [pgd, apgd-ce], apgd_steps: $APGD_STEPS, eps_curve: [], batch_size: 0}
train: {method: none}
daemon: {stable_ms: 200, http: {listen: null}}
YAML
  mkdir -p "$dir/watch"
  "$bin" run --config "$dir/daemon.yaml" >"$OUT/logs/daemon.out" 2>"$OUT/logs/daemon.err" &
  local pid=$! start end
  # Submit once the daemon watches its inbox (libtorch and CUDA load first).
  for _ in $(seq 1 120); do
    grep -q "daemon ready" "$OUT/logs/daemon.err" && break
    sleep 0.25
  done
  start=$(date +%s.%N)
  "$bin" submit "$PACK/cnn.onnx" --daemon-config "$dir/daemon.yaml" >>"$OUT/logs/daemon.out" 2>&1
  local state=timeout until=$(($(date +%s) + limit))
  while [ "$(date +%s)" -lt "$until" ]; do
    sleep 0.5
    "$bin" status --config "$dir/daemon.yaml" >"$OUT/logs/daemon-status.txt" 2>&1
    if grep -q '^done *1' "$OUT/logs/daemon-status.txt"; then state=done; break; fi
    if grep -q '^failed *1' "$OUT/logs/daemon-status.txt"; then state=failed; break; fi
  done
  end=$(date +%s.%N)
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  find "$dir/models" -name report.yaml -exec cp {} "$OUT/reports/daemon-cnn.yaml" \; 2>/dev/null
  grep -h "device in the pool\|started " "$OUT/logs/daemon.err" | head -n 5 >&2
  printf '{"side": "robustd", "step": "daemon-job", "state": "%s", "wall_s": %s}\n' "$state" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')" >>"$RESULTS"
}

case "${1:-run}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack|run [DIR]" >&2; exit 2 ;;
esac
