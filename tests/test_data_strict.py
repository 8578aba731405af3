"""Strict data loading: every input that would change what a pixel or a label means is either
read correctly (16-bit, float, alpha, CMYK, mixed sizes) or refused through the command line
with exit status 2 and exactly one line on stderr naming the offending file; nothing is written."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from reta.cli import main
from reta.data import load_dataset
from reta.data.dataset import holdout_indices
from reta.data.sources import MAX_DEFAULT_FOLDER_SIZE, MIN_IMAGE_SIDE
from reta.errors import RetaError

SQUEEZE = ["--arch", "convnet2-w8", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("RETA_DEBUG", raising=False)
    monkeypatch.delenv("RETA_MAX_IMAGE_PIXELS", raising=False)


def _png(w: int, h: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: PIL cannot write 48-bit RGB, and a bomb must not be allocated to be made."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _npz(folder: Path, xtr, ytr, xte=None, yte=None, meta=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=xtr, y=ytr)
    np.savez(folder / "test.npz", x=xtr if xte is None else xte, y=ytr if yte is None else yte)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _images(n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "f", ["a", "b"], per_class=3, size=16)


# --- refused: one line through the CLI, naming the file ---------------------------------------------
# Each builder makes a dataset under tmp_path and returns (--data spec, [needles], extra argv).

def _valid(d: Path) -> Path:
    """A valid two-class npz set, for the cases that then break one file of it."""
    return _npz(d, _images(2), np.array([0, 1]))


def _single_npy(path: Path) -> None:
    with open(path, "wb") as f:  # np.save(str) would append .npy to the name
        np.save(f, _images(2))


NPZ_CASES = {  # name: (writes DIR, needles: file names are joined to DIR)
    "zero_train_images": (lambda d: _npz(d, _images(0), np.zeros(0, np.int64), _images(2), np.array([0, 1])),
                          ["train.npz", "0 images"]),
    "zero_test_images": (lambda d: _npz(d, _images(2), np.array([0, 1]), _images(0), np.zeros(0, np.int64)),
                         ["test.npz", "0 images"]),
    "label_gap": (lambda d: _npz(d, _images(4), np.array([0, 2, 0, 2])), ["train.npz", "label 1", "without gaps"]),
    "meta_more_classes": (lambda d: _npz(d, _images(4), np.array([0, 1, 0, 1]), meta={"classes": ["a", "b", "c"]}),
                          ["train.npz", "'c'", "meta.json"]),
    "test_beyond_train": (lambda d: _npz(d, _images(4), np.array([0, 1, 0, 1]), _images(3), np.array([0, 1, 2])),
                          ["train.npz", "label 2", "test.npz has 1"]),
    "test_beyond_meta": (lambda d: _npz(d, _images(4), np.array([0, 1, 0, 1]), _images(3), np.array([0, 1, 2]),
                                        meta={"classes": ["a", "b"]}), ["test.npz", "[0, 1]"]),
    "float_labels": (lambda d: _npz(d, _images(4), np.array([0.6, 1.6, 0.6, 1.6])), ["train.npz", "0.6", "whole"]),
    "negative_labels": (lambda d: _npz(d, _images(4), np.array([0, -1, 0, 1])), ["train.npz", "-1", "negative"]),
    "nan_labels": (lambda d: _npz(d, _images(2), np.array([0.0, np.nan])), ["train.npz", "nan"]),
    "string_labels": (lambda d: _npz(d, _images(2), np.array(["a", "b"])), ["train.npz", "dtype"]),
    "huge_label": (lambda d: _npz(d, _images(2), np.array([0, 2 ** 40])), ["train.npz", "too large"]),
    "missing_x": (lambda d: np.savez(_valid(d) / "train.npz", y=np.array([0, 1])), ["train.npz", "'x'"]),
    "x_float": (lambda d: _npz(d, _images(2).astype(np.float32), np.array([0, 1])), ["train.npz", "float32"]),
    "x_four_channels": (lambda d: _npz(d, np.zeros((2, 8, 8, 4), np.uint8), np.array([0, 1])),
                        ["train.npz", "(2, 8, 8, 4)"]),
    "x_zero_pixels": (lambda d: _npz(d, np.zeros((2, 0, 8, 3), np.uint8), np.array([0, 1])), ["train.npz", "0x8"]),
    "y_two_dimensional": (lambda d: _npz(d, _images(2), np.array([[0], [1]])), ["train.npz", "(2, 1)"]),
    "not_a_zip": (lambda d: (_valid(d) / "test.npz").write_bytes(b"\x00garbage" * 9), ["test.npz", "not a readable npz"]),
    "empty_file": (lambda d: (_valid(d) / "train.npz").write_bytes(b""), ["train.npz", "not a readable npz"]),
    "single_npy": (lambda d: _single_npy(_valid(d) / "train.npz"), ["train.npz", "single array"]),
    "object_array": (lambda d: np.savez(_valid(d) / "train.npz", x=np.array([None, 1], dtype=object), y=np.array([0, 1])),
                     ["train.npz", "cannot read its arrays"]),
    "meta_not_utf8": (lambda d: (_valid(d) / "meta.json").write_bytes('{"classes": ["caf\u00e9", "b"]}'.encode("latin-1")),
                      ["meta.json", "UTF-8"]),
    "meta_not_object": (lambda d: _npz(d, _images(2), np.array([0, 1]), meta=["a", "b"]), ["meta.json", "classes"]),
    "meta_classes_not_names": (lambda d: _npz(d, _images(2), np.array([0, 1]), meta={"classes": [{"n": 1}, None]}),
                               ["meta.json", "classes"]),
    "meta_duplicate_class": (lambda d: _npz(d, _images(2), np.array([0, 1]), meta={"classes": ["a", "a"]}),
                             ["meta.json", "'a' is listed twice"]),
    "meta_bad_json": (lambda d: (_valid(d) / "meta.json").write_bytes(b'{"classes": ['), ["meta.json", "not valid JSON"]),
}


def _npz_case(write, needles):
    def build(tmp_path, monkeypatch):
        d = tmp_path / "n"
        write(d)
        return f"npz:{d}", [str(d / n) if n.endswith((".npz", ".json")) else n for n in needles], []
    return build


def _empty_class(split: str):
    def build(tmp_path, monkeypatch):
        root = _folder(tmp_path)
        for f in (root / split / "b").iterdir():
            f.unlink()
        return f"imagefolder:{root}", [str(root / split / "b"), "'b'", "no images"], ["--image-size", "16"]
    return build


def _empty_split(split: str):
    def build(tmp_path, monkeypatch):
        root = _folder(tmp_path)
        for f in (root / split).rglob("*.*"):
            f.unlink()
        return f"imagefolder:{root}", [str(root / split), "0 images"], ["--image-size", "16"]
    return build


def _add_image(name: str, make, image_size: str | None = "16", needles=(), env=None):
    def build(tmp_path, monkeypatch):
        root = _folder(tmp_path)
        bad = root / "train" / "b" / name
        make(bad)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        return f"imagefolder:{root}", [str(bad), *needles], ["--image-size", image_size] if image_size else []
    return build


def _tiny(path: Path) -> None:
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)


def _bomb(path: Path) -> None:
    path.write_bytes(_png(20000, 20000, 8, 2, b""))  # a header claiming 400 megapixels; no pixels behind it


def _float_tiff(path: Path) -> None:
    Image.fromarray(np.full((16, 16), 200.0, np.float32)).save(path)


def _bad_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RETA_MAX_IMAGE_PIXELS", "lots")
    return f"imagefolder:{_folder(tmp_path)}", ["RETA_MAX_IMAGE_PIXELS='lots'"], ["--image-size", "16"]


REFUSED = {
    **{f"npz_{k}": _npz_case(*v) for k, v in NPZ_CASES.items()},
    "folder_empty_train_class": _empty_class("train"),
    "folder_empty_val_class": _empty_class("val"),
    "folder_empty_train_split": _empty_split("train"),
    "folder_empty_val_split": _empty_split("val"),
    "folder_tiny_image": _add_image("tiny.png", _tiny, needles=["6x4", f"{MIN_IMAGE_SIDE} px"]),
    "folder_tiny_image_sets_no_size": _add_image("tiny.png", _tiny, image_size=None, needles=["6x4"]),
    "folder_decompression_bomb": _add_image("bomb.png", _bomb, needles=["decompression", "RETA_MAX_IMAGE_PIXELS"]),
    "folder_bomb_before_size_scan": _add_image("bomb.png", _bomb, image_size=None, needles=["decompression"]),
    "folder_over_raised_limit": _add_image("big.png", lambda p: Image.new("RGB", (40, 30)).save(p),
                                           needles=["40x30", "1,000-pixel limit"],
                                           env={"RETA_MAX_IMAGE_PIXELS": "1000"}),
    "folder_float_out_of_range": _add_image("float.tif", _float_tiff, needles=["[200, 200]", "[0, 1]"]),
    "folder_bad_pixel_limit": _bad_env,
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line(tmp_path, monkeypatch, capsys, case):
    spec, needles, extra = REFUSED[case](tmp_path, monkeypatch)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["--quiet", "squeeze", "--data", spec, *SQUEEZE, *extra, "--out", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert lines[0].startswith("reta squeeze: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert not out.exists()


def test_image_size_must_be_positive(tmp_path):
    with pytest.raises(RetaError, match="--image-size 0"):
        load_dataset(f"imagefolder:{_folder(tmp_path)}", image_size=0)
    with pytest.raises(RetaError, match="--image-size -3"):
        load_dataset("digits", image_size=-3)


def test_tiny_imagenet_annotations_not_utf8(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    write_image_folder(base, ["n01", "n02"], per_class=2, size=8, split_names=("train",))
    (base / "val").mkdir()
    ann = base / "val" / "val_annotations.txt"
    ann.write_bytes(b"val_0.JPEG\tn01\xff\n")
    with pytest.raises(RetaError) as exc:
        load_dataset("tiny-imagenet", data_root=str(tmp_path), image_size=8)
    assert str(ann) in str(exc.value) and "UTF-8" in str(exc.value)
    ann.write_text("")
    with pytest.raises(RetaError, match="0 images"):
        load_dataset("tiny-imagenet", data_root=str(tmp_path), image_size=8)


# --- accepted: read with the intensities the file means ------------------------------------------------

def _grey16(value: int):
    return lambda p: Image.fromarray(np.full((16, 16), value, np.uint16)).save(p)  # mode I;16 PNG


def _rgb48(p: Path) -> None:
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * 16
    p.write_bytes(_png(16, 16, 16, 2, row * 16))


def _rgba(value):
    return lambda p: Image.new("RGBA", (16, 16), value).save(p)


def _palette(p: Path, transparent: bool) -> None:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([10, 20, 30] * 256)
    im.save(p, **({"transparency": 0} if transparent else {}))


SCALED = {
    "png16_max": (_grey16(65535), "x.png", (255, 255, 255)),
    "png16_half": (_grey16(32768), "x.png", (128, 128, 128)),
    "png16_zero": (_grey16(0), "x.png", (0, 0, 0)),
    "png16_dark": (_grey16(257 * 7), "x.png", (7, 7, 7)),
    "pgm16_mode_I": (lambda p: Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(p, format="PPM"),
                     "x.pgm", (128, 128, 128)),
    "tiff_int32_mode_I": (lambda p: Image.fromarray(np.full((16, 16), 65535, np.int32)).save(p), "x.tif", (255, 255, 255)),
    "tiff_float_mode_F": (lambda p: Image.fromarray(np.full((16, 16), 0.25, np.float32)).save(p), "x.tif", (64, 64, 64)),
    "png48_rgb": (_rgb48, "x.png", (255, 128, 0)),
    "rgba_transparent_on_white": (_rgba((255, 0, 0, 0)), "x.png", (255, 255, 255)),
    "rgba_opaque": (_rgba((0, 0, 255, 255)), "x.png", (0, 0, 255)),
    "rgba_half": (_rgba((0, 0, 0, 128)), "x.png", (127, 127, 127)),
    "la_opaque": (lambda p: Image.new("LA", (16, 16), (40, 255)).save(p), "x.png", (40, 40, 40)),
    "palette_transparent": (lambda p: _palette(p, transparent=True), "x.png", (255, 255, 255)),
    "palette": (lambda p: _palette(p, transparent=False), "x.png", (10, 20, 30)),
    "cmyk": (lambda p: Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(p), "x.tif", (255, 0, 255)),
    "one_bit": (lambda p: Image.new("1", (16, 16), 1).save(p), "x.png", (255, 255, 255)),
}


@pytest.mark.parametrize("case", sorted(SCALED))
def test_high_bit_depth_and_odd_modes_scaled_to_rgb(tmp_path, case):
    make, name, expected = SCALED[case]
    root = _folder(tmp_path)
    make(root / "train" / "a" / f"zz_{name}")
    train, _ = load_dataset(f"imagefolder:{root}", image_size=16)
    last_a = int(np.flatnonzero(train.labels == 0)[-1])  # sorted file names: zz_ comes last
    x = train.load([last_a])[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 16, 16)
    assert tuple(int(v) for v in x[:, 8, 8]) == expected
    assert (x == x[:, :1, :1]).all()  # a uniform file stays uniform


def test_pil_bomb_warning_never_reaches_stderr(tmp_path, monkeypatch, recwarn):
    """PIL warns (and at twice its limit refuses) from its own global; reta's limit alone decides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    root = _folder(tmp_path)  # 16x20 = 320 px: PIL would warn; 40x40 = 1600 px: PIL would refuse
    Image.new("RGB", (40, 40), (9, 9, 9)).save(root / "train" / "a" / "zz_big.png")
    train, _ = load_dataset(f"imagefolder:{root}", image_size=16)
    assert len(train) == 7 and not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == 200  # PIL's own setting is left as it was
    monkeypatch.setenv("RETA_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(RetaError, match="zz_big.png"):
        load_dataset(f"imagefolder:{root}", image_size=16)


def test_integral_float_labels_accepted(tmp_path):
    d = _npz(tmp_path / "n", _images(4), np.array([0.0, 1.0, 2.0, 1.0]))
    train, test = load_dataset(f"npz:{d}")
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 1, 2, 1]
    assert train.info.classes == ("0", "1", "2")


def test_meta_name_of_any_type_and_bom(tmp_path):
    d = _npz(tmp_path / "n", _images(4), np.array([0, 1, 0, 1]))
    (d / "meta.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"name": ["x"], "classes": ["p", "q"]}).encode())
    train, _ = load_dataset(f"npz:{d}")
    assert train.info.classes == ("p", "q")


# --- mixed sizes: the median shorter side, or --image-size ------------------------------------------

def _mixed_folder(root: Path, shapes: dict[str, list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, sizes in shapes.items():
            (root / split / cls).mkdir(parents=True)
            for i, (h, w) in enumerate(sizes):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_mixed_sizes_default_to_the_median_shorter_side(tmp_path):
    # the first file is the smallest: it no longer sets the size of the whole set
    root = _mixed_folder(tmp_path / "m", {"a": [(8, 9), (30, 40), (64, 30)], "b": [(30, 31), (90, 60)]})
    train, test = load_dataset(f"imagefolder:{root}")
    assert train.info.image_size == 30 and tuple(test.load([0]).shape) == (1, 3, 30, 30)
    train, test = load_dataset(f"imagefolder:{root}", image_size=12)
    assert train.info.image_size == 12 and tuple(train.load(np.arange(5)).shape) == (5, 3, 12, 12)


def test_default_size_capped(tmp_path):
    root = _mixed_folder(tmp_path / "m", {"a": [(240, 250)], "b": [(260, 240)]})
    assert load_dataset(f"imagefolder:{root}")[0].info.image_size == MAX_DEFAULT_FOLDER_SIZE


def test_unprepared_folder_runs_end_to_end(tmp_path, capsys):
    """Mixed sizes, JPEG and PNG, never prepared: squeeze works with --image-size and without it."""
    root = _mixed_folder(tmp_path / "m", {"a": [(20, 30), (40, 24), (16, 16)], "b": [(50, 18), (18, 18), (33, 70)]})
    for extra, size in ((["--image-size", "12"], 12), ([], 18)):  # shorter sides 16, 18, 18, 20, 24, 33
        out = tmp_path / f"t{size}"
        assert main(["--quiet", "squeeze", "--data", f"imagefolder:{root}", *SQUEEZE, *extra, "--out", str(out)]) == 0
        assert json.loads((out / "meta.json").read_text())["dataset"]["image_size"] == size


# --- no class is ever emptied --------------------------------------------------------------------------

def test_holdout_never_takes_a_class_s_last_image():
    labels = np.array([0, 0, 1, 1, 1, 2])
    for fraction in (0.5, 0.9, 0.99):
        held = holdout_indices(labels, fraction, seed=0)
        kept = np.setdiff1d(np.arange(len(labels)), held)
        assert set(labels[kept]) == {0, 1, 2}, (fraction, held)
    assert len(holdout_indices(labels, 0.9, seed=0)) == 3  # all but one image of each class
