#!/usr/bin/env bash
# Create .venv with reta and its dependencies. torch/torchvision are pinned to the releases this
# machine kind serves from local disk (pip's cap); elsewhere pip fetches them from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import reta, torch, torchvision, gudhi, safetensors; print('reta', reta.__version__, 'torch', torch.__version__)"
