"""relabel: FKD-style stored soft labels, replayed without patching PyTorch (method-reference §2.7).

For every epoch the image set is visited in a seeded order in batches of `batch_size`; each image
gets a RandomResizedCrop box and a flip flag, each batch a CutMix draw, and the averaged teacher
logits of the resulting views are stored in fp16 beside every parameter needed to rebuild those
views. Student training replays a batch from the store alone (`LabelStore.epoch` + `replay_views`):
there is no sampler seed to keep in sync with the relabel run and no patched `_MapDatasetFetcher`
(field-codebases.md §1), and every epoch's draws come from generators seeded by (seed, epoch), so
any shard can be regenerated alone.

Layout of a store folder:
  labels-00000.safetensors, ...   `shard_epochs` epochs each; every tensor has a leading epoch axis
      order     int64   (E, N)        image index at each position of the epoch
      boxes     float32 (E, N, 4)     RRC box (top, left, height, width) as fractions, by position
      flips     uint8   (E, N)        1 = horizontally flipped, by position
      mix_perm  int64   (E, nb, bs)   CutMix partner as a position inside the batch; -1 pads a short last batch
      mix_box   int32   (E, nb, 4)    CutMix box (y0, y1, x0, x1) in view pixels
      mix_lam   float64 (E, nb)       own-image area fraction of the mixed view
      mixed     uint8   (E, nb)       1 = the batch is CutMixed (otherwise mix_* are padding)
      logits    float16 (E, N, K)     mean teacher logits of the view, by position
  manifest.json                   written last: a folder without it is incomplete.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from reta import io, outdir
from reta.config import RelabelConfig
from reta.data.augment import apply_cutmix, apply_flips, crop_resize, random_flips, rrc_boxes, sample_cutmix
from reta.data.dataset import DatasetInfo, ImageSet
from reta.errors import RetaError
from reta.runtime import derive_seed

MANIFEST = "manifest.json"
FORMAT = "reta-soft-labels/1"
TEACHER_MODES = ("eval", "train")
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Bytes per image-epoch besides the logits: order (8) + box (16) + flip (1).
AUX_BYTES_PER_IMAGE = 25


@dataclass(frozen=True)
class CutMix:
    """One batch's CutMix: view i gets the `box` region of view perm[i]."""

    perm: torch.Tensor  # int64 (b,)
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) in view pixels
    lam: float  # own-image area fraction


@dataclass
class Batch:
    """Everything needed to rebuild one batch of views, plus its soft labels when stored."""

    indices: np.ndarray  # int64 (b,) image indices, in batch order
    boxes: torch.Tensor  # float32 (b, 4) RRC boxes as fractions
    flips: torch.Tensor  # bool (b,)
    cutmix: CutMix | None
    logits: torch.Tensor | None = None  # float16 (b, K); None for freshly drawn batches


def shard_name(index: int) -> str:
    return f"labels-{index:05d}.safetensors"


def draw_epoch(num_images: int, batch_size: int, view_size: int, crop_scale_min: float, cutmix_beta: float,
               cutmix_prob: float, seed: int, epoch: int) -> Iterator[Batch]:
    """The batches of one epoch: seeded order, per-image RRC box and flip, per-batch CutMix.

    Two generators seeded by (seed, "order", epoch) and (seed, "augment", epoch), so an epoch's
    draws depend on nothing but these arguments. The last batch may be shorter than batch_size.
    """
    order_gen = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    augment_gen = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))
    order = torch.randperm(num_images, generator=order_gen).numpy()
    for start in range(0, num_images, batch_size):
        indices = order[start:start + batch_size]
        n = len(indices)
        boxes = rrc_boxes(n, crop_scale_min, augment_gen)
        flips = random_flips(n, augment_gen)
        mix = sample_cutmix(n, view_size, view_size, cutmix_beta, cutmix_prob, augment_gen)
        yield Batch(indices, boxes, flips, None if mix is None else CutMix(*mix))


def replay_views(images_uint8: torch.Tensor, batch: Batch, info: DatasetInfo, out_size: int) -> torch.Tensor:
    """uint8 (b,3,S,S) images of `batch.indices` -> normalised float (b,3,out_size,out_size) views.

    Crop after normalising: bilinear resampling commutes with the per-channel affine map, and
    cropping in float avoids rounding the resampled pixels back to uint8. out_size must be the
    size the CutMix box was drawn for (the store's `view_size`).
    """
    x = crop_resize(info.normalise(images_uint8), batch.boxes, out_size)
    x = apply_flips(x, batch.flips)
    if batch.cutmix is not None:
        x = apply_cutmix(x, batch.cutmix.perm, batch.cutmix.box)
    return x


@contextlib.contextmanager
def labelling_teachers(teachers: Sequence[nn.Module], mode: str) -> Iterator[list[nn.Module]]:
    """Yield the modules that label views, leaving the callers' teachers as they were.

    eval: the teachers themselves in eval mode (SRe2L); their train/eval flags are restored after.
    train: copies whose BatchNorm layers run in train mode (FADRM's batch-specific soft labels),
    so each label depends on its batch-mates. Copies, because train-mode BN updates running
    statistics, and those must never reach a teacher that is saved or reused.
    """
    if mode not in TEACHER_MODES:
        raise RetaError(f"relabel teacher_mode={mode!r}: use eval (SRe2L) or train (FADRM batch-specific labels)")
    if mode == "train":
        copies = [copy.deepcopy(t).eval() for t in teachers]
        for model in copies:
            for m in model.modules():
                if isinstance(m, BATCHNORM):
                    m.train()
        yield copies
        return
    flags = [[m.training for m in t.modules()] for t in teachers]
    for t in teachers:
        t.eval()
    try:
        yield list(teachers)
    finally:
        for t, saved in zip(teachers, flags):
            for m, was_training in zip(t.modules(), saved):
                m.training = was_training


@torch.no_grad()
def mean_logits(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """float32 (b,K): the teachers' logits on x averaged with equal weights (FADRM+)."""
    return torch.stack([t(x).float() for t in teachers]).mean(0)


def image_set_hash(images: ImageSet, chunk: int = 1024) -> str:
    """sha256 over the uint8 pixels in index order: the store is keyed by position, so order counts."""
    h = hashlib.sha256()
    for start in range(0, len(images), chunk):
        h.update(images.load(np.arange(start, min(start + chunk, len(images)))).contiguous().numpy().tobytes())
    return h.hexdigest()


def module_hash(model: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def estimate_bytes(num_images: int, num_classes: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """(logit bytes N*K*2*E, total bytes including crops/flips/CutMix) of a store."""
    nb = math.ceil(num_images / batch_size)
    logits = num_images * num_classes * 2 * epochs
    aux = epochs * (num_images * AUX_BYTES_PER_IMAGE + nb * (batch_size * 8 + 16 + 8 + 1))
    return logits, logits + aux


def shard_ranges(epochs: int, shard_epochs: int) -> list[tuple[int, int]]:
    """(first epoch, number of epochs) of each shard."""
    return [(first, min(shard_epochs, epochs - first)) for first in range(0, epochs, shard_epochs)]


def read_shard_meta(path: Path) -> dict | None:
    """A shard's safetensors metadata, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (OSError, SafetensorError):
        return None


def shard_metadata(fingerprint: str, first: int, count: int) -> dict[str, str]:
    return {"format": FORMAT, "fingerprint": fingerprint, "first_epoch": str(first), "epochs": str(count)}


def label_epochs(images: ImageSet, labellers: Sequence[nn.Module], info: DatasetInfo, cfg: RelabelConfig,
                 first: int, count: int, dev: torch.device, bar) -> dict[str, torch.Tensor]:
    """The tensors of one shard (epochs first .. first+count-1); layout in the module docstring."""
    n, k, bs = len(images), info.num_classes, cfg.batch_size
    nb = math.ceil(n / bs)
    out = {"order": torch.empty(count, n, dtype=torch.int64), "boxes": torch.empty(count, n, 4),
           "flips": torch.empty(count, n, dtype=torch.uint8),
           "mix_perm": torch.full((count, nb, bs), -1, dtype=torch.int64),
           "mix_box": torch.zeros(count, nb, 4, dtype=torch.int32),
           "mix_lam": torch.ones(count, nb, dtype=torch.float64), "mixed": torch.zeros(count, nb, dtype=torch.uint8),
           "logits": torch.empty(count, n, k, dtype=torch.float16)}
    for i in range(count):
        batches = draw_epoch(n, bs, info.image_size, cfg.crop_scale_min, cfg.cutmix_beta, cfg.cutmix_prob,
                             cfg.seed, first + i)
        for b, batch in enumerate(batches):
            pos = slice(b * bs, b * bs + len(batch.indices))
            x = replay_views(images.load(batch.indices).to(dev), batch, info, info.image_size)
            logits = mean_logits(labellers, x).cpu().half()
            if not torch.isfinite(logits).all():
                raise RetaError(f"relabel: teacher logits are not finite in fp16 at epoch {first + i} "
                                f"(|logit| > 65504 or NaN); check the teacher on real images with `reta squeeze`")
            out["order"][i, pos] = torch.from_numpy(batch.indices)
            out["boxes"][i, pos] = batch.boxes
            out["flips"][i, pos] = batch.flips.to(torch.uint8)
            out["logits"][i, pos] = logits
            if batch.cutmix is not None:
                out["mix_perm"][i, b, :len(batch.indices)] = batch.cutmix.perm
                out["mix_box"][i, b] = torch.tensor(batch.cutmix.box, dtype=torch.int32)
                out["mix_lam"][i, b] = batch.cutmix.lam
                out["mixed"][i, b] = 1
            bar.update(1)
    return out


def check_relabel_config(cfg: RelabelConfig, images: ImageSet, teachers: Sequence[nn.Module],
                         teacher_ids: Sequence[dict] | None) -> None:
    """Raise RetaError for settings that cannot produce a store, before anything is written."""
    if cfg.teacher_mode not in TEACHER_MODES:
        raise RetaError(f"relabel teacher_mode={cfg.teacher_mode!r}: use eval (SRe2L) or train (FADRM batch-specific labels)")
    for key in ("epochs", "batch_size", "shard_epochs"):
        if getattr(cfg, key) < 1:
            raise RetaError(f"relabel {key}={getattr(cfg, key)}: must be at least 1")
    if not 0 < cfg.crop_scale_min <= 1:
        raise RetaError(f"relabel crop_scale_min={cfg.crop_scale_min}: must lie in (0, 1]")
    if not teachers:
        raise RetaError("relabel: no teacher given; pass at least one --teacher DIR")
    if len(images) == 0:
        raise RetaError(f"relabel: image set {images.source} is empty")
    if teacher_ids is not None and len(teacher_ids) != len(teachers):
        raise RetaError(f"relabel: {len(teacher_ids)} teacher ids for {len(teachers)} teachers; give one per teacher")


def relabel(images: ImageSet, teachers: list[nn.Module], info: DatasetInfo, cfg: RelabelConfig, out_dir: Path,
            dev: torch.device, progress: bool = True, teacher_ids: Sequence[dict] | None = None,
            rank: int = 0, world: int = 1, barrier=None, inputs: Sequence[Path] = (), overwrite: bool = False) -> Path:
    """Write a soft-label store for `images` (uint8 (N,3,S,S), labels unused) to `out_dir`; returns out_dir.

    `teachers` must already sit on `dev`. `teacher_ids` (optional, one dict per teacher, e.g.
    {"path": ..., "arch": ...}) is recorded in the manifest beside each teacher's state-dict hash.
    `out_dir` is claimed (reta.outdir, kind "labels") after every check and never inside one of
    `inputs`; shards left by an interrupted run with the same identity (images, teachers, seed,
    batch size, augmentation) are kept, not recomputed, and one with another identity is refused
    unless `overwrite`. Under torchrun shard i is computed by rank i % world;
    every epoch's draws depend only on (seed, epoch), so the files do not depend on the world size.
    Rank 0 writes the manifest after all ranks are done.
    """
    check_relabel_config(cfg, images, teachers, teacher_ids)
    info.check_compatible(images.info, "dataset", f"image set {images.source}")
    out_dir = Path(out_dir)
    t0 = time.time()
    n, bs = len(images), cfg.batch_size
    teacher_json = [{"sha256": module_hash(t), **(dict(teacher_ids[i]) if teacher_ids else {})}
                    for i, t in enumerate(teachers)]
    identity = {"format": FORMAT, "image_set_hash": image_set_hash(images), "dataset": info.to_json(),
                "teachers": [t["sha256"] for t in teacher_json], "teacher_mode": cfg.teacher_mode,
                "batch_size": bs, "seed": cfg.seed, "crop_scale_min": cfg.crop_scale_min,
                "cutmix_beta": cfg.cutmix_beta, "cutmix_prob": cfg.cutmix_prob, "view_size": info.image_size}
    fingerprint = io.sha256_json(identity)
    logit_bytes, total_bytes = estimate_bytes(n, info.num_classes, bs, cfg.epochs)
    existing = next(p for p in (out_dir.absolute(), *out_dir.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if total_bytes > free:
        raise RetaError(f"relabel: the store needs about {total_bytes / 2**30:.2f} GiB but {out_dir} has "
                        f"{free / 2**30:.2f} GiB free; lower --set epochs or write to another --out")
    if rank == 0:
        outdir.claim(out_dir, "labels", inputs=inputs, overwrite=overwrite, run_record=identity)
        print(f"relabel: {n} images x {info.num_classes} classes x {cfg.epochs} epochs x 2 B = "
              f"{logit_bytes / 2**20:.1f} MiB of fp16 logits ({total_bytes / 2**20:.1f} MiB with crop/flip/CutMix "
              f"parameters) in {math.ceil(cfg.epochs / cfg.shard_epochs)} shard(s) under {out_dir}", file=sys.stderr)
    if barrier:
        barrier()
    shards = []
    nb = math.ceil(n / bs)
    ranges = shard_ranges(cfg.epochs, cfg.shard_epochs)
    mine = [(i, r) for i, r in enumerate(ranges) if i % world == rank]
    with tqdm(total=sum(c for _, (_, c) in mine) * nb, desc="relabel", unit="batch", disable=not progress) as bar, \
            labelling_teachers(teachers, cfg.teacher_mode) as labellers:
        for index, (first, count) in mine:
            path = out_dir / shard_name(index)
            meta = shard_metadata(fingerprint, first, count)
            if read_shard_meta(path) == meta:
                bar.update(count * nb)
            else:
                tensors = label_epochs(images, labellers, info, cfg, first, count, dev, bar)
                with io.atomic_path(path) as tmp:
                    save_file(tensors, str(tmp), metadata=meta)
    if barrier:
        barrier()
    if rank != 0:
        return out_dir
    for index, (first, count) in enumerate(ranges):
        path = out_dir / shard_name(index)
        if read_shard_meta(path) != shard_metadata(fingerprint, first, count):
            raise RetaError(f"relabel: shard {path} is missing or stale after all ranks finished; rerun the command")
        shards.append({"file": path.name, "first_epoch": first, "epochs": count, "bytes": path.stat().st_size})
    manifest = {**identity, "fingerprint": fingerprint, "epochs": cfg.epochs, "shard_epochs": cfg.shard_epochs,
                "num_images": n, "num_batches": nb, "num_classes": info.num_classes, "logits_dtype": "float16",
                "image_set_source": images.source, "teachers": teacher_json, "num_shards": len(shards),
                "shards": shards, "bytes": sum(s["bytes"] for s in shards), "config": dataclasses.asdict(cfg),
                "seconds": time.time() - t0, "versions": io.versions()}
    io.write_json(out_dir / MANIFEST, manifest)
    return out_dir


class LabelStore:
    """Read side of a relabel folder; holds only the manifest, and one epoch while iterating it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise RetaError(f"{self.path}: no {MANIFEST}: not a label store, or its relabel run did not finish; "
                            f"rerun `reta relabel` with the same --out to finish it")
        self.manifest = io.read_json(self.path / MANIFEST)
        if self.manifest.get("format") != FORMAT:
            raise RetaError(f"{self.path / MANIFEST}: format {self.manifest.get('format')!r}, expected {FORMAT!r}; "
                            f"regenerate the store with this version's `reta relabel`")
        self.info = DatasetInfo.from_json(self.manifest["dataset"])
        for shard in self.manifest["shards"]:
            self._validate_shard(shard)

    def _validate_shard(self, shard: dict) -> None:
        path = self.path / shard["file"]
        meta = read_shard_meta(path)
        fix = "rerun `reta relabel` with the same settings and --out to regenerate it"
        if meta is None:
            raise RetaError(f"{path}: shard listed in {MANIFEST} is missing or unreadable; {fix}")
        if meta != shard_metadata(self.manifest["fingerprint"], shard["first_epoch"], shard["epochs"]):
            raise RetaError(f"{path}: shard belongs to another relabel run than {MANIFEST}; {fix}")
        if path.stat().st_size != shard["bytes"]:
            raise RetaError(f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {shard['bytes']}; {fix}")

    # The replay settings the store was written with, read from its manifest.
    epochs = property(lambda self: int(self.manifest["epochs"]))
    batch_size = property(lambda self: int(self.manifest["batch_size"]))
    seed = property(lambda self: int(self.manifest["seed"]))
    view_size = property(lambda self: int(self.manifest["view_size"]))

    def check(self, images: ImageSet, batch_size: int, epochs: int, seed: int | None = None) -> None:
        """Raise RetaError unless training `images` for `epochs` epochs at `batch_size` can replay this store.

        `seed`, when given, must equal the relabel seed (for callers that pin one, e.g. a preset).
        """
        images.info.check_compatible(self.info, "dataset", f"label-store {self.path}")
        if batch_size != self.batch_size:
            raise RetaError(f"{self.path}: soft labels were stored for batch_size={self.batch_size}, training asks "
                            f"for {batch_size}; evaluate with --set batch_size={self.batch_size} or relabel with "
                            f"batch_size={batch_size}")
        if epochs > self.epochs:
            raise RetaError(f"{self.path}: stores {self.epochs} epochs of soft labels, training asks for {epochs}; "
                            f"train at most {self.epochs} epochs or relabel with --set epochs={epochs}")
        if seed is not None and seed != self.seed:
            raise RetaError(f"{self.path}: relabelled with seed={self.seed}, expected seed={seed}; relabel with "
                            f"--set seed={seed} or use the store made with it")
        if len(images) != self.manifest["num_images"]:
            raise RetaError(f"{self.path}: holds labels for {self.manifest['num_images']} images, {images.source} "
                            f"has {len(images)}; relabel this image set with `reta relabel`")
        found = image_set_hash(images)
        if found != self.manifest["image_set_hash"]:
            raise RetaError(f"{self.path}: soft labels belong to another image set (sha256 "
                            f"{self.manifest['image_set_hash'][:12]}..., {images.source} is {found[:12]}...); "
                            f"relabel this image set with `reta relabel`")

    def _load_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        """One epoch's tensors (leading axis dropped), read by slicing the shard, not loading it whole."""
        if not 0 <= epoch < self.epochs:
            raise RetaError(f"{self.path}: epoch {epoch} requested, the store holds epochs 0..{self.epochs - 1}")
        shard = self.manifest["shards"][epoch // int(self.manifest["shard_epochs"])]
        local = epoch - shard["first_epoch"]
        with safe_open(str(self.path / shard["file"]), "pt") as f:
            return {name: f.get_slice(name)[local:local + 1][0] for name in f.keys()}

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The stored batches of `epoch` in training order, each with its fp16 logits (b, K)."""
        part = self._load_epoch(epoch)
        n, bs = self.manifest["num_images"], self.batch_size
        for b, start in enumerate(range(0, n, bs)):
            stop = min(start + bs, n)
            cutmix = None
            if part["mixed"][b]:
                cutmix = CutMix(part["mix_perm"][b, :stop - start].clone(),
                                tuple(int(v) for v in part["mix_box"][b]), float(part["mix_lam"][b]))
            yield Batch(part["order"][start:stop].numpy(), part["boxes"][start:stop],
                        part["flips"][start:stop].bool(), cutmix, part["logits"][start:stop])
