"""Bad input through the command line: exit status 2, exactly one line on stderr naming the
offending file or value (and the fix), and no output folder that looks complete."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import write_image_folder
from reta.cli import build_parser, main

COMPLETE_MARKERS = ("manifest.json", "meta.json", "result.json")
RETA = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "reta"
SRC = Path(__file__).resolve().parents[1] / "src"
TINY_SQUEEZE = ["--arch", "convnet2-w8", "--epochs", "1", "--image-size", "16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three tiny image folders (A: classes a,b,c; B: a,b; C: a,b,d), a teacher on A at 16 px and a
    distilled set of A: everything the error cases need, built once (about 3 s)."""
    root = tmp_path_factory.mktemp("cli")
    w = {"root": root}
    for name, classes in (("A", ["a", "b", "c"]), ("B", ["a", "b"]), ("C", ["a", "b", "d"])):
        w[name] = write_image_folder(root / name, classes, per_class=6, size=16)
    w["T"] = root / "T"
    assert main(["--quiet", "squeeze", "--data", f"imagefolder:{w['A']}", *TINY_SQUEEZE, "--out", str(w["T"])]) == 0
    w["D"] = root / "D"
    assert main(["--quiet", "distill", "--data", f"imagefolder:{w['A']}", "--teacher", str(w["T"]), "--method", "random",
                 "--ipc", "1", "--out", str(w["D"]), "--cache-dir", str(root / "cache")]) == 0
    assert (w["D"] / "manifest.json").is_file() and (w["T"] / "meta.json").is_file()
    return w


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_failure(rc: int, err: str, needles: list[str], out_dir: Path | None) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("reta ") and ": error: " in line and "Traceback" not in line, line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    if out_dir is not None:
        for marker in COMPLETE_MARKERS:
            assert not (Path(out_dir) / marker).exists(), f"{out_dir}/{marker} written by a failed run"
    return line


def _distill(w, out, data=None, teacher=None, method="random", ipc="1", extra=()):
    return ["--quiet", "distill", "--data", data or f"imagefolder:{w['A']}", "--teacher", teacher or w["T"],
            "--method", method, "--ipc", ipc, "--iterations", "4", "--out", out,
            "--cache-dir", w["root"] / "cache", *extra]


def _evaluate(w, out, data, extra=()):
    return ["--quiet", "evaluate", "--data", data, "--teacher", w["T"], "--distilled", w["D"], "--epochs", "1",
            "--seeds", "1", "--out", out, *extra]


def _squeeze(data, out, extra=()):
    return ["--quiet", "squeeze", "--data", data, *TINY_SQUEEZE, "--out", out, *extra]


# --- datasets --------------------------------------------------------------------------------------

def test_missing_dataset_folders(world, tmp_path, capsys):
    out = tmp_path / "t"
    for data, needle in ((f"imagefolder:{tmp_path / 'nowhere'}", tmp_path / "nowhere"),
                         (f"npz:{tmp_path / 'nonpz'}", tmp_path / "nonpz")):
        rc, _, err = run_cli(capsys, _squeeze(data, out))
        assert_clean_failure(rc, err, [needle], out)
    # a named dataset absent from the data root: names the folders looked at and the fix
    rc, _, err = run_cli(capsys, ["--quiet", "squeeze", "--data", "imagenette", "--data-root", tmp_path / "empty",
                                  "--out", out])
    assert_clean_failure(rc, err, [tmp_path / "empty" / "imagenette2", "--data-root"], out)
    assert not out.exists()


def test_unknown_dataset_name(tmp_path, capsys):
    rc, _, err = run_cli(capsys, _squeeze("cifar11", tmp_path / "t"))
    assert_clean_failure(rc, err, ["'cifar11'", "imagefolder:DIR"], tmp_path / "t")


def test_corrupt_image_is_named(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world["A"], data)
    bad = data / "train" / "b" / "img099.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG body" * 4)
    rc, _, err = run_cli(capsys, _squeeze(f"imagefolder:{data}", tmp_path / "t"))
    assert_clean_failure(rc, err, [bad, "remove or replace"], tmp_path / "t")


@pytest.mark.parametrize("case", ["no_val", "classes_differ", "no_class_folders"])
def test_wrong_folder_layout(world, tmp_path, capsys, case):
    data = tmp_path / "data"
    if case == "no_val":
        shutil.copytree(world["A"] / "train", data / "train")
        needles = [data, "val/"]
    elif case == "classes_differ":
        shutil.copytree(world["A"], data)
        (data / "val" / "c").rename(data / "val" / "z")
        needles = [data / "val", "'c'"]
    else:  # images directly under train/ (no class folders)
        (data / "train").mkdir(parents=True)
        for f in (world["A"] / "train" / "a").iterdir():
            shutil.copy(f, data / "train" / f.name)
        needles = [data / "train", "<class>"]
    rc, _, err = run_cli(capsys, _squeeze(f"imagefolder:{data}", tmp_path / "t"))
    assert_clean_failure(rc, err, needles, tmp_path / "t")


# --- names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vgg11", "convnet9"])
def test_unknown_arch(world, tmp_path, capsys, arch):
    argv = ["--quiet", "squeeze", "--data", f"imagefolder:{world['A']}", "--arch", arch, "--epochs", "1",
            "--image-size", "16", "--out", tmp_path / "t"]
    rc, _, err = run_cli(capsys, argv)
    assert_clean_failure(rc, err, [f"'{arch}'"], tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_unknown_method(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", method="sre3l"))
    assert_clean_failure(rc, err, ["'sre3l'", "fadrm"], tmp_path / "d")
    assert not (tmp_path / "d").exists()


# --- artifacts that do not belong together ------------------------------------------------------------

def test_teacher_dataset_class_count_mismatch(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", data=f"imagefolder:{world['B']}"))
    assert_clean_failure(rc, err, ["2 classes", str(world["T"]), "3"], tmp_path / "d")
    rc, _, err = run_cli(capsys, _evaluate(world, tmp_path / "e", f"imagefolder:{world['B']}"))
    assert_clean_failure(rc, err, ["2 classes", str(world["T"])], tmp_path / "e")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_teacher_dataset_class_name_mismatch(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", data=f"imagefolder:{world['C']}"))
    assert_clean_failure(rc, err, ["'c'", "'d'", str(world["T"])], tmp_path / "d")
    rc, _, err = run_cli(capsys, _evaluate(world, tmp_path / "e", f"imagefolder:{world['C']}"))
    assert_clean_failure(rc, err, ["'c' vs 'd'"], tmp_path / "e")


def test_wrong_resolution(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", extra=["--image-size", "24"]))
    assert_clean_failure(rc, err, ["24 px", "16 px", "--image-size 16"], tmp_path / "d")
    rc, _, err = run_cli(capsys, _evaluate(world, tmp_path / "e", f"imagefolder:{world['A']}", ["--image-size", "24"]))
    assert_clean_failure(rc, err, ["--image-size 16"], tmp_path / "e")


def test_corrupt_teacher_weights(world, tmp_path, capsys):
    bad = tmp_path / "T"
    shutil.copytree(world["T"], bad)
    (bad / "weights.safetensors").write_bytes(os.urandom(64))
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", teacher=bad))
    assert_clean_failure(rc, err, [bad / "weights.safetensors", "reta squeeze"], tmp_path / "d")
    # a single flipped byte inside the tensors still parses, but the recorded checksum catches it
    shutil.copy(world["T"] / "weights.safetensors", bad / "weights.safetensors")
    blob = bytearray((bad / "weights.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(blob))
    rc, _, err = run_cli(capsys, ["--quiet", "evaluate", "--data", f"imagefolder:{world['A']}", "--teacher", bad,
                                  "--distilled", world["D"], "--out", tmp_path / "e"])
    assert_clean_failure(rc, err, [bad / "weights.safetensors", "checksum"], tmp_path / "e")
    # a folder that is not a teacher at all
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", teacher=tmp_path))
    assert_clean_failure(rc, err, [str(tmp_path), "reta squeeze"], tmp_path / "d")


def test_incomplete_distilled_set(world, tmp_path, capsys):
    part = tmp_path / "partial"
    shutil.copytree(world["D"], part)
    (part / "manifest.json").unlink()
    rc, _, err = run_cli(capsys, ["--quiet", "evaluate", "--data", f"imagefolder:{world['A']}", "--teacher", world["T"],
                                  "--distilled", part, "--out", tmp_path / "e"])
    assert_clean_failure(rc, err, [part, "manifest.json", "reta distill"], tmp_path / "e")


@pytest.mark.parametrize("field,value,needle", [
    ("mean", [0.9, 0.9, 0.9], "normalisation differs"),
    ("classes", ["a", "c", "b"], "at index 1"),
    ("image_size", 24, "24 px"),
])
def test_distilled_set_identity_checked_when_artifacts_meet(world, tmp_path, capsys, field, value, needle):
    """A distilled set whose recorded identity differs from the dataset/teacher is refused by
    evaluate and relabel before any work starts."""
    import json

    other = tmp_path / "D"
    shutil.copytree(world["D"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["dataset"][field] = value
    (other / "manifest.json").write_text(json.dumps(manifest))
    rc, _, err = run_cli(capsys, ["--quiet", "evaluate", "--data", f"imagefolder:{world['A']}", "--teacher", world["T"],
                                  "--distilled", other, "--epochs", "1", "--seeds", "1", "--out", tmp_path / "e"])
    assert_clean_failure(rc, err, [needle, str(other)], tmp_path / "e")
    rc, _, err = run_cli(capsys, ["--quiet", "relabel", "--distilled", other, "--teacher", world["T"],
                                  "--epochs", "1", "--out", tmp_path / "r"])
    # relabel reads the images first: 16 px files under a 24 px manifest are named as such
    needles = [".png", "expected 24 px"] if field == "image_size" else [needle, str(world["T"])]
    assert_clean_failure(rc, err, needles, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --- values ------------------------------------------------------------------------------------------

def test_ipc_larger_than_images_available(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", ipc="1000"))
    assert_clean_failure(rc, err, ["--ipc 1000", "lower --ipc", "'a'"], tmp_path / "d")
    assert not (tmp_path / "d").exists()  # validated before anything was written
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d0", ipc="0"))
    assert_clean_failure(rc, err, ["ipc=0"], tmp_path / "d0")


def test_non_finite_loss_in_squeeze(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _squeeze(f"imagefolder:{world['A']}", tmp_path / "t", ["--set", "lr=1e30", "batch_size=4"]))
    line = assert_clean_failure(rc, err, ["loss became", "lr", "1e+30"], tmp_path / "t")
    assert "nan" in line or "inf" in line, line
    assert not (tmp_path / "t" / "weights.safetensors").exists()


def test_non_finite_loss_in_recover(world, tmp_path, capsys):
    rc, _, err = run_cli(capsys, _distill(world, tmp_path / "d", method="sre2l", extra=["--set", "r_bn=1e300"]))
    assert_clean_failure(rc, err, ["non-finite loss", "r_bn=1e+300"], tmp_path / "d")
    assert not any((tmp_path / "d").rglob("*.png"))


@pytest.mark.parametrize("command", ["squeeze", "distill", "evaluate"])
def test_bad_set_key(world, tmp_path, capsys, command):
    out = tmp_path / "o"
    argv = {"squeeze": _squeeze(f"imagefolder:{world['A']}", out),
            "distill": _distill(world, out),
            "evaluate": _evaluate(world, out, f"imagefolder:{world['A']}")}[command]
    rc, _, err = run_cli(capsys, argv + ["--set", "drc.lamda=0.2"] if command == "distill" else argv + ["--set", "nope=1"])
    assert_clean_failure(rc, err, ["'drc.lamda'" if command == "distill" else "'nope'", "valid keys"], out)
    assert not out.exists()


def test_bad_set_values(world, tmp_path, capsys):
    out = tmp_path / "o"
    data = f"imagefolder:{world['A']}"
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("lr: [0.1\n")
    cases = [(_squeeze(data, out, ["--set", "flip=maybe"]), "flip='maybe'"),
             (_squeeze(data, out, ["--set", "epochs"]), "--set 'epochs'"),
             (_squeeze(data, out, ["--config", bad_yaml]), str(bad_yaml)),
             (_distill(world, out, extra=["--set", "drc=1"]), "'drc' is a section"),
             (_distill(world, out, extra=["--set", "ipc=2.5"]), "ipc=2.5")]
    for argv, needle in cases:
        rc, _, err = run_cli(capsys, argv)
        assert_clean_failure(rc, err, [needle], out)
    assert not out.exists()


# --- the command line itself ---------------------------------------------------------------------------

def test_quiet_accepted_before_and_after_the_subcommand():
    p = build_parser()
    base = ["squeeze", "--data", "digits", "--out", "x"]
    assert p.parse_args(["--quiet", *base]).quiet is True
    assert p.parse_args([*base, "--quiet"]).quiet is True
    assert p.parse_args(base).quiet is False
    assert p.parse_args(["distill", "--quiet", "--data", "d", "--teacher", "t", "--method", "random", "--ipc", "1",
                         "--out", "o"]).quiet is True


def test_success_writes_identity_into_every_artifact(world):
    """The class map, size and normalisation recorded in the teacher and the distilled set agree."""
    import json

    t = json.loads((world["T"] / "meta.json").read_text())["dataset"]
    d = json.loads((world["D"] / "manifest.json").read_text())["dataset"]
    assert t == d and t["classes"] == ["a", "b", "c"] and t["image_size"] == 16 and len(t["mean"]) == 3


@pytest.mark.skipif(not RETA.is_file(), reason="console script not installed in .venv")
def test_console_script_exit_code_and_single_line(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["A"], data)
    bad = data / "val" / "a" / "img000.png"
    bad.write_bytes(b"not a png")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(RETA), "squeeze", "--quiet", "--data", f"imagefolder:{data}", *TINY_SQUEEZE,
                           "--out", str(tmp_path / "t")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "t").exists()
