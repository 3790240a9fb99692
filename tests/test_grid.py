"""The benchmark grid: planning, skipping finished runs on restart, tables, plots, last line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # its scripts import each other from there
    sys.path.append(str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("grid", ROOT / "benchmarks" / "grid.py")
grid_module = importlib.util.module_from_spec(spec)
sys.modules["grid"] = grid_module  # pydantic resolves the module's annotations through it
spec.loader.exec_module(grid_module)

TINY = {
    "name": "tiny",
    "datasets": {"synthetic": {"name": "synthetic", "options": {"size": 32, "n_train": 16, "n_meta": 8,
                                                                "n_test": 8}}},
    "noises": ["dilation"],
    "rates": [0.4],
    "seeds": [0, 1],
    "methods": ["none", "clean", "none+train.meta_only=true"],
    "base": {"backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
             "train": {"epochs": 1, "batch_size": 8}, "output": {"figure_images": 0}},
}


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "store.sqlite"
    monkeypatch.setenv("NOISYSEG_RESULTS_STORE", str(path))
    return path


def test_presets_are_valid_and_plan_the_whole_grid() -> None:
    cpu = grid_module.load_grid(ROOT / "benchmarks" / "grids" / "cpu.yaml")
    runs = grid_module.plan(cpu)
    # 7 methods depend on noise and r (2 x 4), 2 do not; 2 datasets, 2 seeds
    assert len(runs) == 2 * 2 * (7 * 2 * 4 + 2)
    assert len({r.name for r in runs}) == len(runs)
    paper = grid_module.load_grid(ROOT / "benchmarks" / "grids" / "paper.yaml")
    config = grid_module.protocol.spec_config(paper.preset, grid_module.plan(paper)[0], Path("x"))
    assert config["train"]["epochs"] == 120 and config["train"]["batch_size"] == 128
    assert config["dataset"]["options"]["n_train"] == 1906
    meta = grid_module.protocol.method_config(paper.methods[1])
    assert meta["train"]["meta_only"] and meta["train"]["lr_decay_epochs"] == [170, 340]


def test_tiny_grid_runs_skips_finished_runs_and_summarises(tmp_path: Path, own_store: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    grid = grid_module.load_grid(path)
    out = tmp_path / "out"
    grid_module.run_grid(grid, out)
    rows = grid_module.stored(grid)
    assert len(rows) == 2 * 3 and {r["benchmark"] for r in rows} == {"grid"}
    assert {r["preset"] for r in rows} == {"grid-tiny"}
    grid_module.run_grid(grid, out)  # a restart finds nothing left to do
    assert "6 runs done, 0 to go" in capsys.readouterr().out
    assert len(grid_module.stored(grid)) == 6

    grid_module.summary(grid, out)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("mcpm_r04_dice=nan none_r04_dice=0.") and "clean_dice=0." in printed[-1]
    assert "| none | 0." in (out / "summary.md").read_text()
    assert (out / "dice_vs_r_synthetic.png").stat().st_size > 10_000


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "methods": ["mcmp"]}))
    with pytest.raises(SystemExit, match="'mcmp' is not a recipe"):
        grid_module.load_grid(path)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_parallel_executors_fill_the_store_and_retry_failures(tmp_path: Path, executor: str,
                                                              own_store: Path) -> None:
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    bad = f"none+train.init_from={tmp_path / 'missing'}"  # every run of it fails
    data = {**TINY, "seeds": [0], "methods": ["none", bad]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / executor
    grid = grid_module.load_grid(path)
    finished, failed = grid_module.run_grid(grid, out, executor, workers=2)
    assert (finished, failed) == (1, 1)
    rows = grid_module.stored(grid)
    assert [r["method"] for r in rows] == ["none"] and 0 <= rows[0]["dice"] <= 1
    log = (out / "failures.log").read_text()
    assert log.count(f"synthetic-dilation-r0.4-{bad}-s0") == 1 and "train.init_from" in log


def test_runs_on_cuda_get_one_worker_per_gpu() -> None:
    grid = grid_module.load_grid(grid_module.HERE / "grids" / "cpu.yaml")
    on_gpu = grid.model_copy(update={"base": {**grid.base, "device": "auto"}})
    on_cpu = grid.model_copy(update={"base": {**grid.base, "device": "cpu"}})
    assert grid_module.gpu_workers(6, on_gpu, gpu_count=1) == 1
    assert grid_module.gpu_workers(6, on_gpu, gpu_count=4) == 4
    assert grid_module.gpu_workers(2, on_gpu, gpu_count=4) == 2
    assert grid_module.gpu_workers(6, on_cpu, gpu_count=4) == 6
    assert grid_module.gpu_workers(6, on_gpu, gpu_count=0) == 6


def test_workers_take_the_gpus_the_parent_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = grid_module.load_grid(grid_module.HERE / "grids" / "cpu.yaml")
    one_gpu = grid.model_copy(update={"base": {**grid.base, "device": "cuda:1"}})
    assert grid_module.gpu_workers(6, one_gpu, gpu_count=4) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert grid_module.visible_gpus(2) == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert grid_module.visible_gpus(3) == ["0", "1", "2"]
