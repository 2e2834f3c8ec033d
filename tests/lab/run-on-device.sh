#!/usr/bin/env bash
# The Lab extension's NVML reading on the GPU test machine (no registry there: pytest and
# nvidia-ml-py come from .device-wheels, made with `pip download ... -d .device-wheels`).
set -u
nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader
python3 -c "import pynvml" 2>/dev/null || python3 -m pip install -q --no-index --find-links .device-wheels nvidia-ml-py
python3 -m pytest --version 2>/dev/null || python3 -m pip install -q --no-index --find-links .device-wheels pytest
python3 -m pytest tests/lab/test_gpus_nvml.py -v -s -p no:cacheprovider -o addopts="" --noconftest 2>&1 | tee "${OUT:-.}/lab-gpu-tests.txt"
