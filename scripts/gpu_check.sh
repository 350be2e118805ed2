#!/usr/bin/env bash
# The GPU checks in one call, for a session that is lent a GPU machine (no Node.js, no
# network there; see ../shared/BUILD.md "Running the GPU checks").
#
#   scripts/gpu_check.sh pack   here: a CUDA build for the device's arch (KD_GPU_ARCH,
#                               default 90 = H100/H200) in build-cuda/, and .device/ with a
#                               node binary and the node_modules the tests need (tfjs,
#                               typescript and cmake-js left out: ~55 MB to carry in all)
#   scripts/gpu_check.sh run    there, from the repository root (the device tool's
#                               command: `bash scripts/gpu_check.sh run`, carry
#                               [".device", "build-cuda/Release"]): unpacks node, then
#                               1. kd-kernels info (the device must be available)
#                               2. the CUDA tests (every skipIf(!CUDA) block) vs the float64
#                                  references and vs the CPU path
#                               3. compute-sanitizer memcheck + racecheck over them
#                               4. the CUDA benchmark: every op at 512x32000 (quick) and
#                                  bf16 forward KL at 8192x151936, floor = device triad,
#                                  PyTorch eager / torch.compile / torch.topk contenders
#                               and prints a short table last. Logs and JSON go to $OUT
#                               (the device tool brings them back) or .ci/logs/gpu.
# Each step has its own time limit (KD_GPU_STEP_S, default 200 s; the sanitizer 240 s) so
# one slow step cannot eat the call; a step that ran out says so in the table.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-}

CUDA_TESTS=(test/cuda_divergence.test.ts test/tensor.test.ts test/token_stats.test.ts test/topk.test.ts
  test/sample_teacher.test.ts test/sparse_kl_div.test.ts test/determinism.test.ts test/leaks.test.ts)

if [ "$MODE" = pack ]; then
  set -e
  ARCH=${KD_GPU_ARCH:-90}
  npx cmake-js build --CDKD_CUDA=ON --CDKD_CUDA_ARCHS="$ARCH" --out build-cuda
  mkdir -p .device
  node_bin=$(command -v node)
  xz -T2 -6 -c "$node_bin" > .device/node.xz
  tar cf - --exclude='node_modules/@tensorflow' --exclude='node_modules/core-js' \
    --exclude='node_modules/typescript' --exclude='node_modules/@typescript' \
    --exclude='node_modules/cmake-js' --exclude='node_modules/.cache' node_modules | xz -T2 -6 > .device/node_modules.txz
  du -ch .device/node.xz .device/node_modules.txz build-cuda/Release/kd_kernels.node | tail -n 1
  echo 'carry: [".device", "build-cuda/Release"]   command: bash scripts/gpu_check.sh run'
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: scripts/gpu_check.sh pack|run" >&2; exit 2; }

LOG=${OUT:-$ROOT/.ci/logs/gpu}
mkdir -p "$LOG"
STEP_S=${KD_GPU_STEP_S:-200}
unxz() { xz -dc "$1" 2> /dev/null || python3 -c "import lzma,sys;sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$1"; }
if ! command -v node > /dev/null; then
  mkdir -p /tmp/nb && unxz .device/node.xz > /tmp/nb/node && chmod +x /tmp/nb/node && export PATH=/tmp/nb:$PATH
fi
[ -d node_modules/vitest ] || unxz .device/node_modules.txz | tar xf -
export KD_ADDON_PATH=${KD_ADDON_PATH:-$ROOT/build-cuda/Release/kd_kernels.node}
export PATH="$PATH:/usr/local/cuda/bin"
nvidia-smi -L | tee "$LOG/nvidia-smi.txt"
declare -A RESULT

step() {  # step NAME LIMIT_S command...: runs it with a time limit, records how it ended
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOG/$name.log"
  if [ $rc = 124 ] || [ $rc = 137 ]; then RESULT[$name]="TIMED OUT after ${limit}s"
  elif [ $rc = 0 ]; then RESULT[$name]="ok ($((SECONDS - t0)) s)"
  else RESULT[$name]="FAILED, exit $rc ($((SECONDS - t0)) s)"; fi
}

step info 60 node --import tsx bin/kd-kernels.ts info
grep -q 'available yes' "$LOG/info.log" || RESULT[info]="CUDA NOT AVAILABLE: $(grep -m1 '^cuda:' "$LOG/info.log")"
step tests "$STEP_S" node node_modules/vitest/vitest.mjs run "${CUDA_TESTS[@]}" \
  --reporter=default --reporter=json --outputFile.json="$LOG/vitest-cuda.json"
step sanitizer "${KD_GPU_SANITIZE_S:-240}" env KD_SANITIZE_LOGS="$LOG/sanitize" bash scripts/sanitize.sh --cuda "${CUDA_TESTS[@]}"
step bench_quick "$STEP_S" node --import tsx bench/run.ts --device cuda --quick --contenders torch --out "$LOG/bench"
step bench_bf16 "$STEP_S" node --import tsx bench/run.ts --device cuda --op forward-kl --dtype bf16 \
  --shape 8192x151936 --contenders none --out "$LOG/bench-bf16"

echo
echo "=== summary"
tests_line=$(node -e 'try{const r=require(process.argv[1]);console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`)}catch(e){console.log("no report")}' "$LOG/vitest-cuda.json")
printf '%-12s %s\n' info "${RESULT[info]}" tests "${RESULT[tests]}: $tests_line" \
  sanitizer "${RESULT[sanitizer]}: $(grep -E 'skipped|reported errors|passed' "$LOG/sanitizer.log" | tail -n 2 | tr '\n' ' ')" \
  bench_quick "${RESULT[bench_quick]}" bench_bf16 "${RESULT[bench_bf16]}"
grep -hE '^forward-kl .* cuda|^jsd .* cuda|^topk .* cuda' "$LOG/bench_quick.log" "$LOG/bench_bf16.log" 2> /dev/null | cut -c1-170
grep -hE '^torch-(eager|compile)' "$LOG/bench_quick.log" 2> /dev/null | cut -c1-150
