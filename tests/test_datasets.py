from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from noisyseg import ConfigError, DataError, DataWarning, Registry
from noisyseg.config import parse_assignment
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


@pytest.mark.parametrize("stream", [False, True])
def test_the_slices_of_one_nifti_volume_stay_in_one_split(registry: Registry, tmp_path: Path,
                                                          stream: bool) -> None:
    import nibabel as nib

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((16, 16, 6), np.uint8)
    mask[4:12, 4:12] = 1
    for i in range(5):  # each volume's slices carry the volume's number as their intensity
        nib.save(nib.Nifti1Image(np.full((16, 16, 6), i / 10, np.float32), np.eye(4)),
                 root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "masks" / f"case{i}.nii.gz")
    options = {"root": str(root), "test_fraction": 0.2, "meta_fraction": 0.2, "stream": stream,
               "cache_dir": str(tmp_path / "cache")}
    s = registry.build("dataset", "folder", options).load(0)
    volumes = {name: set(np.round(np.asarray(getattr(s, name).images)[:, 0, 0, 0] * 10).astype(int))
               for name in ("train", "meta", "test")}
    assert [len(volumes[n]) for n in ("train", "meta", "test")] == [3, 1, 1]
    assert not (volumes["train"] & volumes["test"]) and not (volumes["meta"] & volumes["test"])
    assert (len(s.train), len(s.meta), len(s.test)) == (18, 6, 6)


def test_too_few_files_for_a_meta_split_are_said(registry: Registry, tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "r", n=4)
    with pytest.warns(DataWarning, match="leaves the meta split empty"):
        s = registry.build("dataset", "folder", {"root": str(tmp_path / "r")}).load(0)
    assert len(s.meta) == 0


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

    root = write_folder_dataset(tmp_path / "b", n=4, fg=1)
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(root / "masks" / "case01.png")
    with pytest.raises(DataError, match=r"mask masks/case01.png holds label 7 outside the class range 0..2"):
        _folder(registry, root, num_classes=3).load(0)

    root = write_folder_dataset(tmp_path / "c", n=4)
    (root / "masks" / "case01.png").unlink()
    np.save(root / "masks" / "case01.npy", np.full((24, 24), 0.5))
    with pytest.raises(DataError, match="non-integer values"):
        _folder(registry, root).load(0)


def _anti_alias(root: Path, name: str = "case03") -> None:
    """Give one 0/255 mask an anti-aliased edge: a pixel of 128 and one of 254."""
    from PIL import Image

    path = root / "masks" / f"{name}.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0], mask[0, 1] = 128, 254
    Image.fromarray(mask).save(path)


def _write_masks(root: Path, masks: list[np.ndarray]) -> Path:
    """A folder dataset of .npy images and the given masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        np.save(root / "images" / f"m{i}.npy", rng.normal(size=mask.shape).astype(np.float32))
        np.save(root / "masks" / f"m{i}.npy", mask)
    return root


def test_one_anti_aliased_mask_is_an_error_naming_it(registry: Registry, folder_dataset: Path) -> None:
    _anti_alias(folder_dataset)
    with pytest.raises(DataError, match=(
        r"^mask masks/case03.png holds values 128, 254 besides 0 and 255 \(used by the other masks\); "
        r"set dataset.options.mask_threshold=127 to binarise, "
        r"dataset.options.mask_values='\{0: 0, 255: 1\}'-style map, "
        r"or dataset.options.num_classes for labelled masks$")):
        _folder(registry, folder_dataset).load(0)


def test_many_odd_masks_are_listed_up_to_five(registry: Registry, tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "d", n=20)
    for i in range(7):
        _anti_alias(root, f"case{i:02d}")
    with pytest.raises(DataError, match=r"^masks masks/case00.png \(128, 254\), masks/case01.png "
                       r"\(128, 254\), .*masks/case04.png \(128, 254\) and 2 more hold values besides 0 "):
        _folder(registry, root).load(0)


def test_labels_with_a_gap_are_an_error(registry: Registry, tmp_path: Path) -> None:
    root = _write_masks(tmp_path / "d", [np.array([[0, 1], [3, 3]])] * 3)
    with pytest.raises(DataError, match=r"the masks hold values 0, 1, 3: neither two values"):
        _folder(registry, root).load(0)


@pytest.mark.parametrize("low_high", [(0, 1000), (0, 1), (3, 7)])
def test_masks_of_any_two_values_are_binary(registry: Registry, tmp_path: Path,
                                           low_high: tuple[int, int]) -> None:
    low, high = low_high
    root = _write_masks(tmp_path / "d", [np.array([[low, high], [high, high]])] * 4 + [np.full((2, 2), low)])
    s = _folder(registry, root).load(0)
    masks = np.concatenate([s.train.masks, s.meta.masks, s.test.masks])
    assert s.num_classes == 2 and masks.sum() == 4 * 3


def test_labels_0_to_3_in_all_masks_are_four_classes(registry: Registry, tmp_path: Path) -> None:
    masks = [np.array([[0, 1], [2, 3]]), np.array([[0, 0], [3, 3]]), np.array([[0, 2], [2, 2]])] * 2
    s = _folder(registry, _write_masks(tmp_path / "d", masks)).load(0)
    assert s.num_classes == 4
    assert set(np.unique(np.concatenate([s.train.masks, s.test.masks]))) == {0, 1, 2, 3}


def test_mask_threshold_binarises(registry: Registry, folder_dataset: Path) -> None:
    _anti_alias(folder_dataset)
    s = _folder(registry, folder_dataset, mask_threshold=127, test_fraction=0.1, meta_fraction=0).load(0)
    assert s.num_classes == 2
    masks = np.concatenate([s.train.masks, s.test.masks])
    assert set(np.unique(masks)) == {0, 1}
    assert sum(int((m[0, :2] == 1).all()) for m in masks) >= 1     # 128 and 254 are foreground


def test_mask_values_map_and_unmapped_value(registry: Registry, folder_dataset: Path) -> None:
    _anti_alias(folder_dataset)
    mapping = parse_assignment("mask_values={0: 0, 255: 1, 254: 1, 128: 0}")   # as --set reads it
    s = _folder(registry, folder_dataset, **mapping).load(0)
    assert s.num_classes == 2
    with pytest.raises(DataError, match=r"^mask masks/case03.png holds value 128 that "
                       r"dataset.options.mask_values does not map; add them to the map$"):
        _folder(registry, folder_dataset, mask_values={"0": 0, "255": 1, "254": 1}).load(0)


def test_mask_options_are_checked(registry: Registry, folder_dataset: Path) -> None:
    with pytest.raises(ConfigError, match="set mask_threshold or mask_values, not both"):
        _folder(registry, folder_dataset, mask_threshold=127, mask_values={0: 0, 255: 1})
    with pytest.raises(ConfigError, match=r"mask_values must map mask values to classes 0..1"):
        _folder(registry, folder_dataset, mask_values={0: 0, 255: 2}, num_classes=2)


def test_num_classes_two_reads_two_values_as_binary(registry: Registry, folder_dataset: Path) -> None:
    assert _folder(registry, folder_dataset, num_classes=2).load(0).num_classes == 2


def test_non_finite_image_is_an_error_naming_file_and_pixel(registry: Registry, tmp_path: Path) -> None:
    root = _write_masks(tmp_path / "d", [np.array([[0, 1], [1, 1]])] * 4)
    image = np.zeros((2, 2), np.float32)
    image[1, 0] = np.nan
    np.save(root / "images" / "m2.npy", image)
    with pytest.raises(DataError, match=r"^image images/m2.npy holds 1 non-finite pixel value\(s\), "
                       r"the first nan at index \(1, 0\); replace them"):
        _folder(registry, root).load(0)
