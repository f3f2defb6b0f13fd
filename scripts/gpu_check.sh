#!/bin/bash
# The GPU check: training-step and encoder benchmarks, then the recipe for BUDGET_S seconds on CUDA (bf16 autocast).
# usage (on the GPU machine, after python scripts/gpu_assets.py here): bash scripts/gpu_check.sh [DEVICE] [BUDGET_S] [REPS]
# Writes its log, docs/benchmarks.md and the run's metrics under $OUT (or ./gpu-out).
DEV=${1:-cuda}; BUDGET=${2:-180}; REPS=${3:-20}
export PYTHONUNBUFFERED=1 PY=${PY:-python3}
OUT=${OUT:-gpu-out}; mkdir -p $OUT; LOG=$OUT/log.txt
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
$PY -c "import torch,transformers,tokenizers,safetensors,scipy,yaml,numpy;print('torch',torch.__version__,'transformers',transformers.__version__,'cuda',torch.cuda.is_available())"
echo "== train benchmark bert-base"; timeout 150 $PY benchmarks/train.py --model bert-base --base-model .gpu/minilm --data-dir .gpu/cs224n --device $DEV --reps $REPS --warmup 3
echo "== train benchmark minilm"; timeout 120 $PY benchmarks/train.py --model minilm --base-model .gpu/minilm --data-dir .gpu/cs224n --device $DEV --reps $REPS --warmup 3
cp docs/benchmarks.md $OUT/benchmarks.md
echo "== encoder benchmark"; timeout 150 $PY benchmarks/encoder.py --device $DEV --base-model .gpu/minilm --data-dir .gpu/cs224n --reps $REPS --warmup 3
cp docs/benchmarks.md $OUT/benchmarks.md
echo "== recipe on $DEV, ${BUDGET}s"
R=/tmp/gpu-runs/recipe
timeout $((BUDGET + 150)) $PY -m mtbert train --config configs/minilm-cpu-60min.yaml --base-model .gpu/minilm \
  --data-dir .gpu/cs224n --quora-train .gpu/qqp-extra-labelled.csv \
  --device $DEV --time-budget-s $BUDGET --eval-every-s $((BUDGET / 3)) --full-eval-at-s none --run-dir $R --no-progress
echo "train rc=$?"
cp $R/metrics.jsonl $R/status.json $R/config.json $OUT/ 2>&1
cp $R/best/metrics.json $OUT/best-metrics.json 2>&1
ls -la $R $R/best 2>&1
} 2>&1 | tee $LOG
