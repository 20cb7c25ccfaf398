# Sourced by the scripts that run on a lent GPU machine (no network): from the repository root, makes $OUT,
# installs diffusers from the wheels carried in .whl/ where the machine lacks it, and puts the repo on the path.
OUT=${OUT:-out}; mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
