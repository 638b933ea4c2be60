#!/usr/bin/env bash
# Cross-checks robustd's robust accuracies against torchattacks (scripts/reference_eval.py) on two models: the demo
# CNN (standard training) and a copy adversarially fine-tuned by `robustd finetune --method pgd-at`. Fashion-MNIST
# test images, L-inf eps 0.1. Two protocols:
#   fast        robustd's default attacks, every attack standalone, vs torchattacks' PGD/APGD/Square (1000 images)
#   autoattack  `robustd eval --preset autoattack-standard` vs torchattacks' AutoAttack(version='standard') at
#               AutoAttack's published budgets (ensemble; per-attack numbers and wall time of both)
# A measurement: expect about an hour on 2 idle CPU cores for both protocols at 1000 images.
# Usage: scripts/crosscheck.sh [WORK_DIR]   (default /tmp/robustd-crosscheck)
#   CROSSCHECK=fast|autoattack|all (default all), N=images (default 1000), THREADS (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/robustd-crosscheck}
bin=target/release/robustd
py=.venv/bin/python
n=${N:-1000}
eps=0.1
part=${CROSSCHECK:-all}
threads=${THREADS:-$(nproc)}
mkdir -p "$work"
[ -f "$work/fmnist_cnn.onnx" ] || $py scripts/train_demo_cnn.py --out "$work/fmnist_cnn.onnx"
# The adversarially trained model: PGD-AT on 10000 training images, 3 epochs (its own evaluations kept small).
if [ ! -f "$work/pgd-at/fmnist_cnn.pgd-at.onnx" ]; then
  $bin finetune "$work/fmnist_cnn.onnx" --method pgd-at --epochs 3 --train-samples 10000 --attacks pgd --n 200 \
    --out "$work/pgd-at" >/dev/null
fi
config="$work/threads.yaml"
echo "runtime: {threads: $threads}" > "$config"
for model in "$work/fmnist_cnn.onnx" "$work/pgd-at/fmnist_cnn.pgd-at.onnx"; do
  name=$(basename "$model" .onnx)
  if [ "$part" = all ] || [ "$part" = fast ]; then
    $bin eval "$model" --config "$config" --mode standalone --n "$n" --eps $eps \
      --attacks pgd,apgd-ce,apgd-dlr,square --out "$work/eval-$name" >/dev/null
    $py scripts/reference_eval.py "$model" --n "$n" --eps $eps --threads "$threads" \
      --robustd-npz "$work/eval-$name/per_sample_before.npz" --out "$work/reference-$name.json"
  fi
  if [ "$part" = all ] || [ "$part" = autoattack ]; then
    started=$(date +%s%N)
    $bin eval "$model" --config "$config" --preset autoattack-standard --n "$n" --eps $eps \
      --out "$work/autoattack-$name" >/dev/null
    ms=$(( ($(date +%s%N) - started) / 1000000 ))
    seconds=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    $py scripts/reference_eval.py "$model" --autoattack standard --n "$n" --eps $eps --threads "$threads" \
      --robustd-npz "$work/autoattack-$name/per_sample_before.npz" --robustd-seconds "$seconds" \
      --out "$work/reference-autoattack-$name.json"
  fi
done
