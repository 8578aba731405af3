"""The PTA / (CE + BN) gradient-norm ratio that RETA records at a group's start, at the bench's
full-tier defaults, for several synthesis seeds, without running a whole recover (one step).

    .venv/bin/python benchmarks/grad_ratio.py [--preset cifar10-ipc10 --seeds 0,1,2]

Records per group `pta` (the manifest's ratio: PTA gradient norm over the RMS of the CE + BN
gradient norm across 8 augmented views) and `pta_one_view` (over the step's single view), and
the teacher's weights hash and test top-1, since the ratio depends on the teacher.
Writes benchmarks/results/grad-ratio-PRESET.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path


def ratios(preset_name: str, seeds: list[int], cache: Path) -> dict:
    from reta.bench import full_tier_study
    from reta.recover.loop import Recover

    study = full_tier_study(preset_name)
    train, teacher, dev = study.train, study.teacher, study.dev
    runs = []
    for seed in seeds:
        # One step of the first stage: the ratio is recorded at step 0 and nothing later changes it.
        cfg = dataclasses.replace(study.config("reta", seed), iterations=1, stage_budgets=(1, 0, 0, 0))
        with tempfile.TemporaryDirectory() as tmp:
            run = Recover(train, [teacher], cfg, Path(tmp) / "out", dev, cache_dir=cache, progress=False)
            groups = run.groups()
            run.prepare_shared(list(range(len(groups))))
            records = [r["grad_ratio"] for _, r in run.run_groups([(g, groups[g]) for g in range(len(groups))])]
        row = {"seed": seed}
        for key in ("pta", "pta_one_view"):
            values = [r[key] for r in records]
            row[key] = values
            row[f"{key}_min_median_max"] = [min(values), statistics.median(values), max(values)]
        runs.append(row)
        print(preset_name, "seed", seed, {k: [round(v, 2) for v in row[k]] for k in row if k.endswith("max")}, flush=True)
    return {"teacher": {"weights_sha256": teacher.weights_hash, "test_top1": teacher.meta.get("test_top1")},
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="imagenette32-ipc10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default="~/.cache/reta", help="cache root for the teacher and pool")
    parser.add_argument("--out", default=None, help="default benchmarks/results/grad-ratio-PRESET.json")
    args = parser.parse_args()
    from reta import io

    result = ratios(args.preset, [int(s) for s in args.seeds.split(",")], Path(args.cache).expanduser())
    out = Path(args.out or f"benchmarks/results/grad-ratio-{args.preset}.json")
    io.write_json(out, {"preset": args.preset, **result, "versions": io.versions(),
                        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
