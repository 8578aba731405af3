"""Peak recover memory on the CPU, each method in a fresh process: a full-tier preset's recover
(imagenette32 IPC 10 by default) with the bench's settings, reading a cache that already holds
the pool (run the bench or recover_cost.py once first).

    .venv/bin/python benchmarks/recover_memory.py [--preset imagenette32-ipc50 --methods fadrm,reta]

The peak resident set of a process (ru_maxrss) counts everything it ever held, so each method
runs in its own process and the peak is also recorded just before recover starts (data and
teacher loaded): the recover's own peak is the difference. A row's `recover_peak_memory_mb` in a
bench table is its bench process's peak, students and earlier variants included, so it is not
this number.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(preset_name: str, method: str, seed: int, cache: Path) -> dict:
    from reta.bench import full_tier_study
    from reta.recover import distill

    study = full_tier_study(preset_name)
    train, teacher, dev = study.train, study.teacher, study.dev
    cfg = study.config(method, seed)
    before = peak_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        distill(train, [teacher], cfg, Path(tmp) / "out", dev, cache_dir=cache, progress=False)
        seconds = time.time() - t0
    after = peak_mb()
    return {"method": method, "seed": seed, "peak_before_recover_mb": before, "peak_mb": after,
            "recover_peak_increase_mb": after - before, "wall_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="imagenette32-ipc10")
    parser.add_argument("--methods", default="fadrm,reta")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", default="~/.cache/reta", help="cache root holding the pool")
    parser.add_argument("--out", default=None, help="default benchmarks/results/recover-memory-PRESET.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = Path(args.cache).expanduser()
    if args.child:
        print(json.dumps(child(args.preset, args.child, args.seed, cache)))
        return
    runs = []
    for method in args.methods.split(","):
        done = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--seed", str(args.seed),
                               "--cache", str(cache), "--child", method], check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    from reta import io

    out = Path(args.out or f"benchmarks/results/recover-memory-{args.preset}.json")
    io.write_json(out, {"preset": args.preset, "runs": runs, "versions": io.versions(),
                        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
