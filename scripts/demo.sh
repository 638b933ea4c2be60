#!/usr/bin/env bash
# The demo (`make demo`): train a small CNN on Fashion-MNIST the way a user would (standard training, PyTorch),
# export it to ONNX, start the robustd daemon, drop the model into watch/, wait for the report, print its summary,
# print the dashboard address (on a terminal the daemon keeps serving it until Enter), and stop the daemon.
# Results stay in models/fmnist_cnn/latest/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/robustd
CONFIG=configs/demo.yaml
MODEL_DIR=target/demo
MODEL=$MODEL_DIR/fmnist_cnn.onnx
TIMEOUT_S=${DEMO_TIMEOUT_S:-1800}
log() { printf '\n[demo] %s\n' "$*"; }

if [ ! -f "$MODEL" ]; then
  log "training the demo classifier (standard training, 2 epochs on 20k Fashion-MNIST images)"
  .venv/bin/python scripts/train_demo_cnn.py --out "$MODEL" 2> >(grep -v -e '^W[0-9]' -e 'torch.onnx' >&2)
fi
"$BIN" inspect "$MODEL"

mkdir -p watch models state
# A drop left in the inbox by an interrupted earlier demo would be taken twice.
rm -f watch/fmnist_cnn.onnx watch/fmnist_cnn.onnx.data
log "starting the daemon (logs in state/demo-daemon.log)"
"$BIN" run --config "$CONFIG" > state/demo-daemon.log 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null || true; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "daemon ready" state/demo-daemon.log && break; sleep 0.2; done

finished() { find state/done state/failed -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l; }
before=$(finished)
log "dropping $MODEL into watch/"
"$BIN" submit "$MODEL" --daemon-config "$CONFIG"
start=$(date +%s)
while [ "$(finished)" -le "$before" ]; do
  if [ $(( $(date +%s) - start )) -gt "$TIMEOUT_S" ]; then
    log "no result after ${TIMEOUT_S}s; daemon log:"; tail -n 30 state/demo-daemon.log; exit 1
  fi
  kill -0 $DAEMON 2>/dev/null || { log "the daemon exited; its log:"; tail -n 30 state/demo-daemon.log; exit 1; }
  # Show the daemon's progress lines as they come.
  line=$( (grep -E "started|epoch done|holdout model|done:" state/demo-daemon.log || true) | tail -n 1)
  if [ -n "$line" ] && [ "$line" != "${last:-}" ]; then
    printf '[demo] %4ss %s\n' "$(( $(date +%s) - start ))" "$(echo "$line" | sed 's/^ *INFO //' | cut -c1-120)"
    last=$line
  fi
  sleep 2
done
job=$(find state/done state/failed -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2)
if [ -f "$job/error.yaml" ]; then
  log "the job failed:"; cat "$job/error.yaml"; exit 1
fi
result=$(sed -n 's/^result_dir: //p' "$job/job.yaml" | tr -d "'\"")
log "report: $result/report.yaml ($(( $(date +%s) - start ))s after the drop)"
sed -n '/^summary:/,/^model:/p' "$result/report.yaml" | sed '$d'
"$BIN" status --config "$CONFIG" --last 3
log "plots: $(ls "$result/plots" | tr '\n' ' ')"
url=$(grep -o 'HTTP listening on http://[^ ]*' state/demo-daemon.log | tail -n 1 | sed 's/^HTTP listening on //')
if [ -n "$url" ]; then
  log "dashboard: $url (this model: ${url}models/$(basename "$(dirname "$result")"); metrics: ${url}metrics)"
  if [ -t 0 ]; then
    log "the daemon keeps serving the dashboard; press Enter to stop it"
    read -r _ || true
  fi
fi
