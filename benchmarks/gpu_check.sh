#!/usr/bin/env bash
# Every GPU check in one go, under 5 minutes on one CUDA GPU: the tests marked `gpu` (a CUDA
# run equals the CPU run, bf16 autocast, DDP over NCCL on one GPU), then the step-cost and
# landscape benchmarks on CUDA.  Prints every figure; the README's Speed section takes them.
#   bash benchmarks/gpu_check.sh            (PYTHON=... to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible to torch; run it on a GPU machine")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

echo "== tests marked gpu"
timeout 150 "$PYTHON" -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_gpu.py

echo "== M-SAM vs SAM step cost on CUDA"
timeout 75 "$PYTHON" benchmarks/step_cost.py --device cuda --rounds 10

echo "== landscape grid and Hessian on CUDA"
timeout 75 "$PYTHON" benchmarks/landscape_speed.py --device cuda
