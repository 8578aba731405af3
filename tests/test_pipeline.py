"""The one pipeline: random baseline = `--method random`, feasibility before training, `reta run`, the demo."""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from reta import pipeline
from reta.cli import main
from reta.config import EvalProtocol
from reta.data.dataset import DatasetInfo, TensorImageSet
from reta.errors import RetaError


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _refuse_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the work was already done (or should have been refused)")

    monkeypatch.setattr("reta.pipeline.evaluate", refuse)


def test_check_real_subset_names_the_short_class():
    info = DatasetInfo("tiny", ("a", "b"), 8, (0.5,) * 3, (0.25,) * 3)
    train = TensorImageSet(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), np.array([0, 0, 0, 1, 1]), info, "tiny")
    pipeline.check_real_subset(train, (0.0, 0), 2)
    with pytest.raises(RetaError, match=r"class 1 \('b'\) has 2 .*--ipc 3 .*drop --baseline"):
        pipeline.check_real_subset(train, (0.0, 0), 3)


def test_sectioned_configs_layer_defaults_yaml_set_flags(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("recover: {iterations: 7, lr: 0.1}\nprotocol: {epochs: 3}\n")
    cfgs = pipeline.sectioned_configs({"recover": {"iterations": 5, "r_bn": 0.5}, "protocol": {"epochs": 2}}, "fadrm",
                                      yaml, ["recover.lr=0.2", "protocol.epochs=4"], {"protocol": {"epochs": 9}})
    assert (cfgs["recover"].iterations, cfgs["recover"].r_bn, cfgs["recover"].lr) == (7, 0.5, 0.2)
    assert cfgs["protocol"].epochs == 9 and cfgs["recover"].method == "fadrm"
    with pytest.raises(RetaError, match="prefix the key with its section"):
        pipeline.sectioned_configs({}, "fadrm", sets=["lr=0.1"])


@pytest.mark.slow
def test_baseline_random_is_byte_identical_to_distill_method_random(digits, digits_teacher, tmp_path, monkeypatch):
    teacher = str(digits_teacher.path)
    common = ["--data", "digits", "--teacher", teacher]
    assert main(["--quiet", "distill", *common, "--method", "random", "--ipc", "2", "--out", str(tmp_path / "r")]) == 0
    assert main(["--quiet", "distill", *common, "--method", "rded", "--ipc", "2", "--out", str(tmp_path / "d")]) == 0
    assert main(["--quiet", "evaluate", *common, "--distilled", str(tmp_path / "d"), "--baseline", "random",
                 "--student", "convnet2-w8", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "e")]) == 0
    baseline = tmp_path / "e" / pipeline.BASELINE_DIR
    assert _pngs(baseline / "images") == _pngs(tmp_path / "r" / "images") and len(_pngs(baseline)) == 20

    # Feasibility comes before any student trains.
    monkeypatch.setattr("reta.pipeline.check_real_subset",
                        lambda *a: (_ for _ in ()).throw(RetaError("class 0 too small")))
    _refuse_training(monkeypatch)
    with pytest.raises(RetaError, match="too small"):
        pipeline.run_set(train=digits[0], scored_on=digits[1], teacher=digits_teacher, folder=tmp_path / "d",
                         out=tmp_path / "e2", protocols=[EvalProtocol(student="convnet2-w8", epochs=1, seeds=1)],
                         dev=torch.device("cpu"), baseline=True)
    assert not (tmp_path / "e2").exists()


@pytest.mark.slow
def test_reta_run_on_an_image_folder_nobody_prepared(tmp_path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "data", ["cat", "dog", "eel"], per_class=6, size=20)
    for i, c in enumerate(["cat", "dog", "eel"]):  # other sizes and a grey JPEG among them
        Image.fromarray(np.full((31, 23, 3), 40 * i, dtype=np.uint8)).save(root / "train" / c / "odd.jpg")
        Image.fromarray(np.full((12, 40), 90, dtype=np.uint8)).save(root / "train" / c / "grey.jpeg")
    out = tmp_path / "run"
    argv = ["--quiet", "run", "--data", f"imagefolder:{root}", "--image-size", "16", "--method", "fadrm", "--ipc", "2",
            "--iterations", "4", "--epochs", "1", "--seeds", "1", "--out", str(out), "--set", "teacher.epochs=1",
            "teacher.arch=convnet2-w8", "protocol.student=convnet2-w8", "recover.rded_candidates=4"]
    assert main(argv) == 0
    for name in ("distilled/manifest.json", "result.json", "report.md", "grid.png", "baseline-random/manifest.json",
                 "teacher/meta.json"):
        assert (out / name).is_file(), name
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# reta run: fadrm, IPC 2")
    assert "fadrm at IPC 2" in lines[2] and "random real images per class" in lines[2] and "teacher" in lines[2]
    assert lines[4] == "![distilled images](grid.png)"
    _refuse_training(monkeypatch)  # a rerun resumes: everything is there, nothing trains again
    capsys.readouterr()
    assert main(argv) == 0 and "report ->" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_plots_top1_vs_ipc_and_explains_every_method(tmp_path):
    from reta.demo import run_demo

    cfg = tmp_path / "demo.yaml"
    cfg.write_text("ipcs: [1, 2]\nteacher: {arch: convnet2-w8, epochs: 2, batch_size: 64, lr: 0.05}\n"
                   "recover: {iterations: 4, batch_size: 20, rded_candidates: 8}\n"
                   "protocol: {student: convnet2-w8, epochs: 1, batch_size: 10, lr: 0.002, seeds: 1}\n")
    run_demo(tmp_path / "d", methods=["fadrm"], config_path=cfg, progress=False)
    report = (tmp_path / "d" / "report.md").read_text()
    assert (tmp_path / "d" / "top1_vs_ipc.png").is_file() and "![top-1 vs IPC](top1_vs_ipc.png)" in report
    assert "- **random**" in report and "- **fadrm**" in report and "points vs random" in report
    assert "configs/demo.yaml" in report


def test_a_finished_set_made_with_other_settings_is_refused_not_reused(digits, digits_teacher, tmp_path):
    train, _ = digits
    folder = tmp_path / "set"
    pipeline.distilled(train, [digits_teacher], pipeline.random_config(2, 0), folder, torch.device("cpu"), False)
    images, _ = pipeline.distilled(train, [digits_teacher], pipeline.random_config(2, 0), folder, torch.device("cpu"), False)
    assert len(images) == 20
    # bench's random config carries the tier's budget; a selection method spends none (same set)
    bench_like = dataclasses.replace(pipeline.random_config(2, 0), iterations=300)
    assert len(pipeline.distilled(train, [digits_teacher], bench_like, folder, torch.device("cpu"), False)[0]) == 20
    with pytest.raises(RetaError, match=r"other settings \(seed differ\)"):
        pipeline.distilled(train, [digits_teacher], pipeline.random_config(2, 1), folder, torch.device("cpu"), False)
