"""`reta demo`: the whole pipeline on data that needs no download, in a few minutes on 2 CPU cores.

scikit-learn's bundled 8x8 digits (1,797 real scans) at 16 px, a small BN ConvNet teacher, then
every method at IPC 10 with the same budget, evaluated by the same protocol on the held-out test
third, 3 student seeds. Small on purpose: it shows that everything runs end to end and produces
an honest table; the numbers that matter are in BENCHMARKS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from reta import io
from reta.config import EvalProtocol, RecoverConfig, SqueezeConfig, build
from reta.data import load_dataset
from reta.data.dataset import split_holdout
from reta.distilled import read_distilled
from reta.evaluate import evaluate
from reta.recover import distill, preset
from reta.reports import image_grid, results_table, topology_report
from reta.runtime import device
from reta.teacher import load_teacher, squeeze

METHODS = ["random", "rded", "sre2l", "fadrm", "drc", "pta", "reta"]
TEACHER = {"arch": "convnet3-w32", "epochs": 15, "batch_size": 64, "lr": 0.05}
RECOVER = {"ipc": 10, "iterations": 200, "jitter": 2, "batch_size": 100}
PROTOCOL = {"student": "convnet3-w32", "epochs": 60, "batch_size": 20, "lr": 2e-3, "eta": 1.0, "temperature": 4.0,
            "seeds": 3, "crop_scale_min": 0.5}


def run_demo(out: Path, methods: list[str] | None = None, progress: bool = True) -> list[dict]:
    methods = methods or METHODS
    out.mkdir(parents=True, exist_ok=True)
    dev = device()
    t_start = time.time()
    train, test = load_dataset("digits")
    teacher_dir = out / "teacher"
    if (teacher_dir / "meta.json").is_file():
        teacher = load_teacher(teacher_dir, expect=train.info, dev=dev)
    else:
        print(f"[demo] squeeze: {TEACHER['arch']} on digits ({len(train)} train / {len(test)} test, 16 px)", flush=True)
        teacher = squeeze(train, test, build(SqueezeConfig, base=TEACHER), teacher_dir, dev, progress=progress)
    print(f"[demo] teacher test top-1 {100 * teacher.meta['test_top1']:.1f}%", flush=True)
    protocol = build(EvalProtocol, base=PROTOCOL)
    io.write_json(out / "demo_config.json", {"teacher": TEACHER, "recover": RECOVER, "protocol": PROTOCOL,
                                             "methods": methods, "versions": io.versions()})
    results, grids = [], []
    for method in methods:
        t0 = time.time()
        run_dir = out / method
        cfg = build(RecoverConfig, base={**preset(method), **RECOVER})
        if not (run_dir / "distilled" / "manifest.json").is_file():
            print(f"[demo] distill {method}", flush=True)
            distill(train, [teacher], cfg, run_dir / "distilled", dev, progress=progress)
        syn, manifest = read_distilled(run_dir / "distilled", expect=train.info)
        recover_s = time.time() - t0
        print(f"[demo] evaluate {method}: {len(syn)} images, {protocol.seeds} seeds", flush=True)
        result = evaluate(syn, test, train.info, protocol, dev, teacher.model, seeds=protocol.seeds, method=method,
                          ipc=cfg.ipc, progress=False)
        result.update(recover_seconds=recover_s, total_seconds=time.time() - t0, drc_share=manifest.get("drc_share"),
                      pta_share=manifest.get("pta_share"), shared_anchor_fraction=manifest.get("shared_anchor_fraction"))
        io.write_json(run_dir / "result.json", result)
        results.append(result)
        grids.append(syn.load(list(range(0, len(syn), cfg.ipc))))  # first image of every class
        print(f"[demo] {method}: top-1 {100 * result['top1_final_mean']:.1f} ± {100 * result['top1_final_std']:.1f}%", flush=True)
    image_grid(torch.cat(grids), nrow=train.info.num_classes, path=out / "distilled_grid.png")
    table = results_table([{"method": r["method"], "top1": (r["top1_final_mean"], r["top1_final_std"]),
                            "best": r["top1_best_mean"], "seconds": r["total_seconds"]} for r in results])
    _, held = split_holdout(train, *teacher.holdout)
    topo_line = []
    if "reta" in methods:
        t0 = time.time()
        topo = topology_report(out / "reta" / "distilled", teacher, train, out / "reta" / "report")
        print(f"[demo] topology report: {topo} ({time.time() - t0:.1f} s)", flush=True)
        topo_line = ["RETA's topology (Betti curves, persistence diagrams) and DRC anchors: "
                     f"[reta/report/report.md]({topo.relative_to(out).as_posix()})", ""]
    report = [
        "# reta demo: digits, IPC 10", "",
        f"Teacher {TEACHER['arch']}: test top-1 {100 * teacher.meta['test_top1']:.1f}%. "
        f"Student {protocol.student}, {protocol.epochs} epochs, online soft labels (T={protocol.temperature}), "
        f"{protocol.seeds} seeds; final-epoch top-1 on the {len(test)}-image test split (never used for choices). "
        f"{len(held)} training images were held out of teacher training and pools.", "",
        table, "",
        f"Distilled images (rows: {', '.join(methods)}; columns: classes 0-9, first image of each):", "",
        "![distilled](distilled_grid.png)", "",
        *topo_line,
        f"Total time {time.time() - t_start:.0f} s on {dev}.",
    ]
    io.write_bytes(out / "report.md", ("\n".join(report) + "\n").encode())
    print("\n" + table + f"\n\n[demo] report: {out / 'report.md'} ({time.time() - t_start:.0f} s)", flush=True)
    return results
