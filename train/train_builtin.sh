#!/usr/bin/env bash
# Reproduce the built-in model (flowsr/weights/flowsr_tiny.safetensors), version 6, from versions 4 and 5:
#   bash train/train_builtin.sh                                          # CPU: about 70 minutes on a 2-core CPU
#   bash train/train_builtin.sh --set train.mixed_precision=bf16 ...    # GPU; extra --set go to both stages
# Photos come from Debian packages (train/DATA.md; all 17 training photos, so the weights are CC-BY-SA-4.0);
# stage 1 continues version 5's flow on bicubic and (25 %) mildly degraded LR, stage 2 distils it to one step,
# and the result is averaged half and half with version 4 (train.average_weights).
# Version 5 was the mean of version 4 and a continuation of it; version 4 continued version 3, and so on back to
# version 1, which came from an H200 session and CPU runs (flowsr/weights/MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d data/photos_sa/train ] || python -m train.prepare_photos --out data/photos_sa
# The built-in model as commit $1 shipped it, written to $2 whole or not at all: a shallow clone's failed
# `git show` (or a Ctrl-C) must not leave a file that the next run takes as done.
shipped_model() {
    [ -f "$2" ] && return
    git show "$1:flowsr/weights/flowsr_tiny.safetensors" > "$2.part" && mv "$2.part" "$2"
}
mkdir -p runs
shipped_model 1a607ce runs/builtin_v4.safetensors   # version 4
shipped_model 02b4449 runs/builtin_v5.safetensors   # version 5
# All cores by default. Version 6's run took 63 + 4 minutes beside a second such run, one thread each. On a
# CPU shared with other work set OMP_NUM_THREADS=1: there two threads wait on each other (3-4x slower, measured).
# Run again after a Ctrl-C, a SIGTERM or a crash, and it continues: a finished stage (its export is written
# whole, last) is not run again, an unfinished one resumes from its newest checkpoint (a signal writes one).
train_stage() {  # CONFIG OUTPUT_DIR ARGS...
    local config=$1 output=$2
    shift 2
    [ -f "$output/flowsr.safetensors" ] && { echo "$config: done ($output/flowsr.safetensors)"; return; }
    python -m train.train --config "$config" --resume latest "$@"
}
train_stage train/configs/tiny_stage1.yaml runs/tiny_stage1 "$@"
train_stage train/configs/tiny_stage2.yaml runs/tiny_stage2 "$@"
mkdir -p flowsr/weights
python -m train.average_weights runs/builtin_v4.safetensors runs/tiny_stage2/flowsr.safetensors \
    --weights 0.5 0.5 --out flowsr/weights/flowsr_tiny.safetensors
echo "built-in model: flowsr/weights/flowsr_tiny.safetensors"
