"""Our DD-Ranking export against the real package: `ddranking==0.2.0` from PyPI, in .venv-ddranking
(`bash scripts/ddranking_env.sh`; never in .venv, it downgrades numpy). Run with `-m interop`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from reta.cli import main
from reta.teacher import load_teacher
from test_ddranking import make_world

pytestmark = pytest.mark.interop
REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("RETA_DDRANKING_PYTHON", REPO / ".venv-ddranking" / "bin" / "python"))


def ddranking(code_or_args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "PYTHONPATH": ""}
    proc = subprocess.run([str(PYTHON), *code_or_args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    if not PYTHON.is_file():
        pytest.skip(f"{PYTHON} absent: create it with `bash scripts/ddranking_env.sh` (the real ddranking 0.2.0)")
    root = tmp_path_factory.mktemp("interop")
    data = make_world(root, epochs=2)
    assert main(["--quiet", "export-ddranking", "--data", data, "--distilled", str(root / "D"), "--teacher",
                 str(root / "T"), "--epochs", "2", "--seeds", "1", "--out", str(root / "O")]) == 0
    return root


LOADERS = r"""
import json, sys, numpy as np, torch, torchvision
sys.path.insert(0, ".")
import run_ddranking
from ddranking.config import Config
from ddranking.utils import build_model, get_dataset, get_pretrained_model_path

cfg = Config.from_file("config.yaml")
run_ddranking.trust_exported_batches(torchvision, json.load(open("real/md5.json")))
channel, im_size, mean, std, num_classes, train, test_real, test_syn, _, _ = get_dataset(
    cfg.get("dataset"), cfg.get("real_data_path"), cfg.get("im_size"), cfg.get("use_zca"),
    cfg.get("custom_val_trans"), "cpu")
cfg.get("custom_train_trans")
[path] = get_pretrained_model_path(cfg.get("teacher_dir"), cfg.get("teacher_model_names"), cfg.get("dataset"))
teacher = build_model(cfg.get("teacher_model_names")[0], num_classes=num_classes, im_size=im_size, pretrained=True,
                      model_path=path, use_torchvision=cfg.get("tea_use_torchvision"), device="cpu").eval()
student = build_model(cfg.get("model_name"), num_classes=num_classes, im_size=im_size, pretrained=False,
                      use_torchvision=cfg.get("stu_use_torchvision"), device="cpu")
x = torch.stack([test_real[i][0] for i in range(16)])
with torch.no_grad():
    logits = teacher(x)
np.save("ddranking_logits.npy", logits.numpy())
print(json.dumps({"train": len(train), "test": len(test_real), "classes": num_classes, "im_size": list(im_size),
                  "student_out": list(student(x).shape)}))
"""


def test_export_loads_through_ddranking_loaders_and_its_teacher_gives_our_logits(export):
    out = export / "O"
    proc = ddranking(["-c", LOADERS], cwd=out)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"train": 60, "test": 100, "classes": 10, "im_size": [32, 32], "student_out": [16, 10]}
    theirs = torch.from_numpy(np.load(out / "ddranking_logits.npy"))
    t = load_teacher(export / "T")
    test = np.load(export / "cifar10" / "test.npz")
    pixels = torch.from_numpy(test["x"][:16]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        ours = t.model(t.info.normalise(pixels))
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_a_tiny_scoring_run_finishes_with_nonzero_accuracies(export):
    out = export / "O"
    ddranking([str(out / "run_ddranking.py"), "--json", str(export / "scores.json")], cwd=export)
    result = json.loads((export / "scores.json").read_text())
    accs = result["accuracies_percent_mean"]
    assert set(accs) == {"syn_hard", "full_hard", "syn_soft", "random_soft"}
    assert all(v > 0 for v in accs.values()), accs
    assert set(result["ddranking"]) >= {"hard_label_recovery_mean", "improvement_over_random_mean",
                                        "label_robust_score_mean"}
    assert result["real_reference"] == "student trained on full data"
    assert (out / "results" / "obj_scores.csv").is_file()
