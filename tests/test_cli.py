from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from noisyseg.cli import cli


def test_tiny_run_through_the_cli_writes_every_file(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[dataset]\nname = "synthetic"\n[dataset.options]\nsize = 32\nn_train = 16\n'
        'n_meta = 4\nn_test = 4\n[backbone.options]\nbase_channels = 4\ndepth = 2\n'
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", "--config", str(config), "--epochs", "1", "--batch-size", "8", "--seed", "2",
        "--noise", "elastic", "--noise-rate", "0.5", "--out", str(out), "-q",
        "--set", "train.lr=0.002",
    ])
    assert result.exit_code == 0, result.output
    assert "test: Dice" in result.output
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "checkpoint.pt", "examples.png"):
        assert (out / name).is_file()
    saved = (out / "config.yaml").read_text()
    assert "name: elastic" in saved and "lr: 0.002" in saved and "seed: 2" in saved
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 1


def test_plugins_lists_every_builtin_component() -> None:
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    for name in ("none", "dilation", "erosion", "elastic", "unet", "smp", "synthetic", "mni152",
                 "folder"):
        assert f"  {name} " in result.output, name
    listed = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert listed["noise"][0]["version"].startswith("noisyseg ")


def test_config_command_prints_resolved_defaults() -> None:
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 0 and "rate: 0.4" in result.output


def test_meta_reweighter_from_the_cli_with_options(tmp_path: Path) -> None:
    out = tmp_path / "mcpm"
    result = CliRunner().invoke(cli, [
        "run", "--reweighter", "mcpm", "--noise", "elastic", "--epochs", "1", "--out", str(out),
        "-q", "--batch-size", "8",
        "--set", "dataset.options={size: 32, n_train: 16, n_meta: 4, n_test: 4}",
        "--set", "backbone.options={base_channels: 4, depth: 2}",
        "--set", "reweighter.options.interval=2", "--set", "reweighter.options.width3=4",
        "--set", "train.calibrate=true", "--set", "train.calibration_share=0.25",
    ])
    assert result.exit_code == 0, result.output
    assert "calibrated on 1 meta image (offset " in result.output
    assert "interval: 2" in (out / "config.yaml").read_text()
    bad = CliRunner().invoke(cli, ["run", "--reweighter", "mcpm", "--set",
                                   "reweighter.options.interval=0", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "reweighter.options.interval" in bad.output
    nometa = CliRunner().invoke(cli, ["run", "--reweighter", "l2rw", "--set",
                                      "dataset.options.n_meta=0", "--out", str(tmp_path / "y")])
    assert nometa.exit_code == 2 and "needs a clean meta set" in nometa.output
    assert not (tmp_path / "y").exists()


def test_the_command_line_module_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, noisyseg.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    import noisyseg

    assert sorted(noisyseg.__all__) == sorted(noisyseg._EXPORTS)
    assert all(getattr(noisyseg, name) is not None for name in noisyseg.__all__)
