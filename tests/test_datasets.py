from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noisyseg import DataError, Registry
from tests.conftest import write_folder_dataset


def _folder(registry: Registry, root: Path, **options: object):
    return registry.build("dataset", "folder", {"root": str(root), **options})


def test_synthetic_is_deterministic_and_has_lesions(registry: Registry) -> None:
    ds = registry.build("dataset", "synthetic", {"n_train": 20, "n_meta": 5, "n_test": 5})
    a, b = ds.load(0), ds.load(1)   # the run seed does not change the images
    assert np.array_equal(a.train.images, b.train.images)
    assert a.train.images.shape == (20, 1, 64, 64) and a.meta.masks.shape == (5, 64, 64)
    fg = a.train.masks.mean(axis=(1, 2))
    assert (fg > 0).all() and fg.mean() < 0.2
    other = registry.build("dataset", "synthetic", {"n_train": 20, "n_meta": 5, "n_test": 5,
                                                     "data_seed": 1}).load(0)
    assert not np.array_equal(a.train.images, other.train.images)


def test_synthetic_lesions_are_brighter(registry: Registry) -> None:
    s = registry.build("dataset", "synthetic", {"n_train": 30, "n_meta": 0, "n_test": 1}).load(0)
    img, m = s.train.images[:, 0], s.train.masks.astype(bool)
    assert img[m].mean() > img[~m].mean() + 0.1


@pytest.mark.parametrize("labels", ["gm", "wm", "both"])
def test_mni152_loads_offline_and_splits_by_slice_blocks(registry: Registry, labels: str) -> None:
    s = registry.build("dataset", "mni152", {"labels": labels}).load(0)
    assert s.num_classes == (3 if labels == "both" else 2)
    assert len(s.train) > 100 and len(s.test) > 20 and len(s.meta) > 5
    assert s.train.images.shape[1:] == (1, 64, 64)
    assert 0 <= s.train.images.min() and s.train.images.max() <= 1
    assert s.train.masks.max() == s.num_classes - 1
    # no patch appears in two splits (whole slice blocks go to one split)
    train = {p.tobytes() for p in s.train.images}
    assert not any(p.tobytes() in train for p in s.test.images)


def test_folder_reads_pngs_and_maps_255_to_one(registry: Registry, folder_dataset: Path) -> None:
    s = _folder(registry, folder_dataset).load(0)
    assert s.num_classes == 2
    assert len(s.train) + len(s.meta) + len(s.test) == 10
    assert s.train.images.dtype == np.float32 and s.train.images.max() <= 1
    assert set(np.unique(s.train.masks)) == {0, 1}


def test_folder_reads_npy_and_nifti_volumes(registry: Registry, tmp_path: Path) -> None:
    import nibabel as nib

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(root / "images" / f"a{i}.npy", rng.normal(size=(16, 16)).astype(np.float32))
        np.save(root / "masks" / f"a{i}.npy", rng.integers(0, 3, (16, 16)))
    vol = rng.normal(size=(16, 16, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "images" / "vol.nii.gz")
    nib.save(nib.Nifti1Image(rng.integers(0, 3, (16, 16, 4)).astype(np.int16), np.eye(4)),
             root / "masks" / "vol.nii.gz")
    s = _folder(registry, root).load(0)
    assert len(s.train) + len(s.meta) + len(s.test) == 3 + 4
    assert s.num_classes == 3


def test_folder_with_split_subfolders(registry: Registry, tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "r" / "train", n=6)
    write_folder_dataset(tmp_path / "r" / "test", n=3, seed=1)
    s = _folder(registry, tmp_path / "r").load(0)
    assert (len(s.train), len(s.meta), len(s.test)) == (6, 0, 3)


def test_folder_errors(registry: Registry, tmp_path: Path, folder_dataset: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _folder(registry, tmp_path / "nowhere").load(0)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        _folder(registry, tmp_path / "empty").load(0)
    (folder_dataset / "masks" / "case03.png").unlink()
    with pytest.raises(DataError, match=r"do not pair up by name: 1 without a partner \(case03\)"):
        _folder(registry, folder_dataset).load(0)


def test_folder_size_and_label_errors(registry: Registry, tmp_path: Path) -> None:
    from PIL import Image

    root = write_folder_dataset(tmp_path / "a", n=4)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case01.png")
    with pytest.raises(DataError, match="differ in size"):
        _folder(registry, root).load(0)

    root = write_folder_dataset(tmp_path / "b", n=4)
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(root / "masks" / "case01.png")
    with pytest.raises(DataError, match=r"label 7, outside the class range 0..2"):
        _folder(registry, root, num_classes=3).load(0)

    root = write_folder_dataset(tmp_path / "c", n=4)
    (root / "masks" / "case01.png").unlink()
    np.save(root / "masks" / "case01.npy", np.full((24, 24), 0.5))
    with pytest.raises(DataError, match="non-integer values"):
        _folder(registry, root).load(0)
