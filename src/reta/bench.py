"""`reta bench PRESET --tier quick|full`: every method under one protocol, published as BENCHMARKS.md.

For one dataset and IPC (configs/bench/presets.yaml) and one tier of budgets
(configs/bench/<tier>.yaml): one teacher (trained once, cached by data + recipe), then every
method variant, distilled once per synthesis seed (recover `seed` 0..N-1) with the same teacher,
IPC and budget. Each distilled set is scored by every student with the tier's student seeds and
online soft labels (the method's own protocol); the first student also trains with hard labels
(for HLR). Nothing is chosen on the test split; `--split holdout` scores on the teacher's
held-out training images instead, for choosing defaults.

Everything is written under --out: a row JSON per (variant, synthesis seed, student) in
OUT/rows/ as soon as it is finished, the aggregated OUT/<preset>-<tier>.json and OUT/report.md.
A rerun reuses finished rows from OUT/rows/ and from ./benchmarks/results/<preset>-<tier>/
(committed rows, so a bench interrupted on one machine resumes on another) when their inputs
match and they were made with the same teacher weights: the teacher is keyed by data and recipe,
but one recipe trained on another CPU gives other weights (cifar10: 75.00 % on an AMD EPYC,
74.9 % on an Intel Xeon), and a table must not mix teachers. To resume elsewhere, copy the
teacher's folder under $RETA_CACHE/teachers/ along with the rows. `--publish` also writes every
row into ./benchmarks/results/<preset>-<tier>/ as soon as it is finished, and at the end the
results JSON into ./benchmarks/results/, and regenerates the generated block of ./BENCHMARKS.md.

OUT is claimed (reta.outdir, kind "bench") after every check: a rerun with the same preset, tier
settings and split continues it (also one written before markers existed), other settings are
refused unless --overwrite, which removes only what bench wrote under OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from reta import io, outdir, pipeline
from reta.config import EvalProtocol, RecoverConfig, SqueezeConfig, build, load_yaml
from reta.data import load_dataset
from reta.data.dataset import ImageSet
from reta.errors import RetaError
from reta.evaluate.train import mean_std
from reta.models import create_model
from reta.recover import METHODS, preset, result_config
from reta.reports import results_table
from reta.runtime import device
from reta.teacher import Teacher

TIERS = ("quick", "full")
FORMAT = "reta-bench/2"
REFERENCE, BASELINE = "fadrm", "random"
# Tables list the baseline, the reference, then RETA's ablation in the order it builds up; other
# methods follow by name, and a method's variants (label with +overrides) follow its plain row.
TABLE_ORDER = (BASELINE, REFERENCE, "drc", "pta", "reta", "reta-paper")


def presets() -> dict[str, dict]:
    return load_yaml(pipeline.configs_dir() / "bench" / "presets.yaml")


def preset_spec(name: str) -> dict:
    table = presets()
    if name not in table:
        raise RetaError(f"unknown bench preset {name!r}; choose one of {', '.join(table)}")
    return table[name]


def tier_settings(name: str) -> dict[str, dict]:
    if name not in TIERS:
        raise RetaError(f"unknown tier {name!r}; choose one of {', '.join(TIERS)}")
    settings = load_yaml(pipeline.configs_dir() / "bench" / f"{name}.yaml")
    missing = {"teacher", "recover", "protocol"} - set(settings)
    if missing:
        raise RetaError(f"configs/bench/{name}.yaml: missing section(s) {', '.join(sorted(missing))}")
    return settings


def parse_variant(label: str) -> tuple[str, list[str]]:
    """`reta+pta.weight=0.005+drc.distinct=true` -> ("reta", ["pta.weight=0.005", "drc.distinct=true"])."""
    method, *sets = label.split("+")
    METHODS.get(method)  # an unknown method fails here, before anything trains
    return method, sets


def results_name(preset_name: str, tier: str, split: str) -> str:
    return f"{preset_name}-{tier}" + ("" if split == "test" else f"-{split}")


def row_file(variant: str, synthesis_seed: int, student: str) -> str:
    return f"{variant}__seed{synthesis_seed}__{student}.json"


def variant_config(label: str, spec: dict, settings: dict, seed: int) -> RecoverConfig:
    method, sets = parse_variant(label)
    return build(RecoverConfig, sets=sets, base={**preset(method), "ipc": spec["ipc"], **settings["recover"], "seed": seed})


def run_folder(out: Path, label: str, seed: int, cfg: RecoverConfig) -> Path:
    """A bench's folder for one variant and synthesis seed (its set under distilled/, its evaluations):
    one per result identity, so a set made by other settings or an earlier method revision under
    the same label is never taken for this one."""
    return out / label / f"seed{seed}-{io.sha256_json(result_config(cfg))[:8]}"


def row_identity(label: str, seed: int, student: str, split: str, teacher_key: str, cfg: RecoverConfig,
                 soft: EvalProtocol, hard: EvalProtocol | None) -> dict:
    """What a benchmark row is a result of; its hash is the row's key."""
    return {"variant": label, "method": cfg.method, "synthesis_seed": seed, "student": student, "split": split,
            "teacher_key": teacher_key, "recover": result_config(cfg), "protocol": dataclasses.asdict(soft),
            "protocol_hard": dataclasses.asdict(hard) if hard else None}


def protocol(settings: dict, student: str, labels: str) -> EvalProtocol:
    """The tier's evaluation protocol for one student and label kind (online KD or hard)."""
    return build(EvalProtocol, base={**settings["protocol"], "student": student, "labels": labels})


def same_teacher(row: dict, teacher_sha: str, legacy_ok: bool) -> bool:
    """Whether a finished row was made with these teacher weights. Rows from before rows recorded
    them (no `teacher_sha256`) count as such only when `legacy_ok`: their table's teacher scored
    what this one scores."""
    return row["teacher_sha256"] == teacher_sha if "teacher_sha256" in row else legacy_ok


def current_committed_rows(committed: Path, rows: list[dict], spec: dict, settings: dict, split: str,
                           teacher_key: str, teacher_sha: str, legacy_ok: bool) -> list[dict]:
    """Committed rows of other variants, seeds or students that the current code, settings and
    teacher would reproduce (their key is what this code computes for them); stale ones are left out."""
    have = {(r["variant"], r["synthesis_seed"], r["student"]) for r in rows}
    found = []
    for path in sorted(committed.glob("*.json")) if committed.is_dir() else []:
        row = io.read_json(path)
        if (row.get("variant"), row.get("synthesis_seed"), row.get("student")) in have or "key" not in row:
            continue
        if not same_teacher(row, teacher_sha, legacy_ok):
            continue
        try:
            cfg = variant_config(row["variant"], spec, settings, row["synthesis_seed"])
        except RetaError:  # a method or field that no longer exists: stale
            continue
        soft, hard = protocol(settings, row["student"], "online"), protocol(settings, row["student"], "hard")
        keys = {io.sha256_json(row_identity(row["variant"], row["synthesis_seed"], row["student"], split, teacher_key,
                                            cfg, soft, h))[:16] for h in (hard, None)}
        if row["key"] in keys:
            found.append(row)
    return found


def run_bench(preset_name: str, tier: str, out: Path | None = None, data_root: str | None = None,
              methods: list[str] | None = None, synthesis_seeds: int = 1, students: list[str] | None = None,
              split: str = "test", publish: bool = False, progress: bool = True, hard_labels: bool = True,
              overwrite: bool = False) -> dict:
    spec = preset_spec(preset_name)
    if synthesis_seeds < 1:
        raise RetaError(f"--synthesis-seeds {synthesis_seeds}: must be at least 1")
    settings = tier_settings(tier)
    name = results_name(preset_name, tier, split)
    out = Path(out) if out is not None else Path.cwd() / "reta-bench" / name
    committed = Path.cwd() / "benchmarks" / "results" / name
    methods = methods or METHODS.names()
    variants = {label: parse_variant(label) for label in methods}
    recipe = build(SqueezeConfig, base=settings["teacher"])
    students = students or [settings["protocol"]["student"]]
    soft = {s: protocol(settings, s, "online") for s in students}
    # Hard-label students only serve HLR/LRS; a held-out study of defaults can skip them.
    hard = protocol(settings, students[0], "hard") if hard_labels else None
    configs = {(label, seed): variant_config(label, spec, settings, seed)
               for label in variants for seed in range(synthesis_seeds)}

    dev = device()
    t_start = time.time()
    train, test = load_dataset(spec["data"], data_root or pipeline.default_data_root())
    for s in students:  # an unknown student architecture fails before the teacher trains
        create_model(s, train.info.num_classes, train.info.image_size)
    key = pipeline.teacher_key(train, recipe)
    committed_teacher = committed_teacher_dir(key)
    teacher = teacher_of_key(key, train, test, recipe, dev, progress)
    if publish:
        refuse_other_teacher(Path.cwd() / "benchmarks" / "results" / f"{name}.json", teacher, committed_teacher)
    if any(method == BASELINE for method, _ in variants.values()):
        pipeline.check_real_subset(train, teacher.holdout, spec["ipc"])
    for cfg in configs.values():
        pipeline.check_recover(train, teacher.holdout, cfg)
    scored_on = pipeline.score_split(train, test, teacher, split)
    legacy_top1 = _legacy_rows_top1([Path.cwd() / "benchmarks" / "results" / f"{name}.json", out / f"{name}.json"])
    legacy_ok = legacy_top1 == teacher.meta["test_top1"]
    # What the finished sets under OUT were made with; the variants, seeds and students are not in it,
    # because each set has its own folder and each row its own key, so a rerun may add some.
    record = {"preset": spec, "tier": tier, "settings": settings, "split": split, "teacher_key": key}
    outdir.claim(out, "bench", overwrite=overwrite, run_record=record,
                 inputs=[*outdir.dataset_inputs(spec["data"], data_root or pipeline.default_data_root()),
                         teacher.path])
    print(f"[bench] {name}: teacher {teacher.arch} test top-1 {100 * teacher.meta['test_top1']:.1f}%; "
          f"{len(variants)} variants x {synthesis_seeds} synthesis seeds x {len(students)} students, "
          f"scored on {split} ({len(scored_on)} images)", flush=True)
    rows = []
    for (label, seed), cfg in configs.items():
        folder = run_folder(out, label, seed, cfg)
        loaded = None  # the distilled set, read only when some student's row is missing
        for i, student in enumerate(students):
            identity = row_identity(label, seed, student, split, key, cfg, soft[student], hard if i == 0 else None)
            row_key = io.sha256_json(identity)[:16]
            fname = row_file(label, seed, student)
            row = finished_row([out / "rows" / fname, committed / fname], row_key, teacher.weights_hash, legacy_ok)
            if row is None:
                if loaded is None:
                    loaded = pipeline.distilled(train, [teacher], cfg, folder / "distilled", dev, progress)
                row = score_row(identity, row_key, loaded, scored_on, soft[student], hard if i == 0 else None,
                                teacher, dev, folder, progress)
            io.write_json(out / "rows" / fname, row)
            if publish:  # at once, so rows can be committed while a long bench is still running
                io.write_json(committed / fname, row)
            rows.append(row)
            s = row["soft"]
            print(f"[bench] {label} seed {seed} {student}: {100 * s['top1_final_mean']:.2f} ± "
                  f"{100 * s['top1_final_std']:.2f}" + (f" (hard {100 * row['hard']['top1_final_mean']:.2f})"
                                                        if row["hard"] else ""), flush=True)
    aggregated = aggregate(rows, float(teacher.meta["test_top1"]))
    first = soft[students[0]]
    result = {
        "format": FORMAT, "preset": preset_name, "tier": tier, "split": split, "data": spec["data"], "ipc": spec["ipc"],
        "teacher": {"arch": teacher.arch, "test_top1": teacher.meta["test_top1"], "recipe": teacher.meta["recipe"],
                    "key": key, "weights_sha256": teacher.weights_hash, "legacy_rows_top1": legacy_top1},
        "recover": settings["recover"], "protocol_soft": dataclasses.asdict(first),
        "protocol_hard": dataclasses.asdict(hard) if hard else None, "students": students,
        "synthesis_seeds": list(range(synthesis_seeds)), "student_seeds": list(range(first.seeds)),
        "methods": aggregated, "compute_seconds": _compute_seconds(rows), "seconds": time.time() - t_start,
        "machine": machine(), "versions": io.versions(), "date": datetime.date.today().isoformat(),
        "command": _command(preset_name, tier, methods, synthesis_seeds, students, split),
    }
    io.write_json(out / f"{name}.json", result)
    io.write_bytes(out / "report.md", ("\n".join(section(result)) + "\n").encode())
    print("\n" + results_table(table_rows(result)), flush=True)
    if publish:
        results_dir = Path.cwd() / "benchmarks" / "results"
        earlier = current_committed_rows(committed, rows, spec, settings, split, key, teacher.weights_hash, legacy_ok)
        if earlier:  # the published table keeps every variant whose committed rows the current code would reproduce
            # The header names the synthesis seeds of every row shown, not only this invocation's.
            result = {**result, "methods": aggregate(rows + earlier, float(teacher.meta["test_top1"])),
                      "rows_from_earlier_runs": sorted({r["variant"] for r in earlier}),
                      "synthesis_seeds": sorted({r["synthesis_seed"] for r in rows + earlier})}
        io.write_json(results_dir / f"{name}.json", result)
        if teacher.path != committed_teacher:  # the table's teacher travels with its rows
            for f in ("weights.safetensors", "meta.json"):  # meta last: it marks the folder complete
                io.write_bytes(committed_teacher / f, (teacher.path / f).read_bytes())
        write_benchmarks_md(results_dir, Path.cwd() / "BENCHMARKS.md")
        print(f"[bench] published {results_dir / f'{name}.json'} and {len(rows)} rows; BENCHMARKS.md regenerated",
              flush=True)
    print(f"[bench] done in {result['seconds'] / 60:.1f} min -> {out}", flush=True)
    return result


def committed_teacher_dir(key: str) -> Path:
    return Path.cwd() / "benchmarks" / "teachers" / key


def teacher_of_key(key: str, train, test, recipe: SqueezeConfig, dev: torch.device, progress: bool):
    """The teacher of teacher_key `key`: the one committed in ./benchmarks/teachers/<key>/ if there
    is one, else the cache's (trained there if absent). The committed one comes first because the
    same recipe trained on another CPU gives other weights, and rows are only reused with the
    weights that made them. The key is taken, not recomputed: it hashes the whole training set."""
    committed = committed_teacher_dir(key)
    folder = committed if (committed / "meta.json").is_file() else pipeline.cached_teacher_dir(key)
    return pipeline.teacher_at(folder, train, test, recipe, dev, progress)


@dataclasses.dataclass(frozen=True)
class Study:
    """What `reta bench <preset> --tier full` distils and scores with, for the scripts that study a
    bench's sets or its teacher (benchmarks/*.py): one place decides their data, settings and
    teacher, so a study always reads the sets and teacher its bench rows were made with."""

    preset: str
    spec: dict
    settings: dict
    train: ImageSet
    test: ImageSet
    teacher_key: str
    teacher: Teacher
    dev: torch.device

    def config(self, label: str, seed: int) -> RecoverConfig:
        return variant_config(label, self.spec, self.settings, seed)

    def set_dir(self, bench_dir: Path, label: str, seed: int) -> Path:
        return run_folder(bench_dir, label, seed, self.config(label, seed)) / "distilled"

    def distilled(self, bench_dir: Path, label: str, seed: int):
        """(the set, its manifest) that bench keeps in bench_dir for this variant and synthesis seed,
        distilled there first, exactly as bench would, if it is missing."""
        return pipeline.distilled(self.train, [self.teacher], self.config(label, seed),
                                  self.set_dir(bench_dir, label, seed), self.dev, progress=False)


def full_tier_study(preset_name: str) -> Study:
    spec, settings = preset_spec(preset_name), tier_settings("full")
    train, test = load_dataset(spec["data"], pipeline.default_data_root())
    recipe = build(SqueezeConfig, base=settings["teacher"])
    key, dev = pipeline.teacher_key(train, recipe), device()
    return Study(preset_name, spec, settings, train, test, key, teacher_of_key(key, train, test, recipe, dev, False), dev)


def _comma_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give synthesis seeds as comma-separated integers, e.g. 0,1,2")


def add_set_arguments(parser: argparse.ArgumentParser, variants: str) -> None:
    """PRESET BENCH_DIR --variants --seeds: the arguments of a script that reads a bench folder's sets."""
    parser.add_argument("preset", help="a preset of configs/bench/presets.yaml, e.g. cifar10-ipc10")
    parser.add_argument("bench_dir", type=Path, help="the --out folder of a `reta bench PRESET --tier full`")
    parser.add_argument("--variants", type=_comma_list, default=variants, help="comma-separated variant labels")
    parser.add_argument("--seeds", type=_seed_list, default="0,1,2", help="comma-separated synthesis seeds")


def refuse_other_teacher(table: Path, teacher, committed_teacher: Path) -> None:
    """Publishing rows of other teacher weights than a committed table's would drop that table's
    rows (only rows of the publishing teacher are kept), so it is refused before any work."""
    if not table.is_file():
        return
    recorded = io.read_json(table).get("teacher", {})
    sha = recorded.get("weights_sha256")
    if sha == teacher.weights_hash or (sha is None and recorded.get("test_top1") == teacher.meta["test_top1"]):
        return
    made_by = f"weights {sha[:12]}" if sha else f"a teacher of test top-1 {recorded.get('test_top1')}"
    raise RetaError(f"{table} holds rows of {made_by}, not of this teacher ({teacher.path}, weights "
                    f"{teacher.weights_hash[:12]}): publishing would drop them; put that table's teacher in "
                    f"{committed_teacher}, or bench without --publish")


def finished_row(paths: list[Path], row_key: str, teacher_sha: str, legacy_ok: bool) -> dict | None:
    """The first row in `paths` with this row key made by the teacher whose weights hash to
    `teacher_sha`, or None: a row is only reused with the weights that made it."""
    for path in paths:
        if path.is_file():
            row = io.read_json(path)
            if row.get("key") == row_key and same_teacher(row, teacher_sha, legacy_ok):
                return row
    return None


def _legacy_rows_top1(results: list[Path]) -> float | None:
    """The test top-1 of the teacher that made a table's rows without `teacher_sha256` (the only
    fingerprint of its weights recorded then): the table's teacher before tables named weights,
    carried forward as `legacy_rows_top1` after."""
    for path in results:
        if path.is_file():
            recorded = io.read_json(path).get("teacher", {})
            return recorded.get("legacy_rows_top1") if "weights_sha256" in recorded else recorded.get("test_top1")
    return None


def score_row(identity: dict, row_key: str, loaded, scored_on, protocol: EvalProtocol, hard: EvalProtocol | None,
              teacher, dev, run_dir: Path, progress: bool) -> dict:
    """One bench row: `loaded` (a distilled set and its manifest) scored by the soft-label
    protocol, and by the hard-label one if given, with the recover diagnostics bench reports."""
    syn, manifest = loaded
    common = {"method": identity["variant"], "ipc": int(manifest["ipc"]), "progress": progress, "keep_runs": False}
    soft = pipeline.evaluation(run_dir / f"eval-{protocol.student}-online.json", syn, scored_on, protocol, dev,
                               teacher, **common)
    hard_res = None
    if hard is not None:
        hard_res = pipeline.evaluation(run_dir / f"eval-{hard.student}-hard.json", syn, scored_on, hard, dev, None,
                                       **common)
    timings = manifest.get("timings", {})
    # Per-refresh PTA gradient fidelity and per-group gradient ratios, kept as the manifest wrote them.
    diagnostics = {k: v for k, v in manifest.items() if "cosine" in k or "grad_ratio" in k}
    return {**identity, "key": row_key, "teacher_sha256": teacher.weights_hash, "soft": soft, "hard": hard_res,
            "distill_seconds": timings.get("wall_seconds"), "recover_seconds": timings.get("group_seconds"),
            "seconds_per_image": timings.get("seconds_per_image"),
            "recover_peak_memory_mb": manifest.get("peak_memory_mb"), "drc_share": manifest.get("drc_share"),
            "pta_share": manifest.get("pta_share"), "shared_anchor_fraction": manifest.get("shared_anchor_fraction"),
            "images": len(syn), "diagnostics": diagnostics}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _summary(evals: list[dict]) -> dict:
    finals = [x for e in evals for x in e["top1_final_per_seed"]]
    mean, std = mean_std(finals)
    return {"top1_final_mean": mean, "top1_final_std": std, "top1_final_per_run": finals, "runs": len(finals),
            "top1_best_mean": _mean([x for e in evals for x in e["top1_best_per_seed"]]),
            "std_kind": "sample std (ddof=1) over all runs (synthesis seeds x student seeds)",
            "seconds": sum(e["seconds"] for e in evals)}


def aggregate(rows: list[dict], teacher_top1: float) -> list[dict]:
    """One entry per (variant, student): mean ± std over all runs, paired Δ vs FADRM, Δ vs random, HLR/IOR/LRS."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["student"]), []).append(r)
    out = []
    for (variant, student), rs in groups.items():
        hard = [r["hard"] for r in rs if r["hard"]]
        out.append({
            "method": variant, "student": student, "synthesis_seeds": [r["synthesis_seed"] for r in rs],
            "soft": _summary([r["soft"] for r in rs]), "hard": _summary(hard) if hard else None,
            "top1_per_synthesis_seed": {str(r["synthesis_seed"]): float(np.mean(r["soft"]["top1_final_per_seed"]))
                                        for r in rs},
            "distill_seconds": _mean([r["distill_seconds"] for r in rs]),
            "recover_seconds": _mean([r["recover_seconds"] for r in rs]),
            "seconds_per_image": _mean([r["seconds_per_image"] for r in rs]),
            "recover_peak_memory_mb": _mean([r["recover_peak_memory_mb"] for r in rs]),
            "drc_share": _mean([r["drc_share"] for r in rs]), "pta_share": _mean([r["pta_share"] for r in rs]),
            "shared_anchor_fraction": _mean([r["shared_anchor_fraction"] for r in rs]),
            "diagnostics": {str(r["synthesis_seed"]): r["diagnostics"] for r in rs if r["diagnostics"]},
        })
    by = {(a["method"], a["student"]): a for a in out}
    for a in out:
        acc = a["soft"]["top1_final_mean"]
        rand, ref = by.get((BASELINE, a["student"])), by.get((REFERENCE, a["student"]))
        a["delta_vs_random"] = a["ior"] = a["delta_vs_fadrm"] = a["delta_vs_fadrm_std"] = a["time_vs_fadrm"] = None
        scores = pipeline.relative_scores(acc, rand["soft"]["top1_final_mean"] if rand else None,
                                          a["hard"]["top1_final_mean"] if a["hard"] else None, teacher_top1)
        a.update(scores, delta_vs_random=scores["ior"])
        if ref is not None:
            paired = paired_delta(a, ref)
            if paired:
                mean, std, seeds = paired
                a.update(delta_vs_fadrm=mean, delta_vs_fadrm_std=std, paired_seeds=seeds)
            if a["recover_seconds"] and ref["recover_seconds"]:
                a["time_vs_fadrm"] = a["recover_seconds"] / ref["recover_seconds"]
    return out


def paired_delta(a: dict, ref: dict) -> tuple[float, float | None, int] | None:
    """Mean and std (None with one seed) of a's top-1 minus ref's per shared synthesis seed, and the
    number of seeds; None when they share none. Entries as `aggregate` makes them."""
    diffs = [a["top1_per_synthesis_seed"][s] - ref["top1_per_synthesis_seed"][s]
             for s in a["top1_per_synthesis_seed"] if s in ref["top1_per_synthesis_seed"]]
    if not diffs:
        return None
    mean, std = mean_std(diffs)
    return mean, std if len(diffs) > 1 else None, len(diffs)


def _compute_seconds(rows: list[dict]) -> float:
    """Distillation (once per set) plus every student trained, so reruns that reuse rows report the whole."""
    sets = {(r["variant"], r["synthesis_seed"]): r["distill_seconds"] or 0.0 for r in rows}
    return sum(sets.values()) + sum(r["soft"]["seconds"] + (r["hard"]["seconds"] if r["hard"] else 0.0) for r in rows)


def _command(preset_name, tier, methods, synthesis_seeds, students, split) -> str:
    parts = [f"reta bench {preset_name} --tier {tier}"]
    if methods != METHODS.names():
        parts.append(f"--methods {','.join(methods)}")
    if synthesis_seeds != 1:
        parts.append(f"--synthesis-seeds {synthesis_seeds}")
    if len(students) > 1:
        parts.append(f"--students {','.join(students)}")
    if split != "test":
        parts.append(f"--split {split}")
    return " ".join(parts)


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
            "device": str(device())}


def table_rows(result: dict) -> list[dict]:
    """Rows for the shared table renderer; also reads the first-format results (one student, one synthesis seed)."""
    default_student = result["protocol_soft"]["student"]
    students = result.get("students", [default_student])
    split = result.get("split", "test")

    def order(r: dict) -> tuple:
        method, *sets = r["method"].split("+")
        student = r.get("student", default_student)
        return (TABLE_ORDER.index(method) if method in TABLE_ORDER else len(TABLE_ORDER), method, bool(sets),
                r["method"], students.index(student) if student in students else len(students), student)

    rows = []
    for r in sorted(result["methods"], key=order):
        s, h = r["soft"], r.get("hard")
        rows.append({
            "method": r["method"], "student": r.get("student", default_student), "split": split,
            "top1": (s["top1_final_mean"], s["top1_final_std"]), "delta_random": r.get("delta_vs_random"),
            "delta_fadrm": r.get("delta_vs_fadrm"), "delta_fadrm_std": r.get("delta_vs_fadrm_std"),
            "hard": (h["top1_final_mean"], h["top1_final_std"]) if h else None,
            "hlr": r.get("hlr"), "ior": r.get("ior"), "lrs": r.get("lrs"), "best": s.get("top1_best_mean"),
            "s_per_image": r.get("seconds_per_image"), "shared_anchor": r.get("shared_anchor_fraction"),
            "drc_share": r.get("drc_share"), "pta_share": r.get("pta_share"), "time_vs_fadrm": r.get("time_vs_fadrm"),
        })
    return rows


def section(result: dict) -> list[str]:
    """One preset's Markdown section: provenance, protocol, the table."""
    p, rec = result["protocol_soft"], result["recover"]
    compute = result.get("compute_seconds")
    if compute is None:  # first-format results: per-method work summed the same way
        compute = sum((m.get("distill_seconds") or 0.0) + m["soft"].get("seconds", 0.0) + m["hard"].get("seconds", 0.0)
                      for m in result["methods"])
    split = result.get("split", "test")
    students = result.get("students", [p["student"]])
    seeds = result.get("synthesis_seeds", [0])
    split_text = ("the test split" if split == "test"
                  else "the teacher's held-out training images (for choosing defaults; not a test result)")
    return [
        f"### {result['preset']} — {result['tier']} tier" + ("" if split == "test" else f", {split} split"), "",
        f"`{result['command']}` · {result['date']} · {result['machine']['cpu']} ({result['machine']['cores']} cores, "
        f"{result['machine']['device']}) · torch {result['versions']['torch']} · {compute / 60:.1f} min of distillation "
        f"and evaluation over all rows (teacher training excluded; {result['seconds'] / 60:.1f} min for the last "
        f"invocation)", "",
        f"Teacher {result['teacher']['arch']} ({result['teacher']['recipe']['epochs']} epochs): test top-1 "
        f"{100 * result['teacher']['test_top1']:.2f}% (also the HLR real-data reference). Recover: IPC {result['ipc']}, "
        f"budget {rec.get('iterations')} steps, synthesis seeds {', '.join(map(str, seeds))}. Students "
        f"{', '.join(students)}: {p['epochs']} epochs, batch {p['batch_size']}, AdamW lr {p['lr']}, cosine η={p['eta']}, "
        f"KD T={p['temperature']} with online teacher labels; {p['seeds']} student seeds per synthesis seed; hard labels "
        f"(CutMix cross-entropy, for HLR) with {students[0]} only. Top-1 in % on {split_text}, final epoch, mean ± "
        f"sample std over all runs (synthesis seeds × student seeds); Δ vs FADRM is the mean ± std of the "
        f"per-synthesis-seed paired differences (no std with one seed). HLR/IOR in percentage points, LRS ×100 "
        f"computed on fractions. \"recover time / FADRM\" divides the recover times the rows recorded, which may "
        f"have been made at different times under different load; a controlled ratio is measured alone by "
        f"benchmarks/recover_cost.py (recover-cost-*.json).", "",
        results_table(table_rows(result)), "",
    ]


def write_benchmarks_md(results_dir: Path, path: Path) -> None:
    """Regenerate the generated section of BENCHMARKS.md from every bench results JSON (never pasted by hand)."""
    sections = []
    for f in sorted(Path(results_dir).glob("*.json")):
        r = io.read_json(f)
        if "protocol_soft" not in r:  # sweeps and GPU results have their own hand-written sections
            continue
        sections += section(r)
    generated = "\n".join(sections)
    start, end = "<!-- generated: reta bench -->", "<!-- end generated -->"
    text = path.read_text() if path.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    io.write_bytes(path, f"{head}{start}\n{generated}\n{end}{tail}".encode())

