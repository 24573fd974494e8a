#!/usr/bin/env bash
# The GPU study (analyses/replication-gpu.yaml: 5 seeds x 300 steps) on one GPU, in one go, sized to ~12 minutes on an H100/H200:
#   bash benchmarks/replicate_gpu.sh         # -> reports/replication-gpu/ (and $OUT/replication-gpu when set)
# 1. times 20 NITP steps of the design on this GPU and stops, saying so, if the study's training steps
#    would take more than BUDGET_S (default 300 s); 2. trains both seeds' pairs, evaluates every arm
#    (geometry of every checkpoint, lm-eval and MTEB on the local copies in ../shared/data) and builds
#    the report from the collected results files. Rerun it after an interruption: it resumes.
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"
SPEC=analyses/replication-gpu.yaml
nvidia-smi -L
"$PY" -m nitp_eval.cli replicate "$SPEC" --stages time --budget-s "${BUDGET_S:-300}"
"$PY" -m nitp_eval.cli replicate "$SPEC"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && cp -r reports/replication-gpu "$OUT/"
fi
