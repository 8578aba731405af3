"""Re-score finished bench sets with a longer student budget: does the full tier's 60-epoch
student compress the difference between methods? (The paper trains students 300-1,000 epochs.)

    .venv/bin/python benchmarks/student_budget.py imagenette32-ipc10 \
        benchmarks/results/epyc-avx2-2026-12-03/imagenette32-ipc10-full-holdout \
        --variants fadrm,reta --seeds 0,1,2 --epochs 300 --split holdout

BENCH_DIR is a `reta bench --tier full` folder: its distilled sets are read from
BENCH_DIR/<variant>/seed<N>-<hash>/distilled (distilled there first if missing, exactly as bench
would), so only the students are trained. Everything else is the full tier's protocol; only
`epochs` changes (`eval_every` scales with it, so each run has as many held-out evaluations).
Rows in bench's format go to BENCH_DIR-e<EPOCHS>/rows/, one per (variant, seed, student), as
soon as each is finished; a rerun skips finished rows. Read them with benchmarks/paired_table.py.
"""

from __future__ import annotations

import argparse
import dataclasses


def main() -> None:
    from reta import io, pipeline
    from reta.bench import (add_set_arguments, finished_row, full_tier_study, protocol, row_file, row_identity,
                            run_folder, score_row)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_set_arguments(parser, "fadrm,reta")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--student", default="convnet3")
    parser.add_argument("--split", choices=["test", "holdout"], default="holdout")
    args = parser.parse_args()

    study = full_tier_study(args.preset)
    train, teacher, dev, key = study.train, study.teacher, study.dev, study.teacher_key
    settings = study.settings
    base_epochs = settings["protocol"]["epochs"]
    settings = {**settings, "protocol": {**settings["protocol"], "epochs": args.epochs,
                                         "eval_every": settings["protocol"]["eval_every"] * args.epochs // base_epochs}}
    soft = protocol(settings, args.student, "online")
    scored_on = pipeline.score_split(train, study.test, teacher, args.split)
    out = args.bench_dir.parent / f"{args.bench_dir.name}-e{args.epochs}"
    for seed in args.seeds:
        for label in args.variants:
            cfg = study.config(label, seed)
            identity = row_identity(label, seed, args.student, args.split, key, cfg, soft, None)
            row_key = io.sha256_json(identity)[:16]
            fname = row_file(label, seed, args.student)
            if finished_row([out / "rows" / fname], row_key, teacher.weights_hash, legacy_ok=False):
                print(f"[student-budget] {label} seed {seed}: done before", flush=True)
                continue
            loaded = study.distilled(args.bench_dir, label, seed)
            row = score_row(identity, row_key, loaded, scored_on, soft, None, teacher, dev,
                            run_folder(out, label, seed, cfg), progress=False)
            io.write_json(out / "rows" / fname, row)
            s = row["soft"]
            print(f"[student-budget] {label} seed {seed} ({args.epochs} epochs): {100 * s['top1_final_mean']:.2f} ± "
                  f"{100 * s['top1_final_std']:.2f} in {s['seconds']:.0f} s", flush=True)
    print(f"[student-budget] rows in {out / 'rows'}; protocol {dataclasses.asdict(soft)}", flush=True)


if __name__ == "__main__":
    main()
