#!/usr/bin/env bash
# The GPU check, in one call on a machine with a CUDA GPU (the lent H100/H200: torch, torchvision,
# pytest and hypothesis preinstalled, no network). It
#   1. builds minimtl._C with the CUDA kernels, in place, against the torch that is there;
#   2. runs the kernel tests (the CUDA cases included: CUDA against CPU and the reference) and the
#      model under CUDA autocast (bfloat16 and float16), then scripts/cuda_smoke.py (every CUDA kernel on awkward inputs) under compute-sanitizer's memcheck
#      and racecheck, where the machine has compute-sanitizer;
#   3. runs the op benchmark on the GPU against torchvision's CUDA ops (IoU, NMS, RoIAlign forward
#      and forward + backward), and a Mask R-CNN training step against torchvision's;
#   4. times the main job, `python -m minimtl demo`, on the GPU (target: under 3 minutes), when
#      the machine has its dependencies (tqdm, matplotlib): the short training run in mixed
#      precision (the trainer's autocast, bfloat16 on Hopper), then the evaluation;
# and prints a short table at the end. Logs and JSON go to $OUT (or ./gpu_check_out), and the table
# also to $OUT/summary.md: paste it into docs/gpu-results.md. Budget: under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MINIMTL_WITH_CUDA=1 MINIMTL_EXPECT_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
status=0
t0=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== build"
if ! MAX_JOBS=16 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
t_build=$(( $(date +%s) - t0 ))

echo "== kernel tests"
"$PY" -m pytest tests/test_box_iou.py tests/test_nms.py tests/test_roi_align.py tests/test_build.py \
  tests/test_multitask_model.py::test_mixed_precision_keeps_geometry_and_losses_in_full_precision -q -p no:cacheprovider \
  --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"
SANITIZER=$(command -v compute-sanitizer || true)
[ -z "$SANITIZER" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
for tool in memcheck racecheck; do
  if [ -n "$SANITIZER" ]; then
    if timeout 180 "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_smoke.py >"$OUT/$tool.log" 2>&1; then
      echo "compute-sanitizer $tool: clean" | tee -a "$OUT/sanitizer.txt"
    else
      echo "compute-sanitizer $tool: FAILED (see $tool.log)" | tee -a "$OUT/sanitizer.txt"; tail -20 "$OUT/$tool.log"; status=1
    fi
  else
    echo "compute-sanitizer $tool: not available on this machine" | tee -a "$OUT/sanitizer.txt"
  fi
done
t_tests=$(( $(date +%s) - t0 - t_build ))

echo "== benchmark (GPU)"
"$PY" -m minimtl.bench ops --device cuda --json "$OUT/bench_cuda.json" >"$OUT/bench.log" 2>&1 || status=1
"$PY" -m minimtl.bench train --device cuda >"$OUT/bench_train.log" 2>&1 || status=1
t_bench=$(( $(date +%s) - t0 - t_build - t_tests ))

echo "== demo (GPU)"
if "$PY" -c "import tqdm, matplotlib" 2>/dev/null; then
  timeout 240 "$PY" -m minimtl demo --device cuda --out "$OUT/demo" >"$OUT/demo.log" 2>&1 || status=1
  grep -A3 "trained in" "$OUT/demo.log"
else
  echo "skipped: tqdm or matplotlib is not installed here" | tee "$OUT/demo.log"
fi

# The summary, printed and written as $OUT/summary.md: an entry to paste into docs/gpu-results.md.
{
  echo "## $(head -1 "$OUT/gpu.txt" | cut -d, -f1), $(date -u +%Y-%m-%d)"
  echo
  echo '```'
  tail -n +2 "$OUT/gpu.txt"
  echo "build ${t_build}s, tests ${t_tests}s, benchmark ${t_bench}s"
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -1
  cat "$OUT/sanitizer.txt"
  cat "$OUT/bench.log"
  cat "$OUT/bench_train.log"
  grep -A3 "trained in" "$OUT/demo.log"
  echo '```'
} >"$OUT/summary.md"
echo
echo "== summary (also in $OUT/summary.md, for docs/gpu-results.md)"
cat "$OUT/summary.md"
exit $status
