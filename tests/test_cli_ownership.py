"""Every command owns its --out: through the command line, squeeze, relabel, report, evaluate, run,
demo and bench refuse a folder that is not theirs, never write inside an input, never replace a
finished artifact without --overwrite, and leave nothing behind when validation fails; the user's
files stay byte for byte. run, demo and bench continue when the same command is rerun, also in a
folder an earlier reta wrote before markers existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reta import outdir
from reta.cli import main
from reta.errors import RetaError

SQUEEZE = ["--arch", "convnet2-w8", "--epochs", "1"]
USER_FILES = {"notes.txt": b"my notes\n", "init/notes.txt": b"keep me\n", "sub/.draft.tmp": b"draft",
              "images/00000/00000_00000.png": b"\x89PNG not reta's"}


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_npz_dataset(root: Path, classes: int = 3, per_class: int = 6, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split in ("train", "test"):
        y = np.repeat(np.arange(classes), per_class)
        x = rng.integers(0, 256, size=(len(y), size, size, 3), dtype=np.uint8)
        np.savez(root / f"{split}.npz", x=x, y=y)
    (root / "meta.json").write_text(json.dumps({"classes": [f"c{i}" for i in range(classes)]}))
    return root


# Budgets small enough for a test, through $RETA_CONFIGS (run.yaml, demo.yaml, bench/); *-other
# differ from them in one student setting, for "the same folder, other settings".
STUDENT = "protocol: {student: convnet2-w8, epochs: EPOCHS, batch_size: 10, seeds: 1}\n"
TEACHER = "teacher: {arch: convnet2-w8, epochs: 1, batch_size: 128}\nrecover: {iterations: 1, batch_size: 10}\n"
CONFIGS = {"run.yaml": TEACHER + STUDENT, "demo.yaml": "ipcs: [1]\n" + TEACHER + STUDENT,
           "demo-other.yaml": "ipcs: [1]\n" + TEACHER + STUDENT.replace("EPOCHS", "2"),
           "demo-huge.yaml": "ipcs: [900]\n" + TEACHER + STUDENT,
           "bench/presets.yaml": "digits-ipc1: {data: digits, ipc: 1}\n", "bench/quick.yaml": TEACHER + STUDENT,
           "bench/full.yaml": TEACHER + STUDENT.replace("EPOCHS", "2")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A digits teacher T, random IPC-1 distilled sets D and D2 (another seed) of digits, a label store L
    of D, an npz dataset folder N, tiny configs and a teacher cache shared by the tests."""
    root = tmp_path_factory.mktemp("own")
    w = {"root": root, "T": root / "T", "D": root / "D", "D2": root / "D2", "L": root / "L",
         "N": write_npz_dataset(root / "N"), "configs": root / "configs", "cache": root / "cache"}
    for rel, text in CONFIGS.items():
        (w["configs"] / rel).parent.mkdir(parents=True, exist_ok=True)
        (w["configs"] / rel).write_text(text.replace("EPOCHS", "1"))
    assert main(["--quiet", "squeeze", "--data", "digits", *SQUEEZE, "--out", str(w["T"])]) == 0
    for name, seed in (("D", 0), ("D2", 1)):
        assert main(["--quiet", "distill", "--data", "digits", "--teacher", str(w["T"]), "--method", "random",
                     "--ipc", "1", "--set", f"seed={seed}", "--out", str(w[name]), "--cache-dir", str(w["cache"])]) == 0
    assert main(["--quiet", "relabel", "--distilled", str(w["D"]), "--teacher", str(w["T"]), "--epochs", "1",
                 "--out", str(w["L"])]) == 0
    return w


@pytest.fixture(autouse=True)
def tiny(world, tmp_path, monkeypatch):
    """The tiny budgets, the shared teacher cache, and a working directory of the test's own (bench --publish)."""
    monkeypatch.setenv("RETA_CONFIGS", str(world["configs"]))
    monkeypatch.setenv("RETA_CACHE", str(world["cache"]))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def argv(command: str, w: dict, out: Path, extra: tuple = ()) -> list[str]:
    out = str(out)
    return {"squeeze": ["--quiet", "squeeze", "--data", "digits", *SQUEEZE, "--out", out],
            "relabel": ["--quiet", "relabel", "--distilled", str(w["D"]), "--teacher", str(w["T"]), "--epochs", "1",
                        "--out", out],
            "report": ["--quiet", "report", "--data", "digits", "--distilled", str(w["D"]), "--teacher", str(w["T"]),
                       "--max-classes", "2", "--out", out],
            "evaluate": ["--quiet", "evaluate", "--data", "digits", "--distilled", str(w["D"]), "--teacher", str(w["T"]),
                         "--student", "convnet2-w8", "--epochs", "1", "--seeds", "1", "--out", out],
            "run": ["--quiet", "run", "--data", "digits", "--method", "random", "--ipc", "1", "--out", out],
            "demo": ["--quiet", "demo", "--methods", "random", "--out", out],
            "bench": ["--quiet", "bench", "digits-ipc1", "--methods", "random", "--no-hard-labels", "--out", out],
            }[command] + [str(a) for a in extra]


COMMANDS = ["squeeze", "relabel", "report", "evaluate", "run", "demo", "bench"]
RERUN = ["run", "demo", "bench"]  # the same command on a finished folder reuses it
FINISHED = {"squeeze": "meta.json", "relabel": "manifest.json", "report": "report.md", "evaluate": "result.json",
            "run": "report.md", "demo": "report.md", "bench": "report.md"}
KIND = {"evaluate": "evaluation", "run": "run", "demo": "demo", "bench": "bench"}


def other_settings(command: str, w: dict) -> tuple:
    return {"run": ("--seeds", "2"), "demo": ("--config", w["configs"] / "demo-other.yaml"),
            "bench": ("--tier", "full")}[command]


def refuse_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the work was already done")

    for name in ("evaluate", "distill", "squeeze"):
        monkeypatch.setattr(f"reta.pipeline.{name}", refuse)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def json_keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from json_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from json_keys(v)


def unowned(out: Path, kind: str) -> set[str]:
    """Files under `out` that `kind` does not own (its marker aside): none, if KINDS says what it writes."""
    files = {p for p in out.rglob("*") if p.is_file()} - {out / outdir.MARKER}
    return {p.relative_to(out).as_posix() for p in files - set(outdir.owned_paths(out, kind))}


def run(capsys, args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def refused(rc: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_users_files_are_still_there_byte_for_byte(world, tmp_path, capsys, command):
    write_files(tmp_path, USER_FILES)
    for extra in ((), ("--overwrite",)):
        refused(*run(capsys, argv(command, world, tmp_path, extra)), "not empty and was not written by")
        assert snapshot(tmp_path) == USER_FILES


@pytest.mark.parametrize("command, files", [
    ("evaluate", {"result.json": b'{"mine": 1}\n', "config.json": b"{}\n"}),
    ("demo", {"report.md": b"# my report\n"}),
    ("run", {"report.md": b"# my report\n", "distilled/manifest.json": b"{}"}),
    ("bench", {"report.md": b"# my report\n", "rows/a__seed0__b.json": b"{}"}),
])
def test_a_folder_of_the_users_files_with_our_names_is_not_ours(world, tmp_path, capsys, command, files):
    out = tmp_path / "out"
    write_files(out, files)
    for extra in ((), ("--overwrite",)):
        refused(*run(capsys, argv(command, world, out, extra)), "not empty and was not written by")
        assert snapshot(out) == files


@pytest.mark.parametrize("command", ["squeeze", "relabel", "report", "evaluate"])
def test_a_finished_artifact_is_not_overwritten_without_overwrite(world, tmp_path, capsys, command):
    out = tmp_path / "out"
    assert run(capsys, argv(command, world, out))[0] == 0
    assert (out / FINISHED[command]).is_file() and (out / outdir.MARKER).is_file()
    (out / "mine.txt").write_bytes(b"added by the user")
    before = snapshot(out)
    refused(*run(capsys, argv(command, world, out)), "already holds a finished")
    assert snapshot(out) == before
    assert run(capsys, argv(command, world, out, ("--overwrite",)))[0] == 0
    assert (out / FINISHED[command]).is_file() and (out / "mine.txt").read_bytes() == b"added by the user"
    assert not [p for p in out.rglob("*.tmp")]


def bench_teacher(w: dict) -> Path:
    """Where bench keeps its teacher for the tiny quick tier (trained there before bench claims --out)."""
    from reta import pipeline
    from reta.bench import tier_settings
    from reta.config import SqueezeConfig, build
    from reta.data import load_dataset

    recipe = build(SqueezeConfig, base=tier_settings("quick")["teacher"])
    return w["cache"] / "teachers" / pipeline.teacher_key(load_dataset("digits")[0], recipe)


@pytest.mark.parametrize("command, out_of, extra", [
    ("squeeze", lambda w: w["N"], ()),  # the dataset's own folder: its meta.json must survive
    ("squeeze", lambda w: w["N"] / "teacher", ()),
    ("relabel", lambda w: w["D"], ()),
    ("relabel", lambda w: w["D"] / "labels", ()),
    ("relabel", lambda w: w["T"] / "labels", ()),
    ("report", lambda w: w["D"] / "report", ()),
    ("report", lambda w: w["T"], ()),
    ("evaluate", lambda w: w["D"], ()),
    ("evaluate", lambda w: w["T"] / "eval", ()),
    ("evaluate", lambda w: w["L"] / "eval", lambda w: ("--labels", w["L"])),
    ("run", lambda w: w["N"], ()),
    ("run", lambda w: w["N"] / "train.npz.d", ()),
    ("run", lambda w: w["T"] / "run", lambda w: ("--teacher", w["T"])),
    ("bench", lambda w: bench_teacher(w) / "bench", ()),
])
def test_out_inside_an_input_folder_is_refused(world, capsys, command, out_of, extra):
    out = out_of(world)
    args = argv(command, world, out, (*(extra(world) if callable(extra) else extra), "--overwrite"))
    if command in ("squeeze", "run") and out_of(world).is_relative_to(world["N"]):
        args[args.index("digits")] = f"npz:{world['N']}"
    before = {k: snapshot(world[k]) for k in ("T", "D", "L", "N")}
    refused(*run(capsys, args), "input folder")
    assert {k: snapshot(world[k]) for k in ("T", "D", "L", "N")} == before


@pytest.mark.parametrize("command, extra, needle", [
    ("squeeze", ("--arch", "no-such-net"), "no-such-net"),
    ("squeeze", ("--init-weights", "missing.safetensors"), "missing.safetensors"),
    ("relabel", ("--set", "teacher_mode=bogus"), "teacher_mode"),
    ("report", ("--max-classes", "0"), "--max-classes"),
    ("evaluate", ("--student", "no-such-net"), "no-such-net"),
    ("evaluate", ("--seeds", "0"), "seeds"),
    ("evaluate", lambda w: ("--distilled", w["T"]), "manifest"),
    ("evaluate", lambda w: ("--labels", w["L"], "--baseline", "random"), "stored labels"),
    ("run", ("--ipc", "900"), "--ipc 900"),  # the baseline's and the method's feasibility, before the teacher trains
    ("run", ("--arch", "no-such-net"), "no-such-net"),
    ("run", ("--set", "protocol.student=no-such-net"), "no-such-net"),
    ("demo", ("--methods", "no-such-method"), "no-such-method"),
    ("demo", lambda w: ("--config", w["configs"] / "demo-huge.yaml"), "--ipc 900"),
    ("bench", ("--methods", "random+ipc=900"), "--ipc 900"),
    ("bench", ("--students", "no-such-net"), "no-such-net"),
])
def test_a_failed_validation_leaves_nothing_and_the_corrected_command_works(world, tmp_path, capsys, command, extra,
                                                                          needle):
    out = tmp_path / "out"
    refused(*run(capsys, argv(command, world, out, extra(world) if callable(extra) else extra)), needle)
    assert not out.exists()
    assert run(capsys, argv(command, world, out))[0] == 0


@pytest.mark.parametrize("command", ["relabel", "report"])
def test_an_input_of_another_dataset_writes_nothing(world, tmp_path, capsys, command):
    other = tmp_path / "other-teacher"
    assert main(["--quiet", "squeeze", "--data", f"npz:{world['N']}", *SQUEEZE, "--out", str(other)]) == 0
    args = argv(command, {**world, "T": other}, tmp_path / "out")
    rc, err = run(capsys, args)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_out_an_existing_file_is_refused(world, tmp_path, capsys, command):
    path = tmp_path / "file.txt"
    path.write_bytes(b"precious")
    refused(*run(capsys, argv(command, world, path, ("--overwrite",))), "existing file")
    assert path.read_bytes() == b"precious"


def test_squeeze_over_another_artifact_kind_is_refused(world, tmp_path, capsys):
    labels = tmp_path / "labels"
    assert run(capsys, argv("relabel", world, labels))[0] == 0
    before = snapshot(labels)
    refused(*run(capsys, argv("squeeze", world, labels, ("--overwrite",))), "holds a reta labels artifact")
    assert snapshot(labels) == before


def test_interrupted_squeeze_resumes_from_its_last_epoch_with_the_same_weights(world, tmp_path, capsys, monkeypatch):
    from reta import teacher

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    three = ["--epochs", "3"]
    assert run(capsys, argv("squeeze", world, straight, three))[0] == 0
    save = teacher._save_checkpoint

    def save_then_stop(path, run_key, model, opt, gen, epochs_done, *rest):
        save(path, run_key, model, opt, gen, epochs_done, *rest)
        if epochs_done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(teacher, "_save_checkpoint", save_then_stop)
    assert run(capsys, argv("squeeze", world, resumed, three))[0] == 130
    assert (resumed / teacher.CHECKPOINT).is_file() and not (resumed / "meta.json").exists()
    refused(*run(capsys, argv("squeeze", world, resumed, ["--epochs", "4"])), "unfinished run with other settings")
    monkeypatch.setattr(teacher, "_save_checkpoint", save)
    assert run(capsys, argv("squeeze", world, resumed, three))[0] == 0
    a, b = (json.loads((d / "meta.json").read_text()) for d in (straight, resumed))
    assert b["resumed_from_epoch"] == 2 and a["resumed_from_epoch"] == 0
    assert a["weights_sha256"] == b["weights_sha256"] and a["epoch_loss"] == b["epoch_loss"]
    assert not (resumed / teacher.CHECKPOINT).exists()


def test_evaluate_never_leaves_a_config_beside_an_older_result(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "E"
    assert run(capsys, argv("evaluate", world, out, ("--baseline", "random")))[0] == 0
    assert not unowned(out, "evaluation") and (out / outdir.BASELINE / "manifest.json").is_file()
    before = snapshot(out)
    # Another set over the finished result: refused, nothing rewritten.
    refused(*run(capsys, argv("evaluate", world, out, ("--distilled", world["D2"]))), "already holds a finished")
    # An input inside it would be deleted by --overwrite.
    refused(*run(capsys, argv("evaluate", world, out, ("--distilled", out / outdir.BASELINE, "--overwrite"))),
            "which --overwrite would delete")
    assert snapshot(out) == before
    # --overwrite with a run that fails after the claim: the old result (and baseline) are gone, not left
    # beside the new config.json.
    monkeypatch.setattr("reta.pipeline.evaluate", lambda *a, **k: (_ for _ in ()).throw(RetaError("student failed")))
    refused(*run(capsys, argv("evaluate", world, out, ("--distilled", world["D2"], "--overwrite"))), "student failed")
    assert not (out / "result.json").exists() and not (out / outdir.BASELINE).exists()
    assert json.loads((out / "config.json").read_text())["distilled"] == str(world["D2"])
    monkeypatch.undo()
    # The unfinished evaluation is simply redone by the next command, whatever its set.
    assert run(capsys, argv("evaluate", world, out))[0] == 0
    assert json.loads((out / "result.json").read_text())["distilled"] == str(world["D"])


def test_evaluate_over_another_kind_is_refused(world, capsys):
    before = snapshot(world["L"])
    refused(*run(capsys, argv("evaluate", world, world["L"], ("--overwrite",))), "holds a reta labels artifact")
    assert snapshot(world["L"]) == before


@pytest.mark.parametrize("command", RERUN)
def test_a_finished_run_continues_and_other_settings_need_overwrite(world, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "out"
    assert run(capsys, argv(command, world, out))[0] == 0
    assert (out / FINISHED[command]).is_file() and not unowned(out, KIND[command])
    (out / "mine.txt").write_bytes(b"added by the user")
    images = {k: v for k, v in snapshot(out).items() if k.endswith(".png") and "/images/" in k}
    assert images
    with monkeypatch.context() as m:
        refuse_training(m)
        assert run(capsys, argv(command, world, out))[0] == 0  # the same command: nothing trains again
    before = snapshot(out)
    assert {k: before[k] for k in images} == images and before["mine.txt"] == b"added by the user"
    refused(*run(capsys, argv(command, world, out, other_settings(command, world))), "made with other settings")
    assert snapshot(out) == before
    assert run(capsys, argv(command, world, out, (*other_settings(command, world), "--overwrite")))[0] == 0
    assert (out / FINISHED[command]).is_file() and (out / "mine.txt").read_bytes() == b"added by the user"
    assert not unowned(out, KIND[command]) - {"mine.txt"}


@pytest.mark.parametrize("command", RERUN)
def test_an_interrupted_run_resumes_with_the_same_command(world, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr("reta.pipeline.evaluate", interrupt)  # the first student: every set is distilled by then
        assert run(capsys, argv(command, world, out))[0] == 130
    assert not (out / FINISHED[command]).exists()
    images = {k: v for k, v in snapshot(out).items() if "/images/" in k}
    assert images
    keys = set(json_keys(outdir.read_marker(out)["run"]))
    assert not {k for k in keys if k in ("versions", "timings", "date") or "seconds" in k}, keys
    before = snapshot(out)
    refused(*run(capsys, argv(command, world, out, other_settings(command, world))), "unfinished run with other settings")
    assert snapshot(out) == before
    with monkeypatch.context() as m:
        for name in ("distill", "squeeze"):
            m.setattr(f"reta.pipeline.{name}", lambda *a, **k: (_ for _ in ()).throw(AssertionError("redone")))
        assert run(capsys, argv(command, world, out))[0] == 0
    after = snapshot(out)
    assert {k: after[k] for k in images} == images and (out / FINISHED[command]).is_file()


@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_folder_written_before_markers_is_continued_if_it_holds_only_our_files(world, tmp_path, capsys, monkeypatch,
                                                                               command):
    out = tmp_path / "out"
    with monkeypatch.context() as m:  # a folder of a bench or run still in progress with the code of before
        m.setattr("reta.pipeline.evaluate", interrupt)
        assert run(capsys, argv(command, world, out))[0] == 130
    (out / outdir.MARKER).unlink()
    (out / "notes.txt").write_bytes(b"mine")
    before = snapshot(out)
    refused(*run(capsys, argv(command, world, out)), "not empty and was not written by")
    assert snapshot(out) == before
    (out / "notes.txt").unlink()
    with monkeypatch.context() as m:
        m.setattr("reta.pipeline.distill", lambda *a, **k: (_ for _ in ()).throw(AssertionError("redone")))
        assert run(capsys, argv(command, world, out))[0] == 0
    assert outdir.read_marker(out)["kind"] == KIND[command] and (out / FINISHED[command]).is_file()
