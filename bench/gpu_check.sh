#!/usr/bin/env bash
# The GPU checks of issue 10 as one run, for a lent GPU machine (or any CUDA box with torch installed):
# the GPU tests (pytest -m gpu) and bench/gpu_trial.py on a 7B-shaped model. Outputs go to $OUT
# (default /tmp/gpu-check): gpu_tests.log, gpu_tests.xml, gpu_trial.json, gpu_trial.log, env.txt.
#
#   bash bench/gpu_check.sh            # from the repository root
#
# Python packages the machine lacks can travel as wheels in .whl/ (see README: GPU checks); they are
# installed into /tmp/site first. Copy $OUT/gpu_trial.json to bench/results/ to record it.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
{ date -Is; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, deepspeed.__version__)"; } > "$OUT/env.txt" 2>&1
timeout "${TESTS_TIMEOUT:-240}" $PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $?"; tail -n 25 "$OUT/gpu_tests.log"
timeout "${BENCH_TIMEOUT:-420}" $PY bench/gpu_trial.py --out "$OUT/gpu_trial.json" --time-budget "${BENCH_BUDGET:-330}" \
  > "$OUT/gpu_trial.log" 2>&1
echo "gpu_trial: exit $?"; grep -v "Loading weights\|Writing model" "$OUT/gpu_trial.log" | tail -n 40
