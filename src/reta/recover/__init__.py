"""recover: synthesise a distilled set with one of the registered methods."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from reta import io
from reta.config import RecoverConfig
from reta.data.dataset import ImageSet, split_holdout
from reta.distilled import MANIFEST
from reta.errors import RetaError
from reta.recover.loop import RUN_RECORD, Recover, done_groups, finalise
from reta.recover.methods import METHODS, SELECTION_ONLY, preset
from reta.teacher import Teacher

__all__ = ["METHODS", "distill", "preset"]


def distill(train: ImageSet, teachers: list[Teacher], cfg: RecoverConfig, out_dir: Path, dev: torch.device,
            rank: int = 0, world: int = 1, barrier=None, cache_dir: Path | None = None, progress: bool = True) -> dict | None:
    """Run recover into out_dir (resumable); returns the manifest on rank 0, None elsewhere.

    `train` is the full training split; the teacher's held-out part is removed here so pools,
    RDED candidates and real baselines never touch it.
    """
    out_dir = Path(out_dir)
    if cfg.ipc < 1:
        raise RetaError(f"--ipc {cfg.ipc}: must be at least 1")
    if cfg.method in SELECTION_ONLY and cfg.iterations:
        cfg = dataclasses.replace(cfg, iterations=0)  # selection methods have no budget to spend
    teacher = teachers[0]
    for t in teachers[1:]:
        teacher.info.check_compatible(t.info, f"teacher {teacher.path}", f"teacher {t.path}")
    teacher.info.check_compatible(train.info, f"teacher {teacher.path}", f"dataset {train.source}")
    fraction, seed = teacher.holdout
    fit, _ = split_holdout(train, fraction, seed)
    record = {"config": dataclasses.asdict(cfg), "teachers": [str(t.path) for t in teachers],
              "teacher_sha256": [t.weights_hash for t in teachers], "data_hash": train.content_hash(),
              "data_source": train.source, "holdout": {"fraction": fraction, "seed": seed}}
    if (out_dir / MANIFEST).is_file():
        raise RetaError(f"{out_dir} already holds a finished distilled set; choose another --out")
    if (out_dir / RUN_RECORD).is_file():
        previous = io.read_json(out_dir / RUN_RECORD)
        if {k: previous.get(k) for k in record} != io.to_jsonable(record):
            raise RetaError(f"{out_dir} holds an unfinished run with other settings; rerun the same command to "
                            f"resume it, or choose another --out")
    elif rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(out_dir / RUN_RECORD, {**record, "versions": io.versions()})
    started = time.time()
    run = Recover(fit, teachers, cfg, out_dir, dev, cache_dir=cache_dir, progress=progress)
    # Every rank reads the ledger before the barrier, i.e. before any rank can add to it, so all
    # ranks deal the same pending groups.
    done = done_groups(out_dir, len(run.groups()))
    if barrier:
        barrier()
    run.prepare_shared([g for g in range(len(run.groups())) if g not in done], rank, world)
    if barrier:
        barrier()
    summary = run.run(rank, world, done=done)
    if barrier:
        barrier()
    if rank != 0:
        return None
    return finalise(out_dir, run, [summary], time.time() - started,
                    {"world_size": world, "resumed_groups": summary["resumed"], "holdout": record["holdout"],
                     "data_hash": record["data_hash"], "teachers": record["teachers"]})
