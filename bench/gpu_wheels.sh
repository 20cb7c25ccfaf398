#!/usr/bin/env bash
# Run here (with the registry reachable) before a GPU session: the device image has torch, Triton, peft,
# transformers and safetensors but not diffusers, so its wheel (pure Python, the version installed here) goes
# into .whl/ (ignored by git), which the session's call must carry (run's carry: [".whl"]); gpu_env.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
version=$("$PYTHON" -c "import diffusers; print(diffusers.__version__)")
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d .whl "diffusers==$version"
ls -l .whl
