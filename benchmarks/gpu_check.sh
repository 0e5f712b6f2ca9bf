#!/usr/bin/env bash
# The CUDA paths in one short run, for a session with a GPU lent (about 5 minutes on one H100):
#   measure --device cuda, train-compare with AMP + channels_last + data on the GPU, and the
#   training-speed ratio on CIFAR-10-sized synthetic tensors (50,000 x 3x32x32, AMP).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (nothing is downloaded; results land in OUT_DIR)
set -euo pipefail
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
"$PY" -m dropcheck measure torchvision:resnet50 --device cuda --batch-size 64 --batches 4 \
    --format json -o "$OUT/measure_resnet50.json"
"$PY" -m dropcheck train-compare examples/preresnet.py -a position=P3 --dataset fake --input-shape 1,3,32,32 \
    --epochs 3 --seeds 2 --device cuda -o "$OUT/train_compare_amp.json" 2>&1 | tail -12 | tee "$OUT/train_compare.txt"
"$PY" benchmarks/train_speed.py --device cuda --cifar-sized --epochs 1 --repeat 3 --batch-size 256 \
    | tee "$OUT/train_speed_cuda.txt"
