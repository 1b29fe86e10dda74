#!/usr/bin/env bash
# Train the demo architecture under the three regimes (the inputs of benchmarks/paper_table.py).
# ~10-15 min per regime on an idle 2-core CPU. Usage: bash benchmarks/train_regimes.sh [EPOCHS]
set -euo pipefail
EPOCHS=${1:-10}
export OMP_WAIT_POLICY=PASSIVE
for regime in overparam plain ortho; do
  lrviz train demo --weights none --regime "$regime" --epochs "$EPOCHS" --seed 0 \
    --data fashion-mnist --out "runs/$regime" --resume
done
