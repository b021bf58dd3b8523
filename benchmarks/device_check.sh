#!/usr/bin/env bash
# The device check (benchmarks/device_check.py): one command for one GPU run, or its CPU dry run (--cpu).
#   bash benchmarks/device_check.sh [--cpu] [--parts smoke,bench,smollm2] [--hf-model DIR] [--smollm2-gguf FILE]
# Writes $OUT/device_check.json + device_check.md + logs.txt ($OUT defaults to runs/device_check).
# On a machine without megatron-core (a bare CUDA image, no network) it first installs the wheels carried in .whl/
# (`make device-wheels` downloads them here: see docs/gpu.md), without touching the machine's own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/carebot-site .whl/*.whl
  export PYTHONPATH="/tmp/carebot-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/device_check.py "$@"
