#!/usr/bin/env bash
# One short device run: GPU checks, the predict throughput benchmark on CUDA, then full fine-tuning
# on 10,000 Rotten Tomatoes labels against the frozen head (about 8 minutes in all).
# Prepare first (here): .venv/bin/python benchmarks/device_bundle.py ; carry .device
set -euo pipefail
export PYTHONPATH=. HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/gpu_check.py .device/minilm
python benchmarks/predict.py --model .device/minilm --device cuda --skip-ece --n 40000 --n-per-item 2000
mkdir -p "${OUT:-/tmp}" && cp benchmarks/out/predict.json "${OUT:-/tmp}/predict-gpu.json" || true
# full fine-tuning on 10,000 Rotten Tomatoes labels (bf16 autocast), scored against the frozen head
python benchmarks/gpu_finetune.py --model .device/minilm --n-train 10000 --budget 240 --epochs 3
