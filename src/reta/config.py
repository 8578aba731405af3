"""Typed configuration for every stage, with YAML and `--set key=value` overrides.

Defaults follow `method-reference.md` (FADRM's scripts for recover, RETA's paper for DRC/PTA,
FADRM's validate scripts for evaluation). Presets and the CLI only *set* fields; nothing in the
code overrides a value the user gave. Each run writes the resolved config beside its output.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reta.errors import RetaError


@dataclass
class SqueezeConfig:
    """Teacher training recipe (field default for small images: SGD + cosine + crop/flip)."""

    arch: str = "convnet3"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 4  # RandomCrop(size, padding) as in the CIFAR recipes; 0 disables
    flip: bool = True
    seed: int = 0
    holdout_fraction: float = 0.1  # train images kept out of training/pools for model selection
    precision: str = "auto"  # auto | fp32 | bf16 | fp16


@dataclass
class DRCConfig:
    """Dynamic Retrieval Connection (RETA §1.2, resolutions §5.1-5.6)."""

    enabled: bool = False
    lam: float = 0.1  # weight of complexity in J = (1-lam)*fit + lam*complexity
    prefilter: int = 32  # top-M candidates by fit, then min-max normalise inside them
    pool_per_class: int = 0  # 0 = every (non-held-out) training image of the class
    distinct: bool = False  # no two images of a class share an anchor at one connection
    feature_batch: int = 256  # pool images per teacher forward while building the cache


@dataclass
class PTAConfig:
    """Persistent Topology Alignment (RETA §1.3, resolutions §5.7-5.10)."""

    enabled: bool = False
    weight: float = 0.5  # lambda_topo
    k: int = 10  # mutual k-NN; clipped to n-1
    grid: int = 32  # persistence image G x G; sigma = 1/G
    gamma: float = 1.0  # weight of the H1 term
    reference_subsets: int = 20  # Q random real subsets averaged into the reference image
    refresh_every: int = 10  # T: steps between refreshes of the detached feature cache
    infinite_bars: str = "one"  # one | max_edge | drop
    class_reduction: str = "sum"  # sum (paper) | mean over the classes in the batch
    min_points: int = 4  # H1 needs >= 4 points; PTA is off for smaller clouds
    live_features: str = "view"  # view: straight-through via the main pass (cheap) | clean: extra pass per step


@dataclass
class RecoverConfig:
    """Recover (synthesis) settings. A method preset fills the fields it needs."""

    method: str = "fadrm"
    ipc: int = 10
    iterations: int = 2000  # total budget B, split evenly over the stages unless stage_budgets is set
    stage_sizes: list[int] = field(default_factory=list)  # [] = native size at every stage
    num_stages: int = 4  # k+1 blocks; k = num_stages-1 residual connections
    stage_budgets: list[int] = field(default_factory=list)
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    alpha: float = 0.5  # residual mix x <- alpha*x + (1-alpha)*anchor
    jitter: int = 4  # roll by U{0..jitter}^2 (4 for <= 64 px, 32 for 224 px)
    crop_scale_min: float = 0.08  # RandomResizedCrop scale lower bound; 1 disables cropping
    flip: bool = True
    batch_size: int = 100  # images per optimisation batch
    batch_composition: str = "class-mixed"  # class-mixed (SRe2L/FADRM) | per-class
    init: str = ""  # "" = method default; noise | real | rded
    rded_candidates: int = 300  # RDED: real images scored per class (mipc)
    rded_crops: int = 5  # RDED: random crops per image
    rded_factor: int = 1  # RDED: crops stitched factor x factor per image
    teachers: list[str] = field(default_factory=list)  # extra teacher dirs, round-robin (FADRM+)
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False  # torch.compile the teacher forward (GPU; falls back to eager where unavailable)
    drc: DRCConfig = field(default_factory=DRCConfig)
    pta: PTAConfig = field(default_factory=PTAConfig)


@dataclass
class RelabelConfig:
    """FKD-style stored soft labels: per epoch, per image crop/flip, per batch CutMix."""

    epochs: int = 300
    batch_size: int = 10
    seed: int = 42
    crop_scale_min: float = 0.08
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0
    shard_epochs: int = 50  # epochs per shard file
    teacher_mode: str = "eval"  # eval (SRe2L) | train (FADRM's batch-specific BN labels)


@dataclass
class EvalProtocol:
    """Student training on a distilled set (FADRM/EDC protocol, final-epoch reporting)."""

    student: str = "convnet3-in"
    epochs: int = 300
    batch_size: int = 10
    lr: float = 5e-4
    weight_decay: float = 0.01
    eta: float = 2.0  # cosine stretch: lr(e) = lr*0.5*(1+cos(pi*e/(E*eta))); 1 = to zero, 2 = to half
    temperature: float = 20.0
    t_squared: bool = False  # FADRM/SRe2L use KL without the T^2 factor
    labels: str = "online"  # online (teacher every batch) | stored (relabel dir) | hard
    crop_scale_min: float = 0.08
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0
    seeds: int = 3
    eval_every: int = 0  # 0 = only at the end (plus best-of-every-10% as a labelled extra)
    precision: str = "auto"


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is list:
        (inner,) = typing.get_args(typ) or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise RetaError(f"config {key}={value!r}: expected true or false")
    if typ in (int, float, str):
        try:
            if typ is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if typ in (int, float) and isinstance(value, bool):  # int(True) == 1 would hide a typo
                raise ValueError
            return typ(value)
        except (TypeError, ValueError):
            article = "an" if typ is int else "a"
            raise RetaError(f"config {key}={value!r}: expected {article} {typ.__name__}") from None
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Set (possibly dotted, e.g. `drc.lam`) fields of a dataclass config in place; returns cfg."""
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        head, _, rest = key.partition(".")
        names = {f.name for f in dataclasses.fields(cfg)}
        if head not in names:
            raise RetaError(f"unknown config key {full!r}; valid keys: {', '.join(sorted(names))}")
        current = getattr(cfg, head)
        if dataclasses.is_dataclass(current):
            if rest:
                apply_overrides(current, {rest: value}, prefix=f"{prefix}{head}.")
            elif isinstance(value, dict):
                apply_overrides(current, value, prefix=f"{full}.")
            else:
                raise RetaError(f"config {full!r} is a section; set one of its keys, e.g. {full}.<key>=...")
        elif rest:
            raise RetaError(f"config key {full!r}: {head!r} has no sub-keys")
        else:
            setattr(cfg, head, _coerce(value, _field_type(type(cfg), head), full))
    return cfg


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """`["drc.lam=0.2", "ipc=5"]` -> {"drc.lam": 0.2, "ipc": 5} (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RetaError(f"--set {item!r}: expected key=value, e.g. --set drc.lam=0.2")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise RetaError(f"{path}: is a folder; --config takes a YAML file")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise RetaError(f"{path}: config file not found") from None
    except PermissionError as exc:
        raise RetaError(f"{path}: cannot read the config file ({exc.strerror}); check its permissions") from None
    except UnicodeDecodeError as exc:
        raise RetaError(f"{path}: not UTF-8 text (byte {exc.start}); save the config file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise RetaError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RetaError(f"{path}: expected a mapping of config keys at the top level")
    return data


def build(cls: type, yaml_path: str | Path | None = None, sets: list[str] | None = None,
          base: dict[str, Any] | None = None) -> Any:
    """Defaults < `base` (presets) < YAML file < `--set` items."""
    cfg = cls()
    if base:
        apply_overrides(cfg, base)
    if yaml_path:
        apply_overrides(cfg, load_yaml(yaml_path))
    if sets:
        apply_overrides(cfg, parse_set_args(sets))
    return cfg
