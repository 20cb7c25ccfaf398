#!/usr/bin/env bash
# What ran on the lent GPU (one H100/H200, no network), in one call: the speed/memory benchmark at
# 512 -> 2048 with the SD 2.1 architecture, the CUDA out-of-memory back-off, then the built-in model's
# training (stage 1, then stage 2 with its two ablations side by side). Results land in $OUT.
# Ran with the configs of its commit; today's stage-1 config continues version 2, so stage 1 here passes
# model.init=null (from scratch, as it ran). Needs data/photos_sa (python -m train.prepare_photos --out
# data/photos_sa) and, where diffusers is missing, wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/bench.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/bench.txt"

if [ "${BENCH:-1}" = 1 ]; then
  timeout 150 python3 bench/bench_upscale.py --model sd-random --device cuda --input 512 --scale 4 --repeat 2 \
      --growth 256 512 2>&1 | grep -v Warning | tee -a "$OUT/bench.txt"
  timeout 60 python3 bench/oom_check.py --fraction 0.05 --input 512 2>&1 | tail -3 | tee -a "$OUT/bench.txt"
fi

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
