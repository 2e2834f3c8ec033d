#!/usr/bin/env bash
# On the H200 test machine, from the repository root: the GPU tests (tests/gpu: NVML and
# CUDA_VISIBLE_DEVICES; tutorial 2 trained on CUDA) and then the tutorial benchmark
# (bench/gpu_train.py: kernel vs bare script), all output under $OUT. Under 6 minutes.
#
# No registry there and no Jupyter: the wheels it lacks come from .device-wheels, made here
# for its Python 3.12 (debugpy and jedi left out: optional at run time):
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d .device-wheels \
#     pytest nvidia-ml-py nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0 \
#     matplotlib==3.11.2 tqdm==4.70.1 numpy==2.4.6 pillow==13.0.0
#   rm .device-wheels/{debugpy,jedi,parso}-*
# They go into a folder of their own on PYTHONPATH, never into the system's site-packages.
# SKIP_BENCH=1: the tests only; BENCH_ARGS: more arguments for bench/gpu_train.py.
set -u
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.device-wheels}
OUT=${OUT:-$PWD/device-out}
SITE=${SITE:-/tmp/sz-device-site}
mkdir -p "$OUT"
started=$(date +%s)
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader \
  2>&1 | tee "$OUT/nvidia-smi.txt"
rm -rf "$SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl \
  2>&1 | tail -3
export PYTHONPATH="$SITE:$PWD/src:$PWD"
"$PYTHON" -c "import torch, nbclient, ipykernel, matplotlib; print('torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available())" 2>&1 | tee "$OUT/versions.txt"
echo "--- wheels installed after $(( $(date +%s) - started )) s"

timeout 150 "$PYTHON" -m pytest tests/gpu -v -rs -p no:cacheprovider -o addopts="" \
  2>&1 | tee "$OUT/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}
echo "--- tests done after $(( $(date +%s) - started )) s (exit $tests_rc)"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout 190 "$PYTHON" bench/gpu_train.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu-bench.txt"
  echo "--- bench done after $(( $(date +%s) - started )) s (exit ${PIPESTATUS[0]})"
fi
exit "$tests_rc"
