#!/usr/bin/env bash
# Train the MovieLens-1M SASRec backbone on a GPU, with the library's default training, and write
# its report (test metrics, seconds, machine) to $OUT/ml-1m-sasrec-gpu.json.
#
#   OUT=runs/gpu CHORD_DATA_DIR=/path/to/data benchmarks/gpu_pretrain.sh
#
# It needs a CUDA build of torch (the CPU wheel the project pins sees no GPU): install one in the
# machine's environment first, e.g. `pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu128`.
set -euo pipefail
out="${OUT:-runs/gpu}"
mkdir -p "$out"
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no GPU")'
PYTHONUNBUFFERED=1 chord-fl pretrain --dataset ml-1m --backbone sasrec --device cuda \
    --no-progress --json --out "$out/ml-1m-sasrec-gpu.pt" | tee "$out/ml-1m-sasrec-gpu.json"
