"""The soft-label store: relabel -> replay gives the teacher's logits, and mismatches are refused."""

import dataclasses

import numpy as np
import pytest
import torch

from reta.config import RelabelConfig
from reta.data.dataset import DatasetInfo, TensorImageSet
from reta.errors import RetaError
from reta.labels.store import Batch, CutMix, LabelStore, draw_epoch, module_hash, relabel, replay_views, shard_name
from reta.models import create_model

CPU = torch.device("cpu")
CFG = RelabelConfig(epochs=3, batch_size=5, seed=7, shard_epochs=2, cutmix_prob=0.6)


def tiny_set(seed: int = 0, classes: int = 3, per_class: int = 4, size: int = 16) -> TensorImageSet:
    info = DatasetInfo("tiny", tuple(f"c{i}" for i in range(classes)), size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), generator=gen, dtype=torch.uint8)
    return TensorImageSet(images, np.repeat(np.arange(classes), per_class), info, f"tiny-{seed}")


def tiny_teacher(info: DatasetInfo, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("convnet2-w8", info.num_classes, info.image_size).eval()


def make_store(path, images, teachers, cfg=CFG) -> LabelStore:
    relabel(images, teachers, images.info, cfg, path, CPU, progress=False)
    return LabelStore(path)


def test_round_trip_replays_views_and_logits(tmp_path):
    images = tiny_set()
    teacher = tiny_teacher(images.info)
    store = make_store(tmp_path / "store", images, [teacher])
    store.check(images, CFG.batch_size, CFG.epochs, seed=CFG.seed)
    assert sorted(p.name for p in (tmp_path / "store").glob("labels-*")) == [shard_name(0), shard_name(1)]
    mixed_flags = set()
    for epoch in range(CFG.epochs):
        stored = list(store.epoch(epoch))
        drawn = draw_epoch(len(images), CFG.batch_size, 16, CFG.crop_scale_min, CFG.cutmix_beta, CFG.cutmix_prob,
                           CFG.seed, epoch)
        assert [len(b.indices) for b in stored] == [5, 5, 2]
        assert sorted(np.concatenate([b.indices for b in stored]).tolist()) == list(range(len(images)))
        for s, d in zip(stored, drawn, strict=True):
            np.testing.assert_array_equal(s.indices, d.indices)
            assert torch.equal(s.boxes, d.boxes) and torch.equal(s.flips, d.flips)
            assert (s.cutmix is None) == (d.cutmix is None)
            if s.cutmix is not None:
                assert torch.equal(s.cutmix.perm, d.cutmix.perm)
                assert s.cutmix.box == d.cutmix.box and s.cutmix.lam == d.cutmix.lam
            mixed_flags.add(s.cutmix is not None)
            with torch.no_grad():
                expected = teacher(replay_views(images.load(s.indices), s, images.info, store.view_size))
            assert s.logits.dtype == torch.float16
            torch.testing.assert_close(s.logits.float(), expected, rtol=1e-3, atol=1e-3)
    assert mixed_flags == {True, False}  # both the CutMix and the plain replay paths were exercised


def test_replay_views_applies_crop_flip_and_cutmix():
    images = tiny_set()
    raw = images.load(np.arange(2))
    x = images.info.normalise(raw)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    plain = replay_views(raw, Batch(np.arange(2), full, torch.tensor([False, True]), None), images.info, 16)
    torch.testing.assert_close(plain, torch.stack([x[0], x[1].flip(-1)]))
    half = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2)  # the top-left quarter at its own resolution
    cropped = replay_views(raw, Batch(np.arange(2), half, torch.tensor([False, False]), None), images.info, 8)
    torch.testing.assert_close(cropped, x[:, :, :8, :8])
    mix = CutMix(torch.tensor([1, 0]), (2, 6, 4, 12), 0.875)
    mixed = replay_views(raw, Batch(np.arange(2), full, torch.tensor([False, False]), mix), images.info, 16)
    torch.testing.assert_close(mixed[0, :, 2:6, 4:12], x[1, :, 2:6, 4:12])
    torch.testing.assert_close(mixed[0, :, 6:], x[0, :, 6:])


def test_another_seed_draws_other_views_and_is_detected(tmp_path):
    images = tiny_set()
    teacher = tiny_teacher(images.info)
    a = make_store(tmp_path / "a", images, [teacher], dataclasses.replace(CFG, epochs=1))
    b = make_store(tmp_path / "b", images, [teacher], dataclasses.replace(CFG, epochs=1, seed=8))
    first_a, first_b = next(a.epoch(0)), next(b.epoch(0))
    assert not torch.equal(first_a.boxes, first_b.boxes)
    with pytest.raises(RetaError, match="seed=7, expected seed=8"):
        a.check(images, CFG.batch_size, 1, seed=8)


def test_store_rejects_other_images_batch_size_and_epochs(tmp_path):
    images = tiny_set()
    store = make_store(tmp_path / "store", images, [tiny_teacher(images.info)])
    with pytest.raises(RetaError, match="another image set"):
        store.check(tiny_set(seed=1), CFG.batch_size, CFG.epochs)
    with pytest.raises(RetaError, match="holds labels for 12 images"):
        store.check(images.subset(np.arange(6)), CFG.batch_size, CFG.epochs)
    with pytest.raises(RetaError, match="batch_size=5, training asks for 4"):
        store.check(images, 4, CFG.epochs)
    with pytest.raises(RetaError, match="stores 3 epochs .* asks for 4"):
        store.check(images, CFG.batch_size, 4)
    (tmp_path / "store" / shard_name(1)).unlink()
    with pytest.raises(RetaError, match="labels-00001.safetensors"):
        LabelStore(tmp_path / "store")


def test_relabel_refuses_a_folder_holding_another_artifact(tmp_path):
    images = tiny_set()
    (tmp_path / "manifest.json").write_text('{"dataset": {}, "ipc": 4}')
    with pytest.raises(RetaError, match="not written by `reta relabel`"):
        relabel(images, [tiny_teacher(images.info)], images.info, CFG, tmp_path, CPU, progress=False)
    assert (tmp_path / "manifest.json").read_text() == '{"dataset": {}, "ipc": 4}'


def test_interrupted_store_resumes_with_its_shards(tmp_path):
    images = tiny_set()
    teacher = tiny_teacher(images.info)
    make_store(tmp_path / "store", images, [teacher])
    (tmp_path / "store" / "manifest.json").unlink()  # as if killed before the manifest
    before = [(tmp_path / "store" / shard_name(i)).stat() for i in range(2)]
    first = (tmp_path / "store" / shard_name(0)).read_bytes()
    make_store(tmp_path / "store", images, [teacher])
    after = [(tmp_path / "store" / shard_name(i)).stat() for i in range(2)]
    assert [(s.st_ino, s.st_mtime_ns) for s in before] == [(s.st_ino, s.st_mtime_ns) for s in after]
    # A finished store is kept unless --overwrite; then its shards are recomputed for the new teacher.
    with pytest.raises(RetaError, match="finished labels"):
        make_store(tmp_path / "store", images, [tiny_teacher(images.info, seed=1)])
    relabel(images, [tiny_teacher(images.info, seed=1)], images.info, CFG, tmp_path / "store", CPU, progress=False,
            overwrite=True)
    assert (tmp_path / "store" / shard_name(0)).read_bytes() != first


def test_unfinished_store_of_other_settings_is_refused(tmp_path):
    images = tiny_set()
    make_store(tmp_path / "store", images, [tiny_teacher(images.info)])
    (tmp_path / "store" / "manifest.json").unlink()
    with pytest.raises(RetaError, match="unfinished run with other settings"):
        make_store(tmp_path / "store", images, [tiny_teacher(images.info, seed=1)])


def test_logits_average_over_teachers(tmp_path):
    images = tiny_set()
    teachers = [tiny_teacher(images.info, seed=s) for s in (0, 1)]
    store = make_store(tmp_path / "store", images, teachers, dataclasses.replace(CFG, epochs=1))
    batch = next(store.epoch(0))
    x = replay_views(images.load(batch.indices), batch, images.info, store.view_size)
    with torch.no_grad():
        expected = (teachers[0](x) + teachers[1](x)) / 2
    torch.testing.assert_close(batch.logits.float(), expected, rtol=1e-3, atol=1e-3)
    assert len(store.manifest["teachers"]) == 2


def test_train_mode_labels_use_batch_statistics_and_leave_the_teacher_untouched(tmp_path):
    images = tiny_set()
    teacher = tiny_teacher(images.info)
    digest = module_hash(teacher)
    store = make_store(tmp_path / "store", images, [teacher], dataclasses.replace(CFG, epochs=1, teacher_mode="train"))
    assert module_hash(teacher) == digest and not any(m.training for m in teacher.modules())
    batch = next(store.epoch(0))
    x = replay_views(images.load(batch.indices), batch, images.info, store.view_size)
    with torch.no_grad():
        eval_logits = teacher(x)
        teacher.train()
        train_logits = teacher(x)
    torch.testing.assert_close(batch.logits.float(), train_logits, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(batch.logits.float(), eval_logits, atol=1e-2)
