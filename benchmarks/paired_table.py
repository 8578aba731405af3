"""A markdown table of chosen committed benchmark rows: top-1 mean ± std over all runs, the
paired difference to FADRM per synthesis seed, and the per-seed means. For comparisons drawn from
rows of several `reta bench` invocations (a generated table shows only the current ones).

    .venv/bin/python benchmarks/paired_table.py benchmarks/results/cifar10-ipc10-full-holdout \
        fadrm reta "reta+drc.fit=blend"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reta import io
from reta.bench import aggregate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a benchmarks/results/<name> folder of row files")
    parser.add_argument("variants", nargs="+", help="variant labels, in table order; fadrm must be one")
    args = parser.parse_args()
    rows = [r for r in map(io.read_json, sorted(args.results.glob("*.json"))) if r["variant"] in args.variants]
    found = {r["variant"] for r in rows}
    missing = [v for v in args.variants if v not in found]
    if missing:
        raise SystemExit(f"{args.results}: no rows for {', '.join(missing)}; check the labels with ls {args.results}")
    table = {(a["method"], a["student"]): a for a in aggregate(rows, teacher_top1=1.0)}
    print("| variant | student | seeds | top-1 (mean ± std) | per synthesis seed | Δ vs FADRM (paired ± std) |")
    print("|---|---|---|---|---|---|")
    for (variant, student), a in sorted(table.items(), key=lambda kv: (args.variants.index(kv[0][0]), kv[0][1])):
        s = a["soft"]
        seeds = ", ".join(f"{100 * v:.2f}" for _, v in sorted(a["top1_per_synthesis_seed"].items()))
        delta = "–" if a["delta_vs_fadrm"] is None else f"{100 * a['delta_vs_fadrm']:+.2f}" + (
            f" ± {100 * a['delta_vs_fadrm_std']:.2f}" if a["delta_vs_fadrm_std"] is not None else "")
        print(f"| {variant} | {student} | {len(a['synthesis_seeds'])} | {100 * s['top1_final_mean']:.2f} ± "
              f"{100 * s['top1_final_std']:.2f} | {seeds} | {delta} |")


if __name__ == "__main__":
    main()
