#!/usr/bin/env bash
# Cross-checks robustd's robust accuracies against torchattacks (scripts/reference_eval.py) on two models: the demo
# CNN (standard training) and a copy adversarially fine-tuned by `robustd finetune --method pgd-at`. 1000
# Fashion-MNIST test images, L-inf eps 0.1, every attack standalone. A measurement: expect ~30 min on 2 CPU cores.
# Usage: scripts/crosscheck.sh [WORK_DIR]   (default /tmp/robustd-crosscheck)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/robustd-crosscheck}
bin=target/release/robustd
py=.venv/bin/python
n=1000
eps=0.1
mkdir -p "$work"
[ -f "$work/fmnist_cnn.onnx" ] || $py scripts/train_demo_cnn.py --out "$work/fmnist_cnn.onnx"
# The adversarially trained model: PGD-AT on 10000 training images, 3 epochs (its own evaluations kept small).
if [ ! -f "$work/pgd-at/fmnist_cnn.pgd-at.onnx" ]; then
  $bin finetune "$work/fmnist_cnn.onnx" --method pgd-at --epochs 3 --train-samples 10000 --attacks pgd --n 200 \
    --out "$work/pgd-at" >/dev/null
fi
for model in "$work/fmnist_cnn.onnx" "$work/pgd-at/fmnist_cnn.pgd-at.onnx"; do
  name=$(basename "$model" .onnx)
  $bin eval "$model" --mode standalone --n $n --eps $eps --attacks pgd,apgd-ce,apgd-dlr,square \
    --out "$work/eval-$name" >/dev/null
  $py scripts/reference_eval.py "$model" --n $n --eps $eps --robustd-npz "$work/eval-$name/per_sample_before.npz" \
    --out "$work/reference-$name.json"
done
