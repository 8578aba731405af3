"""reta.outdir: a command writes only into a folder it may own, and deletes only its own files."""

from __future__ import annotations

import json
import os

import pytest

from reta import io, outdir
from reta.errors import RetaError


def snapshot(root):
    """Every file under root with its bytes: what "nothing changed" compares."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_tree(root):
    files = {"notes.txt": b"my notes\n", "init/notes.txt": b"keep\n", "sub/.draft.tmp": b"draft",
             "images/00000/00000_00000.png": b"not a reta png"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_new_and_empty_folders_are_claimed_with_a_marker(tmp_path):
    for out in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert outdir.claim(out, "teacher", run_record={"seed": (1, 2)}) == out
        assert json.loads((out / outdir.MARKER).read_text()) == {"kind": "teacher", "version": 1, "run": {"seed": [1, 2]}}


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text("x"), "is an existing file"),
    (lambda p: (p.parent / "file").write_text("x"), "is a file, not a folder"),
])
def test_file_in_the_way_is_refused(tmp_path, make, needle):
    out = tmp_path / "out"
    make(out)
    target = out if out.exists() else tmp_path / "file" / "out"
    before = snapshot(tmp_path)
    with pytest.raises(RetaError, match=needle):
        outdir.claim(target, "report")
    assert snapshot(tmp_path) == before


def test_out_equal_to_or_inside_an_input_is_refused_through_symlinks(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    for out in (data, data / "train" / "x", tmp_path / "link" / "sub"):
        with pytest.raises(RetaError, match="input folder"):
            outdir.claim(out, "teacher", inputs=[data])
    assert not (data / outdir.MARKER).exists() and not (data / "train" / "x").exists()
    with pytest.raises(RetaError, match="input folder"):
        outdir.claim(data / "t", "teacher", inputs=[tmp_path / "link"])
    assert outdir.claim(tmp_path / "beside", "teacher", inputs=[data]).is_dir()


def test_foreign_non_empty_folder_is_refused_and_untouched(tmp_path):
    user_tree(tmp_path)
    before = snapshot(tmp_path)
    for kind in outdir.KINDS:
        for overwrite in (False, True):
            with pytest.raises(RetaError, match="not empty and was not written by"):
                outdir.claim(tmp_path, kind, overwrite=overwrite)
    assert snapshot(tmp_path) == before


def test_artifact_of_another_kind_is_refused(tmp_path):
    outdir.claim(tmp_path, "labels")
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(RetaError, match="holds a reta labels artifact, not a distilled"):
        outdir.claim(tmp_path, "distilled", overwrite=True)
    assert (tmp_path / "manifest.json").read_text() == "{}"


def test_damaged_marker_is_refused(tmp_path):
    (tmp_path / outdir.MARKER).write_text("{not json")
    with pytest.raises(RetaError, match="damaged reta marker"):
        outdir.claim(tmp_path, "teacher")


def test_finished_artifact_needs_overwrite_which_replaces_only_owned_files(tmp_path):
    outdir.claim(tmp_path, "distilled", run_record={"ipc": 2})
    for rel in ("images/00000/00000_00000.png", "images/00001/00001_00000.png", "progress/group_00000.json",
                "manifest.json", "init/class_00000.safetensors"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"ours")
    (tmp_path / "images" / "00001" / "notes.txt").write_bytes(b"the user's")
    (tmp_path / "README").write_bytes(b"the user's too")
    before = snapshot(tmp_path)
    with pytest.raises(RetaError, match="already holds a finished distilled .*--overwrite"):
        outdir.claim(tmp_path, "distilled", run_record={"ipc": 2})
    assert snapshot(tmp_path) == before
    outdir.claim(tmp_path, "distilled", overwrite=True, run_record={"ipc": 1})
    assert set(snapshot(tmp_path)) == {outdir.MARKER, "images/00001/notes.txt", "README"}
    assert not (tmp_path / "images" / "00000").exists() and not (tmp_path / "progress").exists()
    assert json.loads((tmp_path / outdir.MARKER).read_text())["run"] == {"ipc": 1}


def test_unfinished_resumable_run_resumes_only_with_the_same_record(tmp_path):
    record = {"config": {"lr": 0.1, "sizes": (8, 16)}, "data_hash": "ab"}
    outdir.claim(tmp_path, "labels", run_record=record)
    (tmp_path / "labels-00000.safetensors").write_bytes(b"shard")
    before = snapshot(tmp_path)
    assert outdir.claim(tmp_path, "labels", run_record=json.loads(json.dumps(record))) == tmp_path
    assert snapshot(tmp_path) == before
    with pytest.raises(RetaError, match="unfinished run with other settings"):
        outdir.claim(tmp_path, "labels", run_record={**record, "data_hash": "cd"})
    assert snapshot(tmp_path) == before
    outdir.claim(tmp_path, "labels", overwrite=True, run_record={**record, "data_hash": "cd"})
    assert not (tmp_path / "labels-00000.safetensors").exists()


def test_unfinished_non_resumable_artifact_starts_over(tmp_path):
    outdir.claim(tmp_path, "evaluation")
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "mine.txt").write_bytes(b"user")
    outdir.claim(tmp_path, "evaluation")
    assert set(snapshot(tmp_path)) == {outdir.MARKER, "mine.txt"}


def test_owned_paths_lists_reta_temporaries_and_never_the_users(tmp_path):
    outdir.claim(tmp_path, "distilled")
    (tmp_path / "init").mkdir()
    (tmp_path / "images" / "00000").mkdir(parents=True)
    ours = [tmp_path / "init" / "class_00000.safetensors", tmp_path / "images" / "00000" / "00000_00000.png",
            tmp_path / "images" / "00000" / ".reta-tmp.00000_00001.png.k2_x9.tmp",
            tmp_path / "init" / ".reta-tmp.class_00001.safetensors.abc.tmp"]
    theirs = [tmp_path / "init" / "notes.txt", tmp_path / "images" / "00000" / ".draft.tmp",
              tmp_path / "images" / "00000" / ".reta-tmp.notes.txt.abc.tmp", tmp_path / ".reta-tmp.x.png.a.tmp",
              tmp_path / "images" / "00000_00000.png"]
    for p in ours + theirs:
        p.write_bytes(b"x")
    assert outdir.owned_paths(tmp_path, "distilled") == sorted(ours)
    outdir.remove_temporaries(tmp_path, "distilled")
    assert [p.exists() for p in ours] == [True, True, False, False] and all(p.exists() for p in theirs)
    outdir.remove_owned(tmp_path, "distilled", ["init/class_*.safetensors"])
    assert not ours[0].exists() and ours[1].exists() and (tmp_path / "init" / "notes.txt").exists()
    (tmp_path / "init" / "notes.txt").unlink()
    outdir.remove_owned(tmp_path, "distilled", ["init/class_*.safetensors"])
    assert not (tmp_path / "init").exists()  # left empty by our own files only
    with pytest.raises(ValueError):
        outdir.owned_paths(tmp_path, "distilled", ["*.txt"])


def test_atomic_writes_leave_only_reta_named_temporaries(tmp_path, monkeypatch):
    seen = []

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with io.atomic_path(tmp_path / "meta.json") as tmp:
            seen.append(tmp.name)
            tmp.write_text("half")
            raise Boom
    assert seen[0].startswith(outdir.TMP_PREFIX + "meta.json.") and seen[0].endswith(".tmp")
    assert outdir._temporary_target(seen[0]) == "meta.json"
    assert os.listdir(tmp_path) == []


def test_dataset_inputs_name_the_folders_a_spec_reads(tmp_path):
    assert outdir.dataset_inputs(f"npz:{tmp_path}") == [tmp_path]
    assert outdir.dataset_inputs(f"imagefolder:{tmp_path}/x") == [tmp_path / "x"]
    assert outdir.dataset_inputs("digits") == []
    (tmp_path / "cifar10").mkdir()
    assert outdir.dataset_inputs("cifar10", str(tmp_path)) == [tmp_path / "cifar10"]
