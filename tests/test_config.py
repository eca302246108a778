"""Config loading: YAML round trip, overrides, and errors that name the field."""

from __future__ import annotations

from fractions import Fraction

import pytest

from vpace.config import Config, ConfigError, load_config, pace_set_field


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
    assert pace_set_field("3, 1/3,1/2,1,2", "f") == tuple(map(Fraction, ["1/3", "1/2", "1", "2", "3"]))


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
        ({"optim": {"lr": ".nan"}}, "optim.lr"),
        ({"optim": {"lrr": 1}}, "optim.lrr"),
        ({"method": "magic"}, "method"),
        ({"scale": {"min_workers": 3, "max_workers": 2}}, "scale.max_workers"),
        ({"rspnet": {"momentum": 1.0}}, "rspnet.momentum"),
        ({"pace": {"tau": 0}}, "pace.tau"),
        ({"augment": {"hue": 0.6}}, "augment.hue"),
        ({"augment": {"jitter_p": -0.1}}, "augment.jitter_p"),
        ({"augment": {"std": [0.2, 0.0, 0.2]}}, "augment.std"),
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


def test_defaults_are_torchvisions_kinetics_video_preset() -> None:
    """Normalisation, crop and decode size are torchvision's Kinetics-400 video preset (r3d_18 weights)."""
    from torchvision.models.video import R3D_18_Weights

    preset = R3D_18_Weights.KINETICS400_V1.transforms()  # builds the transform only, downloads nothing
    cfg = load_config()
    assert cfg.augment.mean == tuple(preset.mean) and cfg.augment.std == tuple(preset.std)
    assert [cfg.augment.crop] * 2 == list(preset.crop_size)
    assert [cfg.data.height, cfg.data.width] == list(preset.resize_size)


@pytest.mark.parametrize("bad", [dict(crop=129), dict(crop=0), dict(flip_p=1.5), dict(jitter_p=2.0),
                                 dict(brightness=-0.1), dict(saturation=-1.0), dict(hue=0.51),
                                 dict(hue=-0.1)])
def test_config_and_augment_reject_the_same_settings(bad) -> None:
    """One set of ranges: a run config and a direct `vpace.augment` call fail on the same field."""
    from vpace.augment import sample_params

    (field,) = bad
    with pytest.raises(ConfigError) as e:
        load_config(data={"augment": bad})
    assert e.value.field_name == f"augment.{field}"
    with pytest.raises(ValueError, match=f"^{field}: "):
        sample_params(2, 4, 128, 171, **bad)
    edge = {field: {"crop": 128, "flip_p": 1.0, "jitter_p": 0.0, "brightness": 0.0, "saturation": 0.0,
                    "hue": 0.5}[field]}  # the closest valid value: both accept it
    assert getattr(load_config(data={"augment": edge}).augment, field) == edge[field]
    sample_params(2, 4, 128, 171, **edge)



@pytest.mark.parametrize("assignment, says", [
    ("pace.paces=,", "is not valid YAML"),
    ("optim.lr=[1", "is not valid YAML"),
    ("augment.mean={a", "is not valid YAML"),
    ("pace.paces=", "no value after 'pace.paces='"),
    ("pace.paces=''", "must list at least one value"),  # an empty string: the field's own check
])
def test_set_value_errors_name_the_field_in_one_line(assignment, says) -> None:
    field = assignment.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides=[assignment])
    assert e.value.field_name == field and says in str(e.value) and "\n" not in str(e.value)


def test_set_value_is_yaml() -> None:
    cfg = load_config("smoke", overrides=["optim.lr=0.01", "data.epoch_size=null", "augment.mean=[.5,.5,.5]",
                                          "pace.paces='1,2'"])
    assert (cfg.optim.lr, cfg.data.epoch_size, cfg.augment.mean, cfg.pace.paces) == (
        0.01, None, (0.5, 0.5, 0.5), "1,2")


def test_exponent_floats_are_numbers_in_set_and_yaml(tmp_path) -> None:
    """YAML 1.1 reads `1e-2` (no dot) as a string; a float field takes it as the number it means."""
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-2\n")
    assert load_config(tmp_path / "c.yaml").optim.lr == 0.01
    assert load_config("smoke", overrides=["optim.lr=3e-4"]).optim.lr == 3e-4
