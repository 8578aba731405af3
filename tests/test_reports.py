"""Topology report: known Betti curves, and the files/wording for a RETA run and a FADRM run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reta.cli import main
from reta.config import RecoverConfig, build
from reta.recover import distill, preset
from reta.reports import cloud_topology, results_table, topology_report

CPU = torch.device("cpu")
SQUARE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and lose a lot to spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _distill(digits, teacher, tmp_path, method):
    train, _ = digits
    base = {**preset(method), "ipc": 4, "iterations": 8, "batch_size": 40, "jitter": 2, "rded_candidates": 20}
    out = tmp_path / method
    distill(train, [teacher], build(RecoverConfig, base=base), out, CPU, cache_dir=tmp_path / "cache", progress=False)
    return out


@pytest.mark.parametrize("k, infinite_share", [(2, 1), (3, 0)])
def test_betti_curves_of_a_square(k, infinite_share):
    # Unit square: sides D = 1, diagonals D = 2 -> kappa 2 gives sides f = 0.5, diagonals f = 1.
    # k=2: the mutual graph is the 4-cycle, never filled -> one essential H1 bar [0.5, 1) under "one".
    # k=3: the diagonals enter at f = 1 and fill the cycle -> a finite bar [0.5, 1). Same curves on [0, 1).
    thresholds = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 0.99, 1.0], dtype=torch.float64)
    top = cloud_topology(SQUARE, 2.0, k, "one", thresholds)
    assert top["beta0"].tolist() == [4, 4, 4, 1, 1, 1, 0]
    assert top["beta1"].tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert (top["h1_essential"], top["h1_finite"]) == (infinite_share, 1 - infinite_share)
    np.testing.assert_allclose(np.sort(top["h0"][:, 1]), [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(top["h1"], [[0.5, 1.0]])
    dropped = cloud_topology(SQUARE, 2.0, k, "drop", thresholds)
    assert dropped["beta1"].tolist() == ([0] * 7 if infinite_share else [0, 0, 0, 1, 1, 1, 0])
    assert dropped["h1_essential"] == infinite_share  # counted whatever the policy does with it


def test_report_for_reta_and_fadrm(digits, digits_teacher, tmp_path, capsys):
    train, _ = digits
    reta_dir = _distill(digits, digits_teacher, tmp_path, "reta")
    md = topology_report(reta_dir, digits_teacher, train, tmp_path / "report_reta", max_classes=3)
    assert md == tmp_path / "report_reta" / "report.md"
    for name in ("betti_curves.png", "diagrams.png", "anchors.png"):
        png = md.parent / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(md.parent.glob(".*.tmp"))  # atomic writes left nothing behind
    text = md.read_text()
    for c in range(3):
        assert f"| {c} ({train.info.classes[c]}) |" in text
    assert f"| 3 ({train.info.classes[3]}) |" not in text  # only max_classes classes
    assert "Shared-anchor fraction: 0." in text or "Shared-anchor fraction: 1." in text
    assert "stage 1" in text and "PTA was on" in text and "fixed init patches" not in text
    assert "Infinite (never-filled) H1 bars: real" in text

    fadrm_dir = _distill(digits, digits_teacher, tmp_path, "fadrm")
    out = tmp_path / "report_fadrm"
    assert main(["--quiet", "report", "--data", "digits", "--teacher", str(digits_teacher.path),
                 "--distilled", str(fadrm_dir), "--out", str(out), "--max-classes", "2"]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "fixed init patches (FADRM)" in text
    assert "no PTA term in this run" in text and "n/a (no DRC selections)" in text
    assert not (out / "anchors.png").exists()
    assert (out / "betti_curves.png").is_file() and (out / "diagrams.png").is_file()


@pytest.mark.parametrize("splits, header", [([None, "test"], "best-epoch (test-selected)"),
                                            (["holdout", "holdout"], "best-epoch (holdout-selected)")])
def test_best_epoch_header_names_the_split_it_was_selected_on(splits, header):
    # A held-out study's best epoch is chosen on held-out images: calling it test selection misreports it.
    rows = [{"method": m, "top1": (0.5, 0.01), "best": 0.52, "split": s} for m, s in zip(("fadrm", "reta"), splits)]
    first_line = results_table(rows).splitlines()[0]
    assert header in first_line
    assert ("test" in first_line) == (header.endswith("(test-selected)"))
