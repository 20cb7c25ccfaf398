#!/usr/bin/env bash
# Reproduce the built-in model (flowsr/weights/flowsr_tiny.safetensors), version 4, from version 3:
#   bash train/train_builtin.sh                                          # CPU: about 80 minutes on a 2-core CPU
#   bash train/train_builtin.sh --set train.mixed_precision=bf16 ...    # GPU; extra --set go to both stages
# Photos come from Debian packages (train/DATA.md; all 17 training photos, so the weights are CC-BY-SA-4.0);
# stage 1 continues version 3's flow on bicubic and (10 %) mildly degraded LR, stage 2 distils it to one step.
# Version 3 continued version 2, version 2 version 1, which came from an H200 session and CPU runs
# (flowsr/weights/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d data/photos_sa/train ] || python -m train.prepare_photos --out data/photos_sa
mkdir -p runs   # version 4 continues version 3, the file as commit 2e9aff2 shipped it
[ -f runs/builtin_v3.safetensors ] || git show 2e9aff2:flowsr/weights/flowsr_tiny.safetensors > runs/builtin_v3.safetensors
# All cores by default. Version 4 took 75 + 4.5 minutes run beside a second such run, one thread each. On a
# CPU shared with other work set OMP_NUM_THREADS=1: there two threads wait on each other (3-4x slower, measured).
python -m train.train --config train/configs/tiny_stage1.yaml "$@"
python -m train.train --config train/configs/tiny_stage2.yaml "$@"
mkdir -p flowsr/weights
cp runs/tiny_stage2/flowsr.safetensors flowsr/weights/flowsr_tiny.safetensors
echo "built-in model: flowsr/weights/flowsr_tiny.safetensors"
