"""Resume: a run interrupted mid-epoch and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import noisyseg.loop
from noisyseg import CheckpointError, ConfigError, run
from noisyseg.cli import cli
from noisyseg.rundir import TIMINGS
from noisyseg.testing import tiny_run_config

METHODS = {
    "none": {},
    "mcpm": {"reweighter": {"name": "mcpm"}},
    "tloss+mwnet": {"loss": {"name": "tloss"}, "reweighter": {"name": "mwnet"}},
    "confusion": {"loss": {"name": "confusion"}},
    "clslsr": {"corrector": {"name": "clslsr", "options": {"detect_epoch": 1}}},
    "volumes+mcpm": {"dataset": {"name": "synthetic", "options": {
                         "dims": 3, "size": 16, "n_train": 32, "n_meta": 4, "n_test": 3,
                         "min_radius": 2.0, "max_radius": 4.0}},
                     "reweighter": {"name": "mcpm"}},
    "plc+coteaching": {"reweighter": {"name": "coteaching", "options": {"num_gradual": 1}},
                       "corrector": {"name": "plc", "options": {"warmup_epochs": 1, "delta": 0.6,
                                                                "delta_min": 0.6}}},
    "calibrate": {"train": {"calibrate": True, "train_on_meta": False}},
    "l2rw+calibration_share": {"reweighter": {"name": "l2rw"},
                               "train": {"calibrate": True, "calibration_share": 0.5}},
    "adele+select_on_meta": {"corrector": {"name": "adele", "options": {"correct_every": 1}},
                             "train": {"select_on_meta": True, "train_on_meta": False}},
    "augment+plc": {"augment": {"hflip": 0.5, "elastic": 0.5, "brightness_contrast": 0.5},
                    "corrector": {"name": "plc", "options": {"warmup_epochs": 1}}},
    "distil": {"reweighter": {"name": "distil", "options": {"rampup_epochs": 1, "image_weights": True}}},
}
FINAL_KEYS = ("dice", "iou", "hd", "hd95", "train_label_error_final", "steps", "epochs")


def _config(tmp_path: Path, name: str, method: str) -> dict:
    extra = dict(METHODS[method])
    train = {"epochs": 3, **extra.pop("train", {})}
    return tiny_run_config(seed=5, train=train, noise={"rate": 0.5},
                           output={"dir": str(tmp_path / name)}, **extra)


def _without_seconds(history: list[dict]) -> list[dict]:
    """Comparable records: the timing dropped, NaN (never equal to itself) as None."""
    return [{k: None if v != v else v for k, v in h.items() if k not in TIMINGS} for h in history]


def _interrupt_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> object:
    """Make the loop's n-th training step raise KeyboardInterrupt (Ctrl-C); returns the real
    train_step, to put back."""
    original, calls = noisyseg.loop.train_step, []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(noisyseg.loop, "train_step", interrupted)
    return original


@pytest.mark.parametrize("method", list(METHODS))
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, method: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run(_config(tmp_path, "whole", method), progress=False)

    original = _interrupt_at_step(monkeypatch, 6)  # 4 steps per epoch (24 train + 8 meta): epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(_config(tmp_path, "cut", method), progress=False)
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "cut" / "metrics.json").exists()

    resumed = run(resume=tmp_path / "cut", progress=False)
    for key in FINAL_KEYS:
        assert resumed.metrics[key] == whole.metrics[key], key
    assert _without_seconds(resumed.history) == _without_seconds(whole.history)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sigkill_mid_epoch_then_resume_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    data = tiny_run_config(seed=1, train={"epochs": 3, "batch_size": 8})
    data["dataset"]["options"]["n_train"] = 400
    config.write_text(json.dumps(data))
    command = [sys.executable, "-c", "from noisyseg.cli import cli; cli()", "run", "--config",
               str(config), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    cut = tmp_path / "cut"
    process = subprocess.Popen([*command, "--out", str(cut)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cut / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    if (cut / "metrics.json").exists():
        pytest.skip("the run finished before it could be killed")
    assert len((cut / "metrics.jsonl").read_text().splitlines()) < 3

    resumed = subprocess.run([*command[:4], "--resume", str(cut), "-q"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert {k: a[k] for k in FINAL_KEYS} == {k: b[k] for k in FINAL_KEYS}


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path) -> None:
    finished = run(tiny_run_config(output={"dir": str(tmp_path / "done")}), progress=False).run_dir
    with pytest.raises(ConfigError, match="holds a finished run"):
        run(resume=finished)
    with pytest.raises(CheckpointError, match="not found"):
        run(resume=tmp_path)
    with pytest.raises(CheckpointError, match="is not a directory"):
        run(resume=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="give no other settings"):
        run(tiny_run_config(), resume=finished)


def test_command_line_resume_errors_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "cut"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    runner = CliRunner()
    cases = [
        (b"not a checkpoint", "is unreadable or damaged"),
        (None, "not found (a run writes it at the end of its first epoch)"),
    ]
    for content, expected in cases:
        if content is not None:
            (out / "checkpoint.pt").write_bytes(content)
        else:
            (out / "checkpoint.pt").unlink()
        result = runner.invoke(cli, ["run", "--resume", str(out)])
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    torch.save({"model": {}}, out / "checkpoint.pt")
    result = runner.invoke(cli, ["run", "--resume", str(out)])
    assert result.exit_code == 2 and "lacks epoch, step, config" in result.output
    result = runner.invoke(cli, ["run", "--resume", str(out), "--epochs", "5", "--set", "seed=1"])
    assert result.exit_code == 2
    assert "--resume continues a run as it was configured; drop --epochs, --set" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.yaml"]


def test_ctrl_c_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _interrupt_at_step(monkeypatch, 6)
    out = tmp_path / "run"
    args = ["run", "-q", "--epochs", "3", "--out", str(out), "--set", "dataset.options.n_train=24",
            "--set", "dataset.options.n_meta=8", "--set", "dataset.options.n_test=4",
            "--set", "dataset.options.size=32", "--set", "dataset.options.max_radius=6",
            "--set", "backbone.options.base_channels=4", "--set", "backbone.options.depth=2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130, result.output
    assert f"noisyseg run --resume {out}" in result.stderr
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    resumed = CliRunner().invoke(cli, ["run", "-q", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.output
