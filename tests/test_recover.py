"""Recover loop: known answers for its math, every method end to end, reproducibility, FADRM equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from reta.config import RecoverConfig, build
from reta.errors import RetaError
from reta.losses.bn import BNStatHooks, batch_moments, bn_layer_loss
from reta.recover import METHODS, distill, preset
from reta.recover.loop import default_jitter, mix, plan_groups, stage_plan, teacher_passes
from reta.schedule import cosine_lr

CPU = torch.device("cpu")


def test_bn_layer_loss_hand_case():
    # mean matches exactly; variance off by (3, 4) -> unsquared L2 norm 5
    loss = bn_layer_loss(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]), torch.zeros(2))
    assert loss.item() == pytest.approx(5.0)
    assert bn_layer_loss(torch.ones(3), torch.ones(3), torch.ones(3), torch.ones(3)).item() == 0.0


def test_bn_hooks_capture_input_moments_and_weight_first_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2)).eval()
    hooks = BNStatHooks(model)
    x = torch.randn(4, 2, 3, 3) * 2 + 1
    model(x)
    mean, var = batch_moments(x)
    assert torch.allclose(hooks.moments[0][0][0], x.mean(dim=(0, 2, 3)))
    assert torch.allclose(hooks.moments[0][0][1], x.transpose(0, 1).reshape(2, -1).var(dim=1, unbiased=False))
    first = bn_layer_loss(mean, var, torch.zeros(2), torch.ones(2))
    second_in = model[0](x)
    m2, v2 = batch_moments(second_in)
    second = bn_layer_loss(m2, v2, torch.zeros(2), torch.ones(2))
    assert hooks.loss(10.0).item() == pytest.approx((10 * first + second).item(), rel=1e-5)


def test_bn_hooks_reduce_each_split_on_its_own():
    """Stacked groups get the BN loss each would get alone (the batched recover step)."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    hooks = BNStatHooks(model)
    a, b = torch.randn(2, 2, 4, 4), torch.randn(3, 2, 4, 4) + 1
    model(a)
    alone_a = hooks.loss(10.0)
    model(b)
    alone_b = hooks.loss(10.0)
    hooks.splits = [2, 3]
    model(torch.cat([a, b]))
    together = hooks.group_losses(10.0)
    assert torch.allclose(together[0], alone_a) and torch.allclose(together[1], alone_b)
    assert hooks.splits is None  # a split applies to one forward only


def test_cosine_lr_schedule():
    assert cosine_lr(0.25, 0, 100) == pytest.approx(0.25)
    assert cosine_lr(0.25, 50, 100) == pytest.approx(0.125)
    assert cosine_lr(1.0, 100, 100, stretch=2.0) == pytest.approx(0.5)  # the field's half-cosine ends at half
    assert cosine_lr(1.0, 100, 100) == pytest.approx(0.0, abs=1e-12)


def test_stage_plan_splits_budget_and_checks_sizes():
    assert stage_plan(RecoverConfig(iterations=2000, num_stages=4), 32) == ([32] * 4, [500] * 4)
    assert stage_plan(RecoverConfig(iterations=10, num_stages=3), 32) == ([32] * 3, [3, 3, 4])
    assert stage_plan(RecoverConfig(iterations=8, stage_sizes=(16, 32)), 32) == ([16, 32], [4, 4])
    with pytest.raises(RetaError, match="must end at"):
        stage_plan(RecoverConfig(iterations=8, stage_sizes=(32, 16)), 32)


def test_default_jitter_follows_the_field_by_resolution():
    assert [default_jitter(s) for s in (16, 32, 64, 224)] == [2, 4, 4, 32]


def test_residual_mix():
    x, a = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert torch.equal(mix(x, a, 1.0, 8), x)  # alpha = 1 is the identity, bit for bit
    assert torch.allclose(mix(x, a, 0.5, 8), (x + a) / 2)
    assert mix(x, a, 0.5, 4).shape == (2, 3, 4, 4)


def test_plan_groups_cover_every_slot_once():
    mixed = plan_groups(3, 2, 2, "class-mixed")
    assert [g.tolist() for g in mixed] == [[0, 2], [4], [1, 3], [5]]  # one image per class per batch
    per_class = plan_groups(5, 4, 8, "per-class")
    assert [g.tolist() for g in per_class][0] == [0, 1, 2, 3, 4, 5, 6, 7]
    for groups in (mixed, per_class):
        flat = np.concatenate(groups)
        assert sorted(flat.tolist()) == list(range(len(flat)))


def _distill(digits, teacher, tmp_path, name, method, **overrides):
    train, _ = digits
    base = {**preset(method), "ipc": 4, "iterations": 8, "batch_size": 40, "jitter": 2, "rded_candidates": 20}
    cfg = build(RecoverConfig, base=base, flags=overrides)
    out = tmp_path / name
    manifest = distill(train, [teacher], cfg, out, CPU, cache_dir=tmp_path / "cache", progress=False)
    return out, manifest


def _png_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "images").rglob("*.png"))}


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_and_writes_a_complete_set(method, digits, digits_teacher, tmp_path):
    from reta.distilled import read_distilled

    out, manifest = _distill(digits, digits_teacher, tmp_path, method, method)
    images, loaded = read_distilled(out, expect=digits[0].info)
    assert len(images) == 10 * 4 and loaded["method"] == method
    assert manifest["timings"]["seconds_per_image"] > 0
    if manifest.get("drc_selections") is not None:
        # 3 connections x 40 images, each with its fit, complexity and J
        assert len(manifest["drc_selections"]) == 3 * 40
        assert {"stage", "slot", "pool_index", "fit", "complexity", "J"} <= set(manifest["drc_selections"][0])
        assert 0.0 <= manifest["shared_anchor_fraction"] <= 1.0


def test_same_seed_same_bytes_other_seed_differs(digits, digits_teacher, tmp_path):
    a, _ = _distill(digits, digits_teacher, tmp_path, "a", "fadrm")
    b, _ = _distill(digits, digits_teacher, tmp_path, "b", "fadrm")
    c, _ = _distill(digits, digits_teacher, tmp_path, "c", "fadrm", seed=1)
    assert _png_bytes(a) == _png_bytes(b)
    assert _png_bytes(a) != _png_bytes(c)


@pytest.mark.parametrize("method,overrides", [
    ("pta", {"pta.weight": 0.0}),  # lambda_topo = 0: no topology term at all
    ("drc", {"alpha": 1.0}),  # alpha = 1: the retrieved anchor is never mixed in
    ("reta", {"alpha": 1.0, "pta.weight": 0.0}),
    ("reta-paper", {"alpha": 1.0, "pta.weight": 0.0}),
])
def test_reta_with_its_parts_switched_off_is_fadrm_bit_for_bit(method, overrides, digits, digits_teacher, tmp_path):
    # Same class-mixed layout as FADRM: RETA changes the anchor and adds a term, nothing else.
    fadrm, _ = _distill(digits, digits_teacher, tmp_path, "fadrm", "fadrm", alpha=overrides.get("alpha", 0.5))
    other, _ = _distill(digits, digits_teacher, tmp_path, method, method, **overrides)
    assert _png_bytes(fadrm) == _png_bytes(other)


def test_topology_term_changes_the_images_and_records_its_gradient(digits, digits_teacher, tmp_path):
    fadrm, _ = _distill(digits, digits_teacher, tmp_path, "fadrm", "fadrm", iterations=16, num_stages=2)
    pta, manifest = _distill(digits, digits_teacher, tmp_path, "pta", "pta", iterations=16, num_stages=2,
                             **{"pta.every": 2})
    assert _png_bytes(fadrm) != _png_bytes(pta)
    # Evaluated on steps 0, 2, 4, 6 of both stages for each of the 4 groups; always the exact gradient.
    cos = manifest["pta_gradient_cosine"]
    assert cos["refreshes"] == 4 * 4 * 2 and cos["min"] == 1.0
    turn = manifest["pta_previous_step_cosine"]
    assert turn["refreshes"] == 4 * 3 * 2 and -1.0 <= turn["min"] <= turn["mean"] <= 1.0
    ratio = manifest["grad_ratio"]["pta"]
    assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert all("grad_ratio" in g for g in manifest["groups"])


def test_topology_term_acts_only_until_the_stage_named(digits, digits_teacher, tmp_path):
    common = {"iterations": 16, "num_stages": 2, "pta.every": 2}
    every, _ = _distill(digits, digits_teacher, tmp_path, "every", "pta", **common)
    both, _ = _distill(digits, digits_teacher, tmp_path, "both", "pta", **common, **{"pta.until_stage": 5})
    first, manifest = _distill(digits, digits_teacher, tmp_path, "first", "pta", **common, **{"pta.until_stage": 1})
    assert _png_bytes(both) == _png_bytes(every)  # past the last stage is every stage
    assert _png_bytes(first) != _png_bytes(every)
    refreshes = [r for g in manifest["groups"] for r in g["pta"]["refreshes"]]
    assert len(refreshes) == 4 * 4 and {r["stage"] for r in refreshes} == {0}  # steps 0, 2, 4, 6 of stage 1


def test_teacher_passes_cut_a_step_between_whole_groups():
    assert teacher_passes([10] * 25, 100) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert teacher_passes([40, 40, 40], 100) == [[0, 1], [2]]
    assert teacher_passes([150, 10], 100) == [[0], [1]]  # a group larger than a pass is one pass
    assert teacher_passes([40, 40, 40], None) == [[0, 1, 2]]


def test_a_joint_step_in_several_teacher_passes_equals_one_pass(digits, digits_teacher, tmp_path, monkeypatch):
    from reta.recover import loop

    train, _ = digits
    # PTA on every other step, so the cut steps (each pass backpropagated on its own, after the
    # first step) also carry the topology term's gradient.
    cfg = build(RecoverConfig, base={**preset("pta"), "ipc": 4, "iterations": 8, "num_stages": 1, "batch_size": 10,
                                     "jitter": 2, "rded_candidates": 20, "precision": "fp32", "channels_last": False,
                                     "pta": {**preset("pta")["pta"], "every": 2}})
    run = loop.Recover(train, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache", progress=False)
    assert run.method.joint
    run.prepare_shared(list(range(len(run.groups()))))
    block = [(g, run.groups()[g]) for g in range(4)]  # the 4 groups of one class block, 40 images
    monkeypatch.setitem(loop.CPU_PASS_IMAGES, None, 100)  # fp32: the whole block in one pass
    whole = run.run_groups(block)
    monkeypatch.setitem(loop.CPU_PASS_IMAGES, None, 10)  # one group per pass
    cut = run.run_groups(block)
    for (x_w, rec_w), (x_c, rec_c) in zip(whole, cut):
        diff = (x_w - x_c).abs()  # same tolerance as batched vs one-by-one groups (Adam's sqrt(v))
        assert float(diff.max()) < 1e-3 and float(diff.mean()) < 1e-5, (float(diff.max()), float(diff.mean()))
        assert rec_w["stages"][-1]["final_bn"] == pytest.approx(rec_c["stages"][-1]["final_bn"], rel=1e-3, abs=1e-5)


def test_finished_output_is_not_overwritten(digits, digits_teacher, tmp_path):
    _distill(digits, digits_teacher, tmp_path, "done", "random")
    with pytest.raises(RetaError, match="already holds a finished"):
        _distill(digits, digits_teacher, tmp_path, "done", "random")


def test_changed_settings_do_not_resume_into_an_unfinished_run(digits, digits_teacher, tmp_path):
    out, _ = _distill(digits, digits_teacher, tmp_path, "run", "random")
    (out / "manifest.json").unlink()
    with pytest.raises(RetaError, match="other settings"):
        _distill(digits, digits_teacher, tmp_path, "run", "random", seed=5)


def test_distinct_anchors_need_per_class_groups(digits, digits_teacher, tmp_path):
    with pytest.raises(RetaError, match="per-class"):
        _distill(digits, digits_teacher, tmp_path, "x", "drc", **{"drc.distinct": True})


def test_partitioned_pool_gives_distinct_anchors_in_the_class_mixed_layout(digits, digits_teacher, tmp_path):
    _, manifest = _distill(digits, digits_teacher, tmp_path, "part", "drc", **{"drc.partition": True})
    assert manifest["shared_anchor_fraction"] == 0.0


def test_distinct_anchors_never_repeat_within_a_class(digits, digits_teacher, tmp_path):
    _, manifest = _distill(digits, digits_teacher, tmp_path, "distinct", "reta", **{"drc.distinct": True,
                                                                                  "batch_composition": "per-class"})
    seen = {}
    for r in manifest["drc_selections"]:
        seen.setdefault((r["stage"], r["class"]), []).append(r["pool_index"])
    assert all(len(v) == len(set(v)) for v in seen.values())
    assert manifest["shared_anchor_fraction"] == 0.0


def test_multi_teacher_round_robin_runs_and_records_every_teacher(digits, digits_teacher, tmp_path):
    """FADRM+: teachers alternate per step; a second (independently trained) teacher changes the result."""
    from reta.config import SqueezeConfig
    from reta.teacher import squeeze

    train, test = digits
    second = squeeze(train, test, SqueezeConfig(arch="convnet2-w16", epochs=2, batch_size=64, seed=1),
                     tmp_path / "t2", CPU, progress=False)
    cfg = build(RecoverConfig, base={**preset("fadrm"), "ipc": 2, "iterations": 8, "batch_size": 20, "rded_candidates": 10})
    one = distill(train, [digits_teacher], cfg, tmp_path / "one", CPU, progress=False)
    two = distill(train, [digits_teacher, second], cfg, tmp_path / "two", CPU, progress=False)
    assert two["teacher_sha256"] == [digits_teacher.weights_hash, second.weights_hash]
    assert _png_bytes(tmp_path / "one") != _png_bytes(tmp_path / "two")
    assert len(one["teacher_sha256"]) == 1


def test_drc_records_index_the_full_training_split_outside_the_holdout(digits, digits_teacher, tmp_path):
    from reta.data.dataset import holdout_indices

    train, _ = digits
    _, manifest = _distill(digits, digits_teacher, tmp_path, "drc", "drc")
    held = set(holdout_indices(train.labels, *digits_teacher.holdout).tolist())
    for r in manifest["drc_selections"]:
        assert train.labels[r["train_index"]] == r["class"]
        assert r["train_index"] not in held


@pytest.mark.parametrize("method", ["pta", "reta"])
def test_topology_term_is_off_below_four_images_per_class(method, digits, digits_teacher, tmp_path):
    _, manifest = _distill(digits, digits_teacher, tmp_path, method, method, ipc=1, batch_size=10)
    assert all(g["grad_ratio"] == {"pta": 0.0, "pta_one_view": 0.0} for g in manifest["groups"])


@pytest.mark.parametrize("method", ["sre2l", "reta"])
def test_grey_data_is_distilled_grey(method, digits, digits_teacher, tmp_path):
    """Digits are grey: recover ties the channels, so every optimised PNG has R = G = B."""
    from PIL import Image

    out, manifest = _distill(digits, digits_teacher, tmp_path, method, method)
    assert manifest["tied_channels"] is True
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 40
    for p in pngs:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all(), p


def test_colour_data_is_not_tied():
    from reta.data.dataset import DatasetInfo
    from reta.recover.loop import PixelBox

    info = DatasetInfo("c", ("a",), 4, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(PixelBox(info, tied=False, dev=CPU).tie(x), x)
    tied = PixelBox(info, tied=True, dev=CPU).tie(x)
    pixels = tied * torch.tensor(info.std).view(1, 3, 1, 1) + torch.tensor(info.mean).view(1, 3, 1, 1)
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-6) and torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-6)


@pytest.mark.parametrize("method", ["fadrm", "reta"])
def test_batched_groups_equal_groups_run_one_by_one(method, digits, digits_teacher, tmp_path):
    """Two groups stacked in one teacher pass (own BN statistics, crops, Adam state) give the
    images of running them one after the other, to float tolerance per pixel."""
    from reta.recover.loop import Recover

    train, _ = digits
    # pta.cloud=group: each group's topology cloud is its own (the live cloud couples groups on purpose)
    cfg = build(RecoverConfig, base={**preset(method), "ipc": 4, "iterations": 8, "batch_size": 10, "jitter": 2,
                                     "rded_candidates": 20, "precision": "fp32", "channels_last": False,
                                     "pta": {"cloud": "group"}})
    run = Recover(train, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache", progress=False)
    assert not run.method.joint
    run.prepare_shared(list(range(len(run.groups()))))
    batch = [(g, run.groups()[g]) for g in (0, 1)]
    together = run.run_groups(batch)
    alone = [run.run_groups([b])[0] for b in batch]
    for (x_b, rec_b), (x_a, rec_a) in zip(together, alone):
        # Adam divides by sqrt(v): a last-bit difference of a near-zero gradient can move a pixel by
        # ~1e-4, so per pixel the tolerance is 1e-3 (of a normalised range of ~4), and on average tiny.
        diff = (x_b - x_a).abs()
        assert float(diff.max()) < 1e-3 and float(diff.mean()) < 1e-5, (float(diff.max()), float(diff.mean()))
        assert rec_b["stages"][-1]["final_ce"] == pytest.approx(rec_a["stages"][-1]["final_ce"], rel=1e-3, abs=1e-5)
        if method == "reta":
            assert [r["pool_index"] for r in rec_b["drc"]] == [r["pool_index"] for r in rec_a["drc"]]


def test_patch_pool_holds_each_image_s_lowest_ce_crop(digits, digits_teacher, tmp_path):
    """drc.pool=patches: candidates are RDED patches (the best of a few square crops), not whole images."""
    import torch.nn.functional as F

    from reta.retrieval.pool import Pool

    train, _ = digits
    model = digits_teacher.model
    whole = Pool(train, model, "h", [16], 0, 0, CPU, tmp_path / "a")
    patches = Pool(train, model, "h", [16], 0, 0, CPU, tmp_path / "b", patch_crops=5)
    assert "boxes" in patches.get(0) and "boxes" not in whole.get(0)
    pos = torch.arange(6)
    x_whole, x_patch = whole.normalised(0, pos), patches.normalised(0, pos)
    assert x_patch.shape == x_whole.shape and not torch.allclose(x_patch, x_whole)
    with torch.no_grad():
        ce = [F.cross_entropy(model(x), torch.zeros(6, dtype=torch.long)) for x in (x_whole, x_patch)]
    assert torch.isfinite(torch.stack(ce)).all()
    _, manifest = _distill(digits, digits_teacher, tmp_path, "drc-patches", "drc", **{"drc.pool": "patches"})
    assert len(manifest["drc_selections"]) == 3 * 40


def test_one_pool_serves_every_synthesis_seed(digits, digits_teacher, tmp_path):
    """The pool is prebuilt per teacher: runs with other seeds read the same cached patches, while a
    pool that draws crops from another seed is another pool."""
    from reta.recover.loop import Recover
    from reta.retrieval.pool import Pool

    train, _ = digits
    pools = []
    for seed in (0, 1):
        cfg = build(RecoverConfig, base={**preset("drc"), "ipc": 4, "iterations": 8, "batch_size": 10,
                                         "rded_candidates": 20, "seed": seed})
        run = Recover(train, [digits_teacher], cfg, tmp_path / f"r{seed}", CPU, cache_dir=tmp_path / "cache",
                      progress=False)
        pools.append(run.method.anchor.ctx.pool)
    assert pools[0].dir == pools[1].dir
    assert torch.equal(pools[0].get(3)["boxes"], pools[1].get(3)["boxes"])
    other = Pool(train, digits_teacher.model, digits_teacher.weights_hash, pools[0].sizes, 0, 7, CPU, tmp_path / "cache",
                 patch_crops=cfg.rded_crops)
    assert other.dir != pools[0].dir and not torch.equal(other.get(3)["boxes"], pools[0].get(3)["boxes"])
    whole = [Pool(train, digits_teacher.model, "h", [16], 0, seed, CPU, tmp_path / "w").dir for seed in (0, 7)]
    assert whole[0] == whole[1]  # whole images draw nothing, so the seed is not part of the pool


def test_a_truncated_initial_image_file_is_rebuilt_on_resume(digits, digits_teacher, tmp_path):
    """A kill while OUT/init/*.safetensors was being written must not fail every rerun."""
    out, _ = _distill(digits, digits_teacher, tmp_path, "run", "fadrm")
    before = _png_bytes(out)
    (out / "manifest.json").unlink()
    for entry in (out / "progress").glob("group_*.json"):
        entry.unlink()
    (out / "init").mkdir(exist_ok=True)
    (out / "init" / "class_00000.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"x\":")  # cut short
    _distill(digits, digits_teacher, tmp_path, "run", "fadrm")
    assert _png_bytes(out) == before and not (out / "init").exists()


def test_live_topology_cloud_steps_each_class_block_together_whatever_the_ranks(digits, digits_teacher, tmp_path):
    """pta.cloud=live: a class's slots (one per class-mixed group) are stepped together, in fixed
    batches that do not depend on the number of ranks or on which groups are already done."""
    from reta.recover.loop import Recover

    train, _ = digits
    cfg = build(RecoverConfig, base={**preset("pta"), "ipc": 4, "iterations": 8, "batch_size": 8, "rded_candidates": 20})
    run = Recover(train, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache", progress=False)
    assert run.method.joint
    # 8 groups: slot i of classes 0-7 is group 2i, slot i of classes 8-9 is group 2i+1
    assert run.batches(set(), 0, 1) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert run.batches(set(), 0, 2) == [[0, 2, 4, 6]] and run.batches(set(), 1, 2) == [[1, 3, 5, 7]]
    assert run.batches({0, 1, 3, 5, 7}, 0, 1) == [[0, 2, 4, 6]]  # a partly done block is redone whole
    capped_cfg = build(RecoverConfig, base={**preset("pta"), "ipc": 4, "iterations": 8, "batch_size": 8,
                                            "rded_candidates": 20, "groups_per_step": 2})
    capped = Recover(train, [digits_teacher], capped_cfg, tmp_path / "c", CPU, cache_dir=tmp_path / "cache", progress=False)
    assert capped.batches(set(), 0, 1) == [[0, 2], [4, 6], [1, 3], [5, 7]]


def test_live_topology_cloud_moves_every_slot_of_a_class(digits, digits_teacher, tmp_path):
    """The topology gradient of a live cloud reaches every group of the step, not only its own."""
    from reta.recover.loop import Recover
    from reta.recover.strategy import Group, Step

    train, _ = digits
    cfg = build(RecoverConfig, base={**preset("pta"), "ipc": 4, "iterations": 8, "batch_size": 10, "rded_candidates": 20,
                                     "precision": "fp32", "channels_last": False, "pta": {"weight": 1.0}})
    run = Recover(train, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache", progress=False)
    run.prepare_shared(list(range(len(run.groups()))))
    term = run.method.terms[0]
    groups = [Group(g, idx, idx // 4, torch.as_tensor(idx // 4)) for g, idx in enumerate(run.groups())]
    xs = [run.init_of(g.slots).clone().requires_grad_(True) for g in groups]
    for g in groups:
        term.begin_group(g)
    size = run.sizes[0]
    values = term.values(groups, Step(stage=0, size=size, local=0), xs)
    grads = torch.autograd.grad(sum(values), xs)
    assert all(float(g.norm()) > 0 for g in grads)
    # the applied gradient equals the gradient of the loss over the whole cloud, recomputed here
    x_r = [x.detach().clone().requires_grad_(True) for x in xs]
    loss = term.loss(term.ctx.features(torch.cat(x_r)), np.concatenate([g.classes for g in groups]),
                     np.concatenate([g.slots for g in groups]), size)
    exact = torch.autograd.grad(cfg.pta.weight * loss, x_r)
    for a, b in zip(grads, exact):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_kept_own_anchor_is_a_candidate_and_is_recorded(digits, digits_teacher, tmp_path):
    _, manifest = _distill(digits, digits_teacher, tmp_path, "own", "drc", **{"drc.keep_own": True})
    kept = [r for r in manifest["drc_selections"] if r["pool_index"] == -1]
    assert manifest["own_anchor_fraction"] == pytest.approx(len(kept) / len(manifest["drc_selections"]))
    assert all(r["train_index"] == -1 and 0 <= r["J"] <= 1 for r in kept)
    with pytest.raises(RetaError, match="cannot be combined"):
        _distill(digits, digits_teacher, tmp_path, "both", "drc", **{"drc.keep_own": True, "drc.distinct": True,
                                                                    "batch_composition": "per-class"})


def test_reta_aligns_to_the_same_real_reference_as_pta(digits, digits_teacher, tmp_path):
    """RETA's PTA is the pta ablation's PTA: its reference is the whole real images' topology even
    though RETA's DRC retrieves RDED patches (drc.pool=patches)."""
    from reta.recover.loop import Recover

    train, _ = digits
    refs = {}
    for method in ("pta", "reta"):
        cfg = build(RecoverConfig, base={**preset(method), "ipc": 4, "iterations": 8, "batch_size": 10, "rded_candidates": 20})
        run = Recover(train, [digits_teacher], cfg, tmp_path / method, CPU, cache_dir=tmp_path / "cache", progress=False)
        term = next(t for t in run.method.terms if t.name == "pta")
        refs[method] = term.reference(3, run.sizes[0])
        if method == "reta":
            assert cfg.drc.pool == "patches" and term.ctx.pool is not term.ctx.real_pool
    assert refs["pta"].kappa == refs["reta"].kappa and refs["pta"].baseline == refs["reta"].baseline
    assert all(torch.equal(a, b) for a, b in zip(refs["pta"].signature, refs["reta"].signature))


def test_pta_reference_of_patches_is_built_from_the_rded_patches(digits, digits_teacher, tmp_path):
    """pta.reference=patches: the cutoff comes from the patch features, which are not the images'."""
    from reta import topology
    from reta.recover.loop import Recover

    train, _ = digits
    cfg = build(RecoverConfig, base={**preset("pta"), "ipc": 4, "iterations": 8, "batch_size": 10, "rded_candidates": 20},
                flags={"pta.reference": "patches"})
    run = Recover(train, [digits_teacher], cfg, tmp_path / "run", CPU, cache_dir=tmp_path / "cache", progress=False)
    term = next(t for t in run.method.terms if t.name == "pta")
    size = run.sizes[0]
    patch_z, image_z = (pool.get(3)[f"z{size}"] for pool in (term.ctx.patch_pool, term.ctx.real_pool))
    assert not torch.allclose(patch_z, image_z)
    assert term.reference(3, size).kappa == pytest.approx(float(topology.class_cutoff(patch_z)))
    assert term.reference(3, size).kappa != pytest.approx(float(topology.class_cutoff(image_z)))


def test_most_confident_known_answers():
    from reta.retrieval.pool import most_confident

    ce = torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3])
    assert most_confident(ce, 3).tolist() == [1, 3, 4]  # the three lowest CEs, in pool order, ties stable
    assert most_confident(ce, 0).tolist() == most_confident(ce, 9).tolist() == [0, 1, 2, 3, 4]


def test_pta_reference_core_is_built_from_the_lowest_ce_candidates_only(digits, digits_teacher, tmp_path):
    """pta.reference_core=2 at ipc 4: class 3's reference cutoff is that of its 8 most confident
    real candidates, below the whole class's."""
    from reta import topology
    from reta.recover.loop import Recover

    train, _ = digits
    base = {**preset("pta"), "ipc": 4, "iterations": 8, "batch_size": 10, "rded_candidates": 20}
    terms = {}
    for core in (0, 2):
        cfg = build(RecoverConfig, base=base, flags={"pta.reference_core": core})
        run = Recover(train, [digits_teacher], cfg, tmp_path / f"run{core}", CPU, cache_dir=tmp_path / "cache", progress=False)
        terms[core] = next(t for t in run.method.terms if t.name == "pta")
    size = run.sizes[0]
    data = terms[2].ctx.real_pool.get(3)
    core_z = data[f"z{size}"][torch.argsort(data["ce"], stable=True)[:8]]
    assert terms[2].reference(3, size).kappa == pytest.approx(float(topology.class_cutoff(core_z)))
    assert terms[0].reference(3, size).kappa == pytest.approx(float(topology.class_cutoff(data[f"z{size}"])))
    assert terms[2].reference(3, size).kappa < terms[0].reference(3, size).kappa


def test_pixel_correlation_known_answers():
    from reta.recover.loop import pixel_correlation

    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(pixel_correlation(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(pixel_correlation(x, 2 * x + 3), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(pixel_correlation(x, -x), -torch.ones(3, dtype=torch.float64))
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 0] = 1.0  # rows [1,1],[0,0] against columns [1,0],[1,0]: uncorrelated
    b = torch.zeros(1, 1, 2, 2)
    b[0, 0, :, 0] = 1.0
    assert float(pixel_correlation(a, b)) == pytest.approx(0.0, abs=1e-12)


def test_manifest_records_how_alike_each_image_and_its_anchor_are(digits, digits_teacher, tmp_path):
    """FADRM's anchor is the image's own init patch, so after a stage the two still correlate."""
    _, manifest = _distill(digits, digits_teacher, tmp_path, "run", "fadrm")
    corr = manifest["anchor_correlation_median"]
    assert len(corr) == manifest["config"]["num_stages"] - 1 and all(-1 <= c <= 1 for c in corr)
    assert corr[0] > 0.5


def test_grad_ratio_views_are_drawn_apart_and_leave_the_images_alone(digits, digits_teacher, tmp_path, monkeypatch):
    from reta.recover import loop

    kw = {"iterations": 8, "num_stages": 2, "pta.every": 2}
    averaged, many = _distill(digits, digits_teacher, tmp_path, "views8", "pta", **kw)
    monkeypatch.setattr(loop, "GRAD_RATIO_VIEWS", 1)
    single, one = _distill(digits, digits_teacher, tmp_path, "views1", "pta", **kw)
    assert _png_bytes(averaged) == _png_bytes(single)
    for g8, g1 in zip(many["groups"], one["groups"]):
        assert g1["grad_ratio"]["pta"] == pytest.approx(g1["grad_ratio"]["pta_one_view"])
        assert g8["grad_ratio"]["pta_one_view"] == pytest.approx(g1["grad_ratio"]["pta_one_view"])
        assert g8["grad_ratio"]["pta"] != pytest.approx(g8["grad_ratio"]["pta_one_view"])


def test_grad_ratio_of_each_group_against_its_own_base_gradient():
    """Known answer: group i's ratio is ||d(sum of the term over groups)/dx_i|| / ||d(CE_i + BN_i)/dx_i||."""
    from reta.recover.loop import Recover

    x1 = torch.tensor([1.0, 2.0], requires_grad=True)
    x2 = torch.tensor([3.0, -1.0], requires_grad=True)
    coupled = 3 * (x1.sum() + 2 * x2.sum())  # a term coupling the groups, split in two shares
    per_group = [{"ce": (x1 ** 2).sum(), "bn": x1.sum(), "pta": coupled / 2},
                 {"ce": (x2 ** 2).sum(), "bn": 0 * x2.sum(), "pta": coupled / 2}]
    base = torch.autograd.grad(sum(t["ce"] + t["bn"] for t in per_group), [x1, x2], retain_graph=True)
    ratios = Recover._grad_ratios(per_group, [x1, x2], [float(b.norm()) for b in base], one_view=[1.0, 2.0])
    # base gradients: 2*x1 + 1 = (3, 5); 2*x2 = (6, -2). term gradients: (3, 3) and (6, 6)
    assert ratios[0]["pta"] == pytest.approx((3 * 2 ** 0.5) / 34 ** 0.5)
    assert ratios[1]["pta"] == pytest.approx((6 * 2 ** 0.5) / 40 ** 0.5)
    assert ratios[0]["pta_one_view"] == pytest.approx(3 * 2 ** 0.5) and ratios[1]["pta_one_view"] == pytest.approx(3 * 2 ** 0.5)


def test_retrieval_starts_at_first_connection(digits, digits_teacher, tmp_path):
    """Before drc.first_connection the anchor is FADRM's own init patch, so up to there the run is
    FADRM's: the first connection blends the same images with the same anchors."""
    _, fadrm = _distill(digits, digits_teacher, tmp_path, "fadrm", "fadrm", **{"precision": "fp32"})
    _, late = _distill(digits, digits_teacher, tmp_path, "late", "drc", **{"precision": "fp32", "drc.first_connection": 2})
    assert {r["stage"] for r in late["drc_selections"]} == {2, 3}
    assert late["anchor_correlation_median"][0] == pytest.approx(fadrm["anchor_correlation_median"][0], abs=1e-9)
    assert late["anchor_correlation_median"][1] != pytest.approx(fadrm["anchor_correlation_median"][1], abs=1e-6)
    with pytest.raises(RetaError, match="first_connection=4: this run has 3 residual connections"):
        _distill(digits, digits_teacher, tmp_path, "none", "drc", **{"drc.first_connection": 4})


def test_blend_fit_measures_how_far_the_injection_moves_the_image(digits, digits_teacher, tmp_path):
    """drc.fit=blend: injecting the image itself moves it nowhere (fit 0, the best); every other
    candidate's fit is the feature distance between the image and its blend with that candidate."""
    from reta.recover.drc import OWN, ClassCandidates, RetrievalAnchor
    from reta.recover.loop import Recover
    from reta.retrieval.score import squared_fit

    train, _ = digits
    cfg = build(RecoverConfig, base={**preset("drc"), "ipc": 4, "iterations": 8, "batch_size": 10, "rded_candidates": 20,
                                     "precision": "fp32", "channels_last": False, "drc": {"fit": "blend"}})
    run = Recover(train, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache", progress=False)
    anchor = run.method.anchor
    assert isinstance(anchor, RetrievalAnchor)
    ctx = anchor.ctx
    x = run.init_of(run.groups()[0][:2])  # two rows: slot 0 of classes 0 and 1
    q = ctx.features(x)
    positions = [torch.tensor([OWN, 0, 1, 2]), torch.tensor([3, OWN])]
    cands = [ClassCandidates(0, np.array([0]), q[:1], None, positions[:1], [torch.zeros(4)], [torch.zeros(4)], x[:1]),
             ClassCandidates(1, np.array([1]), q[1:], None, positions[1:], [torch.zeros(2)], [torch.zeros(2)], x[1:])]
    anchor._blend_fits(cands, x)
    assert float(cands[0].fit[0][0]) == pytest.approx(0.0, abs=1e-5) and bool((cands[0].fit[0][1:] > 1e-4).all())
    assert float(cands[1].fit[0][1]) == pytest.approx(0.0, abs=1e-5)
    others = ctx.pool.normalised(0, torch.arange(3))
    expect = squared_fit(q[:1], ctx.features(0.5 * x[:1] + 0.5 * others))[0]
    assert torch.allclose(cands[0].fit[0][1:], expect, atol=1e-5)
    other = ctx.pool.normalised(1, torch.tensor([3]))
    assert float(cands[1].fit[0][0]) == pytest.approx(float(squared_fit(q[1:], ctx.features(0.5 * x[1:] + 0.5 * other))), abs=1e-5)


def test_pool_records_the_teacher_ce_of_each_candidate(digits, digits_teacher, tmp_path):
    """The pool's `ce` is the teacher's cross-entropy of the true class on the candidate it serves
    (whole image or RDED patch): RDED's realism score, what drc.confident_per_slot ranks by."""
    import torch.nn.functional as F

    from reta.retrieval.pool import Pool

    train, _ = digits
    model = digits_teacher.model
    for crops in (0, 5):
        pool = Pool(train, model, "h", [16], 0, 0, CPU, tmp_path / f"p{crops}", patch_crops=crops)
        pos = torch.arange(8)
        with torch.no_grad():
            expect = F.cross_entropy(model(pool.normalised(2, pos)), torch.full((8,), 2), reduction="none")
        assert torch.allclose(pool.get(2)["ce"][pos], expect, atol=1e-4)


@pytest.mark.parametrize("settings", [{"drc.partition": True}, {"drc.partition": False, "drc.features": "raw"}])
def test_confident_retrieval_picks_only_among_the_lowest_ce_candidates(settings, digits, digits_teacher, tmp_path):
    """drc.confident_per_slot=3 at ipc 4: every anchor is one of its class's 12 candidates with the
    lowest teacher CE, in the per-slot (partition) and the whole-pool (vectorised) retrieval alike."""
    from reta.data.dataset import split_holdout
    from reta.recover.loop import Recover

    train, _ = digits
    _, manifest = _distill(digits, digits_teacher, tmp_path, "confident", "drc", **settings, **{"drc.confident_per_slot": 3})
    cfg = build(RecoverConfig, base={**preset("drc"), "ipc": 4, "iterations": 8, "batch_size": 40, "jitter": 2,
                                     "rded_candidates": 20}, flags={**settings, "drc.confident_per_slot": 3})
    fit, _ = split_holdout(train, *digits_teacher.holdout)  # the images distill's pool is built on
    pool = Recover(fit, [digits_teacher], cfg, tmp_path / "r", CPU, cache_dir=tmp_path / "cache",
                   progress=False).method.anchor.ctx.pool
    assert pool.dir.is_dir()  # the cached pool the distillation above built, not a new one
    picked = {}
    for r in manifest["drc_selections"]:
        picked.setdefault(r["class"], set()).add(r["pool_index"])
    for c, positions in picked.items():
        allowed = set(torch.argsort(pool.get(c)["ce"], stable=True)[:12].tolist())
        assert positions <= allowed, (c, positions - allowed)
        for r in manifest["drc_selections"]:
            if r["class"] == c:
                assert r["ce"] == pytest.approx(float(pool.get(c)["ce"][r["pool_index"]]))
    assert len(manifest["drc_selections"]) == 3 * 40
    assert len(manifest["anchor_ce_median"]) == 3
