"""`reta squeeze | distill | relabel | evaluate | report | demo | bench` — the command line.

User mistakes raise RetaError and end here as one line on stderr with exit status 2.
Presets fill defaults; --config YAML and --set key=value override them; the resolved config is
written beside every output before the work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from reta.errors import RetaError


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset name, npz:DIR or imagefolder:DIR")
    p.add_argument("--data-root", default=None, help="folder holding named datasets (default $RETA_DATA_ROOT)")
    p.add_argument("--image-size", type=int, default=None, help="side length for folder datasets (default: dataset's own)")
    p.add_argument("--download", action="store_true", help="download the named dataset through torchvision if missing")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of config keys")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="override a config key, e.g. --set drc.lam=0.2 pta.k=5")


def _overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace a finished {what} in --out (only the files this command writes)")


def _flat(sets: list) -> list[str]:
    return [s for group in sets for s in (group if isinstance(group, list) else [group])]


def build_parser() -> argparse.ArgumentParser:
    from reta.recover import METHODS

    parser = argparse.ArgumentParser(prog="reta", description="Decoupled dataset distillation with RETA.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # --quiet is also accepted after the subcommand; SUPPRESS keeps the subparser from resetting
    # a --quiet given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("squeeze", parents=[common], help="train (or import) a teacher")
    _data_args(p)
    p.add_argument("--arch", default=None, help="convnet3, convnet3-w32, resnet18, resnet50, ...")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--init-weights", default=None, help="start from these weights (.safetensors or a torch state_dict); "
                   "with --epochs 0 this imports a pretrained teacher")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "teacher")
    _config_args(p)

    p = sub.add_parser("distill", parents=[common], help="recover a distilled set")
    _data_args(p)
    p.add_argument("--teacher", required=True, action="append", help="teacher folder; repeat for FADRM+ round robin")
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS.names())}")
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--iterations", type=int, default=None, help="total recover budget B")
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=None, help="pool feature cache (default $RETA_CACHE or ~/.cache/reta)")
    _overwrite_arg(p, "distilled set")
    _config_args(p)

    p = sub.add_parser("relabel", parents=[common], help="store FKD-style soft labels for a distilled set")
    p.add_argument("--distilled", required=True)
    p.add_argument("--teacher", required=True, action="append")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "label store")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    _config_args(p)

    p = sub.add_parser("evaluate", parents=[common], help="train students on a distilled set and report final-epoch top-1")
    _data_args(p)
    p.add_argument("--teacher", required=True)
    p.add_argument("--distilled", required=True)
    p.add_argument("--student", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--labels", default=None, help="stored soft labels from `reta relabel` (sets labels=stored)")
    p.add_argument("--baseline", choices=["random"], default=None,
                   help="also evaluate `--method random` with the set's seed and ipc (kept in OUT/baseline-random/)")
    p.add_argument("--split", choices=["test", "holdout"], default="test",
                   help="holdout: the teacher's held-out train images, for choosing hyperparameters")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "evaluation")
    _config_args(p)

    p = sub.add_parser("run", parents=[common], help="the whole pipeline on your data: teacher, distil, evaluate, report.md")
    _data_args(p)
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS.names())}")
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--out", required=True, help="everything goes here; rerun the same command to resume")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing a finished or unfinished run with other settings "
                        "(only the files `reta run` writes)")
    p.add_argument("--arch", default=None, help="teacher architecture (default: configs/run.yaml's)")
    p.add_argument("--teacher", default=None, help="use this teacher folder instead of training one into OUT/teacher")
    p.add_argument("--iterations", type=int, default=None, help="recover budget B")
    p.add_argument("--epochs", type=int, default=None, help="student epochs")
    p.add_argument("--seeds", type=int, default=None, help="student seeds")
    p.add_argument("--baseline", choices=["random", "none"], default="random",
                   help="compare with `--method random` at the same ipc and seed (default) or not")
    p.add_argument("--config", default=None, help="YAML with teacher:, recover: and protocol: sections")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE", nargs="+",
                   help="override a key, e.g. --set teacher.epochs=30 recover.drc.lam=0.2 protocol.lr=1e-3")

    p = sub.add_parser("report", parents=[common], help="topology/anchor report of a distilled set (Markdown + PNG)")
    _data_args(p)
    p.add_argument("--distilled", required=True)
    p.add_argument("--teacher", required=True, help="teacher whose features are shown (the run's first teacher)")
    p.add_argument("--max-classes", type=int, default=10, help="report the first N classes (default 10)")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "report")

    p = sub.add_parser("demo", parents=[common], help="the whole pipeline on scikit-learn's digits (no download), in minutes")
    p.add_argument("--out", default="reta-demo")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods (default: every registered one)")
    p.add_argument("--config", default=None, help="budgets (default configs/demo.yaml)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing a demo made with other budgets (only the files the demo writes)")

    p = sub.add_parser("export-ddranking", help="a folder DD-Ranking 0.2.0 scores as it is (docs/ddranking.md)")
    _data_args(p)
    p.add_argument("--distilled", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", default=None, help="student arch DD-Ranking trains (default: the protocol's)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (DD-Ranking's num_epochs)")
    p.add_argument("--seeds", type=int, default=None, help="evaluation rounds (DD-Ranking's num_eval)")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "export")
    _config_args(p)

    p = sub.add_parser("bench", parents=[common], help="benchmark every method under one protocol (BENCHMARKS.md)")
    p.add_argument("preset", help="a preset of configs/bench/presets.yaml, e.g. imagenette32-ipc10, cifar10-ipc10")
    p.add_argument("--tier", choices=["quick", "full"], default="quick", help="budgets from configs/bench/<tier>.yaml")
    p.add_argument("--out", default=None, help="every file goes here (default ./reta-bench/<preset>-<tier>)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", default=None,
                   help="comma-separated; a variant adds +key=value overrides, e.g. reta+pta.weight=0.005")
    p.add_argument("--synthesis-seeds", type=int, default=1, metavar="N",
                   help="distil every variant with recover seeds 0..N-1; each set is scored with every student seed")
    p.add_argument("--students", default=None,
                   help="comma-separated student architectures (default: the tier's); hard labels use the first only")
    p.add_argument("--split", choices=["test", "holdout"], default="test",
                   help="holdout: score on the teacher's held-out train images, for choosing defaults")
    p.add_argument("--publish", action="store_true",
                   help="copy the results JSON and rows into ./benchmarks/results/ and regenerate ./BENCHMARKS.md")
    p.add_argument("--no-hard-labels", dest="hard_labels", action="store_false",
                   help="skip the hard-label students (HLR/LRS), e.g. for a held-out study of defaults")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in --out, replacing a bench made with other settings (only the files bench "
                        "writes; rows committed in ./benchmarks/results/ are still reused)")
    return parser


def cmd_squeeze(args) -> int:
    from reta import config, data, outdir, runtime, teacher

    dev = runtime.device()
    base = {"arch": args.arch} if args.arch else {}
    if args.epochs is not None:
        base["epochs"] = args.epochs
    cfg = config.build(config.SqueezeConfig, args.config, _flat(args.sets), base=base)
    train, test = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    t = teacher.squeeze(train, test, cfg, Path(args.out), dev,
                        init_weights=Path(args.init_weights) if args.init_weights else None, progress=not args.quiet,
                        inputs=outdir.dataset_inputs(args.data, args.data_root), overwrite=args.overwrite)
    print(f"teacher {cfg.arch}: test top-1 {t.meta['test_top1']:.4f} ({len(test)} images), "
          f"{t.meta['seconds']:.0f} s -> {args.out}")
    return 0


def cmd_distill(args) -> int:
    from reta import config, data, dist, outdir, runtime, teacher
    from reta.recover import distill, preset

    dev = runtime.device()
    ctx = dist.init_from_env(dev)
    flags = {"ipc": args.ipc, **({"iterations": args.iterations} if args.iterations is not None else {})}
    cfg = config.build(config.RecoverConfig, args.config, _flat(args.sets), base=preset(args.method), flags=flags)
    train, _ = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    teachers = [teacher.load_teacher(t, expect=train.info, dev=dev) for t in args.teacher]
    t0 = time.time()
    try:
        manifest = distill(train, teachers, cfg, Path(args.out), dev, rank=ctx.rank, world=ctx.world,
                           barrier=ctx.barrier, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           progress=not args.quiet and ctx.is_main,
                           inputs=outdir.dataset_inputs(args.data, args.data_root), overwrite=args.overwrite)
    finally:
        dist.shutdown()
    if manifest is not None:
        t = manifest["timings"]
        shares = ", ".join(f"{k[:-6].upper()} {100 * v:.1f}%" for k, v in manifest.items() if k.endswith("_share"))
        print(f"{cfg.method}: {train.info.num_classes * cfg.ipc} images in {time.time() - t0:.1f} s "
              f"({t['seconds_per_image']:.3f} s/image{'; ' + shares + ' of recover' if shares else ''}) -> {args.out}")
    return 0


def cmd_relabel(args) -> int:
    from reta import config, dist, distilled, runtime, teacher
    from reta.labels.store import relabel

    dev = runtime.device()
    ctx = dist.init_from_env(dev)  # under torchrun: label shards are dealt to the ranks
    base = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size}.items() if v is not None}
    cfg = config.build(config.RelabelConfig, args.config, _flat(args.sets), base=base)
    images, _ = distilled.read_distilled(args.distilled)
    teachers = [teacher.load_teacher(t, expect=images.info, dev=dev) for t in args.teacher]
    try:
        out = relabel(images, [t.model for t in teachers], images.info, cfg, Path(args.out), dev,
                      progress=not args.quiet and ctx.is_main, rank=ctx.rank, world=ctx.world, barrier=ctx.barrier,
                      inputs=[Path(args.distilled), *map(Path, args.teacher)], overwrite=args.overwrite)
    finally:
        dist.shutdown()
    if ctx.is_main:
        print(f"soft labels for {len(images)} images x {cfg.epochs} epochs -> {out}")
    return 0


def cmd_evaluate(args) -> int:
    from reta import dist, runtime

    dev = runtime.device()
    ctx = dist.init_from_env(dev)  # under torchrun: every student trains with DDP, rank 0 writes
    try:
        return _evaluate(args, dev, ctx)
    finally:
        dist.shutdown()


def _evaluate(args, dev, ctx) -> int:
    from reta import config, data, distilled, io, outdir, pipeline, teacher
    from reta.models import create_model
    from reta.reports import results_table

    base = {k: v for k, v in {"student": args.student, "epochs": args.epochs, "seeds": args.seeds}.items() if v is not None}
    if args.labels:
        base["labels"] = "stored"
    protocol = config.build(config.EvalProtocol, args.config, _flat(args.sets), base=base)
    train, test = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    t = teacher.load_teacher(args.teacher, expect=train.info, dev=dev)
    scored_on = pipeline.score_split(train, test, t, args.split)
    store = None
    if args.labels:
        from reta.labels.store import LabelStore

        store = LabelStore(Path(args.labels))
    _, manifest = distilled.read_distilled(args.distilled, expect=train.info)
    create_model(protocol.student, train.info.num_classes, train.info.image_size)
    pipeline.check_baseline([protocol], train, t.holdout, int(manifest["ipc"]), args.baseline == "random")
    out = Path(args.out)
    if ctx.is_main:
        inputs = [*outdir.dataset_inputs(args.data, args.data_root), Path(args.teacher), Path(args.distilled),
                  *([Path(args.labels)] if args.labels else [])]
        outdir.claim(out, "evaluation", inputs=inputs, overwrite=args.overwrite)
    if ctx.world > 1:
        ctx.barrier()  # no rank trains before rank 0 has claimed --out (or been refused)
    if ctx.is_main:
        io.write_json(out / "config.json", {"protocol": dataclasses.asdict(protocol), "distilled": args.distilled,
                                            "teacher": args.teacher, "data": args.data, "split": args.split,
                                            "world_size": ctx.world, "versions": io.versions()})
    result = pipeline.run_set(train=train, scored_on=scored_on, teacher=t, folder=Path(args.distilled), out=out,
                              protocols=[protocol], dev=dev, baseline=args.baseline == "random", label_store=store,
                              progress=not args.quiet and ctx.is_main, ctx=ctx, resume=False,
                              extra={"split": args.split, "distilled": args.distilled, "world_size": ctx.world})
    if ctx.is_main:
        print(results_table(pipeline.table_rows(result)))
    return 0


def cmd_run(args) -> int:
    from reta import config, data, io, outdir, pipeline, runtime, teacher
    from reta.models import create_model
    from reta.reports import results_table, run_report, topology_report

    dev = runtime.device()
    flags = {"teacher": {"arch": args.arch}, "recover": {"ipc": args.ipc, "iterations": args.iterations},
             "protocol": {"epochs": args.epochs, "seeds": args.seeds}}
    flags = {name: {k: v for k, v in keys.items() if v is not None} for name, keys in flags.items()}
    defaults = config.load_yaml(pipeline.configs_dir() / "run.yaml")
    cfgs = pipeline.sectioned_configs(defaults, args.method, args.config, _flat(args.sets), flags)
    train, test = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    out = Path(args.out)
    progress = not args.quiet
    t = teacher.load_teacher(args.teacher, expect=train.info, dev=dev) if args.teacher else None
    # Everything the teacher, the distillation and the students would refuse, refused before --out
    # is claimed, so a corrected command starts clean instead of meeting "other settings".
    if t is None:
        create_model(cfgs["teacher"].arch, train.info.num_classes, train.info.image_size)
    create_model(cfgs["protocol"].student, train.info.num_classes, train.info.image_size)
    holdout = t.holdout if t is not None else (cfgs["teacher"].holdout_fraction, cfgs["teacher"].seed)
    pipeline.check_recover(train, holdout, cfgs["recover"])
    pipeline.check_baseline([cfgs["protocol"]], train, holdout, args.ipc, args.baseline == "random")
    resolved = {name: dataclasses.asdict(cfg) for name, cfg in cfgs.items()}
    record = {"configs": resolved, "data_hash": train.content_hash(), "baseline": args.baseline,
              "teacher_sha256": t.weights_hash if t is not None else None}
    outdir.claim(out, "run", overwrite=args.overwrite, run_record=record,
                 inputs=[*outdir.dataset_inputs(args.data, args.data_root), *([Path(args.teacher)] if args.teacher else [])])
    if t is None:
        t = pipeline.teacher_at(out / "teacher", train, test, cfgs["teacher"], dev, progress)
    io.write_json(out / "config.json", {**resolved, "data": args.data, "teacher_dir": str(t.path),
                                        "versions": io.versions()})
    result = pipeline.run_set(train=train, scored_on=test, teacher=t, folder=out / "distilled", out=out,
                              protocols=[cfgs["protocol"]], dev=dev, cfg=cfgs["recover"],
                              baseline=args.baseline == "random", progress=progress,
                              extra={"split": "test", "data": args.data})
    images, manifest = pipeline.distilled(train, [t], cfgs["recover"], out / "distilled", dev, progress)
    topology = None
    if manifest.get("drc_selections") or (manifest.get("pta_share") or 0) > 0:
        topology = topology_report(out / "distilled", t, train, out / "topology")
    table = results_table(pipeline.table_rows(result))
    settings = {"teacher": {"arch": t.arch, "epochs": t.meta.get("recipe", {}).get("epochs"), "folder": str(t.path)},
                "recover": {k: v for k, v in resolved["recover"].items() if not isinstance(v, dict)},
                "student": resolved["protocol"]}
    path = run_report(out, result, images, table, settings, topology)
    print(table + f"\n\nreport -> {path}")
    return 0


def cmd_report(args) -> int:
    from reta import data, distilled, outdir, runtime, teacher
    from reta.reports import topology_report

    if args.max_classes < 1:
        raise RetaError(f"--max-classes {args.max_classes}: must be at least 1")
    dev = runtime.device()
    train, _ = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    t = teacher.load_teacher(args.teacher, expect=train.info, dev=dev)
    distilled.read_distilled(args.distilled, expect=train.info)
    outdir.claim(Path(args.out), "report", overwrite=args.overwrite,
                 inputs=[*outdir.dataset_inputs(args.data, args.data_root), Path(args.distilled), Path(args.teacher)])
    path = topology_report(Path(args.distilled), t, train, Path(args.out), max_classes=args.max_classes)
    print(f"report -> {path}")
    return 0


def cmd_demo(args) -> int:
    from reta.demo import run_demo

    run_demo(Path(args.out), methods=args.methods.split(",") if args.methods else None,
             config_path=Path(args.config) if args.config else None, progress=not args.quiet, overwrite=args.overwrite)
    return 0


def cmd_export_ddranking(args) -> int:
    from reta import config, data, outdir, teacher
    from reta.evaluate import ddranking

    base = {k: v for k, v in {"student": args.student, "epochs": args.epochs, "seeds": args.seeds}.items() if v is not None}
    protocol = config.build(config.EvalProtocol, args.config, _flat(args.sets), base=base)
    train, test = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    t = teacher.load_teacher(args.teacher, expect=train.info)
    dd_config = ddranking.prepare(Path(args.distilled), t, protocol)
    out = outdir.claim(Path(args.out), "ddranking", overwrite=args.overwrite,
                       inputs=[*outdir.dataset_inputs(args.data, args.data_root), Path(args.distilled), Path(args.teacher)])
    ddranking.export(Path(args.distilled), t, train, test, out, dd_config)
    print(f"DD-Ranking {ddranking.DDRANKING_VERSION} input -> {out}; score it with "
          f".venv-ddranking/bin/python {out}/run_ddranking.py")
    return 0


def cmd_bench(args) -> int:
    from reta.bench import run_bench

    run_bench(args.preset, args.tier, Path(args.out) if args.out else None, args.data_root,
              methods=args.methods.split(",") if args.methods else None, synthesis_seeds=args.synthesis_seeds,
              students=args.students.split(",") if args.students else None, split=args.split, publish=args.publish,
              progress=not args.quiet, hard_labels=args.hard_labels, overwrite=args.overwrite)
    return 0


COMMANDS = {"squeeze": cmd_squeeze, "distill": cmd_distill, "relabel": cmd_relabel, "evaluate": cmd_evaluate,
            "run": cmd_run,
            "report": cmd_report, "demo": cmd_demo, "bench": cmd_bench,
            "export-ddranking": cmd_export_ddranking}


RESUMING_COMMANDS = {"distill", "relabel", "bench"}  # a rerun continues from what the interrupted one wrote
INPUT_FLAGS = ("config", "data", "teacher", "distilled", "labels", "init_weights")


def _inputs(args) -> str:
    """The input paths on this command line, for errors raised where the file's name was lost."""
    named = []
    for flag in INPUT_FLAGS:
        value = getattr(args, flag, None)
        for v in value if isinstance(value, list) else [value]:
            if v:
                named.append(f"--{flag.replace('_', '-')} {v}")
    return ", ".join(named) or "the command's inputs"


def _os_error(exc: BaseException) -> OSError | None:
    """exc as an OSError: safetensors reports I/O failures as SafetensorError text ('(os error 28) at path "P"')."""
    import os
    import re

    if isinstance(exc, OSError):
        return exc
    if type(exc).__name__ == "SafetensorError":
        code, at = re.search(r"\(os error (\d+)\)", str(exc)), re.search(r'at path "([^"]+)"', str(exc))
        if code:  # the path is safetensors' own temporary: name the folder it was writing into
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))),
                           str(Path(at.group(1)).parent) if at else None)
    return None


def _os_error_line(exc: OSError, args) -> str:
    import errno

    resume = " the same command to resume" if args.command in RESUMING_COMMANDS else ""
    space = f"free some space, or choose another --out, and rerun{resume}"
    hints = {
        errno.ENOENT: ("no such file or folder", "check the path"),
        errno.EACCES: ("permission denied", "check its permissions, or choose a folder you can write to"),
        errno.EPERM: ("operation not permitted", "check its permissions, or choose a folder you can write to"),
        errno.EROFS: ("read-only file system", "choose a writable --out"),
        errno.ENOSPC: ("no space left on the device", space),
        errno.EDQUOT: ("disk quota exceeded", space),
        errno.EEXIST: ("exists and is not a folder", "remove it, or choose another path"),
        errno.ENOTDIR: ("a part of the path is a file, not a folder", "remove that file, or choose another path"),
        errno.EISDIR: ("is a folder, not a file", "pass the file itself"),
        errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
        errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and rerun"),
        errno.EIO: ("input/output error", "check the disk, then rerun"),
    }
    what, fix = hints.get(exc.errno, (exc.strerror or str(exc), "check the path"))
    path = exc.filename
    if path is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
        path = getattr(args, "out", None)  # a failed write() on an open file no longer knows its name
    where = f"{path} -> {exc.filename2}" if path is not None and exc.filename2 is not None else path
    return f"{where}: {what} ({fix})" if where is not None else f"{what} ({fix})"


def _error_line(exc: Exception, args) -> str | None:
    """The one line for an error the user can act on, or None for a bug (which keeps its traceback)."""
    import json

    import yaml

    if isinstance(exc, RetaError):
        return str(exc)
    os_error = _os_error(exc)
    if os_error is not None:
        return _os_error_line(os_error, args)
    if isinstance(exc, UnicodeDecodeError):
        return (f"{_inputs(args)}: a file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                f"save it as UTF-8 or regenerate it (RETA_DEBUG=1 shows which)")
    if isinstance(exc, json.JSONDecodeError):
        return (f"{_inputs(args)}: a JSON file is invalid ({exc.msg} at line {exc.lineno}); "
                f"regenerate it (RETA_DEBUG=1 shows which)")
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = mark.name if mark is not None and not mark.name.startswith("<") else _inputs(args)
        return f"{where}: invalid YAML ({str(exc).splitlines()[0]}); fix the file"
    if isinstance(exc, (KeyError, TypeError)):
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        return (f"{_inputs(args)}: an input is malformed ({type(exc).__name__}: {what}); an artifact is incomplete "
                f"or from another reta version: regenerate it (RETA_DEBUG=1 shows the traceback)")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error the user can act on ends as one line and status 2 (RETA_DEBUG=1 re-raises)."""
    import os

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume" if args.command in RESUMING_COMMANDS else ""
        print(f"reta {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:
        line = _error_line(exc, args)
        if line is None or os.environ.get("RETA_DEBUG", "") not in ("", "0"):
            raise
        message = " ".join(line.splitlines())  # one line, even if a library's text had several
        print(f"reta {args.command}: error: {message}", file=sys.stderr)
        return 2
