#!/usr/bin/env bash
# The CUDA checks in one run, for a GPU machine whose Python has torch but not diffusers/optuna/torchao: those
# travel as wheels in .whl/ (git-ignored), fetched beforehand on a machine with the registry, for the GPU
# machine's Python (3.12 here; torchao's version must suit its torch: 0.18 for torch 2.11):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     diffusers==0.42.1 optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 colorlog==6.12.0 Mako==1.4.3 \
#     torch-pruning==1.6.1 torchao==0.18.0 importlib_metadata==9.1.0
# Without .whl/ the machine's own packages are used. Stages, each under its own time limit, each log written to
# $OUT as it goes (BENCHMARKS.md, "CUDA checks"):
#   env       nvidia-smi, torch/CUDA versions
#   test-gpu  `pytest -m gpu` (what `make test-gpu` runs: compile modes, torchao built compiled, tensorrt)
#   optimize  `autoeff optimize --model digits --device cuda` end to end (a short search on the real GPU)
#   quantize  benchmarks/gpu_quantize.py (torchao levels with and without torch.compile)
#   usage: bash scripts/gpu_check.sh [stage ...]      (default: env test-gpu optimize quantize)
set -u
export OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

run_stage() {  # name, seconds, command...
  local name=$1 secs=$2
  shift 2
  echo "== $name (limit ${secs}s) $(date -u +%H:%M:%S)"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "== $name rc=$rc in $((SECONDS - t0))s"
}

stage_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, torch, diffusers, optuna; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'diffusers', diffusers.__version__, 'optuna', optuna.__version__)"
  python3 -c "import torchao; print('torchao', torchao.__version__)"
  nproc
}

stage_optimize() {
  rm -rf /tmp/cuda-out
  python3 -c 'import sys; from autoeff.cli import main; sys.exit(main())' optimize --model digits --device cuda \
    --budget 10% --trials 16 --out /tmp/cuda-out
  local rc=$?
  cp /tmp/cuda-out/summary.json "$OUT/optimize-summary.json" 2>/dev/null
  cp /tmp/cuda-out/optimized/autoeff.json "$OUT/optimize-autoeff.json" 2>/dev/null
  return $rc
}

stages=${*:-env test-gpu optimize quantize}
for s in $stages; do
  case $s in
    env) export -f stage_env; run_stage env 60 bash -c stage_env ;;
    test-gpu) run_stage test-gpu "${GPU_TEST_LIMIT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_gpu_compile.py tests/test_quantize.py ;;
    optimize) export -f stage_optimize; run_stage optimize "${GPU_OPTIMIZE_LIMIT:-200}" bash -c stage_optimize ;;
    quantize) run_stage quantize "${GPU_QUANTIZE_LIMIT:-240}" python3 benchmarks/gpu_quantize.py ;;
    *) echo "unknown stage: $s"; exit 2 ;;
  esac
done
