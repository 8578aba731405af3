"""evaluate: train a student on an image set under a named protocol; the final-epoch top-1 is the headline.

One loop serves the three label modes of `EvalProtocol.labels` (method-reference §2.8, §6.1, §7.3):
  online  the teacher labels every augmented batch (RDED; DD-Ranking's soft-label mode 'M')
  stored  views and teacher logits are replayed from a `reta relabel` store (SRe2L/FADRM FKD)
  hard    the same augmentation, CutMix-mixed cross-entropy on the class labels (DD-Ranking's HLR)
Every mode sees per-image RandomResizedCrop + flip and per-batch CutMix, drawn by the same code
that the relabel store uses. The headline is the test accuracy after the last epoch; the best
accuracy over the periodic evaluations (the field's reported number, i.e. model selection on the
test set) is returned under its own keys, for comparison with papers only.

Under torchrun (`ctx` with world > 1) each student is trained with DistributedDataParallel: the
global batch stays `protocol.batch_size`; every rank draws the whole global batch (order, crops,
flips, CutMix) from the same seeds, builds its views, and trains on its contiguous slice; each
slice's loss is weighted so that the all-reduced gradient is the gradient of the global batch's
mean loss. Test accuracy is counted on rank shards and summed. BatchNorm students use
SyncBatchNorm on CUDA (batch statistics of the global batch); on CPU (gloo) their statistics are
per rank.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from reta.config import EvalProtocol
from reta.data.dataset import DatasetInfo, ImageSet
from reta.errors import RetaError
from reta.labels.store import Batch, LabelStore, draw_epoch, labelling_teachers, replay_views
from reta.losses.kd import hard_cutmix_loss, kd_loss
from reta.models import create_model
from reta.runtime import autocast, autocast_dtype, derive_seed, peak_memory_mb
from reta.schedule import cosine_lr

LABEL_MODES = ("online", "stored", "hard")
STD_KIND = "sample std (ddof=1) over seeds; 0.0 for a single seed"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weights with >= 2 dims, none on biases and norm affine parameters."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def eval_period(protocol: EvalProtocol) -> int:
    """Epochs between test evaluations for the best-epoch curve (the last epoch is always evaluated)."""
    return protocol.eval_every if protocol.eval_every > 0 else max(1, protocol.epochs // 10)


def check_setup(train_set: ImageSet, test: ImageSet, info: DatasetInfo, protocol: EvalProtocol,
                teacher: nn.Module | None, label_store: LabelStore | None) -> None:
    """Raise RetaError for a protocol that cannot run on these inputs."""
    if protocol.labels not in LABEL_MODES:
        raise RetaError(f"protocol labels={protocol.labels!r}: use online, stored or hard")
    if protocol.epochs < 1 or protocol.batch_size < 1:
        raise RetaError(f"protocol epochs={protocol.epochs}, batch_size={protocol.batch_size}: both must be at least 1")
    if len(train_set) == 0:
        raise RetaError(f"training set {train_set.source} is empty")
    info.check_compatible(train_set.info, "dataset", f"training set {train_set.source}")
    info.check_compatible(test.info, "dataset", f"test set {test.source}")
    if protocol.labels == "online" and teacher is None:
        raise RetaError("protocol labels=online needs a teacher; pass --teacher DIR, or use labels=stored or hard")
    if protocol.labels == "stored":
        if label_store is None:
            raise RetaError("protocol labels=stored needs a label store; pass the folder written by `reta relabel`, "
                            "or use labels=online")
        label_store.check(train_set, protocol.batch_size, protocol.epochs)


def epoch_batches(train_set: ImageSet, info: DatasetInfo, protocol: EvalProtocol, seed: int, epoch: int,
                  label_store: LabelStore | None) -> Iterator[Batch]:
    """This epoch's batches: replayed from the store, or drawn from the student's own seed."""
    if protocol.labels == "stored":
        return label_store.epoch(epoch)
    return draw_epoch(len(train_set), protocol.batch_size, info.image_size, protocol.crop_scale_min,
                      protocol.cutmix_beta, protocol.cutmix_prob, derive_seed(seed, "student-data"), epoch)


def batch_loss(model: nn.Module, x: torch.Tensor, batch: Batch, labels: torch.Tensor, teacher: nn.Module | None,
               protocol: EvalProtocol, dtype: torch.dtype | None, dev: torch.device,
               rows: slice | None = None) -> torch.Tensor:
    """Scalar loss of the student on views x (b,3,S,S); labels int64 (b,) are used in hard mode only.

    rows: train on these rows of the (global) batch only (a DDP rank's slice; default all); the
    result is the slice's mean loss times len(slice)/len(batch), i.e. its share of the global mean.
    """
    n = len(x)
    rows = slice(0, n) if rows is None else rows
    mine = rows.stop - rows.start
    xs = x[rows]
    with autocast(dtype, dev):
        logits = model(xs)  # an empty slice still runs, so this rank joins the gradient all-reduce
        if protocol.labels == "online" and mine:
            with torch.no_grad():
                target = teacher(xs)
    if not mine:
        return logits.float().sum() * 0.0
    if protocol.labels == "hard":
        cutmix = batch.cutmix
        # The CutMix partner may sit in another rank's slice: its label comes from the global batch.
        partner = None if cutmix is None else labels[cutmix.perm.to(labels.device)][rows]
        loss = hard_cutmix_loss(logits, labels[rows], partner, 1.0 if cutmix is None else cutmix.lam)
    else:
        if protocol.labels == "stored":
            target = batch.logits[rows].to(dev)
        loss = kd_loss(logits, target, protocol.temperature, protocol.t_squared)
    return loss * (mine / n)


def rank_rows(n: int, rank: int, world: int) -> slice:
    """Contiguous slice of a batch of n for `rank`; the first n % world ranks get one more (rank 0 never empty)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, info: DatasetInfo, dev: torch.device,
             batch_size: int = 500, dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (fraction) of `model` on `data`, normalised with `info`."""
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels in data.batches(batch_size):
        x = info.normalise(images.to(dev))
        with autocast(dtype, dev):
            pred = model(x).argmax(1)
        correct += int((pred.cpu() == labels).sum())
    model.train(was_training)
    return correct / max(1, len(data))


@torch.no_grad()
def sharded_accuracy(model: nn.Module, data: ImageSet, info: DatasetInfo, dev: torch.device, dtype, rank: int,
                     world: int) -> float:
    """Top-1 over `data`, each rank counting every world-th image; counts summed over ranks."""
    part = data.subset(np.arange(rank, len(data), world))
    correct = round(accuracy(model, part, info, dev, dtype=dtype) * len(part)) if len(part) else 0
    counts = torch.tensor([correct, len(part)], dtype=torch.float64, device=dev)
    dist.all_reduce(counts)
    return float(counts[0]) / max(1.0, float(counts[1]))


def init_student(protocol: EvalProtocol, info: DatasetInfo, seed: int, dev: torch.device) -> nn.Module:
    """The untrained student, its initialisation drawn from `seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "student-init"))
        model = create_model(protocol.student, info.num_classes, info.image_size)
    return model.to(dev)


def train_student(train_set: ImageSet, test: ImageSet, info: DatasetInfo, protocol: EvalProtocol, seed: int,
                  dev: torch.device, teacher: nn.Module | None = None, label_store: LabelStore | None = None,
                  progress: bool = True, ctx=None, keep_model: bool = False) -> dict:
    """Train `protocol.student` on `train_set`, test on `test`; accuracies are fractions.

    Returns {"top1_final" (after the last epoch: the headline), "top1_best" and "best_epoch" (best
    periodic evaluation, selected on the scored split: secondary), "curve" [(epoch, top1)], "seed",
    "seconds", "peak_memory_mb"}. Epochs in the curve count from 1. In stored mode the batch
    order and views come from the store, so `seed` only sets the initialisation.
    `ctx`: a `reta.dist.DistContext`; with world > 1 the student trains with DDP (module docstring).
    `keep_model`: also return the trained student under "model" (for diagnostics on the network itself).
    """
    check_setup(train_set, test, info, protocol, teacher, label_store)
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    dtype = autocast_dtype(protocol.precision, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()
    model = init_student(protocol, info, seed, dev)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if dev.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(param_groups(model, protocol.weight_decay), lr=protocol.lr)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype is torch.float16 and dev.type == "cuda")
    period, curve = eval_period(protocol), []
    # The bar closes before an error propagates, so it does not redraw after the error line.
    with tqdm(range(protocol.epochs), desc=f"{protocol.student} seed {seed}", unit="epoch",
              disable=not progress) as bar, labelling_teachers([teacher] if teacher is not None else [], "eval"):
        for epoch in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(protocol.lr, epoch, protocol.epochs, protocol.eta)
            model.train()
            total, count = torch.zeros((), device=dev), 0
            for batch in epoch_batches(train_set, info, protocol, seed, epoch, label_store):
                images = train_set.load(batch.indices).to(dev)
                labels = torch.from_numpy(train_set.labels[batch.indices]).to(dev)
                x = replay_views(images, batch, info, info.image_size)
                rows = rank_rows(len(x), rank, world) if world > 1 else None
                loss = batch_loss(net, x, batch, labels, teacher, protocol, dtype, dev, rows=rows)
                opt.zero_grad(set_to_none=True)
                # DDP averages gradients over ranks; each rank's loss is its share of the global
                # mean, so scaling by world makes the average the global batch's gradient.
                scaler.scale(loss * world if world > 1 else loss).backward()
                scaler.step(opt)
                scaler.update()
                total += loss.detach()
                count += 1
            # One host sync per epoch rather than per step; under DDP every rank sees the same
            # (global) mean, so all raise together on a non-finite loss.
            if world > 1:
                dist.all_reduce(total)
            mean_loss = float(total) / count
            if not np.isfinite(mean_loss):
                raise RetaError(f"evaluate: student loss became {mean_loss} in epoch {epoch + 1} of {protocol.epochs} "
                                f"(seed {seed}); lower --set lr (now {protocol.lr})")
            done = epoch + 1
            if done % period == 0 or done == protocol.epochs:
                curve.append((done, accuracy(model, test, info, dev, dtype=dtype) if world == 1
                               else sharded_accuracy(model, test, info, dev, dtype, rank, world)))
                bar.set_postfix(loss=f"{mean_loss:.3f}", top1=f"{curve[-1][1]:.3f}")
    best_epoch, best = max(curve, key=lambda point: (point[1], -point[0]))  # earliest of equal bests
    result = {"top1_final": curve[-1][1], "top1_best": best, "best_epoch": best_epoch, "curve": curve, "seed": seed,
              "seconds": time.time() - t0, "peak_memory_mb": peak_memory_mb(dev)}
    return {**result, "model": model} if keep_model else result


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1); the std is 0.0 for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)


def evaluate(train_set: ImageSet, test: ImageSet, info: DatasetInfo, protocol: EvalProtocol, dev: torch.device,
             teacher: nn.Module | None = None, label_store: LabelStore | None = None, *,
             seeds: int | list[int] | None = None, method: str, ipc: int, progress: bool = True, ctx=None) -> dict:
    """Train one student per seed and summarise; accuracies are fractions in [0, 1].

    `seeds`: a count n (seeds 0..n-1), an explicit list, or None for `protocol.seeds` seeds.
    Headline: top1_final_mean / top1_final_std (see `std_kind`); top1_best_* are best-epoch
    numbers (selected on the scored split) kept only for comparison with published tables.
    """
    seeds = protocol.seeds if seeds is None else seeds
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise RetaError("evaluate: no seeds; set --set seeds=3 (or at least 1)")
    runs = [train_student(train_set, test, info, protocol, s, dev, teacher, label_store, progress, ctx=ctx)
            for s in seed_list]
    finals = [r["top1_final"] for r in runs]
    bests = [r["top1_best"] for r in runs]
    final_mean, final_std = mean_std(finals)
    best_mean, best_std = mean_std(bests)
    return {"method": method, "ipc": ipc, "student": protocol.student, "labels": protocol.labels,
            "units": "fraction", "headline": "top1_final",
            "top1_final_mean": final_mean, "top1_final_std": final_std, "std_kind": STD_KIND,
            "top1_final_per_seed": finals,
            "top1_best_mean": best_mean, "top1_best_std": best_std, "top1_best_per_seed": bests,
            "best_epoch_per_seed": [r["best_epoch"] for r in runs],
            "best_note": (f"best of the scored split's evaluations every {eval_period(protocol)} epochs "
                          "(selected on that split, so not an unbiased estimate)"),
            "seeds": seed_list, "seconds": sum(r["seconds"] for r in runs),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "protocol": dataclasses.asdict(protocol), "runs": runs}
