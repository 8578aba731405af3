"""Student evaluation: final-epoch headline, std convention, label modes, DD-Ranking scores."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from reta.config import EvalProtocol, RelabelConfig
from reta.data.dataset import DatasetInfo, TensorImageSet
from reta.errors import RetaError
from reta.evaluate.metrics import ars, exp_normalise, hlr, ior, lrs
from reta.evaluate.train import accuracy, evaluate, mean_std, param_groups, train_student
from reta.labels.store import LabelStore, relabel
from reta.models import create_model
from reta.schedule import cosine_lr

CPU = torch.device("cpu")
PROTOCOL = EvalProtocol(student="convnet2-w8-in", epochs=4, batch_size=5, lr=1e-3, precision="fp32", seeds=1)


def tiny_set(seed: int = 0, classes: int = 3, per_class: int = 4, size: int = 16) -> TensorImageSet:
    info = DatasetInfo("tiny", tuple(f"c{i}" for i in range(classes)), size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), generator=gen, dtype=torch.uint8)
    return TensorImageSet(images, np.repeat(np.arange(classes), per_class), info, f"tiny-{seed}")


def tiny_teacher(info: DatasetInfo) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model("convnet2-w8", info.num_classes, info.image_size).eval()


class NaNTeacher(torch.nn.Module):
    def forward(self, x):
        return torch.full((len(x), 3), float("nan"))


def test_cosine_with_eta_2_ends_at_half_lr():
    assert cosine_lr(1e-3, 0, 300, 2.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 300, 300, 2.0) == pytest.approx(5e-4)
    assert cosine_lr(1e-3, 300, 300, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_only_on_weights_with_two_or_more_dims():
    model = create_model("convnet2-w8-in", 3, 16)
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_online_headline_is_the_final_epoch_and_runs_are_reproducible():
    train, test = tiny_set(0), tiny_set(1)
    teacher = tiny_teacher(train.info)
    result = train_student(train, test, train.info, PROTOCOL, 3, CPU, teacher=teacher, progress=False)
    assert [epoch for epoch, _ in result["curve"]] == [1, 2, 3, 4]
    assert result["top1_final"] == result["curve"][-1][1]
    assert result["top1_best"] == max(acc for _, acc in result["curve"]) >= result["top1_final"]
    assert dict(result["curve"])[result["best_epoch"]] == result["top1_best"]
    assert all(0.0 <= acc <= 1.0 for _, acc in result["curve"])
    again = train_student(train, test, train.info, PROTOCOL, 3, CPU, teacher=teacher, progress=False)
    assert again["curve"] == result["curve"]


def test_keep_model_returns_the_network_that_scored_the_final_epoch():
    train, test = tiny_set(0), tiny_set(1, per_class=20)
    protocol = dataclasses.replace(PROTOCOL, student="convnet2-w8")  # BatchNorm: running stats must be the final ones
    result = train_student(train, test, train.info, protocol, 3, CPU, teacher=tiny_teacher(train.info),
                           progress=False, keep_model=True)
    assert accuracy(result["model"], test, train.info, CPU) == result["top1_final"]
    assert "model" not in train_student(train, test, train.info, protocol, 3, CPU, teacher=tiny_teacher(train.info),
                                        progress=False)


def test_eval_every_sets_the_best_epoch_grid_and_the_last_epoch_is_always_evaluated():
    train = tiny_set(0)
    protocol = dataclasses.replace(PROTOCOL, labels="hard", epochs=5, eval_every=2)
    result = train_student(train, train, train.info, protocol, 0, CPU, progress=False)
    assert [epoch for epoch, _ in result["curve"]] == [2, 4, 5]
    assert result["top1_final"] == result["curve"][-1][1]


def test_stored_labels_train_and_mismatched_protocol_is_refused(tmp_path):
    train, test = tiny_set(0), tiny_set(1)
    relabel(train, [tiny_teacher(train.info)], train.info, RelabelConfig(epochs=4, batch_size=5, seed=1),
            tmp_path / "labels", CPU, progress=False)
    store = LabelStore(tmp_path / "labels")
    protocol = dataclasses.replace(PROTOCOL, labels="stored")
    result = train_student(train, test, train.info, protocol, 0, CPU, label_store=store, progress=False)
    assert result["top1_final"] == result["curve"][-1][1]
    with pytest.raises(RetaError, match="batch_size=5"):
        train_student(train, test, train.info, dataclasses.replace(protocol, batch_size=4), 0, CPU,
                      label_store=store, progress=False)
    with pytest.raises(RetaError, match="stores 4 epochs"):
        train_student(train, test, train.info, dataclasses.replace(protocol, epochs=5), 0, CPU,
                      label_store=store, progress=False)
    with pytest.raises(RetaError, match="needs a label store"):
        train_student(train, test, train.info, protocol, 0, CPU, progress=False)


def test_non_finite_loss_names_the_epoch_and_the_fix():
    train = tiny_set(0)
    with pytest.raises(RetaError, match=r"epoch 1 of 4 .*lower --set lr"):
        train_student(train, train, train.info, PROTOCOL, 0, CPU, teacher=NaNTeacher(), progress=False)


def test_evaluate_summary_keys_and_std_convention():
    train, test = tiny_set(0), tiny_set(1)
    protocol = dataclasses.replace(PROTOCOL, labels="hard", epochs=2)
    result = evaluate(train, test, train.info, protocol, CPU, seeds=2, method="random", ipc=4, progress=False)
    finals = result["top1_final_per_seed"]
    assert finals == [run["top1_final"] for run in result["runs"]] and result["seeds"] == [0, 1]
    assert result["top1_final_mean"] == pytest.approx(np.mean(finals))
    assert result["top1_final_std"] == pytest.approx(np.std(finals, ddof=1))
    assert "ddof=1" in result["std_kind"]
    assert result["top1_best_per_seed"] == [run["top1_best"] for run in result["runs"]]
    assert result["protocol"] == dataclasses.asdict(protocol)
    assert (result["method"], result["ipc"], result["student"]) == ("random", 4, "convnet2-w8-in")
    assert result["seconds"] > 0 and result["peak_memory_mb"] > 0
    single = evaluate(train, test, train.info, protocol, CPU, seeds=[5], method="random", ipc=4, progress=False)
    assert single["top1_final_std"] == 0.0 and single["seeds"] == [5]


def test_mean_std_is_sample_std():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_dd_ranking_known_answers():
    base = (1 - math.exp(-1)) / (math.e - math.exp(-1))
    assert lrs(0.0, 0.0) == pytest.approx(base) == pytest.approx(0.26894, abs=1e-5)
    assert lrs(hlr_value=0.0, ior_value=1.0, w=1.0) == pytest.approx(1.0)
    assert lrs(hlr_value=1.0, ior_value=0.0, w=0.0) == pytest.approx(0.0, abs=1e-12)
    assert lrs(0.2, 0.4) == pytest.approx(exp_normalise(0.5 * 0.4 - 0.5 * 0.2))
    assert hlr(0.6, 0.45) == pytest.approx(0.15) and ior(0.5, 0.3) == pytest.approx(0.2)
    assert ars(0.5, 0.3, 0.4, 0.3) == pytest.approx(exp_normalise(0.5 * 0.2 + 0.5 * 0.1))
    assert ars(0.5, 0.5, 0.5, 0.5) == pytest.approx(base)
    with pytest.raises(RetaError, match="percentage"):
        ior(56.5, 40.0)


@pytest.mark.slow
def test_stored_soft_labels_teach_a_student_on_digits(digits, digits_teacher, tmp_path):
    from reta.pipeline import distilled, random_config

    train, test = digits
    subset, _ = distilled(train, [digits_teacher], random_config(10, 0), tmp_path / "random", CPU, progress=False)
    relabel(subset, [digits_teacher.model], train.info, RelabelConfig(epochs=15, batch_size=10, crop_scale_min=0.5),
            tmp_path / "labels", CPU, progress=False)
    protocol = EvalProtocol(student="convnet3-w32", epochs=15, batch_size=10, lr=1e-3, temperature=4.0,
                            crop_scale_min=0.5, labels="stored", precision="fp32")
    result = train_student(subset, test, train.info, protocol, 0, CPU, label_store=LabelStore(tmp_path / "labels"),
                           progress=False)
    assert result["top1_final"] > 0.25  # chance is 0.10
