#!/usr/bin/env bash
# The GPU benchmark, prepared to finish in under 10 minutes on one GPU: the paper-width network (random
# weights, as no trained paper-width checkpoint ships) in fp32 and bf16, eager and compiled (torch.compile
# with CUDA graphs, one bucket per batch size), then the service on the GPU against the same model.
#
#   benchmarks/gpu.sh [OUT]          OUT defaults to bench-gpu/
#   PEAK_BF16_TFLOPS=989 PEAK_FP32_TFLOPS=67 benchmarks/gpu.sh   (the defaults: H200 SXM, dense)
#
# Needs `facesr` installed with a CUDA build of torch (pip install -e '.[model]'), and redis-server on
# the PATH for the Redis-mode part (skipped, and said so, without it). Every step has its own time limit,
# so one slow compilation cannot eat the others' time; what a step wrote is kept when it is cut short.
set -uo pipefail

OUT=${1:-bench-gpu}
PEAK_BF16=${PEAK_BF16_TFLOPS:-989}
PEAK_FP32=${PEAK_FP32_TFLOPS:-67}
mkdir -p "$OUT"
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/summary.txt"; }

step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    log "$name (at most ${limit} s)"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local status=$?
    tail -n 20 "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
    echo "-> exit $status after $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
}

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/summary.txt"

# Raw model: images/s per batch size, GPU memory, and the fraction of the dtype's peak (90.67 GFLOPs/face).
step 60 model-fp32-eager facesr bench-model --config paper --device cuda --dtype fp32 --max-batch 256 \
    --repeats 5 --peak-tflops "$PEAK_FP32" --json "$OUT/model-fp32-eager.json"
step 60 model-bf16-eager facesr bench-model --config paper --device cuda --dtype bf16 --max-batch 256 \
    --repeats 5 --peak-tflops "$PEAK_BF16" --json "$OUT/model-bf16-eager.json"
step 170 model-bf16-compiled facesr bench-model --config paper --device cuda --dtype bf16 --graph compile \
    --max-batch 64 --repeats 5 --peak-tflops "$PEAK_BF16" --json "$OUT/model-bf16-compiled.json"
step 110 model-fp32-compiled facesr bench-model --config paper --device cuda --dtype fp32 --graph compile \
    --max-batch 32 --repeats 5 --peak-tflops "$PEAK_FP32" --json "$OUT/model-fp32-compiled.json"

# The service on the GPU (one runner, batches up to 64): service / raw, p50 / p99, closed and open loop.
modes=embedded
if command -v redis-server > /dev/null; then modes=embedded,redis; else log "no redis-server: Redis mode skipped"; fi
step 170 service-bf16 facesr bench-service --config paper --device cuda --dtype bf16 --modes "$modes" \
    --max-batch-size 64 --max-queue 512 --concurrency 1,8,32,64,128 --window-s 3 --max-windows 4 \
    --warmup-s 2 --open-fractions 0.5,0.9,1.25 --open-duration-s 5 --raw-seconds 2 --out "$OUT/service-bf16"

log "done in $SECONDS s; results in $OUT/"
