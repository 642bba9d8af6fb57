#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer.
#
#   bash scripts/sanitize.sh            # in the active environment (the one scripts/setup.sh made)
#
# It copies the tree (what git tracks, plus new files it does not ignore) to a scratch folder,
# builds minimtl._C there with MINIMTL_WITH_CUDA=0 MINIMTL_SANITIZE=address,undefined (setup.py),
# and runs the kernel tests and the fuzz pass (tests/test_fuzz.py with MINIMTL_FUZZ_EXAMPLES
# examples per test, default 2000) against that build, with the sanitizer runtimes preloaded into
# Python. The CUDA RoIAlign and IoU kernels run too, on the CPU (tests/test_cuda_emulation.py,
# built with the same sanitizers): an index outside a tensor there is the bug compute-sanitizer's
# memcheck would find on a GPU. Any report stops the run with a non-zero status. Your own build
# is left alone.
#
# Environment: SANITIZE_DIR (the scratch folder; default a new temporary one),
# MINIMTL_FUZZ_EXAMPLES (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${SANITIZE_DIR:-$(mktemp -d)}/minimtl
start=$(date +%s)

mkdir -p "$WORK"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$WORK"
cd "$WORK"

echo "sanitize: building the CPU kernels with -fsanitize=address,undefined in $WORK"
if ! MINIMTL_WITH_CUDA=0 MINIMTL_SANITIZE=address,undefined "$PY" setup.py build_ext --inplace >build.log 2>&1; then
  tail -40 build.log
  exit 1
fi

# The sanitizer runtimes must be loaded before anything else in the process: Python itself is not
# instrumented. Leak checking is off (the interpreter keeps its objects at exit by design).
LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:verify_asan_link_order=0
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
export MINIMTL_FUZZ_EXAMPLES=${MINIMTL_FUZZ_EXAMPLES:-2000}
export MINIMTL_EMULATION_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import minimtl, sys; assert minimtl.__file__.startswith(sys.argv[1]), minimtl.__file__" "$WORK"
# torch.compile's tests are left out: they exercise inductor's code generation (a C++ compiler run
# under the preloaded sanitizers, minutes each), not minimtl's kernels, which the other tests call.
"$PY" -m pytest -q -p no:cacheprovider tests/test_box_iou.py tests/test_nms.py tests/test_roi_align.py \
  tests/test_fuzz.py tests/test_cuda_emulation.py -k "not torch_compile"
echo "sanitize: no sanitizer reports ($(( $(date +%s) - start )) s)"
