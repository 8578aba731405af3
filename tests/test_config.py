"""Typed configs: defaults, preset < YAML < --set precedence, dotted keys, coercion and errors."""

from __future__ import annotations

import dataclasses

import pytest

from reta.config import (DRCConfig, EvalProtocol, PTAConfig, RecoverConfig, RelabelConfig, SqueezeConfig,
                         apply_overrides, build, parse_set_args)
from reta.errors import RetaError


def test_defaults():
    r = RecoverConfig()
    assert (r.method, r.ipc, r.iterations, r.num_stages, r.lr, r.alpha) == ("fadrm", 10, 2000, 4, 0.25, 0.5)
    assert r.stage_sizes == () and r.init == "rded"  # valid on its own: FADRM's defaults
    assert isinstance(r.drc, DRCConfig) and isinstance(r.pta, PTAConfig)
    assert (r.drc.lam, r.drc.prefilter, r.drc.features) == (0.1, 32, "raw")
    assert (r.pta.weight, r.pta.k, r.pta.grid, r.pta.infinite_bars, r.pta.distance) == (0.5, 10, 32, "one", "image")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ipc = 3  # frozen: a config is never changed in place
    s = SqueezeConfig()
    assert (s.arch, s.epochs, s.holdout_fraction, s.flip) == ("convnet3", 30, 0.1, True)
    e = EvalProtocol()
    assert (e.student, e.epochs, e.temperature, e.eta, e.labels) == ("convnet3-in", 300, 20.0, 2.0, "online")
    assert RelabelConfig().teacher_mode == "eval"
    assert build(RecoverConfig) == RecoverConfig()


def test_precedence_preset_yaml_set(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("ipc: 5\nlr: 0.1\ndrc:\n  lam: 0.3\n  prefilter: 8\npta:\n  enabled: true\n")
    y.write_text("ipc: 5\nlr: 0.1\ndrc:\n  lam: 0.3\n  prefilter: 8\npta:\n  k: 6\n")
    base = {"method": "reta", "ipc": 1, "lr": 0.5, "init": "noise", "drc": {"features": "centred"}}
    cfg = build(RecoverConfig, y, ["lr=0.02", "drc.lam=0.2"], base=base)
    assert cfg.method == "reta" and cfg.init == "noise"  # preset values untouched by later layers stay
    assert cfg.ipc == 5  # YAML over preset
    assert cfg.lr == 0.02  # --set over YAML over preset
    assert cfg.drc.features == "centred" and cfg.drc.lam == 0.2 and cfg.drc.prefilter == 8  # sections merge key by key
    assert cfg.pta.k == 6 and cfg.pta.grid == 32
    # an explicit CLI flag beats YAML and --set
    assert build(RecoverConfig, y, ["ipc=4"], base=base, flags={"ipc": 1}).ipc == 1
    # without --set the YAML value holds
    assert build(RecoverConfig, y, None, base=base).drc.lam == 0.3
    # an empty YAML file changes nothing
    empty = tmp_path / "e.yaml"
    empty.write_text("")
    assert build(SqueezeConfig, empty) == SqueezeConfig()


def test_parse_set_args_yaml_scalars():
    got = parse_set_args(["drc.lam=0.2", "ipc=5", "flip=false", "arch=resnet18", "init=", "stage_sizes=[8, 16]",
                          "teachers=a,b", "name = x=y"])
    assert got == {"drc.lam": 0.2, "ipc": 5, "flip": False, "arch": "resnet18", "init": "", "stage_sizes": [8, 16],
                   "teachers": "a,b", "name": "x=y"}
    assert parse_set_args(None) == {} and parse_set_args([]) == {}
    for bad in ("ipc", "=5", " =5"):
        with pytest.raises(RetaError, match="expected key=value"):
            parse_set_args([bad])


def test_dotted_keys_and_sections():
    cfg = apply_overrides(RecoverConfig(), {"drc.lam": 0.2, "pta.k": "5", "pta.normalise": "yes"})
    assert cfg.drc.lam == 0.2 and cfg.pta.k == 5 and cfg.pta.normalise is True
    cfg = apply_overrides(RecoverConfig(), {"drc": {"lam": 0.4, "distinct": True}})
    assert cfg.drc.lam == 0.4 and cfg.drc.distinct is True


@pytest.mark.parametrize("key,value,field,expected", [
    ("ipc", "7", "ipc", 7),
    ("ipc", 7.0, "ipc", 7),
    ("lr", 1, "lr", 1.0),
    ("lr", "1e-3", "lr", 1e-3),  # YAML reads 1e-3 as a string; the float field still takes it
    ("lr", "1e30", "lr", 1e30),
    ("flip", "off", "flip", False),
    ("flip", "TRUE", "flip", True),
    ("flip", 0, "flip", False),
    ("stage_sizes", "8,16,32", "stage_sizes", (8, 16, 32)),
    ("stage_sizes", "[8, 16]", "stage_sizes", (8, 16)),
    ("stage_sizes", 32, "stage_sizes", (32,)),
])
def test_type_coercion(key, value, field, expected):
    cfg = apply_overrides(RecoverConfig(), {key: value})
    got = getattr(cfg, field)
    assert got == expected and type(got) is type(expected)


def test_set_strings_coerced_like_the_cli():
    cfg = build(RecoverConfig, None, ["lr=1e-3", "ipc=3", "flip=no", "stage_sizes=8,16", "drc.pool_per_class=50"])
    assert cfg.lr == 1e-3 and cfg.ipc == 3 and cfg.flip is False and cfg.stage_sizes == (8, 16)
    assert cfg.drc.pool_per_class == 50


@pytest.mark.parametrize("overrides,expect", [
    ({"nope": 1}, "unknown config key 'nope'"),
    ({"drc.nope": 1}, "unknown config key 'drc.nope'"),
    ({"flip": "maybe"}, "flip='maybe': expected true or false"),
    ({"flip": 2}, "flip=2: expected true or false"),
    ({"ipc": "ten"}, "ipc='ten': expected an int"),
    ({"ipc": 2.5}, "ipc=2.5: expected an int"),
    ({"lr": "fast"}, "lr='fast': expected a float"),
    ({"ipc": True}, "ipc=True: expected an int"),
    ({"pta.k": "x"}, "pta.k='x': expected an int"),
    ({"drc": 0.2}, "'drc' is a section"),
    ({"ipc.x": 1}, "'ipc' has no sub-keys"),
    ({"stage_sizes": "8,big"}, "stage_sizes='big'"),
    ({"lr": "nan"}, "lr=nan: must be a finite number > 0"),
    ({"lr": -1}, "lr=-1.0: must be a finite number > 0"),
    ({"beta1": 1.5}, "beta1=1.5: must lie in [0, 1)"),
    ({"alpha": 2}, "alpha=2.0: must lie in [0, 1]"),
    ({"batch_size": 0}, "batch_size=0: must be at least 1"),
    ({"num_stages": 0}, "num_stages=0: must be at least 1"),
    ({"ipc": 0}, "ipc=0: must be at least 1"),
    ({"iterations": -5}, "iterations=-5"),
    ({"init": "zeros"}, "init='zeros': choose one of noise, real, rded"),
    ({"batch_composition": "mixed"}, "choose one of class-mixed, per-class"),
    ({"pta.infinite_bars": "none"}, "pta.infinite_bars"),
    ({"drc.lam": 1.5}, "drc.lam=1.5: must lie in [0, 1]"),
    ({"crop_scale_min": 0}, "crop_scale_min=0.0: must lie in (0, 1]"),
])
def test_errors_are_one_line_and_name_the_key(overrides, expect):
    with pytest.raises(RetaError) as exc:
        apply_overrides(RecoverConfig(), overrides)
    msg = str(exc.value)
    assert "\n" not in msg and expect in msg, msg


@pytest.mark.parametrize("cls,key,value,expect", [
    (SqueezeConfig, "epochs", -1, "epochs=-1"),
    (EvalProtocol, "temperature", 0, "temperature=0.0: must be > 0"),
    (EvalProtocol, "seeds", 0, "seeds=0: must be at least 1"),
    (RelabelConfig, "teacher_mode", "test", "teacher_mode='test'"),
])
def test_every_config_checks_its_ranges(cls, key, value, expect):
    with pytest.raises(RetaError) as exc:
        build(cls, None, [f"{key}={value}"])
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def test_method_is_chosen_only_by_its_preset(tmp_path):
    with pytest.raises(RetaError, match="--method"):
        build(RecoverConfig, None, ["method=random"], base={"method": "sre2l"})
    y = tmp_path / "m.yaml"
    y.write_text("method: random\n")
    with pytest.raises(RetaError, match="--method"):
        build(RecoverConfig, y, None, base={"method": "sre2l"})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(RetaError) as exc:
        build(SqueezeConfig, None, ["epoch=3"])
    assert "'epoch'" in str(exc.value) and "epochs" in str(exc.value)


def test_yaml_errors(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(RetaError, match="config file not found"):
        build(RecoverConfig, missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("ipc: [1, 2\nlr: 3\n")
    with pytest.raises(RetaError) as exc:
        build(RecoverConfig, bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(RetaError, match="mapping"):
        build(RecoverConfig, scalar)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("drc:\n  lamda: 0.2\n")
    with pytest.raises(RetaError, match="'drc.lamda'"):
        build(RecoverConfig, unknown)


def test_every_config_round_trips_through_asdict():
    """The resolved config written beside each output can be read back as overrides."""
    for cls in (SqueezeConfig, RecoverConfig, RelabelConfig, EvalProtocol):
        cfg = build(cls, None, None)
        again = apply_overrides(cls(), dataclasses.asdict(cfg))
        assert again == cfg
