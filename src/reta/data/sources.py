"""Resolve a dataset SPEC to (train, test) image sets.

SPEC is one of
  * a name: cifar10, cifar100, tiny-imagenet, imagenette, imagewoof, imagenet-1k, digits —
    looked up under --data-root / $RETA_DATA_ROOT in the layouts listed in `NAMED_LAYOUTS`;
  * `npz:DIR` — DIR/train.npz and DIR/test.npz with arrays x (N,H,W,3|1 uint8) and y (N,),
    plus optional DIR/meta.json {"classes": [...]} (the layout of shared/datasets);
  * `imagefolder:DIR` — DIR/train/<class>/* and DIR/val/<class>/* (or test/); class index =
    sorted folder names.
Images are made square at the target size (shorter side resized, centre crop) when they are
not already.

Loading is strict: anything that would silently change what a pixel or a label means is a
one-line RetaError naming the file and the fix.
  * Labels are integer class indices 0..C-1; float labels are accepted only when exactly
    integral, negative ones never. Every class must have at least one training image: a gap
    in the labels, a meta.json listing more classes than the data holds, a test label beyond
    the training labels or an empty class folder is refused (nothing may ever be synthesised
    for a class with no real data). A split with 0 images is refused.
  * Image files of any depth become uint8 RGB: 16-bit samples (PIL modes I;16*, and I, as
    16-bit PNG/PGM/TIFF are read) are scaled by 255/65535 (65535 -> 255, 32768 -> 128); float
    images (mode F) must hold intensities in [0, 1]; an alpha channel (RGBA, LA, PA, P with
    transparency) is composited onto white; CMYK, YCbCr, LAB, HSV, 1-bit and palette images
    go through PIL's RGB conversion.
  * An image over `DEFAULT_MAX_IMAGE_PIXELS` (100 megapixels, e.g. 10000x10000) is refused
    from its header, before any pixel is decoded, as a likely decompression bomb; set
    RETA_MAX_IMAGE_PIXELS to allow larger ones. An image whose shorter side is under
    `MIN_IMAGE_SIDE` (8 px) is refused: upscaled, it holds nothing a model can learn from.
  * The size of an `imagefolder:` set is --image-size when given. Otherwise it is the median
    shorter side of the training images (read from their headers), capped at 224: one odd
    image cannot set the size of the whole set, and an unprepared folder of mixed sizes and
    formats works without preparation. Pass --image-size to choose it.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reta.data.dataset import DatasetInfo, ImageSet, TensorImageSet
from reta.errors import RetaError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": IMAGENET_STATS,
    "imagenette": IMAGENET_STATS,
    "imagewoof": IMAGENET_STATS,
    "imagenet-1k": IMAGENET_STATS,
}
DEFAULT_SIZE = {"cifar10": 32, "cifar100": 32, "tiny-imagenet": 64, "imagenette": 224, "imagewoof": 224,
                "imagenet-1k": 224, "digits": 16}
# Candidate folders under the data root, tried in order; "npz" entries hold train.npz/test.npz.
NAMED_LAYOUTS = {
    "cifar10": [("npz", "cifar10"), ("torchvision-cifar10", "cifar-10-batches-py"), ("torchvision-cifar10", "cifar10/cifar-10-batches-py")],
    "cifar100": [("npz", "cifar100"), ("torchvision-cifar100", "cifar-100-python"), ("torchvision-cifar100", "cifar100/cifar-100-python")],
    "tiny-imagenet": [("npz", "tiny-imagenet"), ("tiny", "tiny-imagenet-200"), ("tiny", "tiny-imagenet/tiny-imagenet-200")],
    "imagenette": [("npz", "imagenette"), ("folder", "imagenette2"), ("folder", "imagenette2-320"), ("folder", "imagenette2-160"), ("folder", "imagenette")],
    "imagewoof": [("npz", "imagewoof"), ("folder", "imagewoof2"), ("folder", "imagewoof2-320"), ("folder", "imagewoof2-160"), ("folder", "imagewoof")],
    "imagenet-1k": [("folder", "imagenet"), ("folder", "imagenet-1k"), ("folder", "ILSVRC2012")],
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
PRELOAD_LIMIT_BYTES = 4 << 30  # folders smaller than this are decoded once into memory
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # RETA_MAX_IMAGE_PIXELS overrides; see the module docstring
MIN_IMAGE_SIDE = 8
MAX_DEFAULT_FOLDER_SIZE = 224  # an imagefolder's default size never exceeds the usual ImageNet crop
DECODE_THREADS = 8


def dataset_names() -> list[str]:
    return sorted(list(NAMED_LAYOUTS) + ["digits"])


def load_dataset(spec: str, data_root: str | None = None, image_size: int | None = None,
                 download: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) for SPEC; both share one DatasetInfo (normalisation from the train split)."""
    if image_size is not None and image_size < 1:
        raise RetaError(f"--image-size {image_size}: must be a positive number of pixels")
    if spec == "digits":
        return _load_digits(image_size or DEFAULT_SIZE["digits"])
    kind, sep, rest = spec.partition(":")
    if sep and kind == "npz":
        return _load_npz_dir(Path(rest), name=Path(rest).name or "npz", image_size=image_size, stats=None)
    if sep and kind == "imagefolder":
        return _load_folder_pair(Path(rest), name=Path(rest).name, image_size=image_size, stats=None)
    if spec not in NAMED_LAYOUTS:
        raise RetaError(f"unknown dataset {spec!r}; use one of {', '.join(dataset_names())}, npz:DIR or imagefolder:DIR")
    root = Path(data_root or os.environ.get("RETA_DATA_ROOT", "") or ".")
    stats = KNOWN_STATS[spec]
    tried = []
    for layout, rel in NAMED_LAYOUTS[spec]:
        path = root / rel
        tried.append(str(path))
        if layout == "npz" and (path / "train.npz").is_file():
            return _load_npz_dir(path, name=spec, image_size=image_size, stats=stats)
        if layout.startswith("torchvision-") and path.is_dir():
            return _load_torchvision_cifar(root, spec, image_size, download=False)
        if layout == "tiny" and (path / "train").is_dir():
            return _load_tiny(path, image_size or DEFAULT_SIZE[spec])
        if layout == "folder" and (path / "train").is_dir():
            return _load_folder_pair(path, name=spec, image_size=image_size or DEFAULT_SIZE[spec], stats=stats)
    if download:
        return _download(spec, root, image_size)
    raise RetaError(f"dataset {spec!r} not found under {root} (looked for {', '.join(tried)}); "
                    f"set --data-root/RETA_DATA_ROOT, or pass --download when online")


# --- formats -----------------------------------------------------------------------------------

def _to_square_uint8(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N,C,H,W), C in {1,3} -> uint8 (N,3,size,size); shorter side resized, centre crop."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    if size is None:
        size = min(h, w)
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=nh < h, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def _stats_from(images: torch.Tensor, max_images: int = 10000) -> tuple[tuple, tuple]:
    sample = images[:: max(1, len(images) // max_images)].float().div(255)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise RetaError(f"{path}: file not found (an npz dataset needs train.npz and test.npz)")
    save_hint = "save it with np.savez(path, x=images, y=labels)"
    try:
        archive = np.load(path, allow_pickle=False)
    except PermissionError as exc:
        raise RetaError(f"{path}: cannot read ({exc.strerror}); check the file's permissions") from None
    except Exception as exc:  # noqa: BLE001 - zip/format errors all mean "not an npz archive"
        raise RetaError(f"{path}: not a readable npz archive ({type(exc).__name__}: {_first_line(exc)}); "
                        f"the file is corrupt, rebuild it ({save_hint})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise RetaError(f"{path}: holds a single array, not an npz archive of 'x' and 'y'; {save_hint}")
    with archive:
        if "x" not in archive.files or "y" not in archive.files:
            raise RetaError(f"{path}: expected arrays 'x' (N,H,W,C uint8) and 'y' (N,), found {archive.files}; {save_hint}")
        try:
            x, y = archive["x"], archive["y"]
        except Exception as exc:  # noqa: BLE001 - a truncated member or a pickled (object) array
            raise RetaError(f"{path}: cannot read its arrays ({type(exc).__name__}: {_first_line(exc)}); "
                            f"the file is corrupt, rebuild it ({save_hint})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
        raise RetaError(f"{path}: 'x' must be uint8 (N,H,W,3) or (N,H,W,1), got {x.dtype} {x.shape}; store the images as uint8 HWC")
    if len(x) == 0:
        raise RetaError(f"{path}: holds 0 images; every split needs images of every class")
    if 0 in x.shape[1:3]:
        raise RetaError(f"{path}: images are {x.shape[1]}x{x.shape[2]} px; store the images as uint8 HWC")
    if y.ndim != 1 or len(y) != len(x):
        raise RetaError(f"{path}: 'y' must have shape ({len(x)},), got {y.shape}; store one label per image")
    return x, _class_indices(y, path)


def _class_indices(y: np.ndarray, path: Path) -> np.ndarray:
    """int64 labels, or a RetaError: a float label is a class index only when exactly integral."""
    fix = "labels are class indices 0..C-1, store them as integers"
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise RetaError(f"{path}: label {float(y[bad[0]]):g} (image {bad[0]}) is not a whole number; {fix}")
    elif y.dtype.kind not in "iu":
        raise RetaError(f"{path}: 'y' has dtype {y.dtype}; {fix}")
    if (y < 0).any():
        i = int(np.argmax(y < 0))
        raise RetaError(f"{path}: label {y[i]:g} (image {i}) is negative; {fix}")
    if (y >= 2 ** 31).any():
        i = int(np.argmax(y >= 2 ** 31))
        raise RetaError(f"{path}: label {y[i]:g} (image {i}) is too large for a class index; {fix}")
    return y.astype(np.int64)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_bytes().decode("utf-8-sig"))
    except PermissionError as exc:
        raise RetaError(f"{path}: cannot read ({exc.strerror}); check the file's permissions") from None
    except UnicodeDecodeError:
        raise RetaError(f"{path}: not UTF-8 text; save it as UTF-8 JSON, or remove it") from None
    except json.JSONDecodeError as exc:
        raise RetaError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file or remove it") from None
    classes = meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, (str, int)) for c in classes):
        raise RetaError(f"{path}: expected {{\"classes\": [name, ...]}} listing the class names in label order; "
                        f"fix the file or remove it")
    names = [str(c) for c in classes]
    dup = next((c for i, c in enumerate(names) if c in names[:i]), None)
    if dup is not None:
        raise RetaError(f"{path}: class name {dup!r} is listed twice; each class needs its own name")
    return meta


def _first_class_without(labels: np.ndarray, num_classes: int) -> int | None:
    """The smallest class index in 0..num_classes-1 that no label uses, or None."""
    present = np.unique(labels)
    present = present[present < num_classes]  # out-of-range labels are TensorImageSet's to refuse
    gaps = np.flatnonzero(present != np.arange(len(present)))
    if len(gaps):
        return int(gaps[0])
    return len(present) if len(present) < num_classes else None


def _load_npz_dir(path: Path, name: str, image_size: int | None, stats) -> tuple[ImageSet, ImageSet]:
    if not path.is_dir():
        raise RetaError(f"{path}: not a folder; npz:DIR expects DIR/train.npz and DIR/test.npz")
    xtr, ytr = _read_npz(path / "train.npz")
    xte, yte = _read_npz(path / "test.npz")
    meta_path = path / "meta.json"
    if meta_path.is_file():
        meta = _read_meta(meta_path)
        classes = tuple(str(c) for c in meta["classes"])
        if stats is None and isinstance(meta.get("name"), str):
            stats = KNOWN_STATS.get(meta["name"])
        empty = _first_class_without(ytr, len(classes))
        if empty is not None:
            raise RetaError(f"{path / 'train.npz'}: class {empty} ({classes[empty]!r}, listed in {meta_path}) has no "
                            f"training images{_test_note(yte, empty)}; every class needs real images: add some, "
                            f"or remove it from meta.json and renumber the labels")
    else:
        num_classes = int(max(ytr.max(), yte.max())) + 1
        empty = _first_class_without(ytr, num_classes)
        if empty is not None:
            raise RetaError(f"{path / 'train.npz'}: no training image has label {empty}{_test_note(yte, empty)}, "
                            f"yet the labels go up to {num_classes - 1}; every class needs real images: renumber "
                            f"the labels 0..C-1 without gaps, or add images of class {empty}")
        classes = tuple(str(c) for c in range(num_classes))
    train = _to_square_uint8(torch.from_numpy(xtr).permute(0, 3, 1, 2), image_size)
    test = _to_square_uint8(torch.from_numpy(xte).permute(0, 3, 1, 2), train.shape[-1])
    mean, std = stats if stats else _stats_from(train)
    info = DatasetInfo(name=name, classes=classes, image_size=train.shape[-1], mean=mean, std=std)
    return (TensorImageSet(train, ytr, info, str(path / "train.npz")),
            TensorImageSet(test, yte, info, str(path / "test.npz")))


def _test_note(test_labels: np.ndarray, class_idx: int) -> str:
    n = int((test_labels == class_idx).sum())
    return f" (test.npz has {n})" if n else ""


def _load_digits(size: int) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's bundled 8x8 digits (1,797 images): needs no download. Split 2:1, seeded."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False).round().clamp(0, 255)
    x = x.to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test_mask[rng.choice(idx, size=len(idx) // 3, replace=False)] = True
    mean, std = _stats_from(x[~test_mask])
    info = DatasetInfo(name="digits", classes=tuple(str(c) for c in range(10)), image_size=size, mean=mean, std=std)
    return (TensorImageSet(x[~test_mask], y[~test_mask], info, "sklearn:digits/train"),
            TensorImageSet(x[test_mask], y[test_mask], info, "sklearn:digits/test"))


def _load_torchvision_cifar(root: Path, spec: str, image_size: int | None, download: bool) -> tuple[ImageSet, ImageSet]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if spec == "cifar10" else CIFAR100
    sub = root if (root / cls.base_folder).is_dir() or download else root / spec
    try:
        parts = [cls(str(sub), train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:  # torchvision checks every batch file's md5, even without download
        raise RetaError(f"{sub / cls.base_folder}: torchvision {spec} batches missing or not the original files "
                        f"(md5 check failed: {exc}); replace them with the original archive's files or pass --download") from None
    sets = []
    info = None
    for part, split in zip(parts, ("train", "test")):
        x = _to_square_uint8(torch.from_numpy(part.data).permute(0, 3, 1, 2), image_size)
        if info is None:
            info = DatasetInfo(name=spec, classes=tuple(part.classes), image_size=x.shape[-1],
                               mean=KNOWN_STATS[spec][0], std=KNOWN_STATS[spec][1])
        sets.append(TensorImageSet(x, np.asarray(part.targets), info, f"{sub}/{split}"))
    return sets[0], sets[1]


def _download(spec: str, root: Path, image_size: int | None) -> tuple[ImageSet, ImageSet]:
    if spec in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(root, spec, image_size, download=True)
    if spec == "imagenette":
        from torchvision.datasets import Imagenette

        for split in ("train", "val"):
            Imagenette(str(root / "imagenette-download"), split=split, size="320px", download=True)
        return _load_folder_pair(root / "imagenette-download" / "imagenette2-320", spec,
                                 image_size or DEFAULT_SIZE[spec], KNOWN_STATS[spec])
    raise RetaError(f"dataset {spec!r} cannot be downloaded automatically; place it under {root} "
                    f"(layouts: {', '.join(rel for _, rel in NAMED_LAYOUTS[spec])})")


# --- folders -----------------------------------------------------------------------------------

def _list_class_folder(split_dir: Path, classes: tuple[str, ...] | None) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    if not split_dir.is_dir():
        raise RetaError(f"{split_dir}: folder not found; imagefolder:DIR expects DIR/train/<class>/ and DIR/val/<class>/")
    found = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not found:
        raise RetaError(f"{split_dir}: no class sub-folders; expected {split_dir}/<class>/<image files>")
    if classes is not None and found != classes:
        missing = sorted(set(classes) - set(found)) or sorted(set(found) - set(classes))
        raise RetaError(f"{split_dir}: class folders differ from the train split (e.g. {missing[0]!r}); "
                        f"both splits need the same class folders")
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    files, labels, empty = [], [], []
    for idx, name in enumerate(found):
        imgs = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not imgs:
            empty.append(name)
        files += imgs
        labels += [idx] * len(imgs)
    if not files:
        raise RetaError(f"{split_dir}: 0 images in its class folders (looked for {suffixes}); add the split's images")
    if empty:
        raise RetaError(f"{split_dir / empty[0]}: class {empty[0]!r} holds no images ({suffixes}); every class needs "
                        f"real images: add some, or remove the class folder from every split")
    return files, np.asarray(labels, dtype=np.int64), found


def max_image_pixels() -> int:
    """The decompression-bomb limit: $RETA_MAX_IMAGE_PIXELS, else DEFAULT_MAX_IMAGE_PIXELS."""
    raw = os.environ.get("RETA_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    limit = int(raw) if raw.isdigit() else 0
    if limit < 1:
        raise RetaError(f"RETA_MAX_IMAGE_PIXELS={raw!r}: expected a whole number of pixels above 0, e.g. 200000000")
    return limit


@contextlib.contextmanager
def _pixel_limit():
    """The pixel limit for the images decoded inside the block.

    reta checks every image's size against it from the header; PIL's own global check would
    still warn on stderr above its MAX_IMAGE_PIXELS (and refuse at twice that) whatever the
    user allowed, so within the block it is raised to the limit and its warning silenced.
    Enter it on the calling thread only: the decoding threads read these globals, never set them.
    """
    from PIL import Image

    limit = max_image_pixels()
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if before is not None and before < limit:
            Image.MAX_IMAGE_PIXELS = limit
        try:
            yield limit
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _with_image(path: Path, max_pixels: int, use):
    """use(PIL image) for the file, checked from its header first; any failure names the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RetaError(f"{path}: {w}x{h} image ({w * h:,} pixels) is over the {max_pixels:,}-pixel limit "
                                f"that guards against decompression bombs; shrink it, or raise RETA_MAX_IMAGE_PIXELS "
                                f"if the image is genuine")
            if min(w, h) < MIN_IMAGE_SIDE:
                raise RetaError(f"{path}: image is {w}x{h} px, under the {MIN_IMAGE_SIDE} px minimum side; "
                                f"remove it or replace it with a larger image")
            return use(im)
    except RetaError:
        raise
    except FileNotFoundError:
        raise RetaError(f"{path}: image file not found; restore it or remove its entry") from None
    except PermissionError as exc:
        raise RetaError(f"{path}: cannot read image ({exc.strerror}); check its permissions") from None
    except Image.DecompressionBombError:  # PIL's check fires only far above max_pixels
        raise RetaError(f"{path}: image is over the {max_pixels:,}-pixel limit that guards against decompression "
                        f"bombs; shrink it, or raise RETA_MAX_IMAGE_PIXELS if the image is genuine") from None
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises while decoding this file is about this file
        raise RetaError(f"{path}: cannot decode image ({type(exc).__name__}); remove or replace the file") from None


def _eight_bit_rgb(im, path: Path):
    """A PIL image of any mode -> 8-bit RGB with the intensities the file means (module docstring)."""
    from PIL import Image

    if im.mode == "I" or im.mode.startswith("I;16"):
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        im = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise RetaError(f"{path}: float image with values in [{values.min():g}, {values.max():g}]; float (mode F) "
                            f"images are read as intensities in [0, 1]: rescale it, or save it as 8- or 16-bit")
        im = Image.fromarray(np.round(values * 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")  # dropping alpha would show whatever colour hides under transparent pixels
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(path: Path, size: int, max_pixels: int) -> torch.Tensor:
    """One image file -> uint8 (3,size,size); a corrupt, tiny or oversized file is a RetaError naming it.

    Call it inside `_pixel_limit()`, which gives `max_pixels`."""
    from PIL import Image

    def square(im) -> np.ndarray:
        im = _eight_bit_rgb(im, path)
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)

    return torch.from_numpy(_with_image(path, max_pixels, square).copy()).permute(2, 0, 1)


class FileImageSet(ImageSet):
    """Images decoded from files on demand (for sets too large to hold in memory)."""

    def __init__(self, files: list[Path], labels: np.ndarray, info: DatasetInfo, source: str):
        self.files = files
        self.labels = labels
        self.info = info
        self.source = source

    def load(self, indices) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) == 0:
            return torch.zeros(0, 3, self.info.image_size, self.info.image_size, dtype=torch.uint8)
        size = self.info.image_size
        with _pixel_limit() as limit, ThreadPoolExecutor(max_workers=min(DECODE_THREADS, len(idx))) as pool:
            return torch.stack(list(pool.map(lambda i: decode_image(self.files[i], size, limit), idx)))

    def content_hash(self) -> str:
        from reta.io import sha256_json

        return sha256_json([[str(f), f.stat().st_size, int(lab)] for f, lab in zip(self.files, self.labels)])

    def materialise(self, desc: str) -> TensorImageSet:
        from tqdm import tqdm

        chunks = []
        for s in tqdm(range(0, len(self), 512), desc=desc, unit="batch", leave=False, disable=len(self) < 2048):
            chunks.append(self.load(np.arange(s, min(s + 512, len(self)))))
        return TensorImageSet(torch.cat(chunks), self.labels, self.info, self.source)


def _maybe_materialise(s: FileImageSet, desc: str) -> ImageSet:
    if len(s) * 3 * s.info.image_size ** 2 <= PRELOAD_LIMIT_BYTES:
        return s.materialise(desc)
    return s


def _default_folder_size(files: list[Path]) -> int:
    """The median shorter side of the files (headers only, each checked), capped at MAX_DEFAULT_FOLDER_SIZE."""
    with _pixel_limit() as limit, ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        sides = sorted(pool.map(lambda f: min(_with_image(f, limit, lambda im: im.size)), files))
    return min(MAX_DEFAULT_FOLDER_SIZE, sides[(len(sides) - 1) // 2])


def _load_folder_pair(path: Path, name: str, image_size: int | None, stats) -> tuple[ImageSet, ImageSet]:
    if not path.is_dir():
        raise RetaError(f"{path}: folder not found; imagefolder:DIR expects DIR/train/<class>/ and DIR/val/<class>/")
    files, labels, classes = _list_class_folder(path / "train", None)
    eval_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if eval_dir is None:
        raise RetaError(f"{path}: no val/ or test/ folder beside train/; add the evaluation split")
    vfiles, vlabels, _ = _list_class_folder(eval_dir, classes)
    size = image_size or _default_folder_size(files)
    provisional = DatasetInfo(name, classes, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    train = _maybe_materialise(FileImageSet(files, labels, provisional, str(path / "train")), "decoding train")
    if stats is None:
        sample = train.load(np.linspace(0, len(train) - 1, min(len(train), 5000)).astype(np.int64))
        stats = _stats_from(sample)
    info = DatasetInfo(name, classes, size, tuple(stats[0]), tuple(stats[1]))
    train.info = info
    test = _maybe_materialise(FileImageSet(vfiles, vlabels, info, str(eval_dir)), "decoding val")
    return train, test


def _load_tiny(path: Path, size: int) -> tuple[ImageSet, ImageSet]:
    """Tiny-ImageNet's original layout: train/<wnid>/images/*, val/images + val/val_annotations.txt."""
    files, labels, classes = _list_class_folder(path / "train", None)
    ann = path / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise RetaError(f"{ann}: missing; Tiny-ImageNet's val split needs val/images and val/val_annotations.txt")
    index = {wnid: i for i, wnid in enumerate(classes)}
    vfiles, vlabels = [], []
    try:
        text = ann.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RetaError(f"{ann}: not UTF-8 text; restore the original file from the Tiny-ImageNet archive") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise RetaError(f"{ann}:{line_no}: expected '<file>\\t<wnid>...' with a wnid from train/, got {line[:60]!r}")
        vfiles.append(path / "val" / "images" / parts[0])
        vlabels.append(index[parts[1]])
    if not vfiles:
        raise RetaError(f"{ann}: lists 0 images; restore the original file from the Tiny-ImageNet archive")
    info = DatasetInfo("tiny-imagenet", classes, size, *KNOWN_STATS["tiny-imagenet"])
    train = _maybe_materialise(FileImageSet(files, labels, info, str(path / "train")), "decoding train")
    test = _maybe_materialise(FileImageSet(vfiles, np.asarray(vlabels, dtype=np.int64), info, str(ann)), "decoding val")
    return train, test
