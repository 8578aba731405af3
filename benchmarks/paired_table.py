"""A markdown table of chosen committed benchmark rows: top-1 mean ± std over all runs, the
paired difference to a baseline variant (FADRM unless --baseline) per synthesis seed, and the
per-seed means. For comparisons drawn from rows of several `reta bench` invocations (a generated
table shows only the current ones), or against a baseline run with other settings, e.g. FADRM at
the same longer budget:

    .venv/bin/python benchmarks/paired_table.py benchmarks/results/cifar10-ipc10-full-holdout \
        fadrm reta "reta+drc.fit=blend"
    .venv/bin/python benchmarks/paired_table.py DIR --baseline fadrm+iterations=1000 \
        fadrm+iterations=1000 reta+iterations=1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reta import io
from reta.bench import aggregate, paired_delta


def paired(a: dict, ref: dict | None) -> str:
    """The per-synthesis-seed paired difference of a's top-1 to ref's, in points."""
    delta = None if ref is None or a is ref else paired_delta(a, ref)
    if delta is None:
        return "–"
    mean, std, _ = delta
    return f"{100 * mean:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a benchmarks/results/<name> folder of row files")
    parser.add_argument("variants", nargs="+", help="variant labels, in table order; the baseline must be one")
    parser.add_argument("--baseline", default="fadrm", help="the variant the paired differences are taken to")
    args = parser.parse_args()
    if args.baseline not in args.variants:
        raise SystemExit(f"--baseline {args.baseline}: not among the variants; add it to the list")
    rows = [r for r in map(io.read_json, sorted(args.results.glob("*.json"))) if r["variant"] in args.variants]
    found = {r["variant"] for r in rows}
    missing = [v for v in args.variants if v not in found]
    if missing:
        raise SystemExit(f"{args.results}: no rows for {', '.join(missing)}; check the labels with ls {args.results}")
    table = {(a["method"], a["student"]): a for a in aggregate(rows, teacher_top1=1.0)}
    print(f"| variant | student | seeds | top-1 (mean ± std) | per synthesis seed | Δ vs {args.baseline} (paired ± std) |")
    print("|---|---|---|---|---|---|")
    for (variant, student), a in sorted(table.items(), key=lambda kv: (args.variants.index(kv[0][0]), kv[0][1])):
        s = a["soft"]
        seeds = ", ".join(f"{100 * v:.2f}" for _, v in sorted(a["top1_per_synthesis_seed"].items()))
        ref = table.get((args.baseline, student))
        print(f"| {variant} | {student} | {len(a['synthesis_seeds'])} | {100 * s['top1_final_mean']:.2f} ± "
              f"{100 * s['top1_final_std']:.2f} | {seeds} | {paired(a, ref)} |")


if __name__ == "__main__":
    main()
