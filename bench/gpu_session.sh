#!/usr/bin/env bash
# One call on a lent GPU (one H100/H200, no network), under 10 minutes: the speed table of issue 25,
# bench/bench_speed.py --gpu-table (512 -> 2048 and 1024 -> 8192 with 64-latent tiles; eager and compiled, bf16 and
# fp16, 1-4 tiles per call, channels-last off and on; the VRAM of 1024 -> 8192 against 512 -> 2048 at the same tiles;
# the attention kernels), printed as it goes and kept in $OUT/speed.txt. Rows stop starting after BUDGET seconds
# (380), the whole after SPEED_TIMEOUT (540), so a slow compiler costs rows, never the table.
# The device image lacks diffusers: run bench/gpu_wheels.sh here first and carry .whl in the call, e.g.
#   run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=600)
# TRAIN=1 then also runs what an earlier session ran (the 512 -> 2048 bench, the CUDA out-of-memory back-off,
# the built-in model's training: stage 1, then stage 2 with its two ablations side by side; about 8 minutes more,
# so not within one call). Its configs: today's stage-1 config continues version 2, so stage 1 here passes
# model.init=null (from scratch, as it ran); it needs data/photos_sa (python -m train.prepare_photos --out
# data/photos_sa).
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
if ! python3 -c "import diffusers" 2>/dev/null; then
  echo "diffusers is missing on this machine: run bench/gpu_wheels.sh where pip works and carry .whl" | tee "$OUT/speed.txt"
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/speed.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/speed.txt"
# GPU_TABLE_ARGS: a check of this script without a GPU, e.g. "--device cpu --model sd-tiny --sizes 32 64 --backend aot_eager"
timeout "${SPEED_TIMEOUT:-540}" python3 bench/bench_speed.py --gpu-table --budget "${BUDGET:-380}" ${GPU_TABLE_ARGS:-} 2>&1 \
    | grep -v Warning | tee -a "$OUT/speed.txt"
[ "${TRAIN:-0}" = 1 ] || exit 0

timeout 150 python3 bench/bench_upscale.py --model sd-random --device cuda --input 512 --scale 4 --repeat 2 \
    --growth 256 512 2>&1 | grep -v Warning | tee -a "$OUT/bench.txt"
timeout 60 python3 bench/oom_check.py --fraction 0.05 --input 512 2>&1 | tail -3 | tee -a "$OUT/bench.txt"

GPU=(--set train.mixed_precision=bf16 --set data.num_workers=${WORKERS:-8} --set data.batch_size=32 --set log.every=50)
t0=$(date +%s)
timeout ${S1_TIMEOUT:-150} python3 -m train.train --config train/configs/tiny_stage1.yaml "${GPU[@]}" --set model.init=null \
    --set train.max_steps=${S1_STEPS:-5000} \
    > "$OUT/stage1.log" 2>&1
echo "stage 1: rc=$? in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/bench.txt"
# Cut short by the time limit: start stage 2 from the newest checkpoint's export.
[ -f runs/tiny_stage1/flowsr.safetensors ] || cp "$(ls -d runs/tiny_stage1/checkpoints/step_* | tail -1)/flowsr.safetensors" runs/tiny_stage1/
S2=(--config train/configs/tiny_stage2.yaml "${GPU[@]}" --set train.max_steps=${S2_STEPS:-1200} --set validation.every=400)
t0=$(date +%s)
timeout ${S2_TIMEOUT:-140} python3 -m train.train "${S2[@]}" > "$OUT/stage2.log" 2>&1 &
timeout ${S2_TIMEOUT:-140} python3 -m train.train "${S2[@]}" --set output_dir=runs/tiny_stage2_no_hr --set stage2.weights.hr=0 \
    > "$OUT/stage2_no_hr.log" 2>&1 &
timeout ${S2_TIMEOUT:-140} python3 -m train.train "${S2[@]}" --set output_dir=runs/tiny_stage2_one_scheduler \
    --set 'stage2.pairs={slow_to_fast: 0, fast_to_slow: 0, slow: 1.0}' > "$OUT/stage2_one_scheduler.log" 2>&1 &
wait
echo "stage 2 (three runs side by side): $(( $(date +%s) - t0 )) s" | tee -a "$OUT/bench.txt"

tar -czf "$OUT/logs.tar.gz" -C "$OUT" stage1.log stage2.log stage2_no_hr.log stage2_one_scheduler.log \
    -C "$PWD" $(ls runs/*/scalars.csv); rm -f "$OUT"/*.log
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
from flowsr.models.tiny import load_tiny, save_tiny
out = Path(sys.argv[1])
for run in ("tiny_stage1", "tiny_stage2", "tiny_stage2_no_hr", "tiny_stage2_one_scheduler"):
    folder = Path("runs") / run
    files = [folder / "flowsr.safetensors"] + sorted(folder.glob("checkpoints/*/flowsr.safetensors"), reverse=True)
    found = next((f for f in files if f.exists()), None)
    if found is None:
        print(run, "produced no model"); continue
    save_tiny(load_tiny(found), out / f"{run}.safetensors", dtype=__import__("torch").float16)
    print(run, "<-", found)
PY
