#!/usr/bin/env bash
# Sanitizer runs of the test suite (issue 8).
#
#   scripts/sanitize.sh            ASan + UBSan: builds the addon with KD_SANITIZE=ON
#                                  (CMakeLists.txt) into build-asan and runs every test
#                                  file that calls native code with the ASan runtime
#                                  preloaded into node (node itself is not instrumented);
#                                  fails on any sanitizer report.
#   scripts/sanitize.sh --cuda     compute-sanitizer memcheck and racecheck over the tests
#                                  with a CUDA build (build/Release, or KD_ADDON_PATH);
#                                  needs a GPU (skips, saying so, without one). Pass test
#                                  files to run only those (scripts/gpu_check.sh passes
#                                  test/cuda_sanitize.test.ts: every kernel on few rows).
#
# Options / environment:
#   --no-build            reuse build-asan as it is
#   KD_ASAN_BUILD=dir     build folder (default build-asan)
#   KD_SANITIZE_LOGS=dir  reports, logs and the vitest JSON report (default .ci/logs/sanitize)
#   KD_FUZZ_RUNS          fuzz cases under the sanitizers (default 450: 50 per op family)
# Extra arguments are passed to vitest (e.g. a test file to run only that one).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=1
CUDA_MODE=0
ARGS=()
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    --cuda) CUDA_MODE=1 ;;
    *) ARGS+=("$a") ;;
  esac
done
LOGDIR=${KD_SANITIZE_LOGS:-$ROOT/.ci/logs/sanitize}
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"

# Test files with no native call (the float64 references, the .npy / safetensors
# readers) and the leak test (ASan's quarantine and shadow memory make RSS meaningless)
# are left out; everything else runs.
# The WebGPU tests (WGSL on lavapipe, no native code of ours) are left out too.
EXCLUDE=(--exclude 'test/reference.test.ts' --exclude 'test/io.test.ts' --exclude 'test/leaks.test.ts' --exclude 'test/webgpu_*.test.ts')

vitest_json() {
  node -e 'const r=require(process.argv[1]);const bad=r.testResults.filter(t=>t.status==="failed"&&!t.assertionResults.length).length;console.log(r.numPassedTests, r.numFailedTests+bad)' "$1"
}

if [ "$CUDA_MODE" = 1 ]; then
  if ! command -v compute-sanitizer > /dev/null; then
    PATH="$PATH:/usr/local/cuda/bin"
  fi
  if ! command -v compute-sanitizer > /dev/null || ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L > /dev/null 2>&1; then
    echo "sanitize --cuda: skipped: no GPU or no compute-sanitizer on this machine"
    exit 0
  fi
  STATUS=0
  for tool in memcheck racecheck; do
    echo "=== compute-sanitizer --tool $tool"
    # The CUDA tests are the skipIf(!CUDA) blocks of the native-op test files; vitest's
    # fork children are followed (--target-processes all).
    compute-sanitizer --tool "$tool" --target-processes all --error-exitcode 99 --print-limit 50 \
      --log-file "$LOGDIR/$tool.%p.log" \
      node node_modules/vitest/vitest.mjs run "${EXCLUDE[@]}" --exclude 'test/fuzz/**' --exclude 'test/example_arithmetic.test.ts' \
      --reporter=default --reporter=json --outputFile.json="$LOGDIR/vitest-$tool.json" "${ARGS[@]}" 2>&1 | tail -n 40
    rc=${PIPESTATUS[0]}
    # any "ERROR SUMMARY: n errors" with n > 0 is a failure, whatever vitest said
    if grep -hE 'ERROR SUMMARY: [1-9]' "$LOGDIR"/"$tool".*.log 2> /dev/null; then rc=99; fi
    procs=$(grep -l 'ERROR SUMMARY' "$LOGDIR"/"$tool".*.log 2> /dev/null | wc -l)
    tests=$( [ -s "$LOGDIR/vitest-$tool.json" ] && vitest_json "$LOGDIR/vitest-$tool.json" | awk '{print $1" passed, "$2" failed"}')
    if [ "$rc" = 0 ]; then echo "sanitize --cuda: $tool: no errors ($procs processes checked; tests ${tests:-?})"
    else echo "sanitize --cuda: $tool reported errors (exit $rc; tests ${tests:-?}; logs in $LOGDIR)"; STATUS=1; fi
  done
  exit $STATUS
fi

OUT=${KD_ASAN_BUILD:-build-asan}
if [ "$BUILD" = 1 ]; then
  t0=$(date +%s)
  npx cmake-js build --CDKD_CUDA=OFF --CDKD_SANITIZE=ON --out "$OUT" > "$LOGDIR/build.log" 2>&1 ||
    { tail -n 40 "$LOGDIR/build.log"; echo "sanitize: the ASan build failed"; exit 1; }
  echo "sanitize: built $OUT in $(($(date +%s) - t0)) s"
fi
ADDON=$ROOT/$OUT/Release/kd_kernels.node
ASAN_RT=$(gcc -print-file-name=libasan.so)
# ldd's output captured first: under pipefail, `ldd | grep -q` fails whenever grep exits at
# its first match before ldd has written the rest (SIGPIPE), which failed one CI run.
LDD_OUT=$(ldd "$ADDON" 2>&1) || LDD_OUT=
if [ ! -f "$ASAN_RT" ] || ! grep -q libasan <<<"$LDD_OUT" || ! grep -q libubsan <<<"$LDD_OUT"; then
  echo "sanitize: $ADDON is not an ASan + UBSan build, or libasan.so is missing ($ASAN_RT)"
  exit 1
fi

# node is not instrumented: the runtime must be preloaded. Leak detection is off (node
# keeps allocations alive at exit by design; test/leaks.test.ts measures leaks).
# Reports go to files (one per process: vitest forks, and tests start child processes).
export LD_PRELOAD=$ASAN_RT
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0:log_path=$LOGDIR/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$LOGDIR/ubsan"
export KD_ADDON_PATH=$ADDON
export KD_FUZZ_RUNS=${KD_FUZZ_RUNS:-450}

t0=$(date +%s)
node node_modules/vitest/vitest.mjs run "${EXCLUDE[@]}" --reporter=default --reporter=json \
  --outputFile.json="$LOGDIR/vitest.json" "${ARGS[@]}" > "$LOGDIR/vitest.log" 2>&1
rc=$?
unset LD_PRELOAD
tail -n 25 "$LOGDIR/vitest.log"
echo "sanitize: tests took $(($(date +%s) - t0)) s"

STATUS=0
reports=$(ls "$LOGDIR"/asan.* "$LOGDIR"/ubsan.* 2> /dev/null)
if [ -n "$reports" ] || grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$LOGDIR/vitest.log"; then
  echo "sanitize: SANITIZER REPORTS:"
  for f in $reports; do echo "--- $f"; head -n 60 "$f"; done
  grep -nE -A 30 'ERROR: AddressSanitizer|runtime error:' "$LOGDIR/vitest.log" | head -n 80
  STATUS=1
fi
if [ -s "$LOGDIR/vitest.json" ]; then
  read -r p f < <(vitest_json "$LOGDIR/vitest.json")
  echo "sanitize: $p passed, $f failed under ASan + UBSan"
  [ "$f" = 0 ] && [ "$p" -gt 0 ] || STATUS=1
else
  echo "sanitize: no vitest report (exit $rc)"
  STATUS=1
fi
[ "$rc" = 0 ] || STATUS=1
[ "$STATUS" = 0 ] && echo "sanitize: no sanitizer reports"
exit $STATUS
