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

from reta import io
from reta.bench import full_tier_study
from reta.recover import distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--fadrm", action="store_true", help="distil FADRM seed 0 into the first folder first")
    parser.add_argument("--out", required=True)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.fadrm:
        study = full_tier_study(args.preset)
        distill(study.train, [study.teacher], study.config("fadrm", 0), args.runs[0] / "fadrm-anchor-diagnostic",
                study.dev, progress=False)
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
