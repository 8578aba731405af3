"""reta bench: writes only under --out, resumes from its own and from committed rows, aggregates honestly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reta.bench import add_set_arguments, aggregate, preset_spec, run_bench, table_rows, write_benchmarks_md
from reta.errors import RetaError

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "presets.yaml": "digits-ipc2: {data: digits, ipc: 2}\n",
    "quick.yaml": ("teacher: {arch: convnet2-w8, epochs: 1, batch_size: 128, lr: 0.05}\n"
                   "recover: {iterations: 4, rded_candidates: 8, batch_size: 20}\n"
                   "protocol: {student: convnet2-w8, epochs: 1, batch_size: 10, lr: 0.002, eta: 1.0, "
                   "temperature: 4.0, seeds: 2}\n"),
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tiny_bench(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    for name, text in TINY.items():
        (configs / "bench").mkdir(parents=True, exist_ok=True)
        (configs / "bench" / name).write_text(text)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("RETA_CONFIGS", str(configs))
    monkeypatch.setenv("RETA_CACHE", str(tmp_path / "cache"))
    return cwd


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr("reta.pipeline.evaluate", refuse)
    monkeypatch.setattr("reta.pipeline.distill", refuse)


@pytest.mark.slow
def test_bench_writes_under_out_only_and_resumes_across_machines(tiny_bench, tmp_path, monkeypatch):
    repo_files, bench_md = _tree(REPO / "benchmarks"), (REPO / "BENCHMARKS.md").read_bytes()
    kwargs = dict(methods=["random", "fadrm"], synthesis_seeds=2, students=["convnet2-w8", "convnet2-w8-in"],
                  progress=False)
    out = tmp_path / "out"
    result = run_bench("digits-ipc2", "quick", out, **kwargs)

    assert not _tree(tiny_bench)  # nothing in the working directory
    assert _tree(REPO / "benchmarks") == repo_files and (REPO / "BENCHMARKS.md").read_bytes() == bench_md
    rows = sorted((out / "rows").glob("*.json"))
    assert len(rows) == 2 * 2 * 2 and (out / "digits-ipc2-quick.json").is_file() and (out / "report.md").is_file()
    assert result["synthesis_seeds"] == [0, 1] and result["students"] == ["convnet2-w8", "convnet2-w8-in"]
    by = {(m["method"], m["student"]): m for m in result["methods"]}
    assert by[("fadrm", "convnet2-w8")]["soft"]["runs"] == 4  # 2 synthesis seeds x 2 student seeds
    assert by[("fadrm", "convnet2-w8")]["hard"] is not None and by[("fadrm", "convnet2-w8-in")]["hard"] is None
    assert by[("random", "convnet2-w8-in")]["hlr"] is None and by[("random", "convnet2-w8")]["hlr"] is not None
    assert by[("random", "convnet2-w8")]["delta_vs_fadrm_std"] is not None
    # The random rows are `--method random` with the synthesis seed: two seeds, two subsets.
    (set0,), (set1,) = (list((out / "random").glob(f"seed{s}-*/distilled")) for s in (0, 1))
    seed0 = sorted(p.read_bytes() for p in (set0 / "images").rglob("*.png"))
    seed1 = sorted(p.read_bytes() for p in (set1 / "images").rglob("*.png"))
    assert seed0 and seed0 != seed1

    _no_training(monkeypatch)
    again = run_bench("digits-ipc2", "quick", out, **kwargs)
    assert again["methods"] == result["methods"]

    run_bench("digits-ipc2", "quick", out, publish=True, **kwargs)
    committed = tiny_bench / "benchmarks" / "results" / "digits-ipc2-quick"
    assert len(list(committed.glob("*.json"))) == 8 and (tiny_bench / "BENCHMARKS.md").is_file()
    assert "| fadrm | convnet2-w8-in |" in (tiny_bench / "BENCHMARKS.md").read_text()
    (teacher,) = (tiny_bench / "benchmarks" / "teachers").iterdir()  # the table's teacher is committed with it
    assert {p.name for p in teacher.iterdir()} == {"meta.json", "weights.safetensors"}
    # Another machine: an empty cache and --out, the committed teacher and rows -> nothing retrains
    # (a teacher trained there would have other weights, and no committed row would be reused).
    monkeypatch.setenv("RETA_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.setattr("reta.pipeline.squeeze", lambda *a, **k: pytest.fail("the committed teacher was retrained"))
    other = run_bench("digits-ipc2", "quick", tmp_path / "elsewhere", **kwargs)
    assert other["methods"] == result["methods"]
    # Publishing one variant keeps the committed rows of the others in the published table.
    run_bench("digits-ipc2", "quick", out, publish=True, **{**kwargs, "methods": ["fadrm"]})
    published = json.loads((tiny_bench / "benchmarks" / "results" / "digits-ipc2-quick.json").read_text())
    assert {m["method"] for m in published["methods"]} == {"random", "fadrm"}
    assert published["rows_from_earlier_runs"] == ["random"]
    key = lambda ms: {(m["method"], m["student"]): m for m in ms}  # noqa: E731
    assert key(published["methods"]) == key(result["methods"])
    # One synthesis seed published over rows of two: the header names both.
    run_bench("digits-ipc2", "quick", out, publish=True, **{**kwargs, "methods": ["fadrm"], "synthesis_seeds": 1})
    published = json.loads((tiny_bench / "benchmarks" / "results" / "digits-ipc2-quick.json").read_text())
    assert published["synthesis_seeds"] == [0, 1] and key(published["methods"]) == key(result["methods"])
    # A table made by other teacher weights is not published over: its rows would be dropped.
    table = tiny_bench / "benchmarks" / "results" / "digits-ipc2-quick.json"
    table.write_text(json.dumps({**published, "teacher": {**published["teacher"], "weights_sha256": "0" * 64}}))
    before = table.read_bytes()
    with pytest.raises(RetaError, match="publishing would drop them"):
        run_bench("digits-ipc2", "quick", out, publish=True, **kwargs)
    assert table.read_bytes() == before


def _row(variant, seed, student, finals, hard=None):
    def ev(values):
        return {"top1_final_per_seed": values, "top1_best_per_seed": values, "seconds": 1.0}

    return {"variant": variant, "synthesis_seed": seed, "student": student, "soft": ev(finals),
            "hard": ev(hard) if hard else None, "distill_seconds": 2.0, "recover_seconds": 10.0 if variant != "random" else 0.0,
            "seconds_per_image": 0.1, "recover_peak_memory_mb": 1.0, "drc_share": None, "pta_share": None,
            "shared_anchor_fraction": None, "diagnostics": {}}


def test_aggregate_pools_all_runs_and_pairs_synthesis_seeds():
    rows = [_row("fadrm", 0, "s", [0.50, 0.52], hard=[0.4, 0.4]), _row("fadrm", 1, "s", [0.40, 0.42]),
            _row("reta", 0, "s", [0.55, 0.57]), _row("reta", 1, "s", [0.41, 0.43]),
            _row("random", 0, "s", [0.30, 0.30]), _row("random", 1, "s", [0.30, 0.30])]
    by = {a["method"]: a for a in aggregate(rows, teacher_top1=0.9)}
    reta = by["reta"]
    assert reta["soft"]["runs"] == 4 and reta["soft"]["top1_final_mean"] == pytest.approx(0.49)
    # Paired differences per synthesis seed: +0.05 and +0.01 -> mean 0.03, sample std 0.0283.
    assert reta["delta_vs_fadrm"] == pytest.approx(0.03)
    assert reta["delta_vs_fadrm_std"] == pytest.approx(0.04 / 2 ** 0.5)
    assert reta["delta_vs_random"] == pytest.approx(0.19) and reta["ior"] == reta["delta_vs_random"]
    assert by["fadrm"]["hlr"] == pytest.approx(0.5) and by["fadrm"]["lrs"] is not None and reta["hlr"] is None
    assert reta["time_vs_fadrm"] == pytest.approx(1.0)


def test_table_rows_follow_the_ablation_order_whatever_the_publish_order():
    published = ["reta+pta.weight=1", "pta", "reta", "random", "reta-paper", "fadrm", "drc"]
    result = {"protocol_soft": {"student": "convnet3"}, "students": ["convnet3", "convnet3-in"],
              "methods": [{"method": m, "student": s, "soft": {"top1_final_mean": 0.5, "top1_final_std": 0.0}}
                          for m in published for s in ("convnet3-in", "convnet3")]}
    listed = [(r["method"], r["student"]) for r in table_rows(result)]
    methods = ["random", "fadrm", "drc", "pta", "reta", "reta+pta.weight=1", "reta-paper"]
    assert listed == [(m, s) for m in methods for s in ("convnet3", "convnet3-in")]


def test_committed_results_still_render(tmp_path):
    results = REPO / "benchmarks" / "results"
    md = tmp_path / "BENCHMARKS.md"
    write_benchmarks_md(results, md)
    text = md.read_text()
    for f in results.glob("*.json"):
        r = json.loads(f.read_text())
        if "protocol_soft" in r:
            assert f"### {r['preset']} — {r['tier']} tier" in text
            for m in r["methods"]:
                assert f"| {m['method']} |" in text


@pytest.mark.parametrize("name", ["imagenette32-ipc10-full", "cifar10-ipc10-full"])
def test_committed_retrieval_rows_are_still_what_this_code_computes(name):
    """A field added later at its neutral value (strategy.NEUTRAL_LATER_FIELDS) leaves a row's key
    alone, so the finished drc / reta / reta-paper rows are not taken for stale and rerun."""
    from reta.bench import current_committed_rows, presets, tier_settings

    committed = REPO / "benchmarks" / "results" / name
    rows = [json.loads(p.read_text()) for p in sorted(committed.glob("*.json"))]
    retrieval = {(r["variant"], r["synthesis_seed"], r["student"]) for r in rows
                 if r["method"] in ("drc", "reta", "reta-paper")}
    assert retrieval
    preset_name = name.removesuffix("-full")
    # Rows from before teacher_sha256 are the legacy rows of their table's teacher; later ones name it.
    table = json.loads((REPO / "benchmarks" / "results" / f"{name}.json").read_text())
    teacher_sha = table["teacher"].get("weights_sha256", "this table's teacher")
    found = current_committed_rows(committed, [], presets()[preset_name], tier_settings("full"), "test",
                                   rows[0]["teacher_key"], teacher_sha=teacher_sha, legacy_ok=True)
    assert retrieval <= {(r["variant"], r["synthesis_seed"], r["student"]) for r in found}


def test_a_row_from_other_teacher_weights_is_not_reused(tmp_path):
    """One teacher recipe trained on another CPU gives other weights; its rows must be recomputed,
    not mixed into this teacher's table. Rows from before rows named their teacher's weights are
    reused only if their table's teacher scored what this one scores."""
    from reta.bench import finished_row, _legacy_rows_top1, same_teacher

    row = tmp_path / "row.json"
    row.write_text(json.dumps({"key": "k", "teacher_sha256": "aaa"}))
    assert finished_row([row], "k", "aaa", legacy_ok=False) is not None
    assert finished_row([row], "k", "bbb", legacy_ok=True) is None
    assert same_teacher({"key": "k"}, "bbb", legacy_ok=True) and not same_teacher({"key": "k"}, "bbb", legacy_ok=False)

    table = tmp_path / "table.json"
    table.write_text(json.dumps({"teacher": {"test_top1": 0.75}}))  # a table from before weights were recorded
    assert _legacy_rows_top1([tmp_path / "missing.json", table]) == 0.75
    table.write_text(json.dumps({"teacher": {"test_top1": 0.749, "weights_sha256": "bbb", "legacy_rows_top1": 0.75}}))
    assert _legacy_rows_top1([table]) == 0.75  # republished by another teacher: the old rows keep their fingerprint
    assert _legacy_rows_top1([tmp_path / "missing.json"]) is None


def test_study_scripts_arguments_and_presets():
    parser = argparse.ArgumentParser()
    add_set_arguments(parser, "fadrm,reta")
    args = parser.parse_args(["cifar10-ipc10", "some/bench", "--seeds", "3,5"])
    assert (args.variants, args.seeds, args.bench_dir) == (["fadrm", "reta"], [3, 5], Path("some/bench"))
    assert parser.parse_args(["p", "d", "--variants", "reta+pta.weight=0.1"]).variants == ["reta+pta.weight=0.1"]
    assert parser.parse_args(["p", "d"]).seeds == [0, 1, 2]
    with pytest.raises(SystemExit):
        parser.parse_args(["p", "d", "--seeds", "0,one"])
    assert preset_spec("cifar10-ipc10") == {"data": "cifar10", "ipc": 10}
    with pytest.raises(RetaError, match="unknown bench preset 'cifar-10'.*cifar10-ipc10"):
        preset_spec("cifar-10")
