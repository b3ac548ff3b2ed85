#!/usr/bin/env bash
# Train the MovieLens-1M SASRec backbone on a GPU, with the library's default training, and write
# its report (test metrics, seconds, machine) to $OUT/ml-1m-sasrec-gpu.json; with
# HYPERNET_EPOCHS=N (N > 0), then train CHORD's hypernetworks on it on the GPU for at most N
# epochs and write their report (validation history, test metrics, seconds) to
# $OUT/ml-1m-sasrec-chord-gpu.json.
#
#   OUT=runs/gpu CHORD_DATA_DIR=/path/to/data [HYPERNET_EPOCHS=4] benchmarks/gpu_pretrain.sh \
#       [PRETRAIN OPTIONS]
#
# Options after the script go to `chord-fl pretrain` (e.g. --ce-dtype bfloat16 --batch-size 64).
#
# It runs the library from this checkout with whatever Python `$PYTHON` names (default python3),
# installed or not: that Python needs a CUDA build of torch (the CPU wheel the project pins sees
# no GPU), numpy, pandas and tqdm, and nothing of Flower's, so a GPU machine's own PyTorch image
# serves as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
out="${OUT:-runs/gpu}"
mkdir -p "$out"
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no GPU")'
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$python" -m chord_fl.cli \
    pretrain --dataset ml-1m --backbone sasrec --device cuda --no-progress --json \
    --out "$out/ml-1m-sasrec-gpu.pt" "$@" | tee "$out/ml-1m-sasrec-gpu.json"
if [ "${HYPERNET_EPOCHS:-0}" -gt 0 ]; then
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$python" -m chord_fl.cli \
        hypernet --dataset ml-1m --backbone sasrec --device cuda --no-progress --json \
        --checkpoint "$out/ml-1m-sasrec-gpu.pt" --epochs "$HYPERNET_EPOCHS" \
        --checkpoint-dir "$out" | tee "$out/ml-1m-sasrec-chord-gpu.json"
fi
