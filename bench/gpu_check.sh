#!/usr/bin/env bash
# GPU verification of cuda_ext on a lent GPU host (plain python3 with torch, no pip needed):
#   bash bench/gpu_check.sh
# 1. builds the CUDA kernels for sm_90 only, 2. runs the GPU tests (CUDA vs the torch reference),
# 3. times CUDA vs the reference. Everything is also written to $OUT/ when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-}"
log() { if [ -n "$OUT_DIR" ]; then tee -a "$OUT_DIR/gpu_check.log"; else cat; fi; }
[ -n "$OUT_DIR" ] && mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export SYNCTALK_KERNEL_CACHE="${SYNCTALK_KERNEL_CACHE:-$PWD/.synctalk/kernels}"
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda-13.0 /usr/local/cuda; do [ -x "$c/bin/nvcc" ] && export CUDA_HOME="$c" && break; done
fi
status=0
{
  echo "== $(date -u) | $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, CUDA_HOME=${CUDA_HOME:-unset})"
} 2>&1 | log
( time python3 -m cuda_ext.build --cuda --cpu ) 2>&1 | log || status=1
echo "== GPU tests" | log
python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/cuda_ext -m gpu -rA tests/cuda_ext 2>&1 | log
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== CPU tests (C++ vs reference) on this host" | log
python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/cuda_ext -m "not gpu" tests/cuda_ext 2>&1 | tail -5 | log
echo "== benchmark" | log
python3 bench/kernels.py --device cuda 2>&1 | log || status=1
exit $status
