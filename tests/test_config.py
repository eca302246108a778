"""Config loading: YAML round trip, overrides, and errors that name the field."""

from __future__ import annotations

from fractions import Fraction

import pytest

from vpace.config import Config, ConfigError, load_config, parse_fraction_list


def test_defaults_are_the_papers_recipe() -> None:
    cfg = load_config()
    o = cfg.optim
    assert (o.lr, o.momentum, o.epochs, o.lr_step_epochs) == (1e-3, 0.9, 18, 6)
    assert (cfg.pace.lambda_cls, cfg.pace.lambda_ctr) == (1.0, 0.1)
    assert cfg.augment.crop == 112 and (cfg.data.height, cfg.data.width) == (128, 171)


def test_yaml_round_trip_and_overrides(tmp_path) -> None:
    cfg = load_config(data={"pace": {"paces": "1/3,1/2,1,2,3"}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path, overrides=["optim.lr=0.01", "data.epoch_size=90000", "run.name=x"])
    assert again.pace.paces == "1/3,1/2,1,2,3"
    assert again.optim.lr == 0.01 and again.data.epoch_size == 90000 and again.run.name == "x"
    assert isinstance(again, Config)


def test_fraction_list_is_exact_and_sorted() -> None:
    assert parse_fraction_list("3, 1/3,1/2,1,2", "f") == tuple(map(Fraction, ["1/3", "1/2", "1", "2", "3"]))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"pace": {"paces": ""}}, "pace.paces"),
        ({"pace": {"paces": "1,two"}}, "pace.paces"),
        ({"pace": {"paces": "1,0"}}, "pace.paces"),
        ({"model": {"backbone": "resnet9000"}}, "model.backbone"),
        ({"pace": {"lambda_ctr": -0.5}}, "pace.lambda_ctr"),
        ({"augment": {"crop": 200}}, "augment.crop"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"optim": {"lrr": 1}}, "optim.lrr"),
        ({"method": "magic"}, "method"),
        ({"scale": {"min_workers": 3, "max_workers": 2}}, "scale.max_workers"),
        ({"rspnet": {"momentum": 1.0}}, "rspnet.momentum"),
        ({"pace": {"tau": 0}}, "pace.tau"),
    ],
)
def test_bad_values_name_the_field(data, field) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(data=data)
    assert e.value.field_name == field
    assert f"'{field}'" in str(e.value)


def test_unknown_named_config() -> None:
    with pytest.raises(FileNotFoundError, match="no config file or named config"):
        load_config("no-such-config")
