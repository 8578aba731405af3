"""Recover cost on one GPU at ImageNet scale, with no dataset and no download.

`python -m reta.gpu_bench --out benchmarks/results/gpu.json` (benchmarks/gpu.sh) times the real
`reta.recover.distill` for every registered method that optimises (`timed_methods()`) with:

* a random-weight torchvision ResNet-18 at 224 px (timing does not depend on the weights; its
  BatchNorm running statistics are calibrated on the synthetic images so the BN-matching loss
  has realistic magnitudes), wrapped in a `reta.teacher.Teacher`;
* an in-memory synthetic dataset: `classes` classes of random uint8 images, `pool_per_class`
  (at least `ipc`) per class, so the RDED initialisation and the DRC/PTA pool exist;
* IPC-50-sized batches: **per-class groups of `ipc` images for every method** (batch_size = ipc,
  batch_composition = per-class), so all methods optimise the same tensor shapes. (FADRM's
  own ImageNet setting is class-mixed batches of 100; per image its cost is a little lower there.)

Per method: a short warm-up run (`warmup` steps: CUDA/cuDNN initialisation, the pool cache
build, compilation when `compile`) and then the timed run of `budget` steps into a fresh
folder, with the peak-memory counter reset in between. Reported per method: wall seconds per
image of the timed run, the manifest's split (group seconds vs one-off setup: pool load, PTA
references, RDED init), seconds per image of the last group alone (steady state), a linear
extrapolation to the field's budget of 2000 steps (an estimate, labelled so), and
`torch.cuda.max_memory_allocated`. `sync_check` counts host synchronisations of a short FADRM
run with `torch.cuda.set_sync_debug_mode("warn")`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from reta import config as config_mod
from reta.data.dataset import DatasetInfo, TensorImageSet
from reta.models import create_model
from reta.recover import METHODS, distill, preset
from reta.teacher import Teacher, freeze

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FIELD_BUDGET = 2000
# RETA paper, RTX 4090, ImageNet-1K, ResNet-18 (for orientation only: other GPU, batch and budget).
REFERENCE_4090 = {"fadrm": {"seconds_per_image": 0.47, "memory_gb": 2.9},
                  "fadrm+": {"seconds_per_image": 1.09, "memory_gb": 11.0},
                  "reta": {"seconds_per_image": 1.31, "memory_gb": 13.4}}


# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for the fraction of peak.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "RTX 4090": 165.0, "A10": 125.0}


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, matched by name (the longest matching key); None if unknown."""
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in device_name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def step_flops_per_image(teacher: Teacher, size: int, dev: torch.device, batch: int = 4) -> float:
    """Model FLOP of one recover step per image: the teacher forward plus the backward to the input
    (the weights are frozen, so no weight gradients), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, size, size, device=dev, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        teacher.model(x).float().sum().backward()
    return counter.get_total_flops() / batch


def timed_methods() -> tuple[str, ...]:
    """The registered methods with a recover budget; the zero-step selections (random, rded) have nothing to time."""
    return tuple(n for n in METHODS.names() if METHODS.get(n).preset.get("iterations") != 0)


def synthetic_set(classes: int, per_class: int, size: int, seed: int = 0) -> TensorImageSet:
    """Random uint8 images, `per_class` per class, with ImageNet normalisation."""
    info = DatasetInfo(f"synthetic{size}", tuple(f"class{c}" for c in range(classes)), size, IMAGENET_MEAN, IMAGENET_STD)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), generator=gen, dtype=torch.uint8)
    return TensorImageSet(images, np.repeat(np.arange(classes), per_class), info, f"synthetic:{classes}x{per_class}x{size}")


@torch.no_grad()
def random_teacher(arch: str, data: TensorImageSet, dev: torch.device, seed: int = 0, batches: int = 4,
                   batch_size: int = 64) -> Teacher:
    """A random-weight teacher whose BN running statistics are those of `data` (cumulative average)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(arch, data.info.num_classes, data.info.image_size).to(dev)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        idx = torch.randint(0, len(data), (min(batch_size, len(data)),), generator=gen).numpy()
        model(data.info.normalise(data.load(idx).to(dev)))
    for m in bns:
        m.momentum = 0.1
    model = freeze(model)
    meta = {"holdout": {"fraction": 0.0, "seed": 0}, "note": "random weights, BN statistics calibrated on synthetic data"}
    return Teacher(model=model, arch=arch, info=data.info, meta=meta, path=Path(f"<random {arch} seed {seed}>"),
                   weights_hash=f"random-{arch}-{seed}-{data.info.num_classes}-{data.info.image_size}")


def method_config(method: str, ipc: int, budget: int, size: int, pool_per_class: int, precision: str,
                  compile_teacher: bool, groups_per_step: int = 1) -> config_mod.RecoverConfig:
    base = preset(method)
    base.update(ipc=ipc, iterations=budget, batch_size=ipc, batch_composition="per-class",
                jitter=32 if size >= 128 else 4, precision=precision, compile=compile_teacher,
                rded_candidates=min(300, pool_per_class), groups_per_step=groups_per_step)
    base["drc"] = {**base.get("drc", {}), "pool_per_class": pool_per_class}
    return config_mod.build(config_mod.RecoverConfig, base=base)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_distill(data, teacher, cfg, out: Path, dev, cache: Path) -> tuple[dict, float]:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    manifest = distill(data, [teacher], cfg, out, dev, cache_dir=cache, progress=False)
    _sync(dev)
    return manifest, time.perf_counter() - t0


def count_host_syncs(data, teacher, cfg, out: Path, dev, cache: Path) -> dict:
    """Synchronising CUDA calls during one distill run (torch.cuda.set_sync_debug_mode('warn'))."""
    if dev.type != "cuda":
        return {"skipped": "needs CUDA"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            distill(data, [teacher], cfg, out, dev, cache_dir=cache, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    steps = cfg.iterations * (data.info.num_classes * cfg.ipc // cfg.batch_size)
    return {"method": cfg.method, "steps": steps, "host_syncs": len(syncs), "host_syncs_per_step": len(syncs) / max(1, steps),
            "note": "whole run incl. RDED init, pool load, residual connections, PNG writing"}


def run(size: int = 224, arch: str = "resnet18", classes: int = 2, ipc: int = 50, budget: int = 200,
        methods: tuple[str, ...] | None = None, pool_per_class: int = 300, dev: torch.device | None = None,
        warmup: int = 8, precision: str = "auto", compile_teacher: bool = False, sync_check: bool = False,
        seed: int = 0, groups: tuple[int, ...] = (1,)) -> dict:
    """Time recover per method; returns the JSON-ready result (see module docstring)."""
    from reta.runtime import autocast_dtype

    dev = dev or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    per_class = max(pool_per_class, ipc)
    t_setup = time.perf_counter()
    data = synthetic_set(classes, per_class, size, seed)
    teacher = random_teacher(arch, data, dev, seed)
    setup_seconds = time.perf_counter() - t_setup
    n_images = classes * ipc
    flops_image_step = step_flops_per_image(teacher, size, dev)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = bf16_peak_tflops(device_name)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="reta-gpu-bench-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        for method, g in [(m, g) for m in (methods or timed_methods()) for g in groups]:
            label = method if g == 1 else f"{method}@{g}groups"
            cfg = method_config(method, ipc, budget, size, pool_per_class, precision, compile_teacher, g)
            warm, warm_wall = _time_distill(data, teacher, dataclasses.replace(cfg, iterations=warmup),
                                            tmp / f"{label}-warmup", dev, cache)
            manifest, wall = _time_distill(data, teacher, cfg, tmp / label, dev, cache)
            t = manifest["timings"]
            last = manifest["groups"][-1]
            per_img = wall / n_images
            # Model FLOP only (the teacher passes of CE+BN; PTA's extra clean pass is not counted), so
            # the fraction of peak is an upper bound on useful work for methods with extra passes.
            achieved = flops_image_step * n_images * budget / max(t["group_seconds"], 1e-12) / 1e12
            results[label] = {
                "groups_per_step": g, "model_tflop_per_step": flops_image_step * min(n_images, g * ipc) / 1e12,
                "achieved_model_tflops": achieved, "fraction_of_bf16_peak": achieved / peak if peak else None,
                "seconds_per_image": per_img,
                "seconds_per_image_groups_only": t["group_seconds"] / n_images,
                "seconds_per_image_last_group": last["seconds"] / len(last["slots"]),
                f"seconds_per_image_at_{FIELD_BUDGET}_steps_estimate": t["group_seconds"] / n_images * FIELD_BUDGET / budget,
                "wall_seconds": wall, "group_seconds": t["group_seconds"], "setup_seconds": t.get("setup_seconds", 0.0),
                "group_seconds_each": [g["seconds"] for g in manifest["groups"]],
                "drc_share": manifest.get("drc_share", 0.0), "pta_share": manifest.get("pta_share", 0.0),
                "peak_memory_mb": manifest["peak_memory_mb"],
                "peak_memory_gb": manifest["peak_memory_mb"] / 1024.0,
                "warmup": {"steps": warmup, "wall_seconds": warm_wall, "setup_seconds": warm["timings"].get("setup_seconds", 0.0)},
                "groups": len(manifest["groups"]), "stage_budgets": manifest["stage_budgets"],
                "batch_composition": cfg.batch_composition, "batch_size": cfg.batch_size,
            }
        sync = (count_host_syncs(data, teacher, method_config("fadrm", ipc, max(budget, 8), size, pool_per_class, precision,
                                                               False), tmp / "sync", dev, cache) if sync_check else None)
    return {
        "benchmark": "reta.gpu_bench", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "model_gflop_per_image_step": flops_image_step / 1e9, "bf16_peak_tflops": peak,
        "settings": {"size": size, "arch": arch, "weights": "random (BN statistics calibrated on the synthetic images)",
                     "classes": classes, "ipc": ipc, "images": n_images, "budget_steps": budget, "warmup_steps": warmup,
                     "pool_per_class": pool_per_class, "batch": f"per-class groups of {ipc} images (batch_size={ipc})",
                     "precision": precision, "autocast_dtype": str(autocast_dtype(precision, dev)),
                     "compile": compile_teacher, "data": "synthetic random uint8, in memory", "seed": seed,
                     "groups_per_step": list(groups)},
        "setup_seconds": setup_seconds,
        "methods": results,
        "host_sync_check": sync,
        "notes": [
            "seconds_per_image = wall time of the timed distill() call / images (after a warm-up run of the same method)",
            "seconds_per_image_last_group: the last group alone (steady state, no one-off setup)",
            f"*_at_{FIELD_BUDGET}_steps_estimate: group seconds scaled linearly from the measured budget; an estimate",
            "peak_memory: torch.cuda.max_memory_allocated during the timed run (reset after the warm-up)",
            "reference_4090: RETA paper figures (ImageNet-1K, RTX 4090, its own batch and budget), not comparable 1:1",
        ] + (["compile: every distill() copies the teacher, so the timed run compiles again; "
              "read seconds_per_image_last_group"] if compile_teacher else []),
        "reference_4090": REFERENCE_4090,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reta.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--pool-per-class", type=int, default=300)
    p.add_argument("--methods", default=",".join(timed_methods()))
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher forward")
    p.add_argument("--sync-check", action="store_true", help="count host synchronisations of a FADRM run")
    p.add_argument("--device", default=None)
    p.add_argument("--groups", default="1", help="comma-separated groups per batched step to compare, e.g. 1,2,4,8 "
                   "(--classes must be at least the largest)")
    args = p.parse_args(argv)
    result = run(size=args.size, arch=args.arch, classes=args.classes, ipc=args.ipc, budget=args.budget,
                 methods=tuple(m for m in args.methods.split(",") if m), pool_per_class=args.pool_per_class,
                 dev=torch.device(args.device) if args.device else None, warmup=args.warmup, precision=args.precision,
                 compile_teacher=args.compile, sync_check=args.sync_check,
                 groups=tuple(int(g) for g in args.groups.split(",") if g))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for m, r in result["methods"].items():
        frac = f", {100 * r['fraction_of_bf16_peak']:.1f}% of bf16 peak" if r["fraction_of_bf16_peak"] else ""
        print(f"{m:>16}: {r['seconds_per_image']:.3f} s/img ({r['seconds_per_image_last_group']:.3f} last group), "
              f"{r['achieved_model_tflops']:.1f} model TFLOP/s{frac}, peak {r['peak_memory_gb']:.2f} GB", flush=True)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
