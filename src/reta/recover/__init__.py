"""recover: synthesise a distilled set with one of the registered methods.

Importing this package registers every method (methods.py, drc.py, pta.py, reta.py).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import torch

from reta import io, outdir
from reta.config import RecoverConfig
from reta.data.dataset import ImageSet, split_holdout
from reta.errors import RetaError
from reta.recover.loop import Recover, done_groups, finalise, stage_plan
from reta.recover import drc, methods, pta, reta  # noqa: F401 - each module registers its methods
from reta.recover.strategy import METHODS, preset, result_config
from reta.teacher import Teacher

__all__ = ["METHODS", "distill", "effective", "preset", "result_config"]


def effective(cfg: RecoverConfig) -> RecoverConfig:
    """The config a run actually uses: selection methods have no budget to spend."""
    if METHODS.get(cfg.method).preset.get("iterations") == 0 and cfg.iterations:
        return dataclasses.replace(cfg, iterations=0)
    return cfg


def check_feasible(fit: ImageSet, cfg: RecoverConfig, fix: str = "lower --ipc") -> None:
    """Refuse, before anything is written, an IPC that some class cannot supply real images for."""
    need = cfg.ipc * cfg.rded_factor ** 2 if cfg.init == "rded" else cfg.ipc if cfg.init == "real" else 1
    counts = np.bincount(np.asarray(fit.labels), minlength=fit.info.num_classes)
    short = [c for c in range(fit.info.num_classes) if counts[c] < need]
    if short:
        c = short[0]
        raise RetaError(f"class {c} ({fit.info.classes[c]!r}) has {counts[c]} training images outside the held-out split "
                        f"but --method {cfg.method} at --ipc {cfg.ipc} needs {need} per class"
                        f"{f' ({len(short)} classes fall short)' if len(short) > 1 else ''}; {fix}")


def distill(train: ImageSet, teachers: list[Teacher], cfg: RecoverConfig, out_dir: Path, dev: torch.device,
            rank: int = 0, world: int = 1, barrier=None, cache_dir: Path | None = None, progress: bool = True,
            inputs: Sequence[Path] = (), overwrite: bool = False) -> dict | None:
    """Run recover into out_dir (resumable); returns the manifest on rank 0, None elsewhere.

    `train` is the full training split; the teacher's held-out part is removed here so pools,
    RDED candidates and real baselines never touch it. `inputs`: folders out_dir must not be in
    (the dataset's, the teachers'). Everything is validated before out_dir is claimed.
    """
    out_dir = Path(out_dir)
    cfg = effective(cfg)
    teacher = teachers[0]
    for t in teachers[1:]:
        teacher.info.check_compatible(t.info, f"teacher {teacher.path}", f"teacher {t.path}")
    teacher.info.check_compatible(train.info, f"teacher {teacher.path}", f"dataset {train.source}")
    fraction, seed = teacher.holdout
    fit, _ = split_holdout(train, fraction, seed)
    check_feasible(fit, cfg)
    stage_plan(cfg, train.info.image_size)
    record = {"config": dataclasses.asdict(cfg), "teachers": [str(t.path) for t in teachers],
              "teacher_sha256": [t.weights_hash for t in teachers], "data_hash": train.content_hash(),
              "data_source": train.source, "holdout": {"fraction": fraction, "seed": seed}}
    run = Recover(fit, teachers, cfg, out_dir, dev, cache_dir=cache_dir, progress=progress)
    if rank == 0:
        outdir.claim(out_dir, "distilled", inputs=[*inputs, *(t.path for t in teachers)], overwrite=overwrite,
                     run_record=io.to_jsonable(record))
    if barrier:
        barrier()
    started = time.time()
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
