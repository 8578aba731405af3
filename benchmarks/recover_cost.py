"""RETA / FADRM recover time on this machine, measured alone: a full-tier preset (imagenette32 IPC 10
by default). A first reta run builds the prebuilt pool (cold); then fadrm and reta alternate
(seeds 7, 8, ...) reading that one pool, as every later run on the same teacher does. With
`--cache DIR` the pool is read from that cache instead and there is no cold run (at IPC 50 the
cold run alone is a full reta recover).

    .venv/bin/python benchmarks/recover_cost.py [--preset imagenette32-ipc50 --repeats 1 --cache ~/.cache/reta]

Writes the per-run wall time (setup included), the group compute time (setup excluded), the ratios
with the pool built, and the cold first run. Nothing else may run meanwhile: on 2 cores a second
job changes both numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reta import io
from reta.bench import full_tier_study
from reta.recover import distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="imagenette32-ipc10")
    parser.add_argument("--out", default=None, help="default benchmarks/results/recover-cost-PRESET.json")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default=None, help="a cache root already holding the pool, e.g. ~/.cache/reta (no cold run)")
    args = parser.parse_args()
    out = Path(args.out or f"benchmarks/results/recover-cost-{args.preset}.json")
    study = full_tier_study(args.preset)
    train, teacher, dev = study.train, study.teacher, study.dev
    def timed(method: str, seed: int, out: Path, cache: Path) -> dict:
        cfg = study.config(method, seed)
        t0 = time.time()
        m = distill(train, [teacher], cfg, out, dev, cache_dir=cache, progress=False)
        run = {"seed": seed, "wall_seconds": time.time() - t0, "group_seconds": m["timings"]["group_seconds"],
               "setup_seconds": m["timings"]["setup_seconds"], "pta_share": m.get("pta_share"),
               "drc_share": m.get("drc_share"), "anchor_correlation_median": m.get("anchor_correlation_median"),
               "shared_anchor_fraction": m.get("shared_anchor_fraction")}
        print(method, run, flush=True)
        return run

    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache).expanduser() if args.cache else Path(tmp) / "cache"
        cold = None if args.cache else timed("reta", 6, Path(tmp) / "reta-cold", cache)  # builds the pool
        for rep in range(args.repeats):
            for method in ("fadrm", "reta"):
                runs.setdefault(method, []).append(timed(method, 7 + rep, Path(tmp) / f"{method}-{rep}", cache))
    ratio = {k: sum(r[k] for r in runs["reta"]) / sum(r[k] for r in runs["fadrm"]) for k in ("wall_seconds", "group_seconds")}
    fadrm_wall = sum(r["wall_seconds"] for r in runs["fadrm"]) / len(runs["fadrm"])
    cold_ratio = cold["wall_seconds"] / fadrm_wall if cold else None
    print("reta / fadrm, pool built:", ratio, "cold first run:", cold_ratio, flush=True)
    io.write_json(out, {"what": __doc__.splitlines()[0], "preset": args.preset, "tier": "full",
                        "runs": runs, "ratio_reta_over_fadrm": ratio, "cold_first_reta_run": cold,
                        "cold_ratio_over_mean_fadrm_wall": cold_ratio, "versions": io.versions()})

if __name__ == "__main__":
    main()
