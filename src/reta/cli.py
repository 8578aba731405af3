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
    p.add_argument("--baseline", choices=["random"], default=None, help="also evaluate a random real subset of the same ipc")
    p.add_argument("--split", choices=["test", "holdout"], default="test",
                   help="holdout: the teacher's held-out train images, for choosing hyperparameters")
    p.add_argument("--out", required=True)
    _config_args(p)

    p = sub.add_parser("report", parents=[common], help="topology/anchor report of a distilled set (Markdown + PNG)")
    _data_args(p)
    p.add_argument("--distilled", required=True)
    p.add_argument("--teacher", required=True, help="teacher whose features are shown (the run's first teacher)")
    p.add_argument("--max-classes", type=int, default=10, help="report the first N classes (default 10)")
    p.add_argument("--out", required=True)
    _overwrite_arg(p, "report")

    p = sub.add_parser("demo", parents=[common], help="the whole pipeline on scikit-learn's digits (no download), in minutes")
    p.add_argument("--out", default="reta-demo")
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")

    p = sub.add_parser("export-ddranking", help="copy a distilled set, teacher weights and a config for DD-Ranking")
    p.add_argument("--distilled", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", required=True)

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
    from reta import config, data, dist, runtime, teacher
    from reta.recover import distill, preset

    dev = runtime.device()
    ctx = dist.init_from_env(dev)
    base = preset(args.method)
    base.update(ipc=args.ipc, **({"iterations": args.iterations} if args.iterations is not None else {}))
    cfg = config.build(config.RecoverConfig, args.config, _flat(args.sets), base=base)
    train, _ = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    teachers = [teacher.load_teacher(t, expect=train.info, dev=dev) for t in args.teacher]
    t0 = time.time()
    try:
        manifest = distill(train, teachers, cfg, Path(args.out), dev, rank=ctx.rank, world=ctx.world,
                           barrier=ctx.barrier, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                           progress=not args.quiet and ctx.is_main)
    finally:
        dist.shutdown()
    if manifest is not None:
        t = manifest["timings"]
        print(f"{cfg.method}: {train.info.num_classes * cfg.ipc} images in {time.time() - t0:.1f} s "
              f"({t['seconds_per_image']:.3f} s/image; DRC {100 * manifest['drc_share']:.1f}%, "
              f"PTA {100 * manifest['pta_share']:.1f}% of recover) -> {args.out}")
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
    from reta import config, data, distilled, io, teacher
    from reta.data.dataset import split_holdout
    from reta.evaluate import evaluate, random_subset
    from reta.evaluate.metrics import ior

    base = {k: v for k, v in {"student": args.student, "epochs": args.epochs, "seeds": args.seeds}.items() if v is not None}
    if args.labels:
        base["labels"] = "stored"
    protocol = config.build(config.EvalProtocol, args.config, _flat(args.sets), base=base)
    train, test = data.load_dataset(args.data, args.data_root, args.image_size, args.download)
    t = teacher.load_teacher(args.teacher, expect=train.info, dev=dev)
    fit, held = split_holdout(train, *t.holdout)
    if args.split == "holdout":
        if not len(held):
            raise RetaError(f"teacher {args.teacher} was trained without a held-out split; squeeze with --set holdout_fraction=0.1")
        test = held
    syn, manifest = distilled.read_distilled(args.distilled, expect=train.info)
    store = None
    if args.labels:
        from reta.labels.store import LabelStore

        store = LabelStore(Path(args.labels))
    out = Path(args.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        io.write_json(out / "config.json", {"protocol": dataclasses.asdict(protocol), "distilled": args.distilled,
                                            "teacher": args.teacher, "data": args.data, "split": args.split,
                                            "world_size": ctx.world, "versions": io.versions()})
    progress = not args.quiet and ctx.is_main
    result = evaluate(syn, test, train.info, protocol, dev, t.model, label_store=store, seeds=protocol.seeds,
                      method=manifest.get("method", "unknown"), ipc=manifest["ipc"], progress=progress, ctx=ctx)
    result.update(split=args.split, distilled=args.distilled, teacher_test_top1=t.meta.get("test_top1"),
                  world_size=ctx.world)
    if args.baseline == "random":
        real = random_subset(fit, manifest["ipc"], seed=protocol.seeds)
        base_res = evaluate(real, test, train.info, protocol, dev, t.model, seeds=protocol.seeds,
                            method="random", ipc=manifest["ipc"], progress=progress, ctx=ctx)
        result["baseline_random"] = base_res
        result["ior"] = ior(result["top1_final_mean"], base_res["top1_final_mean"])
    if ctx.is_main:
        io.write_json(out / "result.json", result)
        print(format_results([result] + ([result["baseline_random"]] if args.baseline else [])))
    return 0


def format_results(results: list[dict]) -> str:
    """Plain table: method, ipc, student, final-epoch top-1 mean ± std (best-epoch labelled), seconds."""
    rows = [f"{'method':<10} {'ipc':>4} {'student':<14} {'top-1 final (mean ± std)':>26} {'best-epoch':>11} {'seconds':>8}"]
    for r in results:
        rows.append(f"{r['method']:<10} {r['ipc']:>4} {r['student']:<14} "
                    f"{100 * r['top1_final_mean']:>17.2f} ± {100 * r['top1_final_std']:5.2f} "
                    f"{100 * r['top1_best_mean']:>11.2f} {r['seconds']:>8.1f}")
    return "\n".join(rows)


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

    run_demo(Path(args.out), methods=args.methods.split(",") if args.methods else None, progress=not args.quiet)
    return 0


def cmd_export_ddranking(args) -> int:
    from reta import teacher
    from reta.evaluate.ddranking import export

    out = export(Path(args.distilled), teacher.load_teacher(args.teacher), Path(args.out))
    print(f"DD-Ranking input -> {out} (images/, teacher.pth, config.yaml)")
    return 0


def cmd_bench(args) -> int:
    from reta.bench import run_bench

    run_bench(args.preset, args.tier, Path(args.out) if args.out else None, args.data_root,
              methods=args.methods.split(",") if args.methods else None, synthesis_seeds=args.synthesis_seeds,
              students=args.students.split(",") if args.students else None, split=args.split, publish=args.publish,
              progress=not args.quiet)
    return 0


COMMANDS = {"squeeze": cmd_squeeze, "distill": cmd_distill, "relabel": cmd_relabel, "evaluate": cmd_evaluate,
            "report": cmd_report, "demo": cmd_demo, "bench": cmd_bench,
            "export-ddranking": cmd_export_ddranking}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RetaError as exc:
        message = " ".join(str(exc).splitlines())  # one line, even if a library's text had several
        print(f"reta {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reta {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
