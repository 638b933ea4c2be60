#!/usr/bin/env bash
# The memorization recall benchmark: every estimator and budget on real Fashion-MNIST with 3 % of the training
# labels flipped, robustd (benches/memo_recall.rs) next to the same estimators in PyTorch
# (scripts/memo_recall_reference.py), one thread each, one after the other. Writes benches/MEMO_RECALL.md (the table)
# and the raw JSON lines beside it. A measurement, not a test: ~2 h on 2 idle cores (the Feldman-Zhang rows are most
# of it); MEMO_QUICK=1 runs the default on both models and the other estimators on the MLP (~15 min).
# Usage: scripts/memo_recall.sh [OUT.md]   (default benches/MEMO_RECALL.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/MEMO_RECALL.md}
raw=${out%.md}.jsonl
py=.venv/bin/python
cargo bench --locked --bench memo_recall --no-run >/dev/null 2>&1
rs() { cargo bench --locked --bench memo_recall -- --threads 1 "$@" 2>/dev/null | grep '^{'; }
ref() { $py scripts/memo_recall_reference.py --threads 1 "$@"; }
both() { rs "$@"; ref "$@"; }
: > "$raw"
{
  # The default (learning-speed, 8 epochs) on both models; the other estimators on the MLP; Feldman-Zhang at the
  # old default budget (3 epochs per subset model, no fit target: the 0/1 column is the old score) and fitted.
  both --arch cnn --estimator learning-speed --epochs 8
  both --arch mlp --estimator learning-speed --epochs 8
  both --arch mlp --estimator holdout --epochs 8
  both --arch mlp --estimator feldman-zhang --k 8 --ratio 0.7 --fit-target 1.0 --max-epochs 3
  both --arch mlp --estimator feldman-zhang --k 8 --ratio 0.7 --fit-target 0.99 --max-epochs 60
  if [ -z "${MEMO_QUICK:-}" ]; then
    for e in 4 15; do both --arch cnn --estimator learning-speed --epochs $e; done
    both --arch cnn --estimator holdout --epochs 8
    both --arch cnn --estimator feldman-zhang --k 8 --ratio 0.7 --fit-target 0.99 --max-epochs 20
    both --arch cnn --estimator feldman-zhang --k 8 --ratio 0.7 --fit-target 0.99 --max-epochs 60
    # The daemon's default budget: every fine-tuning sample scored (dataset.train_samples 10000), the demo CNN.
    both --arch cnn --samples 10000 --estimator learning-speed --epochs 8
  fi
} | tee -a "$raw"
{
  echo "# Memorization recall on Fashion-MNIST with flipped labels"
  echo
  echo "Share of the flipped training samples (every 33rd label moved to another class) in the top decile of each"
  echo "estimator's scores — chance is 10 %. robustd (benches/memo_recall.rs) and PyTorch"
  echo "(scripts/memo_recall_reference.py) run the same estimators on the same data, one thread each; soft = the"
  echo "score from p(y|x) (what robustd ranks by), 0-1 = the same from correctness. Time: wall clock (CPU time)."
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo
  $py scripts/memo_recall_reference.py table "$raw"
} > "$out"
echo "wrote $out"
