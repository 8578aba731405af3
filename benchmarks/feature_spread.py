"""How spread out each bench set is in the teacher's feature space, against real images of the class.

PTA aligns a class's synthetic cloud with the topology of real images; whether that spreads the
set or tightens it depends on the reference. This measures the outcome on finished sets:

    .venv/bin/python benchmarks/feature_spread.py imagenette32-ipc10 \
        benchmarks/results/epyc-avx512-2026-12-04/imagenette32-ipc10-full-holdout \
        --variants fadrm,reta,"reta+pta.reference_core=10" --seeds 0,1,2

Per class, on Norm(phi) of the un-augmented image at native size (DRC's and PTA's feature space):
`cosine`, the mean cosine over pairs of distinct images (higher = tighter), and `nearest`, the
mean over images of the cosine to their closest other image of the class (near 1 = near
duplicates); both averaged over classes. The real rows are the same statistics over the class's
real training candidates outside the held-out split (expected values for a random ipc-subset:
every pair counts, so `cosine` does not depend on the subset size, `nearest` does and is given
for random ipc-subsets), for every candidate and for the confident core (the 10*ipc lowest-CE
ones, `pta.reference_core=10`). Sets missing under BENCH_DIR are distilled first, exactly as
bench would. Writes BENCH_DIR/../feature-spread-<preset>.json.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

CORE_PER_SLOT = 10


def pair_statistics(z: torch.Tensor) -> tuple[float, float]:
    """(mean cosine over distinct pairs, mean nearest-other cosine) of L2-normalised rows z (n >= 2)."""
    sim = z @ z.T
    n = len(z)
    off = ~torch.eye(n, dtype=torch.bool)
    return float(sim[off].mean()), float(sim.masked_fill(~off, -2.0).max(dim=1).values.mean())


def subset_statistics(z: torch.Tensor, size: int, draws: int, gen: torch.Generator) -> tuple[float, float]:
    """pair_statistics averaged over `draws` random subsets of `size` rows."""
    stats = [pair_statistics(z[torch.randperm(len(z), generator=gen)[:size]]) for _ in range(draws)]
    return sum(s[0] for s in stats) / draws, sum(s[1] for s in stats) / draws


def main() -> None:
    from reta import io
    from reta.bench import add_set_arguments, full_tier_study
    from reta.data.dataset import split_holdout
    from reta.recover.strategy import POOL_SEED
    from reta.retrieval.pool import Pool, most_confident, normalised_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "fadrm,reta")
    parser.add_argument("--draws", type=int, default=50, help="random real subsets per class for `nearest`")
    args = parser.parse_args()

    study = full_tier_study(args.preset)
    ipc = int(study.spec["ipc"])
    train, teacher, dev = study.train, study.teacher, study.dev
    info = train.info
    model = teacher.model.eval()

    def averaged(per_class: list[tuple[float, float]]) -> dict:
        return {"cosine": sum(p[0] for p in per_class) / len(per_class),
                "nearest": sum(p[1] for p in per_class) / len(per_class)}

    fit, _ = split_holdout(train, *teacher.holdout)
    pool = Pool(fit, model, teacher.weights_hash, [info.image_size], 0, POOL_SEED, dev)
    gen = torch.Generator().manual_seed(0)
    real, core = [], []
    for c in range(info.num_classes):
        data = pool.get(c)
        z = F.normalize(data[f"z{info.image_size}"], dim=1)
        real.append((pair_statistics(z)[0], subset_statistics(z, ipc, args.draws, gen)[1]))
        zc = z[most_confident(data["ce"], CORE_PER_SLOT * ipc)]
        core.append((pair_statistics(zc)[0], subset_statistics(zc, ipc, args.draws, gen)[1]))
    rows = {"real (every candidate)": averaged(real), f"real (core: {CORE_PER_SLOT}*ipc lowest CE)": averaged(core)}

    for label in args.variants:
        per_seed = []
        for seed in args.seeds:
            images, _ = study.distilled(args.bench_dir, label, seed)
            x01 = images.load(list(range(len(images)))).float() / 255.0
            z = normalised_features(model, info.standardise(x01.to(dev))).cpu()
            labels = torch.as_tensor(images.labels)
            per_seed.append(averaged([pair_statistics(z[labels == c]) for c in range(info.num_classes)]))
        rows[label] = {k: sum(s[k] for s in per_seed) / len(per_seed) for k in ("cosine", "nearest")} | {
            "per_seed": per_seed}

    print("| set | mean intra-class cosine | mean nearest-neighbour cosine |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['cosine']:.3f} | {r['nearest']:.3f} |")
    out = args.bench_dir.parent / f"feature-spread-{args.preset}.json"
    io.write_json(out, {"preset": args.preset, "bench_dir": str(args.bench_dir), "teacher_key": study.teacher_key,
                        "teacher_sha256": teacher.weights_hash, "ipc": ipc, "rows": rows,
                        "versions": io.versions()})
    print(f"[feature-spread] -> {out}", flush=True)


if __name__ == "__main__":
    main()
