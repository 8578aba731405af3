"""RETA / FADRM recover time on this machine, measured alone: the full tier's imagenette32 IPC 10
setting, fadrm and reta alternated twice (seeds 7 and 8), fresh feature caches each run.

    .venv/bin/python benchmarks/recover_cost.py [--out benchmarks/results/recover-cost-imagenette32-ipc10.json]

Writes the per-run wall time (setup included), the group compute time (setup excluded) and the
ratios. Nothing else may run meanwhile: on 2 cores a second job changes both numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reta import io, pipeline
from reta.bench import presets, tier_settings
from reta.config import RecoverConfig, SqueezeConfig, build
from reta.data import load_dataset
from reta.recover import distill, preset
from reta.runtime import device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/recover-cost-imagenette32-ipc10.json")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec, settings = presets()["imagenette32-ipc10"], tier_settings("full")
    train, test = load_dataset(spec["data"], pipeline.default_data_root())
    dev = device()
    teacher = pipeline.cached_teacher(train, test, build(SqueezeConfig, base=settings["teacher"]), dev, progress=False)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for method in ("fadrm", "reta"):
                cfg = build(RecoverConfig, base={**preset(method), "ipc": spec["ipc"], **settings["recover"], "seed": 7 + rep})
                t0 = time.time()
                m = distill(train, [teacher], cfg, Path(tmp) / f"{method}-{rep}", dev,
                            cache_dir=Path(tmp) / f"cache-{method}-{rep}", progress=False)
                run = {"seed": cfg.seed, "wall_seconds": time.time() - t0, "group_seconds": m["timings"]["group_seconds"],
                       "setup_seconds": m["timings"]["setup_seconds"], "pta_share": m.get("pta_share"),
                       "drc_share": m.get("drc_share")}
                runs.setdefault(method, []).append(run)
                print(method, run, flush=True)
    ratio = {k: sum(r[k] for r in runs["reta"]) / sum(r[k] for r in runs["fadrm"]) for k in ("wall_seconds", "group_seconds")}
    print("reta / fadrm:", ratio, flush=True)
    io.write_json(Path(args.out), {"what": __doc__.splitlines()[0], "preset": "imagenette32-ipc10", "tier": "full",
                                   "runs": runs, "ratio_reta_over_fadrm": ratio, "versions": io.versions()})


if __name__ == "__main__":
    main()
