"""Datasets that stream from disk: the folder cache, set-sized arrays in files, and runs that end
exactly as they do from memory."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder_dataset

import noisyseg
from noisyseg import DataError, Registry, build_plugin_manager
from noisyseg.data import build_train_set
from noisyseg.scratch import Scratch, streams
from noisyseg.testing import tiny_run_config

REGISTRY = Registry(build_plugin_manager())


def folder(root: Path, cache: Path | None = None, **options: object) -> noisyseg.Dataset:
    extra = {"stream": True, "cache_dir": str(cache)} if cache is not None else {}
    return REGISTRY.build("dataset", "folder", {"root": str(root), **extra, **options})


def test_streamed_splits_equal_the_in_memory_ones_and_are_mapped_files(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "data", n=20)
    memory, streamed = folder(root).load(0), folder(root, tmp_path / "cache").load(0)
    assert memory.num_classes == streamed.num_classes == 2
    for name in ("train", "meta", "test"):
        a, b = getattr(memory, name), getattr(streamed, name)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks), name
        assert streams(b.images) and streams(b.masks) and b.masks.dtype == np.uint8


def test_the_cache_is_reused_until_a_file_changes(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "data", n=12)
    cache = tmp_path / "cache"
    folder(root, cache).load(0)
    (built,) = [d for d in cache.iterdir() if d.is_dir()]
    stamp = (built / "done.json").stat().st_mtime_ns
    folder(root, cache).load(0)
    assert (built / "done.json").stat().st_mtime_ns == stamp  # not built again
    mask = root / "masks" / "case03.png"
    from PIL import Image
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)
    again = folder(root, cache).load(0)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2
    assert again.num_classes == 2


def test_a_bad_mask_names_its_file_and_leaves_no_cache(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "data", n=12)
    from PIL import Image
    bad = np.zeros((24, 24), np.uint8)
    bad[3, 3], bad[5, 5] = 255, 128
    Image.fromarray(bad).save(root / "masks" / "case05.png")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="case05"):
        folder(root, cache).load(0)
    assert not [d for d in cache.iterdir() if d.is_dir()]  # no cache, no half-built folder


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose mapping holds the tensor's memory (from /proc/self/maps), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        low, high = (int(a, 16) for a in parts[0].split("-"))
        if low <= address < high:
            return parts[5] if len(parts) == 6 and parts[5].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_a_streaming_set_keeps_its_set_sized_arrays_in_files(tmp_path: Path) -> None:
    splits = folder(write_folder_dataset(tmp_path / "data", n=20), tmp_path / "cache").load(0)
    noise = REGISTRY.build("noise", "dilation", {"min_radius": 1, "max_radius": 2})
    train = build_train_set(splits, noise, 0.5, 0, include_meta=True)
    assert train.scratch.dir is not None and train.scratch.dir.is_dir()
    for tensor, where in ((train.images, train.scratch.dir), (train.noisy, train.scratch.dir),
                          (train.clean, train.scratch.dir), (train.region, train.scratch.dir)):
        assert str(mapped_file(tensor)).startswith(str(where)), tensor.dtype
    assert mapped_file(torch.ones(100_000)) is None  # (memory of its own is not a file)
    assert 0 < train.label_error() < 1
    folder_of_scratch = train.scratch.dir
    del train
    gc.collect()
    assert not folder_of_scratch.exists()  # the scratch files go with the run


def test_scratch_in_memory_and_on_disk_hold_the_same() -> None:
    data = np.arange(600, dtype=np.int64).reshape(300, 2)
    for scratch in (Scratch(), Scratch(on_disk=True)):
        assert np.array_equal(scratch.copy(data), data)
        assert np.array_equal(scratch.concatenate([data, data[:5]]), np.concatenate([data, data[:5]]))
        t = scratch.tensor((4, 3), torch.float32, fill=1)
        assert torch.equal(t, torch.ones(4, 3))


@pytest.mark.parametrize("corrector", ["none", "plc"])
def test_a_streaming_run_ends_exactly_as_one_from_memory(tmp_path: Path, corrector: str) -> None:
    root = write_folder_dataset(tmp_path / "data", n=40, size=32)

    def once(name: str, **options: object) -> dict:
        cfg = tiny_run_config(
            seed=2, dataset={"name": "folder", "options": {"root": str(root), **options}},
            corrector={"name": corrector}, noise={"rate": 0.5}, train={"epochs": 2},
            output={"dir": str(tmp_path / name)})
        return noisyseg.run(cfg, progress=False).metrics

    memory = once("memory")
    streamed = once("streamed", stream=True, cache_dir=str(tmp_path / "cache"))
    for key in ("dice", "iou", "hd95", "train_label_error_initial", "train_label_error_final"):
        assert streamed[key] == memory[key], key
    info = json.loads(next((tmp_path / "cache").glob("*/done.json")).read_text())
    assert info["num_classes"] == 2


def test_two_processes_build_one_cache_and_train_from_it(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "data", n=40, size=32)
    cache = tmp_path / "cache"
    cfg = tiny_run_config(device="cpu", dataset={"name": "folder", "options": {
        "root": str(root), "stream": True, "cache_dir": str(cache)}},
        output={"dir": str(tmp_path / "run")})
    result = noisyseg.run(cfg, nproc=2, progress=False)
    assert np.isfinite(result.metrics["dice"])
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 1  # built once, no leftovers
