"""Score this folder with DD-Ranking 0.2.0: `python run_ddranking.py` in a virtualenv with `ddranking==0.2.0`.

Written by `reta export-ddranking` beside config.yaml; needs DD-Ranking, not reta. It builds DD-Ranking's
own evaluator from config.yaml and calls `compute_metrics(image_path=..., syn_lr=...)`, after these
workarounds for DD-Ranking 0.2.0 (each only where it applies):

* real/md5.json present: torchvision checks CIFAR batch files against the original archive's md5s and
  otherwise downloads it (even with the files present); these batches were regenerated from reta's
  data, so the check runs against the md5s the export recorded instead.
* num_epochs below its test interval (20 soft, 10 hard) would never test a student and score 0: the
  interval is capped at num_epochs.
* device cuda without a GPU: cpu.
* its soft-label test loader batches the test split by syn_batch_size (reta's 10: 1,000 batches per
  test, most of a CPU run): it is rebuilt with real_batch_size; a student in eval mode scores the
  same images the same whatever the batch.
* LabelRobustScoreHard appends each round's LRS twice and crashes saving its CSV after all the
  training: the duplicate is dropped before saving.
* --full-data-acc PCT: use PCT as Acc(full real data, hard) through DD-Ranking's own cache instead of
  training a student on the full data (eval_full_data), e.g. when that costs too much.

Prints DD-Ranking's scores as it returns them (percent accuracies, alpha in percentage points, LRS
the raw exp-normalised value), the per-round accuracies, and the LRS of the same accuracies taken
as fractions (reta's convention).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DDRANKING = "0.2.0"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config.yaml key with a YAML value, e.g. --set num_epochs=20 --set num_eval=1")
    p.add_argument("--full-data-acc", type=float, default=None, metavar="PCT",
                   help="Acc(full real data, hard) in percent, instead of training a student on the full data")
    p.add_argument("--json", default=None, help="also write the scores and accuracies to this file")
    return p.parse_args(argv)


def trust_exported_batches(torchvision, record: dict) -> None:
    cls = getattr(torchvision.datasets, record["class"])
    md5 = record["md5"]
    cls.train_list = [[name, md5[name]] for name, _ in cls.train_list]
    cls.test_list = [[name, md5[name]] for name, _ in cls.test_list]
    cls.meta = {**cls.meta, "md5": md5[cls.meta["filename"]]}


def recording(helper, log: list, kind: str, syn_path: str):
    """Wrap an evaluator's accuracy helper so each accuracy is kept; DD-Ranking only prints them."""
    def wrapped(*args, **kwargs):
        acc, lr = helper(*args, **kwargs)
        if kwargs.get("mode") == "real":
            name = "full_hard"
        else:
            name = ("syn_" if kwargs.get("image_path") == syn_path else "random_") + kind
        log.append({"acc": name, "percent": float(acc), "lr": lr})
        return acc, lr
    return wrapped


def fraction_lrs(real_hard, syn_hard, syn, random, w=0.5):
    alpha = w * (syn - random) / 100.0 - (1.0 - w) * (real_hard - syn_hard) / 100.0
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def main(argv=None) -> int:
    args = parse_args(argv)
    json_out = Path(args.json).resolve() if args.json else None
    os.chdir(HERE)  # config.yaml's paths are relative to this folder
    import torch
    import torchvision
    import yaml
    from ddranking.config import Config
    from ddranking.metrics import LabelRobustScoreHard, LabelRobustScoreSoft, hard_label
    from ddranking.utils import REAL_DATA_ACC_CACHE, REAL_DATA_TRAINING_CONFIG

    raw = yaml.safe_load((HERE / "config.yaml").read_text())
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--set {item!r}: expected KEY=VALUE")
        raw[key] = yaml.safe_load(value)
    ours = raw.get("reta", {})
    if str(raw["device"]).startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: running DD-Ranking on cpu")
        raw["device"] = "cpu"
    key = f"{raw['dataset']}-{raw['model_name']}"
    if args.full_data_acc is not None:
        raw["eval_full_data"] = False
        REAL_DATA_ACC_CACHE[key] = args.full_data_acc
    elif raw["eval_full_data"] and key not in REAL_DATA_TRAINING_CONFIG:
        sys.exit(f"DD-Ranking {key}: it has no full-data training recipe for this student; pass --full-data-acc PCT")
    md5_record = Path(raw["real_data_path"]) / "md5.json"
    if md5_record.is_file():
        trust_exported_batches(torchvision, json.loads(md5_record.read_text()))
    hard = ours.get("evaluator") == "hard"
    if hard:
        save = hard_label.save_results
        hard_label.save_results = lambda results, path: save({**results, "lrs": results["lrs"][::2]}, path)

    evaluator = (LabelRobustScoreHard if hard else LabelRobustScoreSoft)(config=Config(raw))
    evaluator.test_interval = min(evaluator.test_interval, int(raw["num_epochs"]))
    if not raw.get("dist"):
        loader = evaluator.test_loader_syn
        evaluator.test_loader_syn = torch.utils.data.DataLoader(
            loader.dataset, batch_size=evaluator.real_batch_size, num_workers=loader.num_workers,
            sampler=torch.utils.data.RandomSampler(loader.dataset))
    log: list[dict] = []
    images = ours.get("image_path", "images")
    evaluator._compute_hard_label_metrics_helper = recording(evaluator._compute_hard_label_metrics_helper, log,
                                                             "hard", images)
    if not hard:
        evaluator._compute_soft_label_metrics_helper = recording(evaluator._compute_soft_label_metrics_helper, log,
                                                                 "soft", images)
    scores = evaluator.compute_metrics(image_path=images, syn_lr=ours.get("syn_lr"))
    scores = {k: float(v) for k, v in scores.items()}

    accs: dict[str, list[float]] = {}
    for entry in log:
        accs.setdefault(entry["acc"], []).append(entry["percent"])
    if args.full_data_acc is not None:
        accs["full_hard"] = [args.full_data_acc] * int(raw["num_eval"])
    means = {k: sum(v) / len(v) for k, v in accs.items()}
    kind = "hard" if hard else "soft"
    result = {"ddranking": scores, "accuracies_percent": accs, "accuracies_percent_mean": means,
              "real_reference": "--full-data-acc" if args.full_data_acc is not None else "student trained on full data",
              "settings": {k: raw[k] for k in ("dataset", "model_name", "teacher_model_names", "ipc", "num_eval",
                                                "num_epochs", "syn_batch_size", "device")}}
    if all(k in means for k in ("full_hard", "syn_hard", f"syn_{kind}", f"random_{kind}")):
        result["lrs_on_fractions"] = fraction_lrs(means["full_hard"], means["syn_hard"], means[f"syn_{kind}"],
                                                  means[f"random_{kind}"])
    print("DD-Ranking %s scores (accuracies in %%, alpha in percentage points):" % DDRANKING)
    for k, v in scores.items():
        print(f"  {k}: {v:.4f}")
    print("accuracies (%, mean over rounds): " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
    if "lrs_on_fractions" in result:
        print(f"LRS of the mean accuracies as fractions (reta's convention): {result['lrs_on_fractions']:.4f}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
