"""Which ConvNet feature space DRC and PTA should read: the flattened final map or its global
average pool? The method reference (§5.2) recommends the pooled penultimate layer, which is what a
ResNet's head reads; a ConvNet's head reads the flattened map. This scores both as a neighbourhood
structure on real images, the property retrieval (nearest real image) and the mutual k-NN graph
of PTA rely on:

    .venv/bin/python benchmarks/feature_space.py cifar10-ipc10 imagenette32-ipc10

For each held-out training image (the bench teacher's held-out 10 %), its nearest neighbours among
the training images outside the held-out part, by cosine of L2-normalised features: `1nn` and
`10nn` are the class accuracy of the nearest one and of the majority of the 10 nearest;
`intra`/`inter` the mean cosine between held-out images of the same / different classes.
Writes benchmarks/results/feature-space.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BATCH = 500


@torch.no_grad()
def feature_spaces(body: torch.nn.Module, images) -> dict[str, torch.Tensor]:
    """{'flattened': (N, C*H*W), 'pooled': (N, C)} L2-normalised features of an ImageSet."""
    out: dict[str, list[torch.Tensor]] = {"flattened": [], "pooled": []}
    for start in range(0, len(images), BATCH):
        x = images.info.normalise(images.load(np.arange(start, min(start + BATCH, len(images)))))
        fmap = body(x).float()
        out["flattened"].append(F.normalize(fmap.flatten(1), dim=1))
        out["pooled"].append(F.normalize(fmap.mean((2, 3)), dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def neighbourhood(queries: torch.Tensor, q_labels: torch.Tensor, pool: torch.Tensor, p_labels: torch.Tensor) -> dict:
    sim = queries @ pool.T
    nearest = p_labels[sim.topk(10, dim=1).indices]
    same = q_labels[:, None] == q_labels[None]
    among = queries @ queries.T
    return {"1nn": float((nearest[:, 0] == q_labels).float().mean()),
            "10nn": float((nearest.mode(dim=1).values == q_labels).float().mean()),
            "intra": float(among[same & ~torch.eye(len(queries), dtype=torch.bool)].mean()),
            "inter": float(among[~same].mean())}


def main() -> None:
    from reta import io
    from reta.bench import full_tier_study
    from reta.data.dataset import split_holdout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/feature-space.json"))
    args = parser.parse_args()
    result = {}
    for name in args.presets:
        study = full_tier_study(name)
        fit, held = split_holdout(study.train, *study.teacher.holdout)
        body = getattr(study.teacher.model.eval(), "body", None)
        if body is None:
            raise SystemExit(f"{name}: its teacher is not a ConvNet (no flattened final map to compare)")
        pool, queries = feature_spaces(body, fit), feature_spaces(body, held)
        result[name] = {"teacher_sha256": study.teacher.weights_hash, "pool_images": len(fit), "queries": len(held)}
        for space in ("flattened", "pooled"):
            scores = neighbourhood(queries[space], torch.from_numpy(held.labels), pool[space],
                                   torch.from_numpy(fit.labels))
            result[name][space] = {"dim": pool[space].shape[1], **scores}
            print(f"| {name} | {space} | {pool[space].shape[1]} | " + " | ".join(f"{v:.3f}" for v in scores.values())
                  + " |", flush=True)
    io.write_json(args.out, result | {"versions": io.versions()})


if __name__ == "__main__":
    main()
