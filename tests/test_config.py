"""Config parsing: numbers as a user means them, every value's type checked, names checked up front."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from qdistill.config import apply_overrides, from_dict, yaml_load
from qdistill.errors import ConfigError
from qdistill.experiment import RunConfig, load_config


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 0.001),
        ("1.0e9", 1e9),
        ("-2E+2", -200.0),
        (".5e1", 5.0),
        ("1_0e1", 100.0),
        ("0.25", 0.25),
        ("12", 12),
        ("true", True),
        ("1e", "1e"),
        ("e3", "e3"),
        ("1.2.3", "1.2.3"),
    ],
)
def test_yaml_numbers(text, value):
    parsed = yaml_load(f"v: {text}")["v"]
    assert parsed == value and type(parsed) is type(value)


def test_sci_notation_in_file_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-3, epochs: 2}\nmodel: {pretrained: t.pt}\n")
    cfg = load_config(path, ["train.quant_lr=2e-4", "quant.backward_coef=1.0e-2"])
    assert cfg.train.lr == 0.001 and cfg.train.quant_lr == 0.0002 and cfg.quant.backward_coef == 0.01


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"train": {"epochs": 1.5}}, "train.epochs: expected int, got 1.5 (float)"),
        ({"train": {"epochs": True}}, "train.epochs: expected int, got True (bool)"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float, got 'fast' (str)"),
        ({"train": {"lr": None}}, "train.lr: expected float, got None"),
        ({"train": {"quant_lr": "x"}}, "train.quant_lr: expected float or null"),
        ({"quant": {"weight_bits": 2.0}}, "quant.weight_bits: expected int"),
        ({"quant": {"include": "conv1"}}, "quant.include: expected a list of str"),
        ({"quant": {"bits": 2}}, "quant: unknown key 'bits'"),
        ({"data": {"mean": [0.5, "a"]}}, "data.mean[1]: expected float"),
        ({"method": {"params": []}}, "method.params: expected a mapping"),
        ({"model": 3}, "model: expected a mapping, got 3 (int)"),
        ({"out": 7}, "out: expected str, got 7 (int)"),
        ({"teachers": {"name": "resnet32"}}, "teachers: expected a list"),
        ({"teachers": [{"nam": "resnet32"}]}, "teachers[0]: unknown key 'nam'"),
        ({"modle": {}}, "config: unknown top-level key 'modle'"),
        ({"model": {"name": "resnet1000"}}, "unknown model 'resnet1000'"),
        ({"data": {"format": "mnist"}}, "unknown dataset format 'mnist'"),
        ({"method": {"name": "sqkd"}}, "unknown method 'sqkd'"),
        (
            {"method": {"name": "sqakd", "params": {"temprature": 2}}},
            "unknown parameter 'temprature'; allowed: temperature",
        ),
        ({"calib_images": 0}, "calib_images must be >= 1"),
    ],
)
def test_bad_values_name_key_and_type(tree, message):
    tree = {"model": {"pretrained": "t.pt"}, **tree} if "model" not in tree else tree
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(tree)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_int_widens_to_float_and_lists_become_tuples():
    cfg = RunConfig.from_dict(
        {"model": {"pretrained": "t.pt"}, "train": {"lr": 1, "warmup_epochs": 0}, "quant": {"exclude": ["layer1.*"]}}
    )
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.quant.exclude == ("layer1.*",)


def test_null_only_where_optional():
    assert RunConfig.from_dict({"model": {"pretrained": "t.pt"}, "quant": None}).quant is None
    assert RunConfig.from_dict({"model": {"pretrained": "t.pt"}, "quant": {"act_bits": None}}).quant.act_bits is None
    with pytest.raises(ConfigError, match="quant.weight_bits: expected int, got None"):
        RunConfig.from_dict({"model": {"pretrained": "t.pt"}, "quant": {"weight_bits": None}})


def test_checker_is_generic_for_new_fields():
    @dataclass(frozen=True)
    class Section:
        count: int = 1
        ratio: float | None = None
        names: tuple[str, ...] = ()
        table: dict[str, list[int]] = field(default_factory=dict)

    s = from_dict(Section, {"count": 3, "ratio": 2, "names": ["a"], "table": {"x": [1, 2]}}, "extra")
    assert s == Section(3, 2.0, ("a",), {"x": [1, 2]})
    with pytest.raises(ConfigError, match=r"extra.table.x\[1\]: expected int, got 'b'"):
        from_dict(Section, {"table": {"x": [1, "b"]}}, "extra")


def test_range_checks_of_sections_are_config_errors():
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        RunConfig.from_dict({"model": {"pretrained": "t.pt"}, "train": {"epochs": 0}})
    with pytest.raises(ConfigError, match="quant.weight_bits"):
        RunConfig.from_dict({"model": {"pretrained": "t.pt"}, "quant": {"weight_bits": 9}})


def test_teacher_without_weights_needs_explicit_consent():
    with pytest.raises(ConfigError, match=r"model.pretrained is not set.*model.random_teacher: true"):
        RunConfig.from_dict({})
    with pytest.raises(ConfigError, match=r"teachers\[1\].pretrained is not set"):
        RunConfig.from_dict({"method": {"name": "ekd"}, "teachers": [{"pretrained": "a.pt"}, {"name": "resnet20"}]})
    assert RunConfig.from_dict({"model": {"random_teacher": True}}).model.random_teacher
    assert RunConfig.from_dict({"method": {"name": "qat"}}).model.pretrained is None  # no teacher needed


def test_set_overrides():
    tree = apply_overrides({"train": None}, ["train.epochs=3", "quant.exclude=[a, b]"])
    assert tree == {"train": {"epochs": 3}, "quant": {"exclude": ["a", "b"]}}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="'train' is not a section"):
        apply_overrides({"train": 3}, ["train.epochs=3"])
