#!/usr/bin/env bash
# One call on a fresh CUDA machine (torch and triton preinstalled, no network):
#   bash benchmarks/gpu_suite.sh OUTDIR
# 1. builds the extension in place for the GPU present (CUDA kernels included),
# 2. runs the whole test suite on CUDA (CUDA and Triton kernels against the CPU kernels and
#    the NumPy reference),
# 3. runs the kernel and whole-model benchmarks,
# 4. writes OUTDIR/summary.md (short table), OUTDIR/*.json (full pytest-benchmark data),
#    OUTDIR/tests.log and OUTDIR/build.log.
# Packages the machine lacks (torch-pruning, deep-ei, timm, ...) are reported and their tests or
# benchmarks skipped, never installed. Plan: build ~2-4 min, tests ~2 min, benchmarks ~3 min.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_suite.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

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
  MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
rc=$?
tail -n 3 "$OUT/build.log"
if [ $rc -ne 0 ]; then stamp "build FAILED (see build.log)"; exit $rc; fi
"$PY" -c "import causalprune_fast as cf; print({k: (v.available, v.detail) for k, v in cf.available_backends().items()})" \
  | tee -a "$OUT/machine.txt"

stamp "tests"
CAUSALPRUNE_EXPECT_CUDA=1 timeout 420 "$PY" -m pytest -q -p no:cacheprovider tests \
  --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
test_rc=$?
tail -n 15 "$OUT/tests.log"

stamp "kernel benchmarks"
timeout 240 "$PY" -m pytest -q benchmarks/bench_pairwise_mi.py --benchmark-json="$OUT/kernels.json" \
  > "$OUT/kernels.log" 2>&1
tail -n 3 "$OUT/kernels.log"

stamp "model benchmarks"
timeout 300 "$PY" -m pytest -q benchmarks/bench_models.py --benchmark-json="$OUT/models.json" \
  > "$OUT/models.log" 2>&1
tail -n 3 "$OUT/models.log"

stamp "report"
{
  echo "# GPU suite: $(head -n 1 "$OUT/machine.txt")"
  echo
  echo "tests: exit code $test_rc; $(tail -n 1 "$OUT/tests.log")"
  echo
  for f in kernels models; do
    [ -s "$OUT/$f.json" ] && "$PY" benchmarks/report.py --command "bash benchmarks/gpu_suite.sh" "$OUT/$f.json"
  done
} > "$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
stamp "done"
exit $test_rc
