"""Scale-out: 1 vs 2 torchrun processes give the same bytes, a killed run resumes to the same bytes,
`reta evaluate` trains with DDP under torchrun, and the GPU benchmark script runs (tiny, on CPU).

Processes run on the CPU with one thread each (gloo backend), so results compare bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reta import cli

ENV = {k: v for k, v in os.environ.items()
       if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
ENV.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RETA_DEVICE="cpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """In-process runs under the same conditions as the 1-thread subprocesses (and no oversubscription)."""
    monkeypatch.setenv("RETA_DEVICE", "cpu")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reta(*args: str) -> None:
    assert cli.main(["--quiet", *args]) == 0


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "reta", "--quiet", *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny CLI-made teacher on digits, and a single-process FADRM set (shared by two tests)."""
    root = tmp_path_factory.mktemp("scale")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETA_DEVICE", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reta("squeeze", "--data", "digits", "--arch", "convnet2-w16", "--epochs", "2", "--out", str(root / "T"))
        reta("distill", "--data", "digits", "--teacher", str(root / "T"), "--method", "fadrm", "--ipc", "3",
             "--iterations", "8", "--out", str(root / "fadrm-1"))
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    return root


DISTILL = {"fadrm": ["--method", "fadrm", "--ipc", "3", "--iterations", "8"],  # 3 class-mixed groups
           # 8 class-mixed groups (4 slots x 2 chunks of 8 classes): DRC retrieval, and PTA (4 points per class)
           "reta": ["--method", "reta", "--ipc", "4", "--iterations", "8", "--set", "batch_size=8"]}


@pytest.mark.parametrize("method", sorted(DISTILL))
def test_two_processes_write_the_same_images_as_one(method, work):
    teacher = ["--data", "digits", "--teacher", str(work / "T")]
    single = work / f"{method}-1"
    if not single.exists():
        reta("distill", *teacher, *DISTILL[method], "--out", str(single), "--cache-dir", str(work / f"cache-{method}-1"))
    double = work / f"{method}-2"
    # A fresh cache shared by both ranks: each class's pool file is built by one rank.
    torchrun("distill", *teacher, *DISTILL[method], "--out", str(double), "--cache-dir", str(work / f"cache-{method}-2"))
    a, b = png_bytes(single), png_bytes(double)
    assert len(a) == (30 if method == "fadrm" else 40) and a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (single, double))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert len(m2["groups"]) == (3 if method == "fadrm" else 8) and m2["resumed_groups"] == 0
    assert not list(double.rglob(".*.tmp"))


def test_killed_run_resumes_to_the_same_images(work, tmp_path):
    args = ["distill", "--data", "digits", "--teacher", str(work / "T"), "--method", "fadrm", "--ipc", "6",
            "--iterations", "200"]  # 6 class-mixed groups of 10 images
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "reta", "--quiet", *args, "--out", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    try:
        while not list((killed / "progress").glob("group_*.json")):
            assert proc.poll() is None, f"distill ended before its first group: {proc.stderr.read().decode()[-2000:]}"
            assert time.time() < deadline, "no group finished within 90 s"
            time.sleep(0.01)
        assert not (killed / "manifest.json").exists(), "the run finished before it could be killed; raise --iterations"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    finished_before = len(list((killed / "progress").glob("group_*.json")))
    assert 1 <= finished_before < 6 and not (killed / "manifest.json").exists()
    reta(*args, "--out", str(killed))  # the same command again: resumes
    reta(*args, "--out", str(tmp_path / "straight"))
    resumed = json.loads((killed / "manifest.json").read_text())
    assert resumed["resumed_groups"] == finished_before
    a, b = png_bytes(killed), png_bytes(tmp_path / "straight")
    assert len(a) == 60 and a == b
    assert not list(killed.rglob(".*.tmp"))


def test_evaluate_under_torchrun_trains_one_student_with_ddp(work):
    out = work / "eval-2"
    # 30 images in global batches of 29: the last batch has 1 image, so rank 1 gets an empty slice.
    torchrun("evaluate", "--data", "digits", "--teacher", str(work / "T"), "--distilled", str(work / "fadrm-1"),
             "--student", "convnet2-w8-in", "--epochs", "2", "--seeds", "1", "--out", str(out), "--set", "batch_size=29")
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["seeds"] == [0] and result["method"] == "fadrm"
    assert [epoch for epoch, _ in result["runs"][0]["curve"]] == [1, 2]
    assert all(0.0 <= acc <= 1.0 for _, acc in result["runs"][0]["curve"])
    assert result["top1_final_mean"] == result["runs"][0]["top1_final"] and result["top1_final_std"] == 0.0
    assert result["seconds"] > 0 and json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [".reta-artifact.json", "config.json", "result.json"]


@pytest.mark.parametrize("labels", ["hard", "online", "stored"])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_slices_add_up_to_the_global_batch_loss(labels, world):
    """What DDP all-reduces: the ranks' slice losses (and so gradients) sum to the single-process batch's."""
    from reta.config import EvalProtocol
    from reta.data.dataset import DatasetInfo
    from reta.evaluate.train import batch_loss, rank_rows
    from reta.labels.store import draw_epoch, replay_views
    from reta.models import create_model

    info = DatasetInfo("t", ("a", "b", "c"), 8, (0.5,) * 3, (0.25,) * 3)
    protocol = EvalProtocol(student="convnet2-w8-in", batch_size=5, labels=labels, precision="fp32")
    torch.manual_seed(0)
    student, teacher = create_model("convnet2-w8-in", 3, 8), create_model("convnet2-w8", 3, 8).eval()
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    labels_all = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    for batch in draw_epoch(7, 5, 8, 0.08, 1.0, 1.0, seed=3, epoch=0):  # batches of 5 (CutMix) and 2
        if labels == "stored":
            batch.logits = torch.randn(len(batch.indices), 3).half()
        x = replay_views(images[batch.indices], batch, info, 8)
        y = labels_all[batch.indices]
        whole = batch_loss(student, x, batch, y, teacher, protocol, None, torch.device("cpu"))
        g_whole = torch.autograd.grad(whole, list(student.parameters()))
        parts = [batch_loss(student, x, batch, y, teacher, protocol, None, torch.device("cpu"), rows=rank_rows(len(x), r, world))
                 for r in range(world)]
        assert sum(p.item() for p in parts) == pytest.approx(whole.item(), rel=1e-5)
        g_parts = torch.autograd.grad(sum(parts), list(student.parameters()))
        for a, b in zip(g_whole, g_parts):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    rows = [rank_rows(5, r, world) for r in range(world)]
    assert [i for s in rows for i in range(s.start, s.stop)] == list(range(5)) and rows[0].stop > 0


def test_gpu_bench_runs_the_real_recover_and_writes_its_keys_on_cpu():
    from reta import gpu_bench

    result = gpu_bench.run(size=16, arch="resnet18", classes=2, ipc=4, budget=4, warmup=1, pool_per_class=8,
                           precision="fp32", dev=torch.device("cpu"))
    json.dumps(result)  # JSON-ready
    assert {"device", "torch", "date", "settings", "methods", "notes", "reference_4090"} <= set(result)
    assert tuple(result["methods"]) == gpu_bench.timed_methods() and "fadrm" in result["methods"]
    assert result["settings"]["ipc"] == 4 and result["settings"]["budget_steps"] == 4
    for method, r in result["methods"].items():
        assert {"seconds_per_image", "seconds_per_image_last_group", "peak_memory_mb", "group_seconds", "warmup"} <= set(r)
        assert r["seconds_per_image"] > 0 and r["peak_memory_mb"] > 0 and r["groups"] == 2
        assert r["batch_composition"] == "per-class" and r["batch_size"] == 4
    assert result["methods"]["reta"]["drc_share"] > 0 and result["methods"]["pta"]["pta_share"] > 0
    assert np.isfinite(result["methods"]["fadrm"]["seconds_per_image_at_2000_steps_estimate"])


@pytest.mark.parametrize("every", [1, 3])
def test_deferred_non_finite_check_reports_the_first_bad_step(every, work, monkeypatch, tmp_path, capsys):
    """On a GPU the loss is checked every N steps; the error names the same first bad step as a per-step check."""
    import reta.recover.loop as loop

    monkeypatch.setattr(loop, "finite_check_every", lambda dev: every)
    rc = cli.main(["--quiet", "distill", "--data", "digits", "--teacher", str(work / "T"), "--method", "sre2l",
                   "--ipc", "1", "--iterations", "6", "--out", str(tmp_path / "d"), "--set", "r_bn=1e300"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "non-finite loss (inf) at stage 1 step 0; lower --set lr=0.25 or r_bn=1e+300" in err[0]
    assert not list((tmp_path / "d").rglob("*.png"))


def test_relabel_shards_over_two_processes_match_one(work):
    """Label shards are dealt to ranks; every epoch's draws depend only on (seed, epoch): same bytes."""
    from safetensors.torch import load_file

    args = ["relabel", "--distilled", str(work / "fadrm-1"), "--teacher", str(work / "T"), "--epochs", "3",
            "--batch-size", "10", "--set", "shard_epochs=1"]
    reta(*args, "--out", str(work / "labels-1"))
    torchrun(*args, "--out", str(work / "labels-2"))
    one, two = work / "labels-1", work / "labels-2"
    shards = sorted(p.name for p in one.glob("labels-*.safetensors"))
    assert len(shards) == 3 and shards == sorted(p.name for p in two.glob("labels-*.safetensors"))
    for name in shards:
        a, b = load_file(str(one / name)), load_file(str(two / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((two / "manifest.json").read_text())["num_shards"] == 3


def test_gpu_bench_counts_model_flops_and_compares_groups_per_step():
    from reta import gpu_bench

    result = gpu_bench.run(size=16, arch="resnet18", classes=2, ipc=4, budget=2, warmup=1, pool_per_class=8,
                           precision="fp32", dev=torch.device("cpu"), methods=("fadrm",), groups=(1, 2))
    assert set(result["methods"]) == {"fadrm", "fadrm@2groups"} and result["model_gflop_per_image_step"] > 0
    for r in result["methods"].values():
        assert r["achieved_model_tflops"] > 0 and r["fraction_of_bf16_peak"] is None  # no peak known for a CPU
    assert gpu_bench.bf16_peak_tflops("NVIDIA H200") == 989.0 and gpu_bench.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
