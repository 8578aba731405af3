#!/bin/sh
# One GPU, no dataset, no internet, well under 8 minutes: recover s/image and peak memory of FADRM, DRC, PTA, RETA (src/reta/gpu_bench.py).
exec python -m reta.gpu_bench --out benchmarks/results/gpu.json "$@"
