"""Resolve a dataset SPEC to (train, test) image sets.

SPEC is one of
  * a name: cifar10, cifar100, tiny-imagenet, imagenette, imagewoof, imagenet-1k, digits —
    looked up under --data-root / $RETA_DATA_ROOT in the layouts listed in `NAMED_LAYOUTS`;
  * `npz:DIR` — DIR/train.npz and DIR/test.npz with arrays x (N,H,W,3|1 uint8) and y (N,),
    plus optional DIR/meta.json {"classes": [...]} (the layout of shared/datasets);
  * `imagefolder:DIR` — DIR/train/<class>/* and DIR/val/<class>/* (or test/); class index =
    sorted folder names.
Images are made square at the target size (shorter side resized, centre crop) when they are
not already; grey and palette images are converted to RGB.
"""

from __future__ import annotations

import os
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


def dataset_names() -> list[str]:
    return sorted(list(NAMED_LAYOUTS) + ["digits"])


def load_dataset(spec: str, data_root: str | None = None, image_size: int | None = None,
                 download: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) for SPEC; both share one DatasetInfo (normalisation from the train split)."""
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


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise RetaError(f"{path}: file not found (an npz dataset needs train.npz and test.npz)")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise RetaError(f"{path}: expected arrays 'x' (N,H,W,C uint8) and 'y' (N,), found {list(d.keys())}; "
                               f"save them with np.savez(path, x=images, y=labels)")
            x, y = d["x"], d["y"]
    except RetaError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/format errors all mean "corrupt file"
        raise RetaError(f"{path}: cannot read npz ({type(exc).__name__}: {exc}); the file is corrupt, rebuild it") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
        raise RetaError(f"{path}: 'x' must be uint8 (N,H,W,3) or (N,H,W,1), got {x.dtype} {x.shape}; store the images as uint8 HWC")
    if y.ndim != 1 or len(y) != len(x):
        raise RetaError(f"{path}: 'y' must have shape ({len(x)},), got {y.shape}; store one label per image")
    return x, y.astype(np.int64)


def _load_npz_dir(path: Path, name: str, image_size: int | None, stats) -> tuple[ImageSet, ImageSet]:
    if not path.is_dir():
        raise RetaError(f"{path}: not a folder; npz:DIR expects DIR/train.npz and DIR/test.npz")
    xtr, ytr = _read_npz(path / "train.npz")
    xte, yte = _read_npz(path / "test.npz")
    meta_path = path / "meta.json"
    if meta_path.is_file():
        from reta.io import read_json
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list) or not meta["classes"]:
            raise RetaError(f"{meta_path}: expected {{\"classes\": [name, ...]}} listing the class names in label order; "
                            f"fix the file or remove it")
        classes = tuple(str(c) for c in meta["classes"])
        stats = stats or KNOWN_STATS.get(meta.get("name", ""))
    else:
        classes = tuple(str(c) for c in range(int(max(ytr.max(), yte.max())) + 1))
    train = _to_square_uint8(torch.from_numpy(xtr).permute(0, 3, 1, 2), image_size)
    test = _to_square_uint8(torch.from_numpy(xte).permute(0, 3, 1, 2), train.shape[-1])
    mean, std = stats if stats else _stats_from(train)
    info = DatasetInfo(name=name, classes=classes, image_size=train.shape[-1], mean=mean, std=std)
    return (TensorImageSet(train, ytr, info, str(path / "train.npz")),
            TensorImageSet(test, yte, info, str(path / "test.npz")))


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
    files, labels = [], []
    for idx, name in enumerate(found):
        imgs = sorted(p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not imgs:
            raise RetaError(f"{split_dir / name}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += imgs
        labels += [idx] * len(imgs)
    return files, np.asarray(labels, dtype=np.int64), found


def decode_image(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 (3,size,size); a corrupt file is a RetaError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise RetaError(f"{path}: image file not found; restore it or remove its entry") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RetaError(f"{path}: cannot decode image ({type(exc).__name__}); remove or replace the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


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
        with ThreadPoolExecutor(max_workers=min(8, len(idx))) as pool:
            return torch.stack(list(pool.map(lambda i: decode_image(self.files[i], self.info.image_size), idx)))

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


def _default_folder_size(first: Path) -> int:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as im:
            return min(224, min(im.size))
    except (UnidentifiedImageError, OSError) as exc:
        raise RetaError(f"{first}: cannot decode image ({type(exc).__name__}); remove or replace the file") from None


def _load_folder_pair(path: Path, name: str, image_size: int | None, stats) -> tuple[ImageSet, ImageSet]:
    if not path.is_dir():
        raise RetaError(f"{path}: folder not found; imagefolder:DIR expects DIR/train/<class>/ and DIR/val/<class>/")
    files, labels, classes = _list_class_folder(path / "train", None)
    eval_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if eval_dir is None:
        raise RetaError(f"{path}: no val/ or test/ folder beside train/; add the evaluation split")
    vfiles, vlabels, _ = _list_class_folder(eval_dir, classes)
    size = image_size or _default_folder_size(files[0])
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
    for line_no, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise RetaError(f"{ann}:{line_no}: expected '<file>\\t<wnid>...' with a wnid from train/, got {line[:60]!r}")
        vfiles.append(path / "val" / "images" / parts[0])
        vlabels.append(index[parts[1]])
    info = DatasetInfo("tiny-imagenet", classes, size, *KNOWN_STATS["tiny-imagenet"])
    train = _maybe_materialise(FileImageSet(files, labels, info, str(path / "train")), "decoding train")
    test = _maybe_materialise(FileImageSet(vfiles, np.asarray(vlabels, dtype=np.int64), info, str(ann)), "decoding val")
    return train, test
