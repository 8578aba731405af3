"""Dataset loaders on data made here: ImageFolder trees, Tiny-ImageNet's original layout,
torchvision's CIFAR batches, npz folders, digits, the shared imagenette npz, and the holdout split."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from reta.data import load_dataset
from reta.data.dataset import DatasetInfo, holdout_indices, split_holdout
from reta.data.sources import IMAGENET_STATS, KNOWN_STATS
from reta.errors import RetaError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# --- ImageFolder -------------------------------------------------------------------------------

def test_imagefolder_class_order_sizes_and_grey(tmp_path):
    root = write_image_folder(tmp_path / "f", ["cat", "ant", "bee"], per_class=3, size=20)
    # a grey class member (mode L) and a palette one (mode P) among the RGB images
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, size=(20, 24), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "train" / "bee" / "zz_grey.png")
    Image.fromarray(rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)).convert("P").save(
        root / "train" / "cat" / "zz_palette.png")

    train, test = load_dataset(f"imagefolder:{root}")
    assert train.info.classes == ("ant", "bee", "cat")  # sorted folder names, not creation order
    assert train.info.image_size == 20  # default: the first image's shorter side
    assert len(train) == 11 and len(test) == 9
    assert np.bincount(train.labels).tolist() == [3, 4, 4]
    assert np.bincount(test.labels).tolist() == [3, 3, 3]
    assert test.info == train.info
    x = train.load(np.arange(len(train)))
    assert x.dtype == torch.uint8 and tuple(x.shape) == (11, 3, 20, 20)
    # the grey image is the last 'bee' file: three identical channels equal to its (centre-cropped) values
    gi = int(np.flatnonzero(train.labels == 1)[-1])
    assert torch.equal(x[gi, 0], x[gi, 1]) and torch.equal(x[gi, 1], x[gi, 2])
    assert torch.equal(x[gi, 0], torch.from_numpy(grey[:, 2:22]))
    # normalisation statistics come from the training images, and are finite/positive
    assert all(np.isfinite(train.info.mean)) and all(s > 0 for s in train.info.std)


def test_imagefolder_non_square_resized_and_centre_cropped(tmp_path):
    root = write_image_folder(tmp_path / "f", ["a", "b"], per_class=2, size=16)
    # 10 rows x 20 columns: red | green | blue stripes of 5 | 10 | 5 columns
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[:, :5, 0] = 255
    img[:, 5:15, 1] = 255
    img[:, 15:, 2] = 255
    Image.fromarray(img).save(root / "train" / "a" / "zz_wide.png")
    train, test = load_dataset(f"imagefolder:{root}", image_size=10)
    x = train.load(np.arange(len(train)))
    assert tuple(x.shape[1:]) == (3, 10, 10) and tuple(test.load([0]).shape) == (1, 3, 10, 10)
    wide = x[int(np.flatnonzero(train.labels == 0)[-1])]
    assert (wide[1] == 255).all() and (wide[0] == 0).all() and (wide[2] == 0).all()  # only the centre stays
    # a requested size different from the files' gives that size for both splits
    train8, test8 = load_dataset(f"imagefolder:{root}", image_size=8)
    assert train8.info.image_size == 8 and tuple(test8.load([0]).shape) == (1, 3, 8, 8)


def test_imagefolder_grey_everywhere_is_three_channel(tmp_path):
    root = write_image_folder(tmp_path / "g", ["x", "y"], per_class=2, size=12, grey=True)
    train, test = load_dataset(f"imagefolder:{root}")
    for s in (train, test):
        x = s.load(np.arange(len(s)))
        assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_imagefolder_test_split_name_accepted(tmp_path):
    root = write_image_folder(tmp_path / "t", ["a", "b"], per_class=2, size=8, split_names=("train", "test"))
    train, test = load_dataset(f"imagefolder:{root}")
    assert len(test) == 4 and test.source.endswith("test")


@pytest.mark.parametrize("case", ["missing", "no_val", "class_differs", "empty_class", "corrupt", "truncated"])
def test_imagefolder_errors_name_the_culprit(tmp_path, case):
    root = tmp_path / "f"
    if case != "missing":
        write_image_folder(root, ["a", "b"], per_class=2, size=8,
                           split_names=("train",) if case == "no_val" else ("train", "val"))
    expect = str(root)
    if case == "class_differs":
        (root / "val" / "b").rename(root / "val" / "c")
        expect = "'b'"
    elif case == "empty_class":
        for f in (root / "train" / "b").iterdir():
            f.unlink()
        expect = str(root / "train" / "b")
    elif case == "corrupt":
        bad = root / "train" / "b" / "broken.jpg"
        bad.write_bytes(b"this is not a jpeg at all" * 10)
        expect = str(bad)
    elif case == "truncated":
        bad = root / "val" / "a" / "cut.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[:300])
        expect = str(bad)
    with pytest.raises(RetaError) as exc:
        load_dataset(f"imagefolder:{root}", image_size=8)
    msg = _one_line(exc)
    assert expect in msg, msg


# --- Tiny-ImageNet's original layout -------------------------------------------------------------

WNIDS = ["n02124075", "n01443537", "n09246464"]


def _tiny_tree(root, per_class=3, val_per_class=2, size=8):
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (base / "wnids.txt").parent.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")  # wnids.txt order is not sorted
    lines = []
    for ci, w in enumerate(WNIDS):
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(f"{w}_{i}.JPEG\t0\t0\t7\t7\n" for i in range(per_class)))
        for i in range(per_class):
            arr = np.full((size, size, 3), 40 * ci, dtype=np.uint8)
            im = Image.fromarray(arr)
            if i == 0:
                im = im.convert("L")  # Tiny-ImageNet holds grey JPEGs too
            im.save(d / f"{w}_{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    k = 0
    for rep in range(val_per_class):
        for ci, w in enumerate(WNIDS):
            name = f"val_{k}.JPEG"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t{size - 1}\t{size - 1}")
            k += 1
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)  # unlabelled, must be ignored
    return base


def test_tiny_imagenet_named_under_data_root(tmp_path, monkeypatch):
    base = _tiny_tree(tmp_path)
    monkeypatch.setenv("RETA_DATA_ROOT", str(tmp_path))
    train, test = load_dataset("tiny-imagenet", image_size=16)
    assert train.info.name == "tiny-imagenet"
    assert train.info.classes == tuple(sorted(WNIDS))
    assert (train.info.mean, train.info.std) == IMAGENET_STATS
    assert len(train) == 9 and len(test) == 6
    x = train.load(np.arange(len(train)))
    assert tuple(x.shape) == (9, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1])  # constant-colour grey-ish images stay consistent
    # val labels follow val_annotations.txt, indexed by the sorted wnids
    ann = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines()]
    assert test.labels.tolist() == [sorted(WNIDS).index(w) for _, w, *_ in ann]
    # default size is Tiny-ImageNet's 64 px; the explicit data_root argument works as well as the env var
    monkeypatch.delenv("RETA_DATA_ROOT")
    train64, _ = load_dataset("tiny-imagenet", data_root=str(tmp_path))
    assert train64.info.image_size == 64


def test_tiny_imagenet_nested_folder_layout(tmp_path):
    _tiny_tree(tmp_path / "tiny-imagenet")
    train, test = load_dataset("tiny-imagenet", data_root=str(tmp_path), image_size=8)
    assert len(train) == 9 and len(test) == 6


@pytest.mark.parametrize("case", ["no_annotations", "bad_wnid", "missing_val_image"])
def test_tiny_imagenet_errors(tmp_path, case):
    base = _tiny_tree(tmp_path)
    ann = base / "val" / "val_annotations.txt"
    if case == "no_annotations":
        ann.unlink()
        expect = str(ann)
    elif case == "bad_wnid":
        ann.write_text(ann.read_text() + "val_99.JPEG\tn00000000\t0\t0\t1\t1\n")
        expect = f"{ann}:7"
    else:
        (base / "val" / "images" / "val_3.JPEG").unlink()
        expect = str(base / "val" / "images" / "val_3.JPEG")
    with pytest.raises(RetaError) as exc:
        load_dataset("tiny-imagenet", data_root=str(tmp_path), image_size=8)
    msg = _one_line(exc)
    assert expect in msg, msg


# --- torchvision's CIFAR batches -----------------------------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar10_batches(folder, per_batch=10, seed=0):
    """cifar-10-batches-py exactly as torchvision reads it (dicts pickled; data (N,3072) uint8 R|G|B planes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": f"{name} of 5", "labels": labels, "data": data,
                         "filenames": [f"img_{i}.png" for i in range(per_batch)]}, f)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}, f)
    return written


def test_cifar10_batches_fail_torchvision_md5_check_cleanly(tmp_path):
    """torchvision verifies every batch's md5 even with download=False: batches that are not the
    original files are refused. That is a one-line error naming the folder, never a traceback."""
    _cifar10_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(RetaError) as exc:
        load_dataset("cifar10", data_root=str(tmp_path))
    msg = _one_line(exc)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "md5" in msg and "--download" in msg


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_batches_layout_parsed(tmp_path, monkeypatch, nested):
    """With torchvision's md5 check stubbed (our batches are not the original files), the batches
    are read in torchvision's format: R, G, B planes, labels, class names from batches.meta."""
    import os

    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    folder = tmp_path / ("cifar10/cifar-10-batches-py" if nested else "cifar-10-batches-py")
    written = _cifar10_batches(folder)
    train, test = load_dataset("cifar10", data_root=str(tmp_path))
    assert train.info.classes == tuple(CIFAR10_NAMES) and train.info.name == "cifar10"
    assert (train.info.mean, train.info.std) == KNOWN_STATS["cifar10"] and train.info.image_size == 32
    assert len(train) == 50 and len(test) == 10
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert test.labels.tolist() == written["test_batch"][1]
    data = written["data_batch_1"][0]
    x0 = train.load([0])[0]
    assert torch.equal(x0, torch.from_numpy(data[0].reshape(3, 32, 32)))
    # requested size: square resize of both splits
    train16, test16 = load_dataset("cifar10", data_root=str(tmp_path), image_size=16)
    assert tuple(train16.load([0]).shape) == (1, 3, 16, 16) and test16.info.image_size == 16


def test_cifar100_batches_layout_parsed(tmp_path, monkeypatch):
    import os

    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i:02d}" for i in range(100)]
    for split, n in (("train", 6), ("test", 4)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)),
                         "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["c"] * 20}, f)
    train, test = load_dataset("cifar100", data_root=str(tmp_path))
    assert train.info.num_classes == 100 and train.info.classes[:2] == ("class00", "class01")
    assert train.labels.tolist() == list(range(6)) and len(test) == 4


# --- npz folders ---------------------------------------------------------------------------------

def _npz(folder, xtr, ytr, xte, yte, meta=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=xtr, y=ytr)
    np.savez(folder / "test.npz", x=xte, y=yte)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_npz_with_meta(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    xte = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    d = _npz(tmp_path / "set", xtr, np.arange(12) % 3, xte, np.arange(6) % 3,
             meta={"name": "mine", "classes": ["zebra", "ant", "mole"]})
    train, test = load_dataset(f"npz:{d}")
    assert train.info.classes == ("zebra", "ant", "mole")  # meta order, not sorted
    assert train.info.name == "set" and train.info.image_size == 8
    assert torch.equal(train.load([3])[0], torch.from_numpy(xtr[3]).permute(2, 0, 1))
    assert test.labels.tolist() == (np.arange(6) % 3).tolist()
    # a known dataset name in meta.json selects its published statistics
    d2 = _npz(tmp_path / "c10", xtr, np.arange(12) % 10, xte, np.arange(6) % 10,
              meta={"name": "cifar10", "classes": CIFAR10_NAMES})
    assert (load_dataset(f"npz:{d2}")[0].info.mean) == KNOWN_STATS["cifar10"][0]


def test_npz_without_meta_grey_and_non_square(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (8, 6, 10), dtype=np.uint8)  # (N,H,W): grey, non-square
    d = _npz(tmp_path / "g", grey, np.array([0, 1, 2, 3] * 2), grey[:4, ..., None], np.array([0, 1, 2, 3]))
    train, test = load_dataset(f"npz:{d}")
    assert train.info.classes == ("0", "1", "2", "3")
    assert train.info.image_size == 6 and test.info.image_size == 6
    x = train.load(np.arange(8))
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x[:, 0], torch.from_numpy(grey[:, :, 2:8]))  # centre crop of the wider side
    assert torch.equal(test.load([1])[0], x[1])  # (N,H,W,1) and (N,H,W) give the same pixels
    # statistics computed from the training images when no known name is given
    assert train.info.mean[0] == train.info.mean[1] == train.info.mean[2]
    train4, _ = load_dataset(f"npz:{d}", image_size=4)
    assert train4.info.image_size == 4


def test_grey_converted_consistently_across_formats(tmp_path):
    """The same grey pixels through an image folder and through an npz give the same uint8 tensors."""
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)
    root = tmp_path / "f"
    for split in ("train", "val"):
        for i, c in enumerate(["a", "b"]):
            (root / split / c).mkdir(parents=True)
            for j in range(2):
                Image.fromarray(grey[2 * i + j], mode="L").save(root / split / c / f"{j}.png")
    d = _npz(tmp_path / "n", grey, np.array([0, 0, 1, 1]), grey, np.array([0, 0, 1, 1]))
    ftrain, _ = load_dataset(f"imagefolder:{root}")
    ntrain, _ = load_dataset(f"npz:{d}")
    assert torch.equal(ftrain.load(np.arange(4)), ntrain.load(np.arange(4)))
    assert ftrain.info.mean == ntrain.info.mean and ftrain.info.std == ntrain.info.std


@pytest.mark.parametrize("case", ["no_dir", "no_test", "corrupt", "wrong_keys", "bad_dtype", "bad_meta",
                                  "label_out_of_range", "bad_json"])
def test_npz_errors(tmp_path, case):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (4, 4, 4, 3), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    d = tmp_path / "n"
    if case != "no_dir":
        _npz(d, x, y, x, y, meta={"classes": ["a", "b"]})
    expect = str(d)
    if case == "no_test":
        (d / "test.npz").unlink()
        expect = str(d / "test.npz")
    elif case == "corrupt":
        (d / "train.npz").write_bytes(b"PK\x03\x04garbage")
        expect = str(d / "train.npz")
    elif case == "wrong_keys":
        np.savez(d / "train.npz", images=x, labels=y)
        expect = str(d / "train.npz")
    elif case == "bad_dtype":
        np.savez(d / "test.npz", x=x.astype(np.float32), y=y)
        expect = str(d / "test.npz")
    elif case == "bad_meta":
        (d / "meta.json").write_text(json.dumps({"name": "n"}))
        expect = str(d / "meta.json")
    elif case == "label_out_of_range":
        (d / "meta.json").write_text(json.dumps({"classes": ["a"]}))
        expect = str(d / "train.npz")
    elif case == "bad_json":
        (d / "meta.json").write_text("{not json")
        expect = str(d / "meta.json")
    with pytest.raises(RetaError) as exc:
        load_dataset(f"npz:{d}")
    msg = _one_line(exc)
    assert expect in msg, msg


# --- named datasets, digits, shared imagenette ------------------------------------------------------

def test_unknown_and_missing_named_datasets(tmp_path):
    with pytest.raises(RetaError) as exc:
        load_dataset("cifar11")
    assert "'cifar11'" in _one_line(exc) and "cifar10" in str(exc.value)
    with pytest.raises(RetaError) as exc:
        load_dataset("imagenette", data_root=str(tmp_path))
    msg = _one_line(exc)
    assert str(tmp_path / "imagenette2") in msg and "--data-root" in msg


def test_named_dataset_npz_and_folder_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (4, 4, 4, 3), dtype=np.uint8)
    _npz(tmp_path / "cifar10", x, np.arange(4), x, np.arange(4))
    train, _ = load_dataset("cifar10", data_root=str(tmp_path))
    assert train.info.name == "cifar10" and train.info.mean == KNOWN_STATS["cifar10"][0]
    write_image_folder(tmp_path / "imagewoof2-160", ["b", "a"], per_class=2, size=8)
    train, test = load_dataset("imagewoof", data_root=str(tmp_path), image_size=8)
    assert train.info.classes == ("a", "b") and train.info.mean == IMAGENET_STATS[0] and len(test) == 4


def test_digits(digits):
    train, test = digits
    assert len(train) + len(test) == 1797 and len(test) == sum(np.bincount(test.labels))
    assert train.info.classes == tuple(str(i) for i in range(10)) and train.info.image_size == 16
    x = train.load([0, 1])
    assert tuple(x.shape) == (2, 3, 16, 16) and torch.equal(x[:, 0], x[:, 1])
    for c in range(10):  # a seeded 2:1 split per class
        n_tr, n_te = (train.labels == c).sum(), (test.labels == c).sum()
        assert n_te == (n_tr + n_te) // 3
    again, _ = load_dataset("digits")
    assert again.content_hash() == train.content_hash()
    assert load_dataset("digits", image_size=12)[0].info.image_size == 12


def test_shared_imagenette_npz(shared_imagenette):
    train, test = load_dataset(f"npz:{shared_imagenette}")
    meta = json.loads((shared_imagenette / "meta.json").read_text())
    assert len(train) == 9469 and len(test) == 3925
    assert train.info.num_classes == 10 and train.info.classes == tuple(meta["classes"])
    assert train.info.image_size == 32 and (train.info.mean, train.info.std) == IMAGENET_STATS
    assert np.bincount(train.labels).tolist() == meta["counts_per_class"]["train"]
    assert np.bincount(test.labels).tolist() == meta["counts_per_class"]["test"]
    assert tuple(train.load([0, 9468]).shape) == (2, 3, 32, 32)


# --- holdout split and identity checks ------------------------------------------------------------

def test_holdout_split_stratified_seeded_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 30, 1])
    held = holdout_indices(labels, 0.1, seed=5)
    assert np.bincount(labels[held], minlength=4).tolist() == [1, 2, 3, 0]  # a single-image class keeps it
    assert np.array_equal(held, holdout_indices(labels, 0.1, seed=5))
    assert not np.array_equal(holdout_indices(labels, 0.3, seed=5), holdout_indices(labels, 0.3, seed=6))
    assert len(holdout_indices(labels, 0.0, seed=5)) == 0
    with pytest.raises(RetaError, match="holdout_fraction=1"):
        holdout_indices(labels, 1.0, seed=0)

    from reta.data.dataset import TensorImageSet

    info = DatasetInfo("t", ("a", "b", "c", "d"), 2, (0.5,) * 3, (0.2,) * 3)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    s = TensorImageSet(images, labels, info, "mem")
    fit, out = split_holdout(s, 0.25, seed=1)
    fit_ids = set(fit.load(np.arange(len(fit)))[:, 0, 0, 0].tolist())
    out_ids = set(out.load(np.arange(len(out)))[:, 0, 0, 0].tolist())
    assert fit_ids.isdisjoint(out_ids) and fit_ids | out_ids == set(range(len(labels)))
    assert np.array_equal(out.labels, labels[sorted(out_ids)])


def test_dataset_info_roundtrip_and_checks():
    a = DatasetInfo("d", ("x", "y", "z"), 16, (0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    assert DatasetInfo.from_json(json.loads(json.dumps(a.to_json()))) == a
    a.check_compatible(a, "teacher T", "dataset")
    cases = [
        (DatasetInfo("d", ("x", "y"), 16, a.mean, a.std), "2 classes"),
        (DatasetInfo("d", ("x", "w", "z"), 16, a.mean, a.std), "'y' vs 'w'"),
        (DatasetInfo("d", ("x", "y", "z"), 24, a.mean, a.std), "--image-size 16"),
        (DatasetInfo("d", ("x", "y", "z"), 16, (0.5, 0.5, 0.5), a.std), "normalisation"),
    ]
    for other, expect in cases:
        with pytest.raises(RetaError) as exc:
            a.check_compatible(other, "teacher T", "dataset")
        assert expect in _one_line(exc), str(exc.value)
    a.check_compatible(DatasetInfo("d", a.classes, 16, (0.5, 0.5, 0.5), a.std), "t", "d", check_stats=False)
