#!/usr/bin/env bash
# Run the GPU tests on the H200 test machine (no registry there: pytest comes from
# .device-wheels, made with `pip download pytest -d .device-wheels`).
set -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 -m pytest --version 2>/dev/null || python3 -m pip install -q --no-index --find-links .device-wheels pytest
PYTHONPATH=src python3 -m pytest tests/gpu -v -p no:cacheprovider -o addopts="" 2>&1 | tee "${OUT:-.}/gpu-tests.txt"
