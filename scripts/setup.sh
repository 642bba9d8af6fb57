#!/usr/bin/env bash
# Set up minimtl in the active Python environment: torch, the dependencies, and the compiled
# kernels (CPU, plus CUDA when torch is a CUDA build and a CUDA toolkit is found).
#
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh
#
# Environment:
#   MINIMTL_KEEP_TORCH=1    keep the torch that is installed (default: install torch 2.14.1 and
#                           torchvision 0.29.1, which the tests and benchmarks were run with)
#   MINIMTL_WITH_CUDA=0|1   leave out / insist on the CUDA kernels (default: build them if possible)
#   TORCH_CUDA_ARCH_LIST    GPU architectures to compile for (e.g. "9.0"; see setup.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

if [ "${MINIMTL_KEEP_TORCH:-0}" != "1" ]; then
  "$PYTHON" -m pip install "torch==2.14.1" "torchvision==0.29.1"
fi
# Build tools first: the extension is built without build isolation, against the installed torch.
"$PYTHON" -m pip install setuptools wheel ninja
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
"$PYTHON" -m pip install --no-build-isolation -e ".[test,notebooks]"
"$PYTHON" -c "import minimtl; print('minimtl', minimtl.__version__, '- CUDA kernels built:', minimtl.built_with_cuda())"
