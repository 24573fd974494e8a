#!/usr/bin/env bash
# One prepared check for a GPU host: no arguments, no network, < 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/ (or $OUT/ when set)
# 1. installs the project without touching the host's torch/transformers (pip --no-deps; the
#    packages the image lacks - datasets, lm-eval, mteb, ... - come as wheels in .whl/ when present,
#    see docs/training.md "GPU check"), 2. runs the tests marked gpu, 3. writes the throughput table
#    (tokens/s, MFU, NITP overhead; dense-125m and a small MoE, compile off and on) as JSON and Markdown.
# It fails loudly, before anything else, when no CUDA GPU is visible.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
nvidia-smi -L | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$RESULTS/gpu.txt"
echo "== tests marked gpu"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$RESULTS/gpu_tests.txt"
echo "== throughput"
timeout 240 "$PY" benchmarks/gpu_throughput.py --out "$RESULTS" --steps 10 --warmup 3
