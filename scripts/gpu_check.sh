#!/usr/bin/env bash
# The GPU check: one call of at most GPU_CHECK_BUDGET_S seconds (default 540, under the device
# tool's 600 s per call) on a machine with a CUDA GPU, torch (2.11 or later), torchvision, pytest
# and hypothesis installed and no network. In this order, each step with its own time limit:
#   build       minimtl._C with the CUDA kernels, in place (timed)
#   tests       the CUDA tests (pytest -m cuda) and the crash tests, in a fast hypothesis profile
#   sanitizer   compute-sanitizer memcheck, racecheck and synccheck on scripts/cuda_smoke.py (every
#               kernel once, on small and awkward inputs), errors counted in minimtl's kernels
#   bench ops   every op against torchvision's; a wrong result marks its row, never drops the table
#   profile     torch.profiler: NMS's and RoIAlign's kernels against wall time, minimtl and torchvision
#   determinism the deterministic backward, three runs at benchmark size, bit for bit
#   graph       what a CUDA graph captures (a box head on RoIAlign; NMS)
#   bench train a Mask R-CNN training step against torchvision's
#   demo        python -m minimtl demo on the GPU (target: under 3 minutes), if time remains
# A step that cannot start with enough time left is skipped and says so; a step's limit never runs
# past the budget. Each step appends to $OUT/summary.md as it ends (an entry for docs/gpu-results.md),
# so a run cut short still reports what it did. $OUT receives four files only (the device tool
# returns at most 8): summary.md, results.json (every number, and each step's status and seconds),
# build.log and tests.log; the other logs stay in a scratch folder, their tails in the summary.
#
# Without a GPU every step says "not available" (the dry run, tests/test_gpu_check.py):
#   PATH=fake_bin:$PATH GPU_CHECK_SKIP_BUILD=1 OUT=/tmp/out bash scripts/gpu_check.sh
# GPU_CHECK_SKIP_BUILD=1 uses the minimtl._C already built instead of building it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MINIMTL_HYPOTHESIS=quick
export MINIMTL_WITH_CUDA=1 MINIMTL_EXPECT_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
SUMMARY="$OUT/summary.md"
t0=$(date +%s)
failed=0

elapsed() { echo $(($(date +%s) - t0)); }
note() { echo "$*" | tee -a "$SUMMARY"; } # a line of the summary, printed as it comes
collect() { "$PY" scripts/gpu_probe.py collect "$WORK" "$OUT/results.json" >/dev/null 2>&1 || true; }

# run_step NAME CAP MIN LOG COMMAND...: COMMAND with its output in LOG and a limit of CAP seconds or
# what is left of the budget, whichever is less; skipped when less than MIN seconds are left. Notes
# one line "NAME: STATUS (SECONDS s)" and sets rc (255 when skipped). Exit status 3 means the step
# found nothing to run on ("not available"); the line then ends with the output's last line.
run_step() {
  local name=$1 cap=$2 min=$3 log=$4
  shift 4
  local left=$((BUDGET - $(elapsed)))
  if [ "$left" -lt "$min" ]; then
    note "$name: skipped at $(elapsed) s: ${left} s left, it needs ${min} s"
    printf '%s\tskipped\t0\t%s s left\n' "$name" "$left" >>"$WORK/steps.tsv"
    rc=255
    collect
    return
  fi
  local limit=$((cap < left ? cap : left)) start
  start=$(elapsed)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local took=$(($(elapsed) - start)) status last
  last=$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)
  case $rc in
    0) status=ok ;;
    3) status="not available: $last" ;;
    124 | 137) status="TIMED OUT after ${limit} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  case $rc in 0 | 3) ;; *) failed=1 ;; esac
  note "$name: $status ($took s)"
  printf '%s\t%s\t%s\t%s\n' "$name" "${status%%:*}" "$took" "$last" >>"$WORK/steps.tsv"
  collect
}

# The GPU, as the driver and torch see it. No GPU: the steps below say "not available".
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  have_gpu=1
else
  have_gpu=0
fi
{
  echo "## ${gpu%%,*}, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
} >"$SUMMARY"
note "gpu: ${gpu:-none (nvidia-smi found none)}; torch sees $([ $have_gpu = 1 ] && echo one || echo none)"
note "$("$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)")"
no_gpu() { # no_gpu NAME: notes that the step needs a GPU, and returns 0, when there is none
  [ $have_gpu = 1 ] && return 1
  note "$1: not available: no CUDA GPU on this machine"
  printf '%s\tnot available\t0\tno CUDA GPU\n' "$1" >>"$WORK/steps.tsv"
  return 0
}

echo "== build"
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  echo "GPU_CHECK_SKIP_BUILD=1: the minimtl._C already built is used" >"$OUT/build.log"
  note "build: skipped (GPU_CHECK_SKIP_BUILD=1)"
else
  run_step build 300 60 "$OUT/build.log" env MAX_JOBS=16 "$PY" setup.py build_ext --inplace
  if [ $rc != 0 ]; then
    tail -30 "$OUT/build.log"
    note "the build failed: nothing else can run (build.log)"
    echo '```' >>"$SUMMARY"
    exit 1
  fi
fi
note "$("$PY" -c "import minimtl; print('minimtl._C built with CUDA:', minimtl.built_with_cuda())" 2>&1 | tail -1)"

echo "== tests: CUDA"
if ! no_gpu tests; then
  per_test=()  # a test that hangs must not take the step's whole time (pytest-timeout, where installed)
  "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=60)
  run_step "tests (-m cuda)" 150 30 "$OUT/tests.log" "$PY" -m pytest tests -m cuda -q -p no:cacheprovider "${per_test[@]}"
  note "    $(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)"
  run_step "tests (crash)" 90 30 "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_box_iou.py::test_non_finite_input_never_crashes tests/test_nms.py::test_non_finite_input_never_crashes \
    tests/test_roi_align.py::test_bad_boxes_never_crash
  note "    $(grep -E "passed|failed|error" "$OUT/tests.log" | tail -1)"
  grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -10 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

echo "== compute-sanitizer"
SANITIZER=$(command -v compute-sanitizer || true)
[ -z "$SANITIZER" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ] && SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
KERNELS='nms_mask_kernel|nms_gather_kernel|pairwise_kernel|roi_align_forward_kernel|roi_align_backward_kernel|fixed_to_float_kernel'
for tool in memcheck racecheck synccheck; do
  no_gpu "compute-sanitizer $tool" && continue
  if [ -z "$SANITIZER" ]; then
    note "compute-sanitizer $tool: not available: no compute-sanitizer on this machine"
    continue
  fi
  # Every kernel is checked (a kernel-name filter that matched nothing would report a clean run);
  # the errors are then counted by kernel: minimtl's, and the others (torch's, in the script's set-up).
  run_step "compute-sanitizer $tool" 150 30 "$WORK/$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_smoke.py
  ours=$(grep -cE "^========= .*($KERNELS)" "$WORK/$tool.log")
  note "    $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$WORK/$tool.log" | tail -1 | sed 's/^========= //'); lines naming minimtl's kernels: $ours"
  [ "$rc" != 0 ] && grep -E "^========= " "$WORK/$tool.log" | head -12 | sed 's/^/    /' | tee -a "$SUMMARY"
done

echo "== benchmark: ops"
if ! no_gpu "bench ops"; then
  run_step "bench ops" 150 40 "$WORK/bench_ops.log" "$PY" -m minimtl.bench ops --device cuda --json "$WORK/bench_ops.json"
  sed 's/^/    /' "$WORK/bench_ops.log" | tee -a "$SUMMARY" >/dev/null
fi

echo "== profile: NMS and RoIAlign"
run_step profile 60 20 "$WORK/profile.log" "$PY" scripts/gpu_probe.py profile "$WORK/profile.json"
[ $have_gpu = 1 ] && sed 's/^/    /' "$WORK/profile.log" | tee -a "$SUMMARY" >/dev/null

echo "== determinism"
run_step determinism 60 15 "$WORK/determinism.log" "$PY" scripts/gpu_probe.py determinism "$WORK/determinism.json"
[ $have_gpu = 1 ] && sed 's/^/    /' "$WORK/determinism.log" | tee -a "$SUMMARY" >/dev/null

echo "== CUDA graph"
run_step "cuda graph" 60 15 "$WORK/graph.log" "$PY" scripts/gpu_probe.py graph "$WORK/graph.json"
[ $have_gpu = 1 ] && sed 's/^/    /' "$WORK/graph.log" | tee -a "$SUMMARY" >/dev/null

echo "== benchmark: training step"
if ! no_gpu "bench train"; then
  run_step "bench train" 120 40 "$WORK/bench_train.log" "$PY" -m minimtl.bench train --device cuda --json "$WORK/bench_train.json"
  sed 's/^/    /' "$WORK/bench_train.log" | tee -a "$SUMMARY" >/dev/null
fi

echo "== demo"
if ! no_gpu demo; then
  run_step demo 240 120 "$WORK/demo.log" "$PY" -m minimtl demo --device cuda --out "$WORK/demo"
  grep -A3 "trained in" "$WORK/demo.log" | sed 's/^/    /' | tee -a "$SUMMARY"
fi

note "total: $(elapsed) s; $([ $failed = 0 ] && echo 'no step failed' || echo 'SOME STEPS FAILED (above)')"
echo '```' >>"$SUMMARY"
collect
rm -rf "$WORK"
echo
echo "== summary ($SUMMARY, for docs/gpu-results.md)"
cat "$SUMMARY"
exit $failed
