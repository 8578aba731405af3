"""The one pipeline: teacher -> distilled set -> students -> random baseline -> DD-Ranking scores.

`reta evaluate`, `reta run`, `reta demo` and `reta bench` are thin shells over these steps, so
every number they print is produced the same way:

* a teacher is loaded from its folder, or trained into it when the folder holds none (bench
  keeps one per data + recipe in the user cache);
* a distilled set is distilled into its folder when that folder has no manifest, then read back
  (a rerun resumes an interrupted distillation and reuses a finished one);
* the random baseline is `--method random` itself, distilled with the set's seed and IPC into
  `<out>/baseline-random/`, so its images are the ones `reta distill --method random` writes;
  whether every class has IPC images outside the teacher's held-out split is checked before any
  student trains;
* every evaluation is cached as JSON beside its inputs, so a rerun only trains what is missing;
* the commands check what a step would refuse (check_recover, check_baseline, check_real_subset)
  before they claim their --out (reta.outdir kinds evaluation, run, demo, bench), so a refused
  command leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from reta import io, outdir
from reta.config import EvalProtocol, RecoverConfig, SqueezeConfig, apply_overrides, build, load_yaml
from reta.data.dataset import ImageSet, split_holdout
from reta.distilled import MANIFEST, read_distilled
from reta.errors import RetaError
from reta.evaluate import evaluate, hlr, ior, lrs
from reta.recover import METHODS, check_feasible, distill, effective, preset, result_config
from reta.recover.strategy import sections_read
from reta.retrieval.pool import default_cache_dir
from reta.teacher import Teacher, load_teacher, squeeze

REPO = Path(__file__).resolve().parents[2]
BASELINE_DIR = outdir.BASELINE


def configs_dir() -> Path:
    """The shipped YAML budgets (configs/ in the source checkout; $RETA_CONFIGS to point elsewhere)."""
    path = Path(os.environ.get("RETA_CONFIGS") or REPO / "configs")
    if not path.is_dir():
        raise RetaError(f"{path}: configs folder not found; set RETA_CONFIGS to the repository's configs/ folder")
    return path


def default_data_root() -> str | None:
    """$RETA_DATA_ROOT, else the shared datasets folder beside the checkout when there is one."""
    shared = REPO.parent / "shared" / "datasets"
    return os.environ.get("RETA_DATA_ROOT") or (str(shared) if shared.is_dir() else None)


SECTIONS = {"teacher": SqueezeConfig, "recover": RecoverConfig, "protocol": EvalProtocol}


def sectioned_configs(defaults: dict[str, dict], method: str, yaml_path: str | Path | None = None,
                      sets: list[str] | None = None, flags: dict[str, dict] | None = None) -> dict:
    """{"teacher": SqueezeConfig, "recover": RecoverConfig, "protocol": EvalProtocol} for one whole run.

    Each section: dataclass defaults < `defaults[section]` (shipped YAML budgets; for recover,
    the method's preset first) < the `section:` mapping of `yaml_path` < `--set section.key=value`
    < `flags[section]` (explicit command-line options).
    """
    user = load_yaml(yaml_path) if yaml_path else {}
    for where, keys in ((str(yaml_path), user), ("defaults", defaults)):
        unknown = set(keys) - set(SECTIONS)
        if unknown:
            raise RetaError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    split: dict[str, list[str]] = {name: [] for name in SECTIONS}
    for item in sets or []:
        head, dot, rest = item.partition(".")
        if head not in SECTIONS or not dot:
            raise RetaError(f"--set {item!r}: prefix the key with its section: {', '.join(f'{n}.' for n in SECTIONS)} "
                            f"(e.g. --set recover.drc.lam=0.2)")
        split[head].append(rest)
    out = {}
    for name, cls in SECTIONS.items():
        base = {**(preset(method) if name == "recover" else {}), **defaults.get(name, {}), **(user.get(name) or {})}
        cfg = build(cls, sets=split[name], base=base)
        out[name] = apply_overrides(cfg, (flags or {}).get(name) or {})
    return out


# -- teacher ---------------------------------------------------------------------------------------

def teacher_at(folder: Path, train: ImageSet, test: ImageSet, recipe: SqueezeConfig, dev: torch.device,
               progress: bool) -> Teacher:
    """The teacher in `folder`, trained there first when the folder holds none."""
    if (Path(folder) / "meta.json").is_file():
        return load_teacher(folder, expect=train.info, dev=dev)
    print(f"[reta] squeeze {recipe.arch} for {recipe.epochs} epochs -> {folder}", flush=True)
    return squeeze(train, test, recipe, Path(folder), dev, progress=progress)


def teacher_key(train: ImageSet, recipe: SqueezeConfig) -> str:
    """Identity of a trained teacher by what made it (data + recipe), stable across machines."""
    return io.sha256_json({"data": train.content_hash(), "recipe": dataclasses.asdict(recipe)})[:16]


def cached_teacher_dir(key: str) -> Path:
    """Where the user cache keeps the teacher of this teacher_key."""
    return default_cache_dir() / "teachers" / key


def cached_teacher(train: ImageSet, test: ImageSet, recipe: SqueezeConfig, dev: torch.device,
                   progress: bool) -> Teacher:
    """One teacher per data + recipe in the user cache, shared by every bench invocation."""
    return teacher_at(cached_teacher_dir(teacher_key(train, recipe)), train, test, recipe, dev, progress)


# -- distilled sets --------------------------------------------------------------------------------

def legacy_result_config(config: dict) -> dict:
    """result_config of a set whose manifest predates it (method revision 0)."""
    return sections_read(config, METHODS.get(config["method"]).reads if config.get("method") in METHODS.names() else ())


def distilled(train: ImageSet, teachers: list[Teacher], cfg: RecoverConfig, folder: Path, dev: torch.device,
              progress: bool, cache_dir: Path | None = None):
    """(images, manifest) of the set in `folder`, distilled (or resumed) first when it is unfinished."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        print(f"[reta] distill {cfg.method} (IPC {cfg.ipc}, seed {cfg.seed}) -> {folder}", flush=True)
        distill(train, teachers, cfg, folder, dev, cache_dir=cache_dir, progress=progress)
    images, manifest = read_distilled(folder, expect=train.info)
    made_with = manifest.get("result_config") or legacy_result_config(manifest.get("config", {}))
    wanted = json.loads(json.dumps(result_config(effective(cfg))))
    if made_with != wanted:
        differs = sorted(k for k in set(made_with) | set(wanted) if made_with.get(k) != wanted.get(k))
        raise RetaError(f"{folder} holds a finished set made with other settings ({', '.join(differs)} differ); "
                        f"use another --out (or --overwrite)")
    return images, manifest


def random_config(ipc: int, seed: int) -> RecoverConfig:
    """Exactly what `reta distill --method random --ipc IPC --set seed=SEED` runs."""
    return build(RecoverConfig, base={**preset("random"), "ipc": ipc, "seed": seed})


def check_real_subset(train: ImageSet, holdout: tuple[float, int], ipc: int) -> None:
    """Refuse an IPC that some class cannot supply from real images outside the held-out split.

    `holdout`: the teacher's (fraction, seed), known from its recipe before it is trained, so a
    command can refuse before it writes anything."""
    fit, _ = split_holdout(train, *holdout)
    check_feasible(fit, random_config(ipc, 0), fix="lower --ipc or drop --baseline")


def check_baseline(protocols: list[EvalProtocol], train: ImageSet, holdout: tuple[float, int], ipc: int,
                   baseline: bool) -> None:
    """Refuse a random baseline that cannot be made (too few real images) or compared (stored labels)."""
    if not baseline:
        return
    if any(p.labels == "stored" for p in protocols):
        raise RetaError("--baseline random with stored labels: the label store belongs to the distilled set; "
                        "compare with the random subset under labels=online")
    check_real_subset(train, holdout, ipc)


def check_recover(train: ImageSet, holdout: tuple[float, int], cfg: RecoverConfig) -> None:
    """What `distill` would refuse about `cfg` on this data, for commands that claim --out before distilling."""
    fit, _ = split_holdout(train, *holdout)
    check_feasible(fit, cfg)


def score_split(train: ImageSet, test: ImageSet, teacher: Teacher, split: str) -> ImageSet:
    """The images final numbers are measured on: the test split, or the teacher's held-out train images."""
    if split == "test":
        return test
    if split != "holdout":
        raise RetaError(f"split {split!r}: use test or holdout")
    _, held = split_holdout(train, *teacher.holdout)
    if not len(held):
        raise RetaError(f"teacher {teacher.path} was trained without a held-out split; "
                        f"squeeze with --set holdout_fraction=0.1")
    return held


# -- evaluation ------------------------------------------------------------------------------------

def evaluation(path: Path | None, syn: ImageSet, scored_on: ImageSet, protocol: EvalProtocol, dev: torch.device,
               teacher: Teacher | None, *, method: str, ipc: int, label_store=None, progress: bool = False,
               ctx=None, keep_runs: bool = True) -> dict:
    """evaluate() with its result cached at `path` (None: not cached); a cached result must match the protocol."""
    if path is not None and Path(path).is_file():
        cached = io.read_json(path)
        if cached.get("protocol") == io.to_jsonable(dataclasses.asdict(protocol)):
            return cached
    result = evaluate(syn, scored_on, syn.info, protocol, dev, teacher.model if teacher is not None else None,
                      label_store=label_store, method=method, ipc=ipc, progress=progress, ctx=ctx)
    if not keep_runs:
        result.pop("runs", None)
    if path is not None and (ctx is None or ctx.is_main):
        io.write_json(path, result)
    return result


def relative_scores(acc: float, random_acc: float | None, hard_acc: float | None, teacher_top1: float) -> dict:
    """IOR (vs the random subset), HLR (vs the teacher trained on all real data, hard labels) and LRS, as fractions."""
    out: dict = {"ior": None, "hlr": None, "lrs": None}
    if random_acc is not None:
        out["ior"] = ior(acc, random_acc)
    if hard_acc is not None:
        out["hlr"] = hlr(teacher_top1, hard_acc)
    if out["ior"] is not None and out["hlr"] is not None:
        out["lrs"] = lrs(out["hlr"], out["ior"])
    return out


def run_set(*, train: ImageSet, scored_on: ImageSet, teacher: Teacher, folder: Path, out: Path,
            protocols: list[EvalProtocol], dev: torch.device, cfg: RecoverConfig | None = None,
            baseline: bool = False, hard: EvalProtocol | None = None, label_store=None, progress: bool = False,
            ctx=None, cache_dir: Path | None = None, resume: bool = True, extra: dict | None = None) -> dict:
    """Distil into `folder` (when `cfg` is given and it is unfinished), evaluate, compare with random; write out/result.json.

    The result is the first student's evaluation (its keys at the top level), with `students`
    (one entry per protocol: evaluation, baseline and scores), `baseline_random`, `ior`, `hlr`,
    `lrs` and `images` (the distilled folder) added. `resume`: cache each evaluation beside its
    set (eval-<student>-<labels>.json) so a rerun trains only the missing students. `extra`:
    keys added to result.json.
    """
    main = ctx is None or ctx.is_main
    if cfg is not None:
        syn, manifest = distilled(train, [teacher], cfg, folder, dev, progress, cache_dir=cache_dir)
    else:
        syn, manifest = read_distilled(folder, expect=train.info)
    ipc = int(manifest["ipc"])
    seed = int(manifest.get("config", {}).get("seed", 0))
    check_baseline(protocols, train, teacher.holdout, ipc, baseline)
    method = manifest.get("method", "unknown")
    base_folder = out / BASELINE_DIR
    real = None
    if baseline:
        if main:
            real, _ = distilled(train, [teacher], random_config(ipc, seed), base_folder, dev, progress)
        if ctx is not None and ctx.world > 1:
            ctx.barrier()  # rank 0 wrote the baseline's images; the others read them
        if not main:
            real, _ = read_distilled(base_folder, expect=train.info)
    students = []
    for i, protocol in enumerate(protocols):
        tag = f"{protocol.student}-{protocol.labels}"
        res = evaluation(out / f"eval-{tag}.json" if resume else None, syn, scored_on, protocol, dev, teacher, method=method, ipc=ipc,
                         label_store=label_store, progress=progress, ctx=ctx)
        entry = {"student": protocol.student, "result": res, "baseline_random": None, "hard": None}
        if real is not None:
            entry["baseline_random"] = evaluation(base_folder / f"eval-{tag}.json" if resume else None, real, scored_on, protocol, dev,
                                                  teacher, method="random", ipc=ipc, progress=progress, ctx=ctx)
        if hard is not None and i == 0:
            entry["hard"] = evaluation(out / f"eval-{protocol.student}-hard.json" if resume else None, syn, scored_on,
                                       dataclasses.replace(hard, student=protocol.student), dev, None, method=method,
                                       ipc=ipc, progress=progress, ctx=ctx)
        entry.update(relative_scores(res["top1_final_mean"],
                                     entry["baseline_random"]["top1_final_mean"] if entry["baseline_random"] else None,
                                     entry["hard"]["top1_final_mean"] if entry["hard"] else None,
                                     float(teacher.meta["test_top1"])))
        students.append(entry)
    first = students[0]
    result = {**first["result"], "students": students, "baseline_random": first["baseline_random"],
              "ior": first["ior"], "hlr": first["hlr"], "lrs": first["lrs"], "images": str(folder),
              "teacher_test_top1": teacher.meta.get("test_top1"),
              "manifest": {k: manifest.get(k) for k in ("drc_share", "pta_share", "shared_anchor_fraction")},
              "seconds_per_image": manifest.get("timings", {}).get("seconds_per_image"), **(extra or {})}
    if main:
        io.write_json(out / "result.json", result)
    return result


def table_rows(result: dict) -> list[dict]:
    """Rows for `reports.results_table` from a `run_set` result: the set per student, then its random baseline."""
    split = result.get("split", "test")
    rows = []
    for s in result["students"]:
        r = s["result"]
        rows.append({"method": r["method"], "student": s["student"], "ipc": r["ipc"], "split": split,
                     "top1": (r["top1_final_mean"], r["top1_final_std"]),
                     "delta_random": s["ior"],
                     "hard": (s["hard"]["top1_final_mean"], s["hard"]["top1_final_std"]) if s["hard"] else None,
                     "hlr": s["hlr"], "ior": s["ior"], "lrs": s["lrs"], "best": r["top1_best_mean"],
                     "s_per_image": result.get("seconds_per_image"),
                     "shared_anchor": result["manifest"].get("shared_anchor_fraction"),
                     "drc_share": result["manifest"].get("drc_share"), "pta_share": result["manifest"].get("pta_share"),
                     "seconds": r["seconds"]})
        b = s["baseline_random"]
        if b:
            rows.append({"method": "random (baseline)", "student": s["student"], "ipc": b["ipc"], "split": split,
                         "top1": (b["top1_final_mean"], b["top1_final_std"]), "best": b["top1_best_mean"],
                         "seconds": b["seconds"]})
    return rows
