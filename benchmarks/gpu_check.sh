#!/usr/bin/env bash
# Every GPU check in one go, about 5 minutes on one CUDA GPU (each part has its own timeout):
# the tests marked `gpu` (a CUDA run equals the CPU run, bf16 autocast, fp16 with its loss
# scaling for every method, DDP over NCCL on one GPU), the step-cost, loss-scaling and
# landscape benchmarks on CUDA, and one M-SAM run in fp32, bf16 and fp16.  Prints every figure; the README's Speed
# section takes them.
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
timeout 210 "$PYTHON" -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_gpu.py

echo "== M-SAM vs SAM step cost on CUDA"
timeout 75 "$PYTHON" benchmarks/step_cost.py --device cuda --rounds 10

echo "== fp16's loss scaling in each method's step on CUDA (its host reads included)"
timeout 60 "$PYTHON" benchmarks/method_cost.py --device cuda --loss-scaling

echo "== landscape grid and Hessian on CUDA"
timeout 75 "$PYTHON" benchmarks/landscape_speed.py --device cuda

echo "== M-SAM in fp32, bf16 and fp16 (autocast + loss scaling) on CUDA, 3 epochs"
timeout 60 "$PYTHON" - <<'PY'
import json, statistics, tempfile
from pathlib import Path
from msam_core.train import train
with tempfile.TemporaryDirectory() as tmp:
    for precision in ("fp32", "bf16", "fp16"):
        config = {"device": "cuda", "method": "msam", "epochs": 3, "precision": precision}
        run = train(config, out=Path(tmp) / precision, quiet=True)
        steps = [json.loads(line) for line in (run / "iterations.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
        step_s = statistics.median(r["time/step_s"] for r in steps[len(steps) // 3 :])
        scale = steps[-1].get("loss_scale", "-")
        skipped = sum(bool(r.get("skipped")) for r in steps)
        print(
            f"{precision}: {1e3 * step_s:.2f} ms/step (median, last two thirds), best val acc "
            f"{summary['best']['val']['acc']:.3f}, loss {steps[-1]['loss']:.4f}, "
            f"final loss scale {scale}, skipped steps {skipped} of {len(steps)}"
        )
PY
