"""The benchmark grid: planning, skipping finished runs on restart, tables, plots, last line."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
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
    "methods": ["none", "clean", "meta_only"],
    "base": {"backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
             "train": {"epochs": 1, "batch_size": 8}, "output": {"figure_images": 0}},
}


def test_presets_are_valid_and_plan_the_whole_grid() -> None:
    cpu = grid_module.load_grid(ROOT / "benchmarks" / "grids" / "cpu.yaml")
    runs = grid_module.plan(cpu)
    # 7 methods depend on noise and r (2 x 4), 2 do not; 2 datasets, 2 seeds
    assert len(runs) == 2 * 2 * (7 * 2 * 4 + 2)
    assert len({grid_module.run_id(r) for r in runs}) == len(runs)
    paper = grid_module.load_grid(ROOT / "benchmarks" / "grids" / "paper.yaml")
    config = grid_module.run_config(paper, grid_module.plan(paper)[0], Path("x"))
    assert config["train"]["epochs"] == 120 and config["train"]["batch_size"] == 128
    assert config["dataset"]["options"]["n_train"] == 1906


def test_tiny_grid_runs_skips_finished_runs_and_summarises(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    grid = grid_module.load_grid(path)
    out = tmp_path / "out"
    grid_module.run_grid(grid, out)
    rows = grid_module.read_rows(out / "results.csv")
    assert len(rows) == 2 * 3
    grid_module.run_grid(grid, out)  # a restart finds nothing left to do
    assert "6 runs done, 0 to go" in capsys.readouterr().out
    assert len(grid_module.read_rows(out / "results.csv")) == 6

    grid_module.summary(grid, out)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("mcpm_r04_dice=nan none_r04_dice=0.") and "clean_dice=0." in printed[-1]
    assert "| none | 0." in (out / "summary.md").read_text()
    assert (out / "dice_vs_r_synthetic.png").stat().st_size > 10_000


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "methods": ["mcmp"]}))
    with pytest.raises(SystemExit, match="unknown method"):
        grid_module.load_grid(path)


def test_forget_drops_one_method_so_it_runs_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rows = [{**{c: "" for c in grid_module.COLUMNS}, "method": m, "seed": s}
            for m in ("none", "clean") for s in (0, 1)]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, grid_module.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert grid_module.forget(out, ["clean"]) == 2
    assert [r["method"] for r in grid_module.read_rows(out / "results.csv")] == ["none", "none"]


def test_a_row_with_a_new_column_upgrades_an_older_file(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    grid_module.append_row(results, {"a": 1, "b": 2}, ["a", "b"])
    grid_module.append_row(results, {"a": 3, "b": 4, "c": 5}, ["a", "b", "c"])
    assert grid_module.read_rows(results) == [{"a": "1", "b": "2", "c": ""},
                                              {"a": "3", "b": "4", "c": "5"}]
    with pytest.raises(ValueError, match="not among"):  # a file of other results: not mixed in
        grid_module.append_row(results, {"a": 6}, ["a"])


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_parallel_executors_fill_the_same_csv_and_retry_failures(tmp_path: Path, executor: str) -> None:
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    data = {**TINY, "seeds": [0], "methods": ["none", "clean"],
            "method_options": {"clean": {"train": {"epochs": 0}}}}  # every clean run fails
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / executor
    finished, failed = grid_module.run_grid(grid_module.load_grid(path), out, executor, workers=2)
    assert (finished, failed) == (1, 1)
    rows = grid_module.read_rows(out / "results.csv")
    assert [r["method"] for r in rows] == ["none"] and 0 <= float(rows[0]["dice"]) <= 1
    log = (out / "failures.log").read_text()
    assert log.count("synthetic-none-r0-clean-s0") == 1 and "train.epochs" in log


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
