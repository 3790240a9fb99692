from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from noisyseg import Registry, build_plugin_manager

settings.register_profile("noisyseg", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("noisyseg")
torch.set_num_threads(2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated datasets are cached for the session in a folder of its own (not the user's),
    and benchmarks run by the tests write to a results store of their own (not the committed
    benchmarks/results/results.sqlite)."""
    os.environ["NOISYSEG_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
    os.environ["NOISYSEG_RESULTS_STORE"] = str(tmp_path_factory.mktemp("store") / "results.sqlite")


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry(build_plugin_manager())


def write_folder_dataset(root: Path, n: int = 10, size: int = 24, seed: int = 0, fg: int = 255) -> Path:
    """A small folder dataset: PNG images, PNG masks of 0 and ``fg``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(6, size - 6, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 16).astype(np.uint8)
        image = (rng.uniform(0, 80, (size, size)) + 150 * mask).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask * fg).save(root / "masks" / f"case{i:02d}.png")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "data")
