"""squeeze: train (or import) a teacher, and load it back with its identity checked.

A teacher folder holds `weights.safetensors` and `meta.json` (arch, dataset identity, test
top-1, recipe, data hash, held-out split), and `checkpoint.safetensors` while a squeeze is
unfinished. User checkpoints are read with safetensors or
`torch.load(weights_only=True)`: no arbitrary unpickling.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reta import io, outdir
from reta.config import SqueezeConfig
from reta.data.augment import apply_flips, random_crop_pad, random_flips
from reta.data.dataset import DatasetInfo, ImageSet, split_holdout
from reta.errors import RetaError
from reta.evaluate import accuracy
from reta.models import TorchvisionModel, create_model
from reta.runtime import autocast, autocast_dtype, seed_everything
from reta.schedule import cosine_lr

WEIGHTS = "weights.safetensors"
META = "meta.json"
CHECKPOINT = "checkpoint.safetensors"  # the state after the last finished epoch, while a squeeze is unfinished


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    info: DatasetInfo
    meta: dict
    path: Path
    weights_hash: str

    @property
    def holdout(self) -> tuple[float, int]:
        h = self.meta.get("holdout", {"fraction": 0.0, "seed": 0})
        return float(h["fraction"]), int(h["seed"])


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from .safetensors or a torch checkpoint, never unpickling arbitrary objects."""
    if not path.is_file():
        raise RetaError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
            raise RetaError(f"{path}: not a valid safetensors file ({exc}); re-export it") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise RetaError(f"{path}: cannot load with weights_only=True ({type(exc).__name__}); "
                        f"export a plain state_dict (torch.save(model.state_dict(), ...)) or safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RetaError(f"{path}: expected a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load our own state dicts or torchvision ones (conv1..., fc.*) into a registry model."""
    own = model.state_dict()
    if not set(state) & set(own) and isinstance(model, TorchvisionModel):
        state = model.from_torchvision(state)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RetaError(f"{source}: weights do not fit the architecture (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); check --arch")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise RetaError(f"{source}: tensor {k} has shape {tuple(v.shape)}, the model needs "
                            f"{tuple(own[k].shape)}; check --arch and the dataset's class count")
    model.load_state_dict(state)


def save_teacher(model: nn.Module, arch: str, info: DatasetInfo, out_dir: Path, meta: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(out_dir / WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    full = {"arch": arch, "dataset": info.to_json(), **meta, "weights_sha256": io.sha256_file(out_dir / WEIGHTS),
            "versions": io.versions()}
    io.write_json(out_dir / META, full)
    return out_dir


def load_teacher(path: str | Path, expect: DatasetInfo | None = None, dev: torch.device | None = None) -> Teacher:
    """Load a teacher folder; if `expect` is given, its dataset identity must match."""
    path = Path(path)
    meta, info = DatasetInfo.read_artifact(path, META, expect, "teacher", "create one with `reta squeeze`")
    if not (path / WEIGHTS).is_file():
        raise RetaError(f"{path / WEIGHTS}: weights file not found; rerun `reta squeeze --out {path}`")
    digest = io.sha256_file(path / WEIGHTS)  # checked before parsing, so any corruption gets this message
    if meta.get("weights_sha256") not in (None, digest):
        raise RetaError(f"{path / WEIGHTS}: checksum differs from {META}; the file was changed or is corrupt, "
                        f"restore it or rerun `reta squeeze --out {path}`")
    model = create_model(meta["arch"], info.num_classes, info.image_size)
    load_weights(model, read_state_dict(path / WEIGHTS), str(path / WEIGHTS))
    model = freeze(model.to(dev or torch.device("cpu")))
    return Teacher(model=model, arch=meta["arch"], info=info, meta=meta, path=path, weights_hash=digest)


def squeeze(train: ImageSet, test: ImageSet, cfg: SqueezeConfig, out_dir: Path, dev: torch.device,
            init_weights: Path | None = None, progress: bool = True, inputs: Sequence[Path] = (),
            overwrite: bool = False) -> Teacher:
    """Train a teacher on the training split minus the held-out part; evaluate on test; save.

    `out_dir` is claimed (reta.outdir, kind "teacher") only after the architecture and the
    initial weights have loaded, and never when it is, or lies inside, one of `inputs`. After
    every epoch the training state is checkpointed, so an interrupted run with the same recipe,
    data and initial weights continues from its last finished epoch with the same result.
    """
    from tqdm import tqdm

    info = train.info
    out_dir = Path(out_dir)
    fit, held = split_holdout(train, cfg.holdout_fraction, cfg.seed)
    gen = seed_everything(cfg.seed)
    model = create_model(cfg.arch, info.num_classes, info.image_size).to(dev)
    if init_weights is not None:
        load_weights(model, read_state_dict(Path(init_weights)), str(init_weights))
    data_hash = train.content_hash()
    run_record = {"recipe": dataclasses.asdict(cfg), "data_hash": data_hash,
                  "init_weights_sha256": io.sha256_file(init_weights) if init_weights is not None else None}
    outdir.claim(out_dir, "teacher", inputs=inputs, overwrite=overwrite, run_record=run_record)
    dtype = autocast_dtype(cfg.precision, dev)
    steps_per_epoch = max(1, len(fit) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    run_key = io.sha256_json(run_record)
    start, history, earlier = _resume(out_dir / CHECKPOINT, run_key, model, opt, gen, dev)
    t0 = time.time() - earlier
    step = start * steps_per_epoch
    bar = tqdm(total=total, initial=step, desc=f"squeeze {cfg.arch}", unit="step", disable=total == 0 or not progress)
    for epoch in range(start, cfg.epochs):
        model.train()
        running = 0.0
        for images, labels in fit.batches(cfg.batch_size, generator=gen, drop_last=True):
            x = info.normalise(images.to(dev))
            x = random_crop_pad(x, cfg.crop_padding, gen)
            if cfg.flip:
                x = apply_flips(x, random_flips(len(x), gen))
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, total)
            with autocast(dtype, dev):
                loss = loss_fn(model(x), labels.to(dev))
            if not torch.isfinite(loss):
                bar.close()  # before the error line, so the bar does not redraw after it
                raise RetaError(f"squeeze: loss became {loss.item()} at epoch {epoch}; lower --set lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
            bar.update(1)
        history.append(running / steps_per_epoch)
        bar.set_postfix(loss=f"{history[-1]:.3f}")
        if epoch + 1 < cfg.epochs:  # after the last epoch the teacher itself is saved
            _save_checkpoint(out_dir / CHECKPOINT, run_key, model, opt, gen, epoch + 1, history, time.time() - t0)
    bar.close()
    model.eval()
    test_top1 = accuracy(model, test, info, dev, dtype=dtype)
    held_top1 = accuracy(model, held, info, dev, dtype=dtype) if len(held) else None
    meta = {"test_top1": test_top1, "holdout_top1": held_top1, "recipe": dataclasses.asdict(cfg),
            "data_hash": data_hash, "data_source": train.source,
            "holdout": {"fraction": cfg.holdout_fraction, "seed": cfg.seed, "size": len(held)},
            "epoch_loss": history, "seconds": time.time() - t0, "init_weights": str(init_weights) if init_weights else None,
            "resumed_from_epoch": start}
    save_teacher(model, cfg.arch, info, out_dir, meta)
    outdir.remove_owned(out_dir, "teacher", [CHECKPOINT])
    return load_teacher(out_dir, dev=dev)


def _save_checkpoint(path: Path, run_key: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     epochs_done: int, history: list[float], seconds: float) -> None:
    """Everything the next epoch depends on: weights and BN statistics, momentum, both RNG states."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(p for group in opt.param_groups for p in group["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"run": run_key, "epochs_done": str(epochs_done), "history": json.dumps(history), "seconds": repr(seconds)}
    with io.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _resume(path: Path, run_key: str, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
            dev: torch.device) -> tuple[int, list[float], float]:
    """(epochs done, loss history, seconds spent) from a checkpoint of this run; (0, [], 0) without one."""
    if not path.is_file():
        return 0, [], 0.0
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a file cut short
        raise RetaError(f"{path}: damaged checkpoint ({exc}); rerun with --overwrite to restart from epoch 0") from None
    if meta.get("run") != run_key:
        raise RetaError(f"{path}: checkpoint of another squeeze run; rerun with --overwrite to restart from epoch 0")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(p for group in opt.param_groups for p in group["params"]):
        if f"momentum.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(dev)
    gen.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epochs_done"]), json.loads(meta["history"]), float(meta["seconds"])
