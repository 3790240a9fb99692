"""3-D volumes end to end: datasets, checks, the sliding window and runs with every method."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from noisyseg_datasets.folder import FolderDataset
from noisyseg_datasets.mni152 import MNI152Dataset
from noisyseg_datasets.synthetic import SyntheticDataset

from noisyseg import ConfigError, DataError, Split, Splits, run
from noisyseg.data import check_splits
from noisyseg.testing import tiny_run_config
from noisyseg.window import sliding_probs, starts

VOLUMES = {"name": "synthetic", "options": {"dims": 3, "size": 16, "n_train": 8, "n_meta": 4,
                                            "n_test": 3, "min_radius": 2.0, "max_radius": 4.0}}


def _volume_run(tmp_path: Path, **overrides: object) -> object:
    config = tiny_run_config(dataset=VOLUMES, train={"epochs": 2, "batch_size": 4},
                             noise={"rate": 0.5, "options": {"max_radius": 2}},
                             output={"dir": str(tmp_path / "run"), "figure_images": 2}, **overrides)
    return run(config, progress=False)


def test_window_offsets_cover_every_axis_flush_to_the_end() -> None:
    assert starts(10, 10, 5) == [0] and starts(8, 10, 5) == [0]
    assert starts(20, 8, 4) == [0, 4, 8, 12]
    assert starts(21, 8, 4) == [0, 4, 8, 12, 13]


def test_sliding_window_of_a_pointwise_net_equals_the_whole_image() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1)
    volume = torch.randn(1, 13, 21, 18)
    whole = torch.softmax(net(volume[None]), 1)[0]
    windowed = sliding_probs(net, volume, (8, 8, 8), batch_size=5)
    assert windowed.shape == whole.shape and torch.allclose(windowed, whole, atol=1e-6)


def test_volume_datasets_give_volumes_with_their_spacing() -> None:
    synthetic = SyntheticDataset(SyntheticDataset.Options.model_validate(VOLUMES["options"])).load(0)
    assert synthetic.spatial_dims == 3 and synthetic.spacing == (1.0, 1.0, 1.0)
    assert synthetic.train.images.shape == (8, 1, 16, 16, 16)
    assert synthetic.train.masks.any() and synthetic.train.masks.dtype == np.int64
    assert SyntheticDataset.Options.model_validate({"dims": 3}).size == 32  # the volume defaults

    mni = MNI152Dataset(MNI152Dataset.Options.model_validate({"dims": 3})).load(0)
    check_splits(mni, "mni152")
    assert mni.train.images.shape[1:] == (1, 24, 24, 24) and mni.spacing == (1.0, 1.0, 1.0)
    test_shape = mni.test.images.shape[2:]
    assert test_shape[0] == 24 and test_shape[1] > 24 and test_shape[2] > 24  # whole slabs
    assert MNI152Dataset.Options.model_validate({"dims": 3, "patch": 32}).stride == 12


def _splits(train: tuple[int, ...], test: tuple[int, ...], spacing: object = None) -> Splits:
    def split(shape: tuple[int, ...]) -> Split:
        masks = np.zeros((2, *shape), np.int64)
        masks[(slice(None), *(slice(1, 3),) * len(shape))] = 1
        return Split(np.random.default_rng(0).random((2, 1, *shape)).astype(np.float32), masks)

    return Splits(train=split(train), meta=split(train), test=split(test), num_classes=2,
                  spacing=spacing)


def test_check_splits_takes_volumes_and_larger_test_volumes_only() -> None:
    check_splits(_splits((8, 8, 8), (8, 12, 10), (1.0, 0.5, 0.5)), "v")
    with pytest.raises(DataError, match="test split: every image must be"):
        check_splits(_splits((8, 8, 8), (8, 6, 10)), "v")
    with pytest.raises(DataError, match="test split: every image must be"):
        check_splits(_splits((8, 8, 8), (8, 8)), "v")
    with pytest.raises(DataError, match=r"spacing \(1.0, 1.0\) must hold 3 positive"):
        check_splits(_splits((8, 8, 8), (8, 8, 8), (1.0, 1.0)), "v")


def test_volumes_refuse_a_2d_backbone_and_augmentation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backbone 'smp' handles only 2-D"):
        _volume_run(tmp_path, backbone={"name": "smp", "options": {"encoder_name": "resnet18"}})
    with pytest.raises(ConfigError, match=r"augment.hflip = 0"):
        _volume_run(tmp_path, augment={"hflip": 0.5})


METHODS = {
    "none": {},
    "mcpm": {"reweighter": {"name": "mcpm"}},
    "mwnet": {"reweighter": {"name": "mwnet"}},
    "l2rw+relabel": {"reweighter": {"name": "l2rw"}, "corrector": {"name": "relabel"}},
    "coteaching+plc": {"reweighter": {"name": "coteaching", "options": {"num_gradual": 1}},
                       "corrector": {"name": "plc", "options": {"warmup_epochs": 1}}},
    "gce+adele": {"reweighter": {"name": "gce"},
                  "corrector": {"name": "adele", "options": {"correct_every": 1}}},
    "oracle+tloss": {"reweighter": {"name": "oracle"}, "loss": {"name": "tloss"}},
    "l2rw+confusion": {"reweighter": {"name": "l2rw"}, "loss": {"name": "confusion"}},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_on_volumes(tmp_path: Path, method: str) -> None:
    result = _volume_run(tmp_path, **METHODS[method])
    m = result.metrics
    assert math.isfinite(m["dice"]) and math.isfinite(m["hd95"]) and m["distance_mm"] == 1.0
    assert len(result.history) == 2 and (tmp_path / "run" / "examples.png").stat().st_size > 0
    assert any(isinstance(mod, torch.nn.Conv3d) for mod in result.model.modules())


def _nifti_folder(root: Path, n: int = 5, spacing: tuple[float, ...] = (0.8, 0.9, 2.0),
                  odd_spacing: int | None = None) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    xx, yy, zz = np.mgrid[:24, :20, :16]
    for i in range(n):
        mask = ((xx - 12) ** 2 + (yy - 10) ** 2 + ((zz - 8) * 2) ** 2 < (5 + i) ** 2).astype(np.uint8)
        image = (mask * 0.5 + rng.normal(0, 0.1, mask.shape)).astype(np.float32)
        affine = np.diag([*(spacing if i != odd_spacing else (1.0, 1.0, 1.0)), 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask * 255, affine), root / "masks" / f"case{i}.nii.gz")
    return root


@pytest.mark.filterwarnings("ignore:dataset 'folder' train split")  # cubes outside the blob
def test_folder_reads_nifti_volumes_with_their_spacing(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "data")
    options = {"root": str(root), "dims": 3, "patch": 8, "stride": 4, "test_fraction": 0.2,
               "meta_fraction": 0.2}
    splits = FolderDataset(FolderDataset.Options.model_validate(options)).load(0)
    check_splits(splits, "folder")
    assert splits.spacing == (2.0, 0.8, 0.9) and splits.num_classes == 2  # (z, x, y)
    assert splits.test.images.shape == (1, 1, 16, 24, 20)                  # whole, axial first
    cubes_per_volume = 3 * 5 * 4                                            # stride 4, flush end
    assert splits.train.images.shape == (3 * cubes_per_volume, 1, 8, 8, 8)
    assert set(np.unique(splits.train.masks)) == {0, 1}

    with pytest.raises(DataError, match="share one voxel size"):
        FolderDataset(FolderDataset.Options.model_validate(
            {**options, "root": str(_nifti_folder(tmp_path / "odd", odd_spacing=2))})).load(0)
    with pytest.raises(DataError, match="smaller than the patch"):
        FolderDataset(FolderDataset.Options.model_validate({**options, "patch": 20})).load(0)
    default = FolderDataset(FolderDataset.Options.model_validate(
        {**options, "stride": None})).load(0)                                # stride = patch
    assert len(default.train) == 3 * (2 * 3 * 3)
    with pytest.raises(ValueError, match="would leave voxels in no cube"):
        FolderDataset.Options.model_validate({**options, "stride": 9})


def test_a_nifti_volume_stored_flipped_reads_as_the_canonical_one(tmp_path: Path) -> None:
    import nibabel as nib
    from noisyseg_datasets.volumes import read_volume

    data = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "ras.nii.gz")
    flipped = np.diag([-0.8, 0.9, 2.0, 1.0])
    flipped[0, 3] = 0.8 * 5                                    # the same voxels, x stored reversed
    nib.save(nib.Nifti1Image(data[::-1].copy(), flipped), tmp_path / "las.nii.gz")
    a, spacing_a = read_volume(tmp_path / "ras.nii.gz", is_mask=False)
    b, spacing_b = read_volume(tmp_path / "las.nii.gz", is_mask=False)
    assert a.shape == (4, 6, 5) and spacing_a == spacing_b == (2.0, 0.8, 0.9)
    assert np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore:dataset 'folder' train split")
def test_a_run_on_nifti_volumes_scores_whole_test_volumes_in_mm(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "data")
    result = run(tiny_run_config(
        dataset={"name": "folder", "options": {"root": str(root), "dims": 3, "patch": 8}},
        train={"epochs": 1, "batch_size": 8}, output={"dir": str(tmp_path / "run")}),
        progress=False)
    assert result.metrics["distance_mm"] == 1.0 and math.isfinite(result.metrics["dice"])


def test_relabel_changes_exactly_the_low_weight_confident_voxels_of_volumes() -> None:
    from noisyseg_relabel import RelabelCorrector

    from noisyseg.testing import cpu_run_context

    labels = torch.zeros(3, 4, 5, 6, dtype=torch.int64)
    corrector = RelabelCorrector(RelabelCorrector.Options(warmup_epochs=0, momentum=0.0))
    corrector.setup(labels, cpu_run_context(2))
    index = torch.tensor([0, 2])
    weights = torch.ones(2, 4, 5, 6)
    weights[1, 3, 4, 5] = weights[0, 1, 2, 3] = 0.0           # detected voxels
    probs = torch.zeros(2, 2, 4, 5, 6)
    probs[:, 1] = 0.99                                         # confidently foreground everywhere
    probs[:, 0] = 0.01
    corrector.observe_weights(index, weights)
    corrector.observe(index, probs)
    corrector.end_epoch(0)
    changed = torch.nonzero(corrector.store).tolist()
    assert changed == [[0, 1, 2, 3], [2, 3, 4, 5]]
