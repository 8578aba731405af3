"""How alike each image and its residual anchor are, per method: the test of the ghosting
hypothesis for RETA's joint loss (docs/reta.md). Reads every finished distilled set under the
given bench folders; with --fadrm, first distils FADRM (full tier, seed 0) beside them, since
bench reuses committed FADRM rows without making their images again.

    .venv/bin/python benchmarks/anchor_correlation.py --preset cifar10-ipc10 --fadrm /tmp/runs/B-cifar \
        --out benchmarks/results/anchor-correlation-cifar10-ipc10.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reta import io, pipeline
from reta.bench import presets, tier_settings, variant_config
from reta.config import SqueezeConfig, build
from reta.data import load_dataset
from reta.recover import distill
from reta.runtime import device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--fadrm", action="store_true", help="distil FADRM seed 0 into the first folder first")
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    spec, settings = presets()[args.preset], tier_settings("full")
    if args.fadrm:
        train, test = load_dataset(spec["data"], pipeline.default_data_root())
        dev = device()
        teacher = pipeline.cached_teacher(train, test, build(SqueezeConfig, base=settings["teacher"]), dev, progress=False)
        cfg = variant_config("fadrm", spec, settings, 0)
        distill(train, [teacher], cfg, args.runs[0] / "fadrm-anchor-diagnostic", dev, progress=False)
    rows = []
    for root in args.runs:
        for path in sorted(root.glob("**/manifest.json")):
            m = io.read_json(path)
            if m.get("anchor_correlation_median") is None:
                continue  # made before the diagnostic existed, or a method without residual connections
            rows.append({"set": str(path.parent), "method": m["method"], "seed": m["seeds"]["run"],
                         "anchor_correlation_median": m["anchor_correlation_median"],
                         "shared_anchor_fraction": m.get("shared_anchor_fraction")})
            print(rows[-1], flush=True)
    io.write_json(Path(args.out), {"what": __doc__.splitlines()[0], "preset": args.preset, "sets": rows,
                                   "versions": io.versions()})


if __name__ == "__main__":
    main()
