"""Is a method's deficit with the BatchNorm student a statistics mismatch? Re-estimate the trained
student's BN running statistics and score it again (a diagnostic, not a protocol).

    .venv/bin/python benchmarks/bn_recalibration.py cifar10-ipc10 \
        benchmarks/results/epyc-avx512-2026-12-04/cifar10-ipc10-full-holdout --variants random,fadrm,pta,reta

A BN student's running statistics come from the augmented distilled views it trained on, so a set
whose statistics are off (PTA leaves a 40-55 % higher BN loss than FADRM) can cost accuracy at test
time through the statistics alone, with the weights as good as FADRM's. For each set of BENCH_DIR
(read, or distilled exactly as bench would, like benchmarks/student_budget.py) the full tier's BN
student is trained per student seed as in the bench row, then scored three ways on the split:
  trained    its own running statistics: the protocol's number (checked against the bench row)
  real       statistics re-estimated on real training images outside the scored split
  distilled  statistics re-estimated on the clean (un-augmented) distilled images
`real` uses images no distilled-data protocol may see: it only tells how much of a gap the
statistics explain. `stat_shift` is the mean over BN layers of the relative distance between the
trained and the real-estimated (mean, variance). Results go to BENCH_DIR/../bn-recalibration-
<preset>.json, written after every set; a rerun skips finished sets; `--table` prints the
paired table of what is there.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn


def stat_shift(trained: nn.Module, recalibrated: nn.Module) -> float:
    """Mean over BN layers of (|mu_t - mu_r| + |var_t - var_r|) / (|mu_r| + |var_r|)."""
    shifts = []
    for a, b in zip(trained.modules(), recalibrated.modules()):
        if isinstance(a, nn.modules.batchnorm._BatchNorm):
            num = (a.running_mean - b.running_mean).norm() + (a.running_var - b.running_var).norm()
            shifts.append(float(num / (b.running_mean.norm() + b.running_var.norm())))
    return float(np.mean(shifts))


def recalibrated(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """A copy of `model` whose BN running statistics are the average over `batches` (torch's update_bn)."""
    clone = copy.deepcopy(model)
    update_bn(batches, clone)
    return clone.eval()


MODES = ("trained", "real", "distilled")


def table(result: dict, baseline: str = "fadrm") -> str:
    """Markdown: per variant, top-1 under each statistics mode (mean ± std over synthesis seeds of
    the per-set student mean) and its difference to the baseline paired per synthesis seed."""
    def per_seed(variant: str, mode: str) -> dict[int, float]:
        return {s["synthesis_seed"]: 100 * float(np.mean([r[mode] for r in s["runs"]]))
                for s in result["sets"].values() if s["variant"] == variant}

    variants = list(dict.fromkeys(s["variant"] for s in result["sets"].values()))
    lines = ["| variant | " + " | ".join(f"{m} stats | Δ vs {baseline}" for m in MODES) + " | stat shift |",
             "|---|" + "---|---|" * len(MODES) + "---|"]
    for variant in variants:
        cells = []
        for mode in MODES:
            mine, ref = per_seed(variant, mode), per_seed(baseline, mode)
            values = list(mine.values())
            cells.append(f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.2f}")
            paired = [mine[s] - ref[s] for s in mine if s in ref]
            cells.append("–" if variant == baseline or not paired else
                         f"{np.mean(paired):+.2f} ± {np.std(paired, ddof=1) if len(paired) > 1 else 0:.2f}")
        shift = [r["stat_shift"] for s in result["sets"].values() if s["variant"] == variant for r in s["runs"]]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {np.mean(shift):.3f} |")
    return "\n".join(lines)


def main() -> None:
    from reta import io, pipeline
    from reta.bench import add_set_arguments, full_tier_study, protocol
    from reta.data.dataset import split_holdout
    from reta.evaluate.train import accuracy, train_student
    from reta.runtime import autocast_dtype

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "random,fadrm,pta,reta")
    parser.add_argument("--real-images", type=int, default=2000)
    parser.add_argument("--split", choices=["test", "holdout"], default="holdout")
    parser.add_argument("--table", action="store_true", help="print the table of finished sets and stop")
    args = parser.parse_args()
    out = args.bench_dir.parent / f"bn-recalibration-{args.preset}.json"
    if args.table:
        print(table(io.read_json(out)))
        return

    study = full_tier_study(args.preset)
    train, teacher, dev = study.train, study.teacher, study.dev
    soft = protocol(study.settings, "convnet3", "online")
    dtype = autocast_dtype(soft.precision, dev)
    scored_on = pipeline.score_split(train, study.test, teacher, args.split)
    fit_part = train if args.split == "test" else split_holdout(train, *teacher.holdout)[0]
    pick = np.random.default_rng(0).permutation(len(fit_part))[:args.real_images]
    real = fit_part.subset(np.sort(pick))
    real_batches = [train.info.normalise(images).to(dev) for images, _ in real.batches(100)]

    result = io.read_json(out) if out.is_file() else {
        "preset": args.preset, "split": args.split, "student": soft.student, "real_images": len(real),
        "teacher_sha256": teacher.weights_hash, "protocol": io.to_jsonable(dataclasses.asdict(soft)), "sets": {}}
    for seed in args.seeds:
        for label in args.variants:
            name = f"{label}__seed{seed}"
            if name in result["sets"]:
                print(f"[bn-recal] {name}: done before", flush=True)
                continue
            syn, _ = study.distilled(args.bench_dir, label, seed)
            clean = [train.info.normalise(syn.load(np.arange(len(syn)))).to(dev)]
            runs = []
            for student_seed in range(soft.seeds):
                run = train_student(syn, scored_on, syn.info, soft, student_seed, dev, teacher.model,
                                    progress=False, keep_model=True)
                model = run["model"].eval()
                on_real, on_clean = recalibrated(model, real_batches), recalibrated(model, clean)
                runs.append({"student_seed": student_seed,
                             "trained": accuracy(model, scored_on, syn.info, dev, dtype=dtype),
                             "real": accuracy(on_real, scored_on, syn.info, dev, dtype=dtype),
                             "distilled": accuracy(on_clean, scored_on, syn.info, dev, dtype=dtype),
                             "stat_shift": stat_shift(model, on_real),
                             "stat_shift_clean": stat_shift(on_clean, on_real)})
            result["sets"][name] = {"variant": label, "synthesis_seed": seed, "runs": runs}
            io.write_json(out, result)
            mean = {k: 100 * np.mean([r[k] for r in runs]) for k in MODES}
            print(f"[bn-recal] {name}: trained {mean['trained']:.2f}, real stats {mean['real']:.2f}, "
                  f"clean distilled stats {mean['distilled']:.2f}, shift "
                  f"{np.mean([r['stat_shift'] for r in runs]):.3f}", flush=True)
    print(table(result), flush=True)
    print(f"[bn-recal] {out}", flush=True)


if __name__ == "__main__":
    main()
