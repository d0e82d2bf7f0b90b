#!/usr/bin/env bash
# Everything to run on a lent GPU, in one go (about 8 minutes on one H200), from the repo root:
#
#     OUT=/tmp/gpu bash benchmarks/run_gpu.sh
#
# 1. benchmarks/gpu_check.py: the `gpu`-marked tests, fp32 vs 16-mixed vs channels_last vs
#    compile, MemorySnapshot's overhead, SyncDetector on a deliberate `.item()`;
# 2. the flagship example with --gpu (16-mixed, real CUDA memory snapshot);
# 3. benchmarks/callback_overhead.py on the GPU (idle and capturing, 16-mixed);
# 4. gradient checkpointing (plain vs torch.utils.checkpoint vs full vs selective) and gradient
#    clipping on the GPU;
# 5. test-time augmentation against ttach's per-view loop on the GPU.
# Every part has its own time limit, so one failure or hang does not lose the others.
# Everything printed goes to $OUT/all.log; the markdown tables also to $OUT/*.md.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
# TQDM_DISABLE: no progress bars in the log (they would merge with the lines printed around them)
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" OUT TQDM_DISABLE=1
PY=${PYTHON:-python3}
LOG="$OUT/all.log"

part() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, $(date +%T))"
    timeout "$limit" "$@" 2>&1 | grep -v -e "^GPU available" -e "^TPU available" -e "Tip:" -e "LOCAL_RANK" -e "it/s\]"
    echo "=== $name: exit ${PIPESTATUS[0]} ($(date +%T))"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
    part gpu_check 270 $PY benchmarks/gpu_check.py --test-timeout 180
    part flagship 75 $PY examples/digits/flagship.py --gpu
    part callback_overhead 100 $PY benchmarks/callback_overhead.py --accelerator gpu --rounds 3 --steps 30 \
        --out "$OUT/callback_overhead.md"
    part gradient_checkpointing 120 $PY benchmarks/gradient_checkpointing.py --device cuda --rounds 20 \
        --dim-mlp 1024 --batch-mlp 4096 --out "$OUT/gradient_checkpointing.md"
    part gradient_clipping 30 $PY benchmarks/gradient_clipping.py --device cuda --steps 50 --rounds 3
    part tta_vs_ttach 120 $PY benchmarks/tta_vs_ttach.py --device cuda --out "$OUT/tta_vs_ttach.md"
} 2>&1 | tee "$LOG"
