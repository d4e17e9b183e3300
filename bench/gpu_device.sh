#!/usr/bin/env bash
# One prepared run on an NVIDIA GPU machine (image: PyTorch, CuPy, nvcc; no TVM, no package
# index), at most 8 minutes: every model of bench/gpu_build/ (golden models, PP-OCRv4 cls / rec /
# det, built here by `python bench/gpu_prepare.py --arch sm_90`: PTX + launch plan + inputs +
# reference outputs, a few MB) run through CuPy, bit-exact against the reference, and qgraph
# int8 latency against PyTorch fp16 (cuDNN) and PyTorch int8 matmul, ratios in one run.
#   prepare here:  python bench/gpu_prepare.py && du -sh bench/gpu_build   (must stay < 64 MiB)
#   on the GPU:    bash bench/gpu_device.sh [bench/gpu_build]   (carry bench/gpu_build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-bench/gpu_build}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__, torch.version.cuda)"
timeout 460 python3 bench/gpu_device.py "$BUILD" --repeat 50
