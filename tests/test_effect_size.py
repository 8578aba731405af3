"""benchmarks/effect_size.py: the interval's arithmetic, what counts as one independent unit, and
that the committed effect-size tables are what the committed rows give."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("effect_size", REPO / "benchmarks" / "effect_size.py")
effect_size = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(effect_size)


def test_interval_known_answer():
    got = effect_size.interval([0.01, 0.02, 0.03])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t(0.975, 2 df)
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.02) and got["std"] == pytest.approx(0.01)
    assert got["low"] == pytest.approx(0.02 - half) and got["high"] == pytest.approx(0.02 + half)
    assert effect_size.interval([0.5])["low"] is None  # one unit: no interval


def _row(folder: Path, variant: str, seed: int, top1: list[float], sha: str | None = "aa", split="holdout",
         weight: float = 0.3) -> None:
    row = {"variant": variant, "synthesis_seed": seed, "student": "convnet3", "split": split, "teacher_key": "k",
           "recover": {"ipc": 10, "seed": seed, "pta": {"weight": weight}}, "protocol": {"epochs": 60},
           "soft": {"top1_final_per_seed": top1}}
    if sha:
        row["teacher_sha256"] = sha
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{variant}__seed{seed}.json").write_text(json.dumps(row))


def test_same_teacher_and_seed_is_one_unit_and_pairs_stay_inside_a_folder(tmp_path):
    # fp32 and bf16 recovers of one (teacher, seed) share their init and anchors: averaged, not counted twice
    _row(tmp_path / "fp32", "reta", 0, [0.50, 0.52]), _row(tmp_path / "fp32", "fadrm", 0, [0.50, 0.50])
    _row(tmp_path / "bf16", "reta", 0, [0.55]), _row(tmp_path / "bf16", "fadrm", 0, [0.51])
    _row(tmp_path / "bf16", "reta", 1, [0.40])  # no fadrm on seed 1 in this folder ...
    _row(tmp_path / "other", "fadrm", 1, [0.10], sha="bb")  # ... and another teacher's is not its pair
    _row(tmp_path / "other", "reta", 2, [0.62], sha="bb", split="test")
    _row(tmp_path / "other", "fadrm", 2, [0.60], sha=None, split="test")  # a legacy row: the folder's teacher
    (line,) = effect_size.effect_table("reta", "fadrm", [tmp_path / "fp32", tmp_path / "bf16", tmp_path / "other"])
    diffs = {(u["teacher_sha256"], u["synthesis_seed"]): u["diff"] for u in line["units"]}
    assert diffs == pytest.approx({("aa", 0): (0.01 + 0.04) / 2, ("bb", 2): 0.02})
    assert line["pooled"]["n"] == 2 and line["test"]["n"] == 1 and line["holdout"]["n"] == 1


def test_rows_of_two_configs_are_refused(tmp_path):
    _row(tmp_path / "a", "reta", 0, [0.5]), _row(tmp_path / "a", "fadrm", 0, [0.5])
    _row(tmp_path / "b", "reta", 1, [0.5], weight=0.1), _row(tmp_path / "b", "fadrm", 1, [0.5])
    with pytest.raises(SystemExit, match="pta.weight"):
        effect_size.effect_table("reta", "fadrm", [tmp_path / "a", tmp_path / "b"])


@pytest.mark.parametrize("table", sorted((REPO / "benchmarks" / "results").glob("effect-size-*.json")),
                         ids=lambda p: p.stem)
def test_committed_tables_are_what_the_committed_rows_give(table):
    committed = json.loads(table.read_text())
    folders = [REPO / f for f in committed["folders"]]
    recomputed = json.loads(json.dumps(effect_size.effect_table(committed["a"], committed["b"], folders)))
    assert recomputed == committed["table"]
