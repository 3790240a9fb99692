"""Generated datasets are cached on disk by their options and read back unchanged."""

from __future__ import annotations

from pathlib import Path

import noisyseg_datasets.synthetic as synthetic
import numpy as np
import pytest

from noisyseg import Registry
from noisyseg.datacache import entry_name, load_splits

OPTIONS = {"size": 24, "n_train": 6, "n_meta": 2, "n_test": 3, "min_radius": 2.0, "max_radius": 5.0}


def test_a_generated_dataset_is_made_once_and_read_back_unchanged(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    dataset = registry.build("dataset", "synthetic", OPTIONS)
    made = []
    original = synthetic.make_split
    monkeypatch.setattr(synthetic, "make_split", lambda *a: made.append(1) or original(*a))
    first = load_splits(dataset, seed=0)
    assert len(made) == 3 and (tmp_path / entry_name(dataset, 0) / "done.json").exists()
    again = load_splits(dataset, seed=5)  # synthetic's splits do not depend on the run's seed
    assert len(made) == 3
    for name in ("train", "meta", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert np.array_equal(a.images, b.images) and a.images.dtype == b.images.dtype
        assert np.array_equal(a.masks, b.masks) and b.masks.dtype == np.int64
    assert again.num_classes == 2 and again.class_names == first.class_names
    other = registry.build("dataset", "synthetic", {**OPTIONS, "n_train": 7})
    assert entry_name(other, 0) != entry_name(dataset, 0)
    assert len(load_splits(other, 0).train) == 7 and len(made) == 6


def test_a_damaged_entry_is_made_again_and_the_cache_can_be_turned_off(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    dataset = registry.build("dataset", "synthetic", OPTIONS)
    first = load_splits(dataset, 0)
    (tmp_path / entry_name(dataset, 0) / "train_images.npy").write_bytes(b"not an array")
    assert np.array_equal(load_splits(dataset, 0).train.images, first.train.images)
    monkeypatch.setenv("NOISYSEG_CACHE", "off")
    other = registry.build("dataset", "synthetic", {**OPTIONS, "n_test": 4})
    load_splits(other, 0)
    assert not (tmp_path / entry_name(other, 0)).exists()


def test_a_cached_volume_dataset_keeps_its_spacing(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOISYSEG_CACHE", str(tmp_path))
    dataset = registry.build("dataset", "synthetic", {**OPTIONS, "dims": 3, "size": 16,
                                                      "max_radius": 4.0})
    first, again = load_splits(dataset, seed=0), load_splits(dataset, seed=0)
    assert first.spacing == again.spacing == (1.0, 1.0, 1.0)
    assert again.train.images.shape == (6, 1, 16, 16, 16)
    assert load_splits(registry.build("dataset", "synthetic", OPTIONS), 0).spacing is None
