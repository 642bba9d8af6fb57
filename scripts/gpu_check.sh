#!/usr/bin/env bash
# The GPU check, in one call on a machine with a CUDA GPU (the lent H100/H200: torch, torchvision,
# pytest and hypothesis preinstalled, no network). In order of importance, it
#   1. builds minimtl._C with the CUDA kernels, in place, against the torch that is there;
#   2. runs the kernel tests (the CUDA cases included: CUDA against CPU and the reference) and the
#      model under CUDA autocast (bfloat16 and float16);
#   3. runs the op benchmark on the GPU against torchvision's CUDA ops (IoU, NMS, RoIAlign forward
#      and forward + backward: the issue's targets);
#   4. runs scripts/cuda_smoke.py (every CUDA kernel on awkward inputs) under compute-sanitizer's
#      memcheck and racecheck, where the machine has compute-sanitizer;
#   5. times a Mask R-CNN training step against torchvision's;
#   6. times the main job, `python -m minimtl demo`, on the GPU (target: under 3 minutes): the
#      short training run in mixed precision (the trainer's autocast, bfloat16 on Hopper), then the
#      evaluation, when the machine has tqdm and matplotlib.
# Each step appends its result to $OUT/summary.md (an entry for docs/gpu-results.md) as soon as it
# ends, so a run cut short still reports what it did; logs and JSON go to $OUT (or ./gpu_check_out).
# A step that would not finish within GPU_CHECK_BUDGET_S seconds (default 540, under the device
# tool's 600 s per call) of the start is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MINIMTL_WITH_CUDA=1 MINIMTL_EXPECT_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
status=0
t0=$(date +%s)
SUMMARY="$OUT/summary.md"

elapsed() { echo $(( $(date +%s) - t0 )); }
note() { echo "$*" | tee -a "$SUMMARY"; }  # a line of the summary, printed as it comes
# fits SECONDS: whether a step expected to take up to SECONDS still ends within the budget.
fits() {
  if [ $(( $(elapsed) + $1 )) -le "$BUDGET" ]; then return 0; fi
  note "skipped at $(elapsed) s: it could take ${1} s, over the ${BUDGET} s budget"
  return 1
}

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
{
  echo "## ${gpu%%,*}, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
} >"$SUMMARY"
note "gpu: $gpu"
note "$("$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)")"

echo "== build"
if ! MAX_JOBS=16 "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  note "BUILD FAILED after $(elapsed) s (build.log)"
  echo '```' >>"$SUMMARY"
  exit 1
fi
note "build: $(elapsed) s"

echo "== kernel tests"
start=$(elapsed)
"$PY" -m pytest tests/test_box_iou.py tests/test_nms.py tests/test_roi_align.py tests/test_build.py \
  tests/test_multitask_model.py::test_mixed_precision_keeps_geometry_and_losses_in_full_precision -q -p no:cacheprovider \
  --junitxml="$OUT/tests.xml" >"$OUT/tests.log" 2>&1 || status=1
tail -15 "$OUT/tests.log"
note "tests ($(( $(elapsed) - start )) s): $(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)"

echo "== benchmark: ops (GPU)"
if fits 120; then
  "$PY" -m minimtl.bench ops --device cuda --json "$OUT/bench_cuda.json" >"$OUT/bench.log" 2>&1 || status=1
  cat "$OUT/bench.log" | tee -a "$SUMMARY"
fi

echo "== compute-sanitizer"
SANITIZER=$(command -v compute-sanitizer || true)
[ -z "$SANITIZER" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
for tool in memcheck racecheck; do
  if [ -z "$SANITIZER" ]; then
    note "compute-sanitizer $tool: not available on this machine"
  elif fits 180; then
    if timeout 180 "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_smoke.py >"$OUT/$tool.log" 2>&1; then
      note "compute-sanitizer $tool: clean"
    else
      note "compute-sanitizer $tool: FAILED ($tool.log)"
      tail -20 "$OUT/$tool.log"
      status=1
    fi
  fi
done

echo "== benchmark: training step (GPU)"
if fits 120; then
  "$PY" -m minimtl.bench train --device cuda >"$OUT/bench_train.log" 2>&1 || status=1
  cat "$OUT/bench_train.log" | tee -a "$SUMMARY"
fi

echo "== demo (GPU)"
if ! "$PY" -c "import tqdm, matplotlib" 2>/dev/null; then
  note "demo: skipped, tqdm or matplotlib is not installed here"
elif fits 240; then
  if timeout 240 "$PY" -m minimtl demo --device cuda --out "$OUT/demo" >"$OUT/demo.log" 2>&1; then
    grep -A3 "trained in" "$OUT/demo.log" | tee -a "$SUMMARY"
  else
    note "demo: FAILED or over 240 s (demo.log)"
    tail -5 "$OUT/demo.log"
    status=1
  fi
fi

note "total: $(elapsed) s, status $status"
echo '```' >>"$SUMMARY"
echo
echo "== summary ($SUMMARY, for docs/gpu-results.md)"
cat "$SUMMARY"
exit $status
