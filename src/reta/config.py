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
import math
from typing import Any, Literal

import yaml

from reta.errors import RetaError


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise RetaError(f"config {key}={value!r}: {rule}")


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        _check(v >= 1, n, v, "must be at least 1")


def _non_negative(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        _check(math.isfinite(v) and v >= 0, n, v, "must be a finite number >= 0")


def _learning_rate(v: float, key: str = "lr") -> None:
    _check(math.isfinite(v) and v > 0, key, v, "must be a finite number > 0")


def _fraction(v: float, key: str, low_open: bool = False) -> None:
    ok = math.isfinite(v) and (0 < v if low_open else 0 <= v) and v <= 1
    _check(ok, key, v, f"must lie in {'(' if low_open else '['}0, 1]")


def _enum(cfg: Any, name: str) -> None:
    allowed = typing.get_args(typing.get_type_hints(type(cfg))[name])
    v = getattr(cfg, name)
    _check(v in allowed, name, v, f"choose one of {', '.join(map(str, allowed))}")


Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class SqueezeConfig:
    """Teacher training recipe (field default for small images: SGD + cosine + crop/flip)."""

    arch: str = "convnet3"
    epochs: int = 30  # 0 = import --init-weights without training
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    crop_padding: int = 4  # RandomCrop(size, padding) as in the CIFAR recipes; 0 disables
    flip: bool = True
    seed: int = 0
    holdout_fraction: float = 0.1  # train images kept out of training/pools for model selection
    precision: Precision = "auto"

    def __post_init__(self):
        _non_negative(self, "epochs", "crop_padding", "weight_decay", "label_smoothing")
        _positive(self, "batch_size")
        _learning_rate(self.lr)
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "must lie in [0, 1)")
        _check(self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "must be below 1")
        _check(0 <= self.holdout_fraction < 1, "holdout_fraction", self.holdout_fraction, "must lie in [0, 1)")
        _enum(self, "precision")


@dataclass(frozen=True)
class DRCConfig:
    """Dynamic Retrieval Connection (RETA §1.2, resolutions §5.1-5.6; docs/reta.md)."""

    lam: float = 0.1  # weight of complexity in J = (1-lam)*fit + lam*complexity
    prefilter: int = 32  # top-M candidates by fit, then min-max normalise inside them
    pool_per_class: int = 0  # 0 = every (non-held-out) training image of the class
    # images: each candidate is a whole real image (the paper's "1x1 patch" read literally);
    # patches: each is the image's RDED patch (its lowest-CE crop), the kind of image FADRM's
    # fixed anchors are, so retrieval changes which real patch is injected, not what kind.
    pool: Literal["images", "patches"] = "images"
    # Feature space of the fit: `raw` is the paper's Norm(phi); `centred` subtracts the class's
    # real mean feature first, so queries that drift to the class prototype do not all retrieve
    # the same prototypical image (docs/reta.md, "DRC collapse").
    features: Literal["raw", "centred"] = "raw"
    # partition: slot i of a class retrieves only from its own 1/ipc share of the pool, so no two
    # slots can share an anchor whatever the batch layout; distinct: a minimum-cost assignment
    # over a class's slots, which needs them in one group (per-class layout).
    partition: bool = False
    distinct: bool = False
    # keep_own: the slot's own init patch (FADRM's fixed anchor) is one more candidate of every
    # retrieval, so a connection swaps it only for a real patch with a better score J.
    keep_own: bool = False
    # fit: `anchor` is the paper's ||q(x) - z(o)||^2; `blend` re-scores the M best of those by how
    # far the injection itself moves the image, ||q(x) - q(alpha*x + (1-alpha)*o)||^2, which counts
    # the ghost an unrelated picture makes (docs/reta.md, "What DRC injects").
    fit: Literal["anchor", "blend"] = "anchor"
    # Connections before this one (1 = the first, into stage 2) keep the own init patch, FADRM's
    # anchor, where the image is still close to it; retrieval starts at this connection.
    first_connection: int = 1
    # confident_per_slot = k: only the class's k*ipc pool candidates the teacher is surest of (lowest
    # CE of the true class, RDED's realism score) can be retrieved, k per slot under the partition;
    # 0 = the whole pool. FADRM's anchors are RDED's top ipc of rded_candidates images; without this,
    # under PTA DRC's anchors drift to the pool's median typicality (docs/reta.md).
    confident_per_slot: int = 0
    feature_batch: int = 256  # pool images per teacher forward while building the cache

    def __post_init__(self):
        _fraction(self.lam, "lam")
        _non_negative(self, "prefilter", "pool_per_class", "confident_per_slot")
        _positive(self, "feature_batch")
        _enum(self, "features")
        _enum(self, "pool")
        _enum(self, "fit")
        _check(self.first_connection >= 1, "first_connection", self.first_connection, "must be 1 or more (1 = every connection)")


@dataclass(frozen=True)
class PTAConfig:
    """Persistent Topology Alignment (RETA §1.3, resolutions §5.7-5.10; docs/reta.md)."""

    weight: float = 0.5  # lambda_topo
    k: int = 10  # mutual k-NN; clipped to n-1
    # image: H0/H1 persistence images compared in squared Frobenius norm (the paper);
    # sorted: squared 2-Wasserstein distance of the sorted H0 deaths / H1 persistences to the
    # real barycentre (their mean order statistics), whose optimum is a typical real cloud.
    distance: Literal["image", "sorted"] = "image"
    # Divide each class's loss by its real-vs-reference value (the expected loss of a real subset
    # of the cloud's size), so lambda_topo means the same at any resolution, grid or cloud size.
    normalise: bool = False
    # Hinge at the real data's own spread: each class's loss is max(0, L - margin*baseline), with
    # baseline the expected loss of a real subset. A cloud as well aligned as typical real data
    # then gets no topology gradient at all, and CE + BN matching keeps its full share; 0 = off.
    margin: float = 0.0
    grid: int = 32  # persistence image G x G; sigma = 1/G
    gamma: float = 1.0  # weight of the H1 term
    reference_subsets: int = 20  # Q random real subsets averaged into the reference
    # T: the term (exact gradient, one extra clean pass) is evaluated on every T-th step of a
    # stage with weight T*lambda, and is off in between: extra passes cost 1/T of the steps.
    every: int = 1
    # The term acts in stages 1..until_stage only; 0 (or the run's stage count or more) = every
    # stage. The later stages are CE + BN matching alone and repair the BN statistics PTA costs.
    until_stage: int = 0
    # live: a class's slots are stepped together, so its whole synthetic cloud moves (the loop
    # batches a class block's groups); group: only the group's slots move, the rest stay at init.
    cloud: Literal["live", "group"] = "live"
    # What the real reference is made of: `images`, the class's whole real images, or `patches`,
    # each image's RDED patch (its most confident crop, what FADRM's anchors and inits are), whose
    # features sit closer to the class core than whole images do.
    reference: Literal["images", "patches"] = "images"
    # Build the reference from the class's core only: its reference_core*ipc real candidates the
    # teacher is surest of (lowest CE of the true class), the candidates DRC's confidence cap lets
    # it retrieve from; 0 = every candidate. A multiple of ipc, so it means the same at any IPC.
    reference_core: int = 0
    infinite_bars: Literal["one", "max_edge", "drop"] = "one"
    class_reduction: Literal["sum", "mean"] = "sum"  # sum (paper) | mean over the classes in the batch, like CE
    min_points: int = 4  # H1 needs >= 4 points; PTA is off for smaller clouds

    def __post_init__(self):
        _non_negative(self, "weight", "gamma", "margin", "until_stage", "reference_core")
        _positive(self, "k", "grid", "reference_subsets", "every")
        _check(self.min_points >= 2, "min_points", self.min_points, "must be at least 2")
        for name in ("distance", "infinite_bars", "class_reduction", "cloud", "reference"):
            _enum(self, name)


@dataclass(frozen=True)
class RecoverConfig:
    """Recover (synthesis) settings. A method preset fills the fields it needs.

    `method` is the registered strategy (`reta.recover.METHODS`); its preset is applied before
    YAML and --set, and `method` itself can only be chosen with --method, so a run can never be
    labelled with a method other than the one that ran.
    """

    method: str = "fadrm"
    ipc: int = 10
    iterations: int = 2000  # total budget B, split evenly over the stages unless stage_budgets is set
    stage_sizes: tuple[int, ...] = ()  # () = native size at every stage
    num_stages: int = 4  # k+1 blocks; k = num_stages-1 residual connections
    stage_budgets: tuple[int, ...] = ()
    lr: float = 0.25
    beta1: float = 0.5
    beta2: float = 0.9
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    alpha: float = 0.5  # residual mix x <- alpha*x + (1-alpha)*anchor
    jitter: int = -1  # roll by U{0..jitter}^2; -1 = by resolution (see recover.loop.default_jitter)
    crop_scale_min: float = 0.08  # RandomResizedCrop scale lower bound; 1 disables cropping
    flip: bool = True
    batch_size: int = 100  # images per optimisation batch
    batch_composition: Literal["class-mixed", "per-class"] = "class-mixed"  # SRe2L/FADRM | all slots of a few classes
    init: Literal["noise", "real", "rded"] = "rded"
    rded_candidates: int = 300  # RDED: real images scored per class (mipc)
    rded_crops: int = 5  # RDED: random crops per image
    rded_factor: int = 1  # RDED: crops stitched factor x factor per image
    seed: int = 0
    precision: Precision = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the teacher forward (GPU; falls back to eager where unavailable)
    groups_per_step: int = 0  # independent groups stacked in one teacher pass; 0 = by device (recover.loop)
    drc: DRCConfig = field(default_factory=DRCConfig)
    pta: PTAConfig = field(default_factory=PTAConfig)

    def __post_init__(self):
        _positive(self, "ipc", "num_stages", "batch_size", "rded_crops", "rded_factor", "rded_candidates")
        _non_negative(self, "iterations", "r_bn", "first_bn_multiplier", "groups_per_step")
        _learning_rate(self.lr)
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _check(math.isfinite(v) and 0 <= v < 1, name, v, "must lie in [0, 1)")
        _fraction(self.alpha, "alpha")
        _fraction(self.crop_scale_min, "crop_scale_min", low_open=True)
        _check(self.jitter >= -1, "jitter", self.jitter, "must be >= 0 (or -1: by resolution)")
        _check(all(s >= 1 for s in self.stage_sizes), "stage_sizes", self.stage_sizes, "every size must be >= 1")
        _check(all(b >= 0 for b in self.stage_budgets), "stage_budgets", self.stage_budgets, "budgets must be >= 0")
        for name in ("batch_composition", "init", "precision"):
            _enum(self, name)


@dataclass(frozen=True)
class RelabelConfig:
    """FKD-style stored soft labels: per epoch, per image crop/flip, per batch CutMix."""

    epochs: int = 300
    batch_size: int = 10
    seed: int = 42
    crop_scale_min: float = 0.08
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0
    shard_epochs: int = 50  # epochs per shard file
    teacher_mode: Literal["eval", "train"] = "eval"  # eval (SRe2L) | train (FADRM's batch-specific BN labels)

    def __post_init__(self):
        _positive(self, "epochs", "batch_size", "shard_epochs")
        _fraction(self.crop_scale_min, "crop_scale_min", low_open=True)
        _fraction(self.cutmix_prob, "cutmix_prob")
        _check(math.isfinite(self.cutmix_beta) and self.cutmix_beta > 0, "cutmix_beta", self.cutmix_beta, "must be > 0")
        _enum(self, "teacher_mode")


@dataclass(frozen=True)
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
    labels: Literal["online", "stored", "hard"] = "online"  # teacher every batch | relabel dir | hard labels
    crop_scale_min: float = 0.08
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0
    seeds: int = 3
    eval_every: int = 0  # 0 = only at the end (plus best-of-every-10% as a labelled extra)
    precision: Precision = "auto"

    def __post_init__(self):
        _positive(self, "epochs", "batch_size", "seeds")
        _non_negative(self, "weight_decay", "eval_every")
        _learning_rate(self.lr)
        _check(math.isfinite(self.eta) and self.eta >= 1, "eta", self.eta, "must be >= 1 (1 = cosine to zero)")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "temperature", self.temperature,
               "must be > 0 (the KD softmax temperature)")
        _fraction(self.crop_scale_min, "crop_scale_min", low_open=True)
        _fraction(self.cutmix_prob, "cutmix_prob")
        _check(math.isfinite(self.cutmix_beta) and self.cutmix_beta > 0, "cutmix_beta", self.cutmix_beta, "must be > 0")
        _enum(self, "labels")
        _enum(self, "precision")


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if origin is typing.Literal:
        return value  # checked against its choices by the dataclass itself
    if origin in (list, tuple):
        inner = typing.get_args(typ)[0] if typing.get_args(typ) else Any
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, inner, key) for v in value)
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
            if typ in (int, float) and not isinstance(value, (int, float, str)):
                raise ValueError
            return typ(value)
        except (TypeError, ValueError, OverflowError):
            article = "an" if typ is int else "a"
            raise RetaError(f"config {key}={value!r}: expected {article} {typ.__name__}") from None
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """A new config: `cfg` with (possibly dotted, e.g. `drc.lam`) fields replaced and re-validated."""
    changes: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        full = f"{prefix}{key}"
        head, _, rest = key.partition(".")
        if head not in names:
            raise RetaError(f"unknown config key {full!r}; valid keys: {', '.join(sorted(names))}")
        if dataclasses.is_dataclass(getattr(cfg, head)):
            if rest:
                sections.setdefault(head, {})[rest] = value
            elif isinstance(value, dict):
                sections.setdefault(head, {}).update(value)
            else:
                raise RetaError(f"config {full!r} is a section; set one of its keys, e.g. {full}.<key>=...")
        elif rest:
            raise RetaError(f"config key {full!r}: {head!r} has no sub-keys")
        else:
            changes[head] = _coerce(value, _field_type(type(cfg), head), full)
    for head, sub in sections.items():
        changes[head] = apply_overrides(getattr(cfg, head), sub, prefix=f"{prefix}{head}.")
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, **changes)
    except RetaError as exc:  # a section's own check does not know where the section sits
        raise RetaError(str(exc).replace("config ", f"config {prefix}", 1)) from None


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
          base: dict[str, Any] | None = None, flags: dict[str, Any] | None = None) -> Any:
    """Defaults < `base` (a method preset) < YAML file < `--set` items < `flags` (explicit CLI options).

    `method` belongs to the preset: YAML or --set may not change it, because the preset has
    already decided what runs.
    """
    layers = [("preset", base or {}), (str(yaml_path), load_yaml(yaml_path) if yaml_path else {}),
              ("--set", parse_set_args(sets)), ("flags", flags or {})]
    for where, layer in layers[1:3]:
        if "method" in layer:
            raise RetaError(f"{where}: `method` cannot be set there; choose the method with --method")
    defaults = cls(**({"method": base["method"]} if base and "method" in base else {}))
    cfg = defaults
    for _, layer in layers:
        if layer:
            cfg = apply_overrides(cfg, layer)
    return cfg
