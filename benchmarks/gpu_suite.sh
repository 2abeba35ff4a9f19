#!/usr/bin/env bash
# One call on a fresh CUDA machine (torch and triton preinstalled, no network):
#   bash benchmarks/gpu_suite.sh OUTDIR
# 1. builds the extension in place for the GPU present (CUDA kernels included),
# 2. runs the GPU kernel tests on CUDA (CUDA and Triton kernels, the fused local Linear and
#    convolution kernels against the CPU kernels, the NumPy reference and the unfused paths),
# 3. runs the benchmarks: fused local convolution vs the patches path, the MI kernels, whole
#    models,
# 4. runs the rest of the test suite in the time left,
# 5. writes OUTDIR/summary.md (short table, headed by the GPU's name; every benchmark JSON also
#    carries it in machine_info), OUTDIR/*.json (full pytest-benchmark data), OUTDIR/*.log.
# Packages the machine lacks (torch-pruning, deep-ei, timm, ...) are reported and their tests or
# benchmarks skipped, never installed.
# Time: everything, build included, within BUDGET = 470 s (< 8 minutes): each step's timeout is
# its planned share, cut to what the budget leaves after the later steps' reserved shares, so
# the timeouts can never add up to more. Plan (s): build 200, GPU kernel tests 120, local conv
# benchmark 45, kernel benchmark 40, model benchmark 45, rest of the tests: what is left.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
BUDGET=${BUDGET:-470}
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
# limit PLANNED RESERVED: the timeout of a step planned at PLANNED seconds, with RESERVED seconds
# kept for the steps after it; at least 1 (a step then fails fast as a timeout, 124).
limit() {
  local left=$(( BUDGET - ($(date +%s) - start) - $2 ))
  local t=$(( $1 < left ? $1 : left ))
  echo $(( t > 1 ? t : 1 ))
}

stamp "machine"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("triton", "numpy", "pytest", "pytest_benchmark", "sklearn", "torchvision", "timm",
             "torch_pruning", "deep_ei", "safetensors", "matplotlib", "tqdm", "ninja"):
    try:
        m = importlib.import_module(name)
        print(f"  {name:16s} {getattr(m, '__version__', 'present')}")
    except Exception as e:  # report, do not install
        print(f"  {name:16s} MISSING ({type(e).__name__}): tests/benchmarks needing it skip")
EOF
} | tee "$OUT/machine.txt"

stamp "build"
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")} CAUSALPRUNE_CUDA=1 \
  MAX_JOBS=${MAX_JOBS:-16} timeout "$(limit 200 250)" "$PY" setup.py build_ext --inplace \
  > "$OUT/build.log" 2>&1
rc=$?
tail -n 3 "$OUT/build.log"
if [ $rc -ne 0 ]; then stamp "build FAILED (see build.log)"; exit $rc; fi
"$PY" -c "import causalprune_fast as cf; print({k: (v.available, v.detail) for k, v in cf.available_backends().items()})" \
  | tee -a "$OUT/machine.txt"

# The newest kernels first, so that they run even if the step reaches its timeout.
GPU_TESTS="tests/test_local_conv_fused.py tests/test_local_linear_fused.py tests/test_cuda_kernels.py tests/test_triton_kernels.py"
stamp "GPU kernel tests"
# shellcheck disable=SC2086
CAUSALPRUNE_EXPECT_CUDA=1 CAUSALPRUNE_EXPECT_GPU=1 timeout "$(limit 120 130)" "$PY" -m pytest -q -p no:cacheprovider \
  $GPU_TESTS --junitxml="$OUT/tests_gpu.xml" > "$OUT/tests_gpu.log" 2>&1
test_rc=$?
tail -n 15 "$OUT/tests_gpu.log"

stamp "local conv benchmark (fused vs patches)"
timeout "$(limit 45 85)" "$PY" -m pytest -q benchmarks/bench_local_conv.py \
  --benchmark-json="$OUT/local_conv.json" > "$OUT/local_conv.log" 2>&1
tail -n 3 "$OUT/local_conv.log"

stamp "kernel benchmarks"
timeout "$(limit 40 45)" "$PY" -m pytest -q benchmarks/bench_pairwise_mi.py \
  --benchmark-json="$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
tail -n 3 "$OUT/kernels.log"

stamp "model benchmarks"
timeout "$(limit 45 0)" "$PY" -m pytest -q benchmarks/bench_models.py \
  --benchmark-json="$OUT/models.json" > "$OUT/models.log" 2>&1
tail -n 3 "$OUT/models.log"

stamp "rest of the tests (the time left)"
rest_args=()
for f in $GPU_TESTS; do rest_args+=(--ignore="$f"); done
CAUSALPRUNE_EXPECT_CUDA=1 CAUSALPRUNE_EXPECT_GPU=1 timeout "$(limit 420 0)" "$PY" -m pytest -q -p no:cacheprovider tests \
  "${rest_args[@]}" --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
rest_rc=$?
tail -n 15 "$OUT/tests.log"
# A failure anywhere fails the suite; the rest of the tests cut by the budget (124) does not.
if [ $test_rc -eq 0 ] && [ $rest_rc -ne 0 ] && [ $rest_rc -ne 124 ]; then test_rc=$rest_rc; fi

stamp "report"
{
  echo "# GPU suite: $(head -n 1 "$OUT/machine.txt")"
  echo
  echo "GPU kernel tests: $(tail -n 1 "$OUT/tests_gpu.log")"
  echo
  echo "rest of the tests: exit code $rest_rc$([ $rest_rc -eq 124 ] && echo ' (cut by the time budget)'); $(tail -n 1 "$OUT/tests.log")"
  echo
  echo "suite exit code: $test_rc; total $(( $(date +%s) - start )) s of a $BUDGET s budget"
  echo
  for f in local_conv kernels models; do
    [ -s "$OUT/$f.json" ] && "$PY" benchmarks/report.py --command "bash benchmarks/gpu_suite.sh" "$OUT/$f.json"
  done
} > "$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
stamp "done"
exit $test_rc
