"""The CLI boundary: OS, decode and malformed-artifact errors end as exactly one line
`reta <cmd>: error: <path>: <what> (<fix>)` and exit status 2, never a traceback; RETA_DEBUG=1
re-raises them; Ctrl-C promises a resume only for the commands that have one."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import yaml
from safetensors import SafetensorError

from conftest import write_image_folder
from reta import cli
from reta.cli import main

SQUEEZE = ["--arch", "convnet2-w8", "--epochs", "1", "--image-size", "16"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("RETA_DEBUG", raising=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny image folder, a teacher on it and a distilled set of it (about 3 s)."""
    root = tmp_path_factory.mktemp("hostile")
    w = {"root": root, "A": write_image_folder(root / "A", ["a", "b"], per_class=4, size=16)}
    w["T"], w["D"] = root / "T", root / "D"
    assert main(["--quiet", "squeeze", "--data", f"imagefolder:{w['A']}", *SQUEEZE, "--out", str(w["T"])]) == 0
    assert main(["--quiet", "distill", "--data", f"imagefolder:{w['A']}", "--teacher", str(w["T"]), "--method",
                 "random", "--ipc", "1", "--out", str(w["D"]), "--cache-dir", str(root / "cache")]) == 0
    return w


def one_line(capsys, argv, command: str) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert lines[0].startswith(f"reta {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def _squeeze(w, out, extra=()):
    return ["--quiet", "squeeze", "--data", f"imagefolder:{w['A']}", *SQUEEZE, "--out", out, *extra]


def _copy(w, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(w[name], dst)
    return dst


# --- real hostile inputs ----------------------------------------------------------------------------

def test_out_is_an_existing_file(world, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_bytes(b"the user's own file\n")
    for target in (out, out / "sub"):
        line = one_line(capsys, _squeeze(world, target), "squeeze")
        assert str(out) in line, line
    assert out.read_bytes() == b"the user's own file\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_out(world, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line(capsys, _squeeze(world, ro / "t"), "squeeze")
    finally:
        ro.chmod(0o755)
    assert str(ro) in line and "permission denied" in line, line


@pytest.mark.parametrize("case", ["folder", "not_utf8", "missing"])
def test_config_file_errors(world, tmp_path, capsys, case):
    cfg = tmp_path / "c.yaml"
    needle = {"folder": "is a folder", "not_utf8": "not UTF-8", "missing": "not found"}[case]
    if case == "folder":
        cfg.mkdir()
    elif case == "not_utf8":
        cfg.write_bytes("lr: 0.1  # d\u00e9j\u00e0\n".encode("latin-1"))
    line = one_line(capsys, _squeeze(world, tmp_path / "t", ["--config", cfg]), "squeeze")
    assert str(cfg) in line and needle in line, line
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("content", [b"[]", b"{}", b'{"arch": "convnet2-w8"}', b"\xff\xfe\x00{", b'{"arch": '])
def test_malformed_teacher_meta(world, tmp_path, capsys, content):
    bad = _copy(world, "T", tmp_path)
    (bad / "meta.json").write_bytes(content)
    argv = ["--quiet", "distill", "--data", f"imagefolder:{world['A']}", "--teacher", bad, "--method", "random",
            "--ipc", "1", "--out", tmp_path / "d", "--cache-dir", world["root"] / "cache"]
    line = one_line(capsys, argv, "distill")
    assert str(bad) in line, line
    assert not (tmp_path / "d" / "manifest.json").exists()


@pytest.mark.parametrize("edit", ["drop_ipc", "not_utf8", "not_object"])
def test_malformed_manifest(world, tmp_path, capsys, edit):
    bad = _copy(world, "D", tmp_path)
    manifest = bad / "manifest.json"
    if edit == "drop_ipc":
        m = json.loads(manifest.read_text())
        del m["ipc"]
        manifest.write_text(json.dumps(m))
    elif edit == "not_utf8":
        manifest.write_bytes(b"\xff" + manifest.read_bytes())
    else:
        manifest.write_text("[1, 2]")
    argv = ["--quiet", "evaluate", "--data", f"imagefolder:{world['A']}", "--teacher", world["T"], "--distilled", bad,
            "--epochs", "1", "--seeds", "1", "--out", tmp_path / "e"]
    line = one_line(capsys, argv, "evaluate")
    assert str(bad) in line, line
    assert not (tmp_path / "e" / "result.json").exists()


# --- every class of exception, raised where the command runs -------------------------------------------

ARGV = {
    "squeeze": ["squeeze", "--data", "digits", "--out", "/o/t"],
    "distill": ["distill", "--data", "digits", "--teacher", "/i/T", "--method", "random", "--ipc", "1", "--out", "/o/d"],
    "evaluate": ["evaluate", "--data", "digits", "--teacher", "/i/T", "--distilled", "/i/D", "--out", "/o/e"],
}
_NO_SPACE = 'Error while serializing: I/O error: No space left on device (os error 28) at path "/o/d/.tmpAb12"'
BOUNDARY = {  # name: (command, exception, needles)
    "disk_full_write": ("distill", OSError(errno.ENOSPC, "No space left on device"),
                        ["/o/d: no space left", "rerun the same command to resume"]),
    "disk_full_squeeze": ("squeeze", OSError(errno.ENOSPC, "No space left on device"), ["/o/t: no space left"]),
    "disk_full_safetensors": ("distill", SafetensorError(_NO_SPACE), ["/o/d: no space left"]),
    "quota": ("squeeze", OSError(errno.EDQUOT, "Disk quota exceeded", "/o/t/w.tmp"), ["/o/t/w.tmp: disk quota"]),
    "read_only": ("squeeze", OSError(errno.EROFS, "Read-only file system", "/o/t"), ["/o/t: read-only", "writable --out"]),
    "permission": ("evaluate", PermissionError(errno.EACCES, "Permission denied", "/o/e/config.json"),
                   ["/o/e/config.json: permission denied"]),
    "out_is_file": ("squeeze", FileExistsError(errno.EEXIST, "File exists", "/o/t"), ["/o/t: exists and is not a folder"]),
    "under_a_file": ("squeeze", NotADirectoryError(errno.ENOTDIR, "Not a directory", "/o/t/x"), ["/o/t/x: a part"]),
    "missing_file": ("evaluate", FileNotFoundError(errno.ENOENT, "No such file", "/i/D/images"), ["/i/D/images: no such"]),
    "rename": ("distill", OSError(errno.EXDEV, "Invalid cross-device link", "/o/a", None, "/p/b"), ["/o/a -> /p/b: Invalid"]),
    "libraries_oserror": ("squeeze", OSError("cannot write mode I as PNG"), ["cannot write mode I as PNG"]),
    "not_utf8": ("evaluate", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                 ["--teacher /i/T, --distilled /i/D", "not UTF-8"]),
    "json": ("distill", json.JSONDecodeError("Expecting value", "{", 1), ["--teacher /i/T", "invalid (Expecting value"]),
    "yaml": ("squeeze", yaml.YAMLError("mapping values are not allowed here"), ["invalid YAML"]),
    "key_error": ("evaluate", KeyError("ipc"), ["--distilled /i/D", "missing key 'ipc'", "regenerate"]),
    "type_error": ("distill", TypeError("'NoneType' object is not subscriptable"), ["--teacher /i/T", "TypeError"]),
}


def _raise(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("case", sorted(BOUNDARY))
def test_errors_become_one_line(monkeypatch, capsys, case):
    command, exc, needles = BOUNDARY[case]
    monkeypatch.setitem(cli.COMMANDS, command, _raise(exc))
    line = one_line(capsys, ARGV[command], command)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    if command == "squeeze":
        assert "resume" not in line, line


@pytest.mark.parametrize("case", ["disk_full_write", "key_error", "permission"])
def test_reta_debug_reraises(monkeypatch, capsys, case):
    command, exc, _ = BOUNDARY[case]
    monkeypatch.setitem(cli.COMMANDS, command, _raise(exc))
    monkeypatch.setenv("RETA_DEBUG", "1")
    with pytest.raises(type(exc)):
        main(ARGV[command])
    monkeypatch.setenv("RETA_DEBUG", "0")
    assert main(ARGV[command]) == 2


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "squeeze", _raise(ZeroDivisionError("a bug, not a user mistake")))
    with pytest.raises(ZeroDivisionError):
        main(ARGV["squeeze"])


@pytest.mark.parametrize("command,resumes", [("squeeze", False), ("evaluate", False), ("distill", True)])
def test_interrupt_promises_resume_only_where_there_is_one(monkeypatch, capsys, command, resumes):
    monkeypatch.setitem(cli.COMMANDS, command, _raise(KeyboardInterrupt()))
    capsys.readouterr()
    assert main(ARGV[command]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"reta {command}: interrupted") and ("resume" in err) == resumes, err
