#!/usr/bin/env bash
# The GPU checks in one call, for a session that is lent a GPU machine (no Node.js, no
# network there; see ../shared/BUILD.md "Running the GPU checks").
#
#   scripts/gpu_check.sh pack   HERE: a CUDA build for the device's arch (KD_GPU_ARCH,
#                               default 90 = H100/H200) in build-cuda/, and .device/ with a
#                               node binary and the node_modules the checks need; prints
#                               the sizes and the device tool's carry list and command.
#                               Left out of the pack: @tensorflow (tfjs, ~290 MB: no CUDA
#                               test uses it), webgpu (Dawn for 5 platforms, ~130 MB: the
#                               checks run the CUDA backend, not WebGPU), typescript,
#                               cmake-js, core-js (nothing is built or type-checked there).
#   scripts/gpu_check.sh run    THERE, from the repository root (the device tool's command
#                               `bash scripts/gpu_check.sh run`, carry [".device",
#                               "build-cuda/Release"]); builds nothing: unpacks node and
#                               node_modules, then, each step with its own time limit and
#                               all of them within KD_GPU_BUDGET_S (default 450 s, so the
#                               call ends inside 8 minutes):
#                               1. info: kd-kernels info (CUDA must be available)
#                               2. tests: every CUDA test file (skipIf(!CUDA) blocks) vs
#                                  the float64 references and the CPU path
#                               3. sanitizer: compute-sanitizer memcheck + racecheck over
#                                  test/cuda_sanitize.test.ts (every kernel, few rows)
#                               4. bench: every op at 512x32000 on CUDA, floor = the
#                                  device triad in the same run, with the torch contenders
#                                  (eager / torch.compile losses, torch.topk; Liger's
#                                  kernels when liger_kernel is importable)
#                               5. bench_bf16: bf16 forward KL at 8192x151936 vs its floor
#                               and prints the summary table last. With $OUT set (the
#                               device tool) it leaves there summary.txt and
#                               gpu_check_logs.tgz (every log and JSON); else .ci/logs/gpu.
#                               Without a GPU it says why, skips every step (the table
#                               says so) and exits 3 at once: test/gpu_check.test.ts runs
#                               that path in the normal suite.
#   scripts/gpu_check.sh plan   prints the steps and their limits (no GPU, no node needed).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-}

# The test files with CUDA cases. Not test/leaks.test.ts: its CUDA half makes 100,000
# calls of every op (minutes: it would eat the step and lose every other result); run it
# on its own when a longer device call is available.
CUDA_TESTS=(test/cuda_divergence.test.ts test/cuda_sanitize.test.ts test/cuda_pool.test.ts test/cuda_plan.test.ts
  test/tensor.test.ts test/topk.test.ts test/sample_teacher.test.ts test/sparse_kl_div.test.ts test/determinism.test.ts)
SANITIZE_TESTS=(test/cuda_sanitize.test.ts)
# name:limit_s, in order; the limits add up to the default budget
STEPS=(info:20 tests:150 sanitizer:150 bench:90 bench_bf16:40)
BUDGET_S=${KD_GPU_BUDGET_S:-450}

if [ "$MODE" = plan ]; then
  total=0
  for s in "${STEPS[@]}"; do
    printf '%-11s %4s s\n' "${s%%:*}" "${s##*:}"
    total=$((total + ${s##*:}))
  done
  printf '%-11s %4s s (budget %s s; the device call must end within 480 s)\n' total "$total" "$BUDGET_S"
  exit 0
fi

if [ "$MODE" = pack ]; then
  set -e
  ARCH=${KD_GPU_ARCH:-90}
  # configure every time: `cmake-js build` alone keeps whatever architectures build-cuda was
  # configured with (a full-architecture build is ~53 MB, over the carry limit with node)
  PATH="$PATH:/usr/local/cuda/bin" KD_CUDA_ARCHS="$ARCH-real" npx cmake-js configure --CDKD_CUDA=ON --CDKD_CUDA_ARCHS="$ARCH-real" --out build-cuda
  PATH="$PATH:/usr/local/cuda/bin" KD_CUDA_ARCHS="$ARCH-real" npx cmake-js build --out build-cuda
  mkdir -p .device  # ignored by .gitignore
  node_bin=$(command -v node)
  xz -T2 -6 -c "$node_bin" > .device/node.xz
  # node_modules may be a symbolic link (worktrees share one): pack what it points to.
  tar -C node_modules/ -cf - --exclude='./@tensorflow' --exclude='./webgpu' --exclude='./core-js' \
    --exclude='./typescript' --exclude='./@typescript' --exclude='./cmake-js' --exclude='./.cache' . |
    xz -T2 -6 > .device/node_modules.txz
  tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 stat -c %s 2> /dev/null | awk '{s+=$1} END {print s+0}')
  pack_bytes=$(du -cb .device/node.xz .device/node_modules.txz build-cuda/Release/kd_kernels.node | tail -n 1 | cut -f1)
  echo "pack: node $(du -h .device/node.xz | cut -f1), node_modules $(du -h .device/node_modules.txz | cut -f1), addon $(du -h build-cuda/Release/kd_kernels.node | cut -f1)"
  echo "pack: $((pack_bytes / 1048576)) MiB carried + $((tree_bytes / 1048576)) MiB working tree = $(((pack_bytes + tree_bytes) / 1048576)) MiB (limit 64 MiB)"
  [ $((pack_bytes + tree_bytes)) -lt $((64 * 1048576)) ] || { echo "pack: over the 64 MiB carry limit" >&2; exit 1; }
  echo 'carry: [".device", "build-cuda/Release"]   command: bash scripts/gpu_check.sh run   timeout_s: 480'
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: scripts/gpu_check.sh pack|run|plan" >&2; exit 2; }

T0=$SECONDS
# Logs: .ci/logs/gpu; on the device tool's machine ($OUT set) a scratch folder, packed at
# the end into $OUT/gpu_check_logs.tgz next to $OUT/summary.txt (the tool brings back at
# most 8 files, and the sanitizer alone writes one log per process).
if [ -n "${OUT:-}" ]; then
  LOG=$(mktemp -d /tmp/kd-gpu-check.XXXXXX)
  trap 'tar -C "$LOG" -czf "$OUT/gpu_check_logs.tgz" . 2> /dev/null; rm -rf "$LOG"' EXIT
else
  LOG=$ROOT/.ci/logs/gpu
fi
mkdir -p "$LOG"
declare -A RESULT
summary() {
  {
    echo
    echo "=== summary (gpu_check, $((SECONDS - T0)) s)"
    for s in "${STEPS[@]}"; do printf '%-11s %s\n' "${s%%:*}" "${RESULT[${s%%:*}]:-not run}"; done
  } | tee "$LOG/summary.txt"
  [ -n "${OUT:-}" ] && cp "$LOG/summary.txt" "$OUT/summary.txt"
  return 0
}

# ---- is there a GPU? (before unpacking anything: the no-GPU path must be quick) -------
export PATH="$PATH:/usr/local/cuda/bin"
why=""
if ! command -v nvidia-smi > /dev/null; then why="nvidia-smi not found (no NVIDIA driver on this machine)"
elif ! nvidia-smi -L > "$LOG/nvidia-smi.txt" 2>&1; then why="nvidia-smi -L failed: $(head -n 1 "$LOG/nvidia-smi.txt")"
elif [ ! -f "${KD_ADDON_PATH:-$ROOT/build-cuda/Release/kd_kernels.node}" ]; then
  why="no CUDA build at ${KD_ADDON_PATH:-build-cuda/Release/kd_kernels.node} (run 'scripts/gpu_check.sh pack' first and carry build-cuda/Release)"
fi
if [ -n "$why" ]; then
  echo "gpu_check: no GPU check possible: $why"
  for s in "${STEPS[@]}"; do RESULT[${s%%:*}]="skipped: no GPU"; done
  summary
  exit 3
fi
cat "$LOG/nvidia-smi.txt"

unxz() { xz -dc "$1" 2> /dev/null || python3 -c "import lzma,sys;sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$1"; }
if ! command -v node > /dev/null; then
  mkdir -p /tmp/nb && unxz .device/node.xz > /tmp/nb/node && chmod +x /tmp/nb/node && export PATH=/tmp/nb:$PATH
fi
if [ ! -d node_modules/vitest ]; then
  [ -L node_modules ] && rm -f node_modules  # a worktree's link travels without its target
  mkdir -p node_modules && unxz .device/node_modules.txz | tar -C node_modules -xf -
fi
export KD_ADDON_PATH=${KD_ADDON_PATH:-$ROOT/build-cuda/Release/kd_kernels.node}
# Liger-Kernel is not in the device image; wheels carried in .whl/ are used when present.
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

step() {  # step NAME command...: runs it within its limit and what is left of the budget
  local name=$1 limit=0
  shift
  for s in "${STEPS[@]}"; do [ "${s%%:*}" = "$name" ] && limit=${s##*:}; done
  local left=$((BUDGET_S - (SECONDS - T0)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 5 ]; then RESULT[$name]="skipped: the ${BUDGET_S} s budget is spent"; return; fi
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  tail -n 20 "$LOG/$name.log"
  if [ $rc = 124 ] || [ $rc = 137 ]; then RESULT[$name]="TIMED OUT after ${limit}s"
  elif [ $rc = 0 ]; then RESULT[$name]="ok ($((SECONDS - t0)) s)"
  else RESULT[$name]="FAILED, exit $rc ($((SECONDS - t0)) s)"; fi
}

step info node --import tsx bin/kd-kernels.ts info
if ! grep -q 'available yes' "$LOG/info.log"; then
  RESULT[info]="CUDA NOT AVAILABLE: $(grep -m1 '^cuda:' "$LOG/info.log" | tr -s ' ')"
  summary
  exit 1
fi
step tests node node_modules/vitest/vitest.mjs run "${CUDA_TESTS[@]}" --testTimeout=60000 \
  --reporter=default --reporter=json --outputFile.json="$LOG/vitest-cuda.json"
tests_line=$(node -e 'try{const r=require(process.argv[1]);console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`)}catch(e){console.log("no report")}' "$LOG/vitest-cuda.json")
RESULT[tests]="${RESULT[tests]}: $tests_line"
step sanitizer env KD_SANITIZE_LOGS="$LOG/sanitize" bash scripts/sanitize.sh --cuda "${SANITIZE_TESTS[@]}"
RESULT[sanitizer]="${RESULT[sanitizer]}: $(grep -E '^sanitize --cuda' "$LOG/sanitizer.log" | sed 's/^sanitize --cuda: //' | tr '\n' ';')"
export KD_TORCH_DEADLINE_S=45  # torch_bench.py stops starting measurements after this
step bench node --import tsx bench/run.ts --device cuda --quick --contenders torch --out "$LOG/bench"
step bench_bf16 node --import tsx bench/run.ts --device cuda --op forward-kl --dtype bf16 \
  --shape 8192x151936 --contenders none --out "$LOG/bench-bf16"

summary
{
  echo "--- CUDA rows (ms = median; 'of floor' = device triad time / ours, same run; 'vs torch' = their time / ours)"
  grep -hE '^(op|forward-kl|reverse-kl|jsd|tvd|skew|distillation|token-stats|topk|sample|sparse)' "$LOG/bench.log" "$LOG/bench_bf16.log" 2> /dev/null |
    grep -E '^op|cuda' | cut -c1-200
  grep -hE '^(contender|torch|liger)' "$LOG/bench.log" 2> /dev/null | cut -c1-200 | head -n 24
} | tee -a "$LOG/summary.txt"
[ -n "${OUT:-}" ] && cp "$LOG/summary.txt" "$OUT/summary.txt"
fails=0
for s in "${STEPS[@]}"; do case "${RESULT[${s%%:*}]}" in ok*) ;; *) fails=1 ;; esac; done
exit $fails
