from __future__ import annotations

from pathlib import Path

import pytest

from noisyseg import Config, ConfigError
from noisyseg.config import dump, load_file, parse_assignment, resolve


def test_defaults_are_the_default_run() -> None:
    c = Config()
    assert (c.dataset.name, c.noise.name, c.noise.rate, c.backbone.name, c.reweighter.name) == (
        "synthetic", "dilation", 0.4, "unet", "none")
    assert c.device == "auto"


@pytest.mark.parametrize(("data", "field"), [
    ({"noise": {"rate": 1.5}}, "noise.rate"),
    ({"noise": {"rate": -0.1}}, "noise.rate"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"batch_size": 0}}, "train.batch_size"),
    ({"train": {"optimizer": "adamw"}}, "train.optimizer"),
    ({"trian": {}}, "trian"),
])
def test_invalid_values_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid config: {field}"):
        resolve(data)


def test_toml_and_yaml_files_fill_the_same_config(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 3\n[noise]\nname = "elastic"\nrate = 0.2\n[train]\nepochs = 2\n'
                    '[reweighter]\nname = "none"\n[reweighter.options]\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("seed: 3\nnoise: {name: elastic, rate: 0.2}\ntrain: {epochs: 2}\n")
    assert resolve(toml) == resolve(yaml)
    assert resolve(toml).noise.name == "elastic"


def test_overrides_and_assignments() -> None:
    c = resolve({"train": {"epochs": 5}}, train__epochs=7, noise__rate=0.0)
    assert c.train.epochs == 7 and c.noise.rate == 0.0
    assert parse_assignment("reweighter.options.alpha=0.01") == {
        "reweighter": {"options": {"alpha": 0.01}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("train.lr")


def test_dump_round_trips(tmp_path: Path) -> None:
    c = resolve({"seed": 5, "noise": {"name": "erosion", "options": {"max_radius": 2}}})
    path = tmp_path / "config.yaml"
    path.write_text(dump(c))
    assert resolve(path) == c


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_file(bad)
    other = tmp_path / "c.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"\.toml, \.yaml"):
        load_file(other)
