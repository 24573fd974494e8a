#!/usr/bin/env bash
# One prepared check for a GPU host: no arguments, no network, < 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/ (or $OUT/ when set)
# 1. installs the project without touching the host's torch/transformers (pip --no-deps; the
#    packages the image lacks - datasets, lm-eval, mteb, ... - come as wheels in .whl/ when present,
#    see docs/training.md "GPU check"), 2. runs the tests marked gpu, 3. writes the throughput table
#    (tokens/s, MFU, NITP overhead; dense-125m and a small MoE, compile off and on) as JSON and Markdown.
# It fails loudly, before anything else, when no CUDA GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: gpu_check.sh needs a CUDA GPU and torch with CUDA; none is visible here (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1))" >&2
    exit 1
fi
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/nitp-site
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$RESULTS/gpu.txt"
echo "== tests marked gpu"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$RESULTS/gpu_tests.txt"
echo "== throughput"
timeout 240 "$PY" benchmarks/gpu_throughput.py --out "$RESULTS" --steps 10 --warmup 3
