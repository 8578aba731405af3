"""What the KD student is taught on each distilled set: the teacher's accuracy, true-class
probability and entropy on the clean images and on the student's augmented views.

    .venv/bin/python benchmarks/teacher_views.py cifar10-ipc10 \
        benchmarks/results/epyc-avx512-2026-12-04/cifar10-ipc10-full-holdout --variants random,fadrm,pta,reta \
        --seeds 0,1,2

The views are the full tier's (per-image RandomResizedCrop at scale 0.08-1 and flip, batches of
20, no CutMix) for 5 epochs of a fixed seed, so every set is viewed the same way. Each set is the
one bench keeps for that variant and synthesis seed under BENCH_DIR (distilled first if missing,
exactly as bench would); the result goes to BENCH_DIR/../teacher-views-<preset>.json (means over
the sets of each variant).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

EPOCHS, SEED = 5, 7


def teacher_statistics(teacher: torch.nn.Module, syn, batch_size: int, crop_scale_min: float) -> dict:
    from reta.labels.store import draw_epoch, replay_views

    x, y = syn.load(np.arange(len(syn))), torch.from_numpy(syn.labels)

    def summary(probs: torch.Tensor, labels: torch.Tensor) -> dict:
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
        return {"accuracy": float((probs.argmax(1) == labels).float().mean()),
                "true_class_probability": float(probs[torch.arange(len(labels)), labels].mean()),
                "entropy": float(entropy.mean())}

    probs, labels = [], []
    for epoch in range(EPOCHS):
        for batch in draw_epoch(len(syn), batch_size, syn.info.image_size, crop_scale_min, 1.0, 0.0, SEED, epoch):
            views = replay_views(x[batch.indices], batch, syn.info, syn.info.image_size)
            probs.append(F.softmax(teacher(views).float(), 1))
            labels.append(y[batch.indices])
    return {"clean": summary(F.softmax(teacher(syn.info.normalise(x)).float(), 1), y),
            "views": summary(torch.cat(probs), torch.cat(labels))}


def main() -> None:
    from reta import io
    from reta.bench import add_set_arguments, full_tier_study, protocol

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "random,fadrm,pta,reta")
    args = parser.parse_args()

    study = full_tier_study(args.preset)
    soft = protocol(study.settings, study.settings["protocol"]["student"], "online")
    teacher = study.teacher
    result = {"preset": args.preset, "teacher_sha256": teacher.weights_hash, "view_epochs": EPOCHS, "view_seed": SEED,
              "batch_size": soft.batch_size, "crop_scale_min": soft.crop_scale_min, "variants": {}}
    with torch.no_grad():
        for variant in args.variants:
            sets, per_set = [], []
            for seed in args.seeds:
                sets.append(study.set_dir(args.bench_dir, variant, seed))
                syn, _ = study.distilled(args.bench_dir, variant, seed)
                per_set.append(teacher_statistics(teacher.model.eval(), syn, soft.batch_size, soft.crop_scale_min))
            mean = {where: {k: float(np.mean([p[where][k] for p in per_set])) for k in per_set[0][where]}
                    for where in ("clean", "views")}
            result["variants"][variant] = {"sets": [str(s) for s in sets], **mean}
            print(f"[teacher-views] {variant} ({len(sets)} sets): views accuracy {mean['views']['accuracy']:.3f}, "
                  f"true-class p {mean['views']['true_class_probability']:.3f}, "
                  f"entropy {mean['views']['entropy']:.3f}", flush=True)
    out = args.bench_dir.parent / f"teacher-views-{args.preset}.json"
    io.write_json(out, result)
    print(f"[teacher-views] {out}", flush=True)


if __name__ == "__main__":
    main()
