"""Every command owns its --out: through the command line, squeeze, relabel and report refuse a
folder that is not theirs, never write inside an input, never replace a finished artifact without
--overwrite, and leave nothing behind when validation fails; the user's files stay byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reta import outdir
from reta.cli import main

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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A digits teacher T, a random IPC-1 distilled set D of digits, and an npz dataset folder N."""
    root = tmp_path_factory.mktemp("own")
    w = {"root": root, "T": root / "T", "D": root / "D", "N": write_npz_dataset(root / "N")}
    assert main(["--quiet", "squeeze", "--data", "digits", *SQUEEZE, "--out", str(w["T"])]) == 0
    assert main(["--quiet", "distill", "--data", "digits", "--teacher", str(w["T"]), "--method", "random", "--ipc", "1",
                 "--out", str(w["D"]), "--cache-dir", str(root / "cache")]) == 0
    return w


def argv(command: str, w: dict, out: Path, extra: tuple = ()) -> list[str]:
    out = str(out)
    return {"squeeze": ["--quiet", "squeeze", "--data", "digits", *SQUEEZE, "--out", out],
            "relabel": ["--quiet", "relabel", "--distilled", str(w["D"]), "--teacher", str(w["T"]), "--epochs", "1",
                        "--out", out],
            "report": ["--quiet", "report", "--data", "digits", "--distilled", str(w["D"]), "--teacher", str(w["T"]),
                       "--max-classes", "2", "--out", out]}[command] + list(extra)


COMMANDS = ["squeeze", "relabel", "report"]
FINISHED = {"squeeze": "meta.json", "relabel": "manifest.json", "report": "report.md"}


def run(capsys, args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def refused(rc: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_users_files_are_still_there_byte_for_byte(world, tmp_path, capsys, command):
    for rel, data in USER_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    for extra in ((), ("--overwrite",)):
        refused(*run(capsys, argv(command, world, tmp_path, extra)), "not empty and was not written by")
        assert snapshot(tmp_path) == USER_FILES


@pytest.mark.parametrize("command", COMMANDS)
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


@pytest.mark.parametrize("command, out_of", [
    ("squeeze", lambda w: w["N"]),  # the dataset's own folder: its meta.json must survive
    ("squeeze", lambda w: w["N"] / "teacher"),
    ("relabel", lambda w: w["D"]),
    ("relabel", lambda w: w["D"] / "labels"),
    ("relabel", lambda w: w["T"] / "labels"),
    ("report", lambda w: w["D"] / "report"),
    ("report", lambda w: w["T"]),
])
def test_out_inside_an_input_folder_is_refused(world, capsys, command, out_of):
    out = out_of(world)
    args = argv(command, world, out, ("--overwrite",))
    if command == "squeeze":
        args[args.index("digits")] = f"npz:{world['N']}"
    before = {k: snapshot(world[k]) for k in ("T", "D", "N")}
    refused(*run(capsys, args), "input folder")
    assert {k: snapshot(world[k]) for k in ("T", "D", "N")} == before


@pytest.mark.parametrize("command, extra, needle", [
    ("squeeze", ("--arch", "no-such-net"), "no-such-net"),
    ("squeeze", ("--init-weights", "missing.safetensors"), "missing.safetensors"),
    ("relabel", ("--set", "teacher_mode=bogus"), "teacher_mode"),
    ("report", ("--max-classes", "0"), "--max-classes"),
])
def test_a_failed_validation_leaves_nothing_and_the_corrected_command_works(world, tmp_path, capsys, command, extra,
                                                                          needle):
    out = tmp_path / "out"
    refused(*run(capsys, argv(command, world, out, extra)), needle)
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
