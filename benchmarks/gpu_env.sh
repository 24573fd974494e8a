# Sourced by the GPU scripts (gpu_check.sh, replicate_gpu.sh): fail at once without a CUDA GPU, install
# the wheels the image lacks from .whl/ (datasets, lm-eval, mteb, ...: docs/training.md "GPU check")
# into a side dir without touching the host's torch/transformers, and work offline.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: $(basename "$0") needs a CUDA GPU and torch with CUDA; none is visible here (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1 | sed "s/.*: //"))" >&2
    exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/nitp-site
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
