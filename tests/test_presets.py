"""Shipped presets parse into their dataclasses; BENCHMARKS.md is regenerated from result files."""

from __future__ import annotations

from pathlib import Path

import pytest

from reta import io
from reta.bench import TIERS, presets, tier_settings, write_benchmarks_md
from reta.config import EvalProtocol, RecoverConfig, SqueezeConfig, build
from reta.recover import METHODS, preset

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"


@pytest.mark.parametrize("path", sorted(PAPER.glob("*.yaml")), ids=lambda p: p.name)
def test_paper_presets_parse(path):
    cls = RecoverConfig if path.stem.endswith("recover") else EvalProtocol
    cfg = build(cls, path)
    if cls is RecoverConfig:
        assert cfg.iterations == 2000 and len(cfg.stage_sizes) == 4
    else:
        assert cfg.student == "resnet18" and cfg.labels == "stored"


def test_bench_tiers_build_valid_configs():
    for tier in map(tier_settings, TIERS):
        build(SqueezeConfig, base=tier["teacher"])
        build(EvalProtocol, base=tier["protocol"])
        for method in METHODS.names():
            build(RecoverConfig, base={**preset(method), **tier["recover"]})
    assert {"imagenette32-ipc10", "cifar10-ipc10", "imagenette32-ipc50", "cifar10-ipc50"} <= set(presets())


def _fake_result(acc_fadrm: float) -> dict:
    def evaluation(acc):
        return {"top1_final_mean": acc, "top1_final_std": 0.01, "top1_best_mean": acc + 0.01}

    rows = []
    for method, acc in (("random", 0.30), ("fadrm", acc_fadrm)):
        rows.append({"method": method, "soft": evaluation(acc), "hard": evaluation(acc - 0.05), "seconds_per_image": 0.5,
                     "recover_peak_memory_mb": 900.0, "drc_share": None, "pta_share": None,
                     "delta_vs_random": acc - 0.30, "delta_vs_fadrm": acc - acc_fadrm, "hlr": 0.2, "ior": acc - 0.30,
                     "lrs": 0.3})
    return {"preset": "p", "tier": "quick", "command": "reta bench p --tier quick", "date": "2026-01-01",
            "machine": {"cpu": "cpu", "cores": 2, "device": "cpu"}, "versions": {"torch": "x"}, "seconds": 60.0,
            "teacher": {"arch": "convnet3", "test_top1": 0.8, "recipe": {"epochs": 3}}, "ipc": 10,
            "recover": {"iterations": 10}, "methods": rows,
            "protocol_soft": {"student": "convnet3", "epochs": 5, "batch_size": 10, "lr": 0.001, "eta": 1.0,
                              "temperature": 4.0, "seeds": 2}}


def test_benchmarks_md_is_generated_and_keeps_hand_written_text(tmp_path):
    results = tmp_path / "results"
    io.write_json(results / "p-quick.json", _fake_result(0.41))
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro by hand\n\n<!-- generated: reta bench -->\nold\n<!-- end generated -->\n\n## notes\nkept\n")
    write_benchmarks_md(results, md)
    text = md.read_text()
    assert "intro by hand" in text and "## notes\nkept" in text and "old" not in text
    assert "| fadrm | **41.00 ± 1.00** | +11.00 |" in text
