"""`reta bench PRESET --tier quick|full`: every method under one protocol, published as BENCHMARKS.md.

For one dataset and IPC: one teacher (trained once, cached by data + recipe), then every method
in METHODS with the same teacher, IPC, budget and student protocol; each distilled set is
evaluated with online soft labels (the method's own protocol) and with hard labels (for HLR),
over several student seeds, on the test split. Hyperparameters are the method reference's
defaults, scaled to the tier's budget; nothing is chosen on the test split. Raw results go to
benchmarks/results/<preset>-<tier>.json, and BENCHMARKS.md's tables are regenerated from all
result files there.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import torch

from reta import io
from reta.config import EvalProtocol, RecoverConfig, SqueezeConfig, build
from reta.data import load_dataset
from reta.distilled import read_distilled
from reta.errors import RetaError
from reta.evaluate import evaluate, hlr, ior, lrs
from reta.recover import distill, preset
from reta.retrieval.pool import default_cache_dir
from reta.runtime import device
from reta.teacher import load_teacher, squeeze

METHODS = ["random", "rded", "sre2l", "fadrm", "drc", "pta", "reta"]
REPO = Path(__file__).resolve().parents[2]

PRESETS = {
    "imagenette32-ipc10": {"data": "imagenette", "ipc": 10},
    "imagenette32-ipc50": {"data": "imagenette", "ipc": 50},
    "cifar10-ipc10": {"data": "cifar10", "ipc": 10},
    "cifar10-ipc50": {"data": "cifar10", "ipc": 50},
}

# What fits this 2-core CPU: ConvNet-3 (width 128, BatchNorm) teacher and student at 32 px with
# bf16 autocast + channels_last (measured 1.46x faster than fp32 for recover steps here).
# Fidelity cost vs the paper's protocol (ResNet-18, 2000 recover steps, 300-1000 student
# epochs): budgets are 4x-20x smaller, so absolute accuracies are lower.
TIERS = {
    "quick": {
        "teacher": {"arch": "convnet3-w32", "epochs": 4, "batch_size": 128, "lr": 0.05},
        "recover": {"iterations": 40, "rded_candidates": 60},
        "protocol": {"student": "convnet3-w32", "epochs": 15, "batch_size": 20, "lr": 2e-3, "eta": 1.0,
                     "temperature": 4.0, "seeds": 2, "eval_every": 5},
    },
    "full": {
        "teacher": {"arch": "convnet3", "epochs": 15, "batch_size": 128, "lr": 0.05},
        "recover": {"iterations": 300},
        "protocol": {"student": "convnet3", "epochs": 60, "batch_size": 20, "lr": 1e-3, "eta": 1.0,
                     "temperature": 4.0, "seeds": 3, "eval_every": 20},
    },
}


def default_data_root() -> str | None:
    shared = REPO.parent / "shared" / "datasets"
    return os.environ.get("RETA_DATA_ROOT") or (str(shared) if shared.is_dir() else None)


def cached_teacher(train, test, recipe: dict, dev, progress: bool):
    cfg = build(SqueezeConfig, base=recipe)
    key = io.sha256_json({"data": train.content_hash(), "recipe": dataclasses.asdict(cfg)})[:16]
    folder = default_cache_dir() / "teachers" / key
    if (folder / "meta.json").is_file():
        return load_teacher(folder, expect=train.info, dev=dev)
    print(f"[bench] squeeze {cfg.arch} for {cfg.epochs} epochs (cached at {folder})", flush=True)
    return squeeze(train, test, cfg, folder, dev, progress=progress)


def run_bench(preset_name: str, tier: str, out: Path | None, data_root: str | None,
              methods: list[str] | None = None, progress: bool = True) -> dict:
    if preset_name not in PRESETS:
        raise RetaError(f"unknown bench preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    spec, settings = PRESETS[preset_name], TIERS[tier]
    methods = methods or METHODS
    out = out or REPO / "benchmarks" / "runs" / f"{preset_name}-{tier}"
    out.mkdir(parents=True, exist_ok=True)
    dev = device()
    t_start = time.time()
    train, test = load_dataset(spec["data"], data_root or default_data_root())
    teacher = cached_teacher(train, test, settings["teacher"], dev, progress)
    soft = build(EvalProtocol, base={**settings["protocol"], "labels": "online"})
    hard = build(EvalProtocol, base={**settings["protocol"], "labels": "hard"})
    print(f"[bench] {preset_name} ({tier}): teacher {teacher.arch} test top-1 {100 * teacher.meta['test_top1']:.1f}%", flush=True)
    rows = []
    for method in methods:
        run_dir = out / method
        base_method, *overrides = method.split("+")  # e.g. "reta+pta.weight=0.005": a labelled variant
        cfg = build(RecoverConfig, base={**preset(base_method), "ipc": spec["ipc"], **settings["recover"]},
                    sets=overrides)
        t0 = time.time()
        if not (run_dir / "distilled" / "manifest.json").is_file():
            print(f"[bench] distill {method}", flush=True)
            distill(train, [teacher], cfg, run_dir / "distilled", dev, progress=progress)
        syn, manifest = read_distilled(run_dir / "distilled", expect=train.info)
        rows.append(_evaluate_method(method, syn, manifest, test, train.info, soft, hard, teacher, dev, run_dir,
                                     time.time() - t0, progress))
        r = rows[-1]
        print(f"[bench] {method}: {100 * r['soft']['top1_final_mean']:.2f} ± {100 * r['soft']['top1_final_std']:.2f} "
              f"(hard {100 * r['hard']['top1_final_mean']:.2f})", flush=True)
    _add_relative_metrics(rows, teacher)
    result = {
        "preset": preset_name, "tier": tier, "data": spec["data"], "ipc": spec["ipc"],
        "teacher": {"arch": teacher.arch, "test_top1": teacher.meta["test_top1"], "recipe": teacher.meta["recipe"]},
        "recover": settings["recover"], "protocol_soft": dataclasses.asdict(soft), "protocol_hard": dataclasses.asdict(hard),
        "methods": rows, "seconds": time.time() - t_start, "machine": machine(), "versions": io.versions(),
        "date": datetime.date.today().isoformat(),
        "command": f"reta bench {preset_name} --tier {tier}",
    }
    results_dir = REPO / "benchmarks" / "results"
    io.write_json(results_dir / f"{preset_name}-{tier}.json", result)
    write_benchmarks_md(results_dir, REPO / "BENCHMARKS.md")
    print(f"[bench] done in {result['seconds'] / 60:.1f} min -> {results_dir / f'{preset_name}-{tier}.json'}", flush=True)
    return result


def _evaluate_method(method, syn, manifest, test, info, soft, hard, teacher, dev, run_dir, distill_seconds, progress):
    cached = run_dir / "result.json"
    if cached.is_file():
        return io.read_json(cached)
    ipc = manifest["ipc"]
    soft_res = evaluate(syn, test, info, soft, dev, teacher.model, method=method, ipc=ipc, progress=progress)
    hard_res = evaluate(syn, test, info, hard, dev, None, method=method, ipc=ipc, progress=progress)
    for r in (soft_res, hard_res):
        r.pop("runs", None)
    n_images = len(syn)
    row = {"method": method, "soft": soft_res, "hard": hard_res,
           "distill_seconds": distill_seconds if manifest.get("timings") else None,
           "seconds_per_image": manifest["timings"]["seconds_per_image"],
           "recover_peak_memory_mb": manifest.get("peak_memory_mb"),
           "drc_share": manifest.get("drc_share"), "pta_share": manifest.get("pta_share"),
           "shared_anchor_fraction": manifest.get("shared_anchor_fraction"), "images": n_images}
    io.write_json(cached, row)
    return row


def _add_relative_metrics(rows: list[dict], teacher) -> None:
    """Δ vs random / FADRM, and DD-Ranking HLR/IOR/LRS on fractions (method-reference §7.2)."""
    by = {r["method"]: r for r in rows}
    # Acc(real, hard): the teacher itself was trained on the full training split with hard labels.
    real_hard = float(teacher.meta["test_top1"])
    for r in rows:
        acc = r["soft"]["top1_final_mean"]
        if "random" in by:
            r["delta_vs_random"] = acc - by["random"]["soft"]["top1_final_mean"]
            r["ior"] = ior(acc, by["random"]["soft"]["top1_final_mean"])
        if "fadrm" in by:
            r["delta_vs_fadrm"] = acc - by["fadrm"]["soft"]["top1_final_mean"]
        r["hlr"] = hlr(real_hard, r["hard"]["top1_final_mean"])
        if "ior" in r:
            r["lrs"] = lrs(r["hlr"], r["ior"])


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "device": str(device())}


def _fmt(v, scale=100.0, digits=2, signed=False):
    if v is None:
        return "–"
    return f"{scale * v:+.{digits}f}" if signed else f"{scale * v:.{digits}f}"


def benchmark_table(result: dict) -> str:
    lines = [
        "| method | top-1 final, soft labels (mean ± std) | Δ vs random | Δ vs FADRM | top-1 final, hard labels | "
        "HLR | IOR | LRS | best-epoch (test-selected) | s / image | peak RSS MB | DRC / PTA share of recover |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["methods"]:
        s, h = r["soft"], r["hard"]
        share = "–"
        if r.get("drc_share") or r.get("pta_share"):
            share = f"{_fmt(r.get('drc_share'), digits=1)}% / {_fmt(r.get('pta_share'), digits=1)}%"
        lines.append(
            f"| {r['method']} | **{_fmt(s['top1_final_mean'])} ± {_fmt(s['top1_final_std'])}** | "
            f"{_fmt(r.get('delta_vs_random'), signed=True)} | {_fmt(r.get('delta_vs_fadrm'), signed=True)} | "
            f"{_fmt(h['top1_final_mean'])} ± {_fmt(h['top1_final_std'])} | {_fmt(r.get('hlr'))} | {_fmt(r.get('ior'), signed=True)} | "
            f"{_fmt(r.get('lrs'))} | {_fmt(s['top1_best_mean'])} | {r['seconds_per_image']:.3f} | "
            f"{r['recover_peak_memory_mb'] or 0:.0f} | {share} |")
    return "\n".join(lines)


def write_benchmarks_md(results_dir: Path, path: Path) -> None:
    """Regenerate the generated section of BENCHMARKS.md from every results JSON (never pasted by hand)."""
    files = sorted(results_dir.glob("*.json"))
    sections = []
    for f in files:
        r = io.read_json(f)
        if "protocol_soft" not in r:  # sweeps and GPU results have their own hand-written sections
            continue
        p, rec = r["protocol_soft"], r["recover"]
        # Sum of per-method work, so a rerun that adds a variant (reusing cached rows) reports the whole.
        compute = sum((m.get("distill_seconds") or 0.0) + m["soft"].get("seconds", 0.0) + m["hard"].get("seconds", 0.0)
                      for m in r["methods"])
        sections += [
            f"### {r['preset']} — {r['tier']} tier", "",
            f"`{r['command']}` · {r['date']} · {r['machine']['cpu']} ({r['machine']['cores']} cores, {r['machine']['device']}) · "
            f"torch {r['versions']['torch']} · {compute / 60:.1f} min of distillation and evaluation over all rows "
            f"(teacher training excluded; {r['seconds'] / 60:.1f} min for the last invocation)", "",
            f"Teacher {r['teacher']['arch']} ({r['teacher']['recipe']['epochs']} epochs): test top-1 "
            f"{100 * r['teacher']['test_top1']:.2f}% (also the HLR real-data reference). Recover: IPC {r['ipc']}, "
            f"budget {rec.get('iterations')} steps. Student {p['student']}, {p['epochs']} epochs, batch {p['batch_size']}, "
            f"AdamW lr {p['lr']}, cosine η={p['eta']}, KD T={p['temperature']} with online teacher labels (soft) or "
            f"CutMix cross-entropy (hard); {p['seeds']} seeds; accuracies in % on the test split, final epoch. "
            f"HLR/IOR in percentage points, LRS ×100 computed on fractions.", "",
            benchmark_table(r), "",
        ]
    generated = "\n".join(sections)
    start, end = "<!-- generated: reta bench -->", "<!-- end generated -->"
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    io.write_bytes(path, f"{head}{start}\n{generated}\n{end}{tail}".encode())
