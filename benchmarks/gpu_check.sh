#!/usr/bin/env bash
# One prepared check for a GPU host: no arguments, no network, < 10 minutes on one H100/H200, start-up included.
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/ (or $OUT/ when set)
# Installs the project without touching the host's torch/transformers (gpu_env.sh: pip --no-deps, the
# wheels the image lacks from .whl/, see docs/training.md "GPU check"), then, in this order:
#   1. the throughput table first (tokens/s, MFU in both FLOP conventions, NITP overhead; dense-125m and a
#      small MoE, compile off and on) -> gpu_throughput-<UTC date>.json (+ .md), so no later failure loses it;
#   2. the tests marked gpu, each reported (pytest -rA), no early exit;
#   3. with 2 or more GPUs: DDP and FSDP parity against 1 process and a 2 -> 1 rank resume, over NCCL.
# No `set -e`: every part runs and is summarised at the end; the exit code is non-zero if any part failed.
# It fails loudly, before anything else, when no CUDA GPU is visible.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
RESULTS=${OUT:-benchmarks/results}
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$RESULTS"
nvidia-smi -L | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$RESULTS/gpu.txt"
SUMMARY=()
FAILED=0

part() {  # part NAME LOG COMMAND...: run it, keep its output in $RESULTS/LOG, record ok / FAILED
    local name=$1 log=$2
    shift 2
    echo "== $name"
    "$@" 2>&1 | tee "$RESULTS/$log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then SUMMARY+=("ok      $name"); else SUMMARY+=("FAILED  $name (exit $rc, see $RESULTS/$log)"); FAILED=1; fi
}

part "throughput" gpu_throughput.txt timeout 240 "$PY" benchmarks/gpu_throughput.py --out "$RESULTS" --steps 10 --warmup 3
if [ -f "$RESULTS/throughput.json" ]; then
    cp "$RESULTS/throughput.json" "$RESULTS/gpu_throughput-$STAMP.json"
    cp "$RESULTS/throughput.md" "$RESULTS/gpu_throughput-$STAMP.md"
fi
part "tests marked gpu" gpu_tests.txt timeout 240 "$PY" -m pytest -q -rA -m gpu -p no:cacheprovider tests/test_gpu.py
NGPU=$(nvidia-smi -L | grep -c '^GPU')
if [ "$NGPU" -ge 2 ]; then
    part "DDP/FSDP parity and 2 -> 1 resume over NCCL" gpu_multi.txt \
        timeout 150 "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_gpu_multi.py
else
    SUMMARY+=("skipped DDP/FSDP parity and 2 -> 1 resume (needs 2 GPUs; $NGPU here)")
fi
echo "== summary"
printf '%s\n' "${SUMMARY[@]}" | tee "$RESULTS/gpu_summary.txt"
exit $FAILED
