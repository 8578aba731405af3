#!/bin/sh
# One GPU, no dataset, no internet, under 8 minutes: recover s/image, model TFLOP/s and fraction of the
# card's bf16 peak, and peak memory, for FADRM and RETA at 1, 2, 4 and 8 groups per batched step
# (src/reta/gpu_bench.py). Extra arguments override these.
exec python -m reta.gpu_bench --out benchmarks/results/gpu.json --methods fadrm,reta --classes 8 --groups 1,2,4,8 "$@"
