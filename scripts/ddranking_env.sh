#!/usr/bin/env bash
# Create .venv-ddranking with the real DD-Ranking 0.2.0 from PyPI, apart from .venv: ddranking
# pins numpy 1.26 (and pulls scipy, kornia, timm, pandas), which would break reta's own venv.
# torch/torchvision are installed first at the releases this machine kind serves from local disk,
# so ddranking's loose torch requirement is already met and pip does not fetch another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-ddranking/bin/python ] || "$PY" -m venv .venv-ddranking
pip_q() { .venv-ddranking/bin/python -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
pip_q "torch==2.14.1" "torchvision==0.29.1"
pip_q "ddranking==0.2.0"
.venv-ddranking/bin/python -c "import ddranking, torch, numpy; print('ddranking', ddranking.__version__ if hasattr(ddranking, '__version__') else '0.2.0', 'torch', torch.__version__, 'numpy', numpy.__version__)"
