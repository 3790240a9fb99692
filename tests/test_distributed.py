"""One run across processes (gloo on the CPU): the processes stay in step, rank 0 alone writes,
and two processes train as well as one with the same global batch. The runs say ``device cpu``:
on a machine with one GPU, ``auto`` would put two processes on it, which is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import noisyseg.loop
from noisyseg import ConfigError, build_plugin_manager, run
from noisyseg.build import resolve_device
from noisyseg.cli import cli
from noisyseg.config import resolve
from noisyseg.distributed import World, check_nproc
from noisyseg.lockstep import process_differences, run_in_processes
from noisyseg.testing import tiny_run_config as _tiny


def tiny_run_config(**overrides: object) -> dict:
    """The tests' tiny run, on the CPU (gloo), whatever GPUs this machine has."""
    return _tiny(device="cpu", **overrides)


def test_shards_of_a_batch_are_disjoint_and_cover_it() -> None:
    batch = torch.arange(12)
    shards = [World(rank=r, size=3).shard(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert World().shard(batch) is batch


def test_a_world_of_one_does_nothing() -> None:
    world, net = World(), torch.nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    grad = net.weight.grad.clone()
    world.average_gradients(net.parameters())
    world.broadcast_module(net)
    assert torch.equal(net.weight.grad, grad)
    assert world.mean(0.5) == 0.5 and world.all_true(False) is False and world.gather(3) == [3]
    assert world.from_main(lambda: 7) == 7 and world.is_main


def test_process_counts_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        check_nproc(0, torch.device("cpu"))
    assert resolve_device("cpu", World(rank=1, size=2)) == torch.device("cpu")
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        run(tiny_run_config(train={"batch_size": 7}), nproc=2, progress=False)
    with pytest.raises(ConfigError, match="plugin_manager"):
        run(tiny_run_config(), nproc=2, plugin_manager=build_plugin_manager(), progress=False)


def test_nproc_under_torchrun_must_match_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="already one of 4"):
        run(tiny_run_config(), nproc=2, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_process_takes_the_gpu_of_its_local_rank() -> None:
    assert resolve_device("auto", World(rank=3, size=4, local_rank=0)) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="names one GPU"):
        resolve_device("cuda:0", World(rank=0, size=2))
    count = torch.cuda.device_count()  # a process beyond the GPUs (torchrun, spawn) is refused
    with pytest.raises(ConfigError, match=f"needs GPU {count}, but {count} are visible"):
        resolve_device("auto", World(rank=count, size=count + 1, local_rank=count))


def test_processes_hold_one_model_one_mask_net_and_one_label_store(tmp_path: Path) -> None:
    config = tiny_run_config(
        reweighter={"name": "mcpm"},
        corrector={"name": "plc", "options": {"warmup_epochs": 0, "delta": 0.6, "delta_min": 0.6}},
        train={"epochs": 2}, output={"dir": str(tmp_path / "run")},
    )
    a, b = run_in_processes(2, config)
    assert "net" in a["reweighter"]
    assert process_differences([a, b]) == {"model": [], "reweighter": [], "labels": []}
    changed = [h["labels_changed"] for h in a["history"]]
    assert changed == [h["labels_changed"] for h in b["history"]] and sum(changed) > 0
    # 2 epochs of 4 steps (mcpm trains on the meta images too); rank 0 alone evaluates
    assert a["metrics"]["steps"] == 8 and b["metrics"] == {}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "test_dice" in json.loads(lines[-1])


def test_coteaching_peers_stay_in_step(tmp_path: Path) -> None:
    config = tiny_run_config(reweighter={"name": "coteaching", "options": {"num_gradual": 1}},
                             train={"epochs": 2}, output={"dir": str(tmp_path / "run")})
    a, b = run_in_processes(2, config)
    assert "peer" in a["reweighter"]
    assert process_differences([a, b]) == {"model": [], "reweighter": [], "labels": []}


def test_two_processes_train_as_well_as_one_with_the_same_global_batch(tmp_path: Path) -> None:
    config = tiny_run_config(
        dataset={"options": {"n_train": 96, "n_test": 32}},
        backbone={"options": {"base_channels": 8, "depth": 2}},
        train={"epochs": 6, "batch_size": 8, "lr": 1e-2}, output={"figure_images": 0},
    )
    one = run(config, output__dir=str(tmp_path / "one"), progress=False)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["run", "--config", str(config_file), "--nproc", "2",
                                      "--out", str(tmp_path / "two"), "-q"])
    assert result.exit_code == 0, result.output
    assert "test: Dice" in result.output
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one.metrics["dice"] > 0.6 and two["dice"] > 0.6
    assert abs(two["dice"] - one.metrics["dice"]) < 0.05  # seeds 0-2 differ by 0.01 here
    assert two["steps"] == one.metrics["steps"]


def test_a_run_in_two_processes_returns_the_config_its_config_yaml_records(tmp_path: Path) -> None:
    result = run(tiny_run_config(reweighter={"name": "mcpm"}, train={"epochs": 1},
                                 output={"dir": str(tmp_path / "run")}), nproc=2, progress=False)
    assert result.config.train.train_on_meta is True  # resolved (unset, mcpm trains on them too)
    assert result.config == resolve(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))


def test_a_resumed_run_may_continue_in_two_processes(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_run_config(reweighter={"name": "mcpm"}, train={"epochs": 2},
                             output={"dir": str(tmp_path / "run")})
    original, calls = noisyseg.loop.train_step, []

    def dies_in_epoch_two(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 6:  # epoch 2 of 4 steps each (mcpm trains on the meta images too)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(noisyseg.loop, "train_step", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    result = run(resume=tmp_path / "run", nproc=2, progress=False)
    assert result.metrics["epochs"] == 2 and result.metrics["steps"] == 8
    assert isinstance(result.model, torch.nn.Module) and result.reweighter is None
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_torchrun_launch_writes_once(tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_run_config()))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "noisyseg", "run", "--config", str(config_file), "--out", str(tmp_path / "run"),
         "-q"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test: Dice") == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt", "config.yaml", "curves.png", "examples.png", "metrics.json",
        "metrics.jsonl"]
