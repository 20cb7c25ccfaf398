#!/usr/bin/env bash
# Reproduce the built-in model (flowsr/weights/flowsr_tiny.safetensors), version 2, from version 1:
#   bash train/train_builtin.sh                                          # CPU: about an hour on a busy 2-core CPU
#   bash train/train_builtin.sh --set train.mixed_precision=bf16 ...    # GPU; extra --set go to both stages
# Photos come from Debian packages (train/DATA.md; all 17 training photos, so the weights are CC-BY-SA-4.0);
# stage 1 continues version 1's flow on bicubic and mildly degraded LR, stage 2 distils it to one step.
# Version 1 came from an H200 session and CPU runs (flowsr/weights/MODEL_CARD.md, "How it was trained").
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d data/photos_sa/train ] || python -m train.prepare_photos --out data/photos_sa
mkdir -p runs   # version 2 continues version 1, the file as commit ce0dbeb shipped it
[ -f runs/builtin_v1.safetensors ] || git show ce0dbeb:flowsr/weights/flowsr_tiny.safetensors > runs/builtin_v1.safetensors
# One thread: on a CPU shared with other work two threads wait on each other (3-4x slower, measured).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m train.train --config train/configs/tiny_stage1.yaml "$@"
python -m train.train --config train/configs/tiny_stage2.yaml "$@"
mkdir -p flowsr/weights
cp runs/tiny_stage2/flowsr.safetensors flowsr/weights/flowsr_tiny.safetensors
echo "built-in model: flowsr/weights/flowsr_tiny.safetensors"
