"""``mni152``: real brain MRI offline — the MNI ICBM152 2009a symmetric T1 template and its grey-
and white-matter probability maps, which the nilearn wheel ships (no download).

Reference: Fonov et al., "Unbiased nonlinear average age-appropriate brain templates from birth to
adulthood", NeuroImage 2009. Axial slices are cut into patches; slices are grouped into blocks of
neighbouring slices and whole blocks go to train, meta or test (neighbouring slices are nearly
identical, so a slice-level split would leak). With ``dims = 3`` the volume (1 mm voxels) is cut
into slabs of axial slices instead, whole slabs go to a split, training and meta samples are
cubes and test samples whole slabs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from noisyseg import DataError, Dataset, Split, Splits
from noisyseg_datasets.volumes import VolumeDefaults

FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}


def data_dir() -> Path:
    """nilearn's bundled data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mni152' needs the nilearn package: pip install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load_volumes() -> dict[str, np.ndarray]:
    """T1, GM and WM volumes (197, 233, 189) as float32 in [0, 1]."""
    import nibabel as nib

    folder = data_dir()
    out = {}
    for key, name in FILES.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"dataset 'mni152': {path} is missing from the nilearn installation")
        out[key] = np.asarray(nib.load(path).dataobj, dtype=np.float32) / 255.0
    return out


class MNIOptions(VolumeDefaults):
    model_config = ConfigDict(extra="forbid")
    #: the defaults that differ for volumes (dims = 3), where the option is not given
    VOLUME_DEFAULTS: ClassVar[dict[str, Any]] = {"patch": 24, "stride": 12}
    dims: Literal[2, 3] = Field(2, description="2: axial slices cut into square patches; 3: cubic "
                                               "3-D patches of the volume (defaults patch 24, "
                                               "stride 12)")
    labels: Literal["gm", "wm", "both"] = Field("wm", description="gm, wm, or both as 3 classes")
    patch: int = Field(64, ge=8, le=192, description="patch side (px; voxels for dims = 3)")
    stride: int = Field(48, ge=4, description="step between patches (px)")
    slice_step: int = Field(2, ge=1, description="use every n-th axial slice (dims = 2)")
    block: int = Field(6, ge=1, description="neighbouring used slices per split block (dims = 2)")
    meta_fraction: float = Field(0.1, ge=0, lt=1, description="share of slice blocks in the clean meta split")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="share of slice blocks in the test split")
    min_foreground: float = Field(0.05, ge=0, le=1, description="drop patches with less foreground")
    split_seed: int = Field(0, description="seed of the block-wise split (not the run's seed)")

    @model_validator(mode="after")
    def _check(self) -> MNIOptions:
        if self.meta_fraction + self.test_fraction >= 1:
            raise ValueError("meta_fraction + test_fraction must be < 1")
        return self


def label_volume(gm: np.ndarray, wm: np.ndarray, labels: str) -> np.ndarray:
    """Integer label volume: gm/wm as binary, or 0 = other, 1 = GM, 2 = WM (WM wins ties)."""
    if labels == "gm":
        return (gm > 0.5).astype(np.int64)
    if labels == "wm":
        return (wm > 0.5).astype(np.int64)
    out = (gm > 0.5).astype(np.int64)
    out[wm > 0.5] = 2
    return out


class MNI152Dataset(Dataset):
    """Real brain MRI patches or 3-D cubes (MNI152 T1, grey/white matter) shipped with nilearn."""

    name = "mni152"
    Options = MNIOptions

    def load(self, seed: int) -> Splits:
        o = self.options
        vols = load_volumes()
        labels = label_volume(vols["gm"], vols["wm"], o.labels)
        t1 = vols["t1"]
        if o.dims == 3:
            return self._volumes(t1, labels)
        z_used = [z for z in range(0, t1.shape[2], o.slice_step) if labels[..., z].any()]
        blocks = [z_used[i : i + o.block] for i in range(0, len(z_used), o.block)]
        order = np.random.default_rng(o.split_seed).permutation(len(blocks))
        n_test = max(1, round(o.test_fraction * len(blocks)))
        n_meta = round(o.meta_fraction * len(blocks))
        groups = {
            "test": order[:n_test],
            "meta": order[n_test : n_test + n_meta],
            "train": order[n_test + n_meta :],
        }
        block_of = {z: b for b, zs in enumerate(blocks) for z in zs}
        splits = {
            name: self._patches([z for b in sorted(idx) for z in blocks[b]], t1, labels, block_of)
            for name, idx in groups.items()
        }
        return Splits(**splits, **self._classes())

    def _classes(self) -> dict[str, object]:
        labels = self.options.labels
        return {"num_classes": 3 if labels == "both" else 2,
                "class_names": {"gm": ["other", "grey matter"], "wm": ["other", "white matter"],
                                "both": ["other", "grey matter", "white matter"]}[labels]}

    def _volumes(self, t1: np.ndarray, labels: np.ndarray) -> Splits:
        """Slabs of ``patch`` axial slices go whole to train, meta or test (neighbouring patches
        overlap, so a patch-level split would leak). Train and meta: cubes of ``patch`` voxels
        at ``stride`` across each slab. Test: each slab whole, cropped to the brain's bounding box
        and predicted by a sliding window of the training patch (so the test volumes are larger
        than the training patches, as a CT volume is)."""
        o = self.options
        volume = np.moveaxis(t1, 2, 0)                   # (z, y, x): axial slices first
        label = np.moveaxis(labels, 2, 0)
        brain = np.argwhere(volume > 0.05)
        (z0, y0, x0), (z1, y1, x1) = brain.min(0), brain.max(0) + 1
        volume, label = volume[z0:z1, y0:y1, x0:x1], label[z0:z1, y0:y1, x0:x1]
        slabs = [z for z in range(0, volume.shape[0] - o.patch + 1, o.patch)
                 if label[z : z + o.patch].any()]
        order = np.random.default_rng(o.split_seed).permutation(len(slabs))
        n_test = max(1, round(o.test_fraction * len(slabs)))
        n_meta = max(1, round(o.meta_fraction * len(slabs))) if o.meta_fraction else 0
        if len(slabs) < n_test + n_meta + 1:
            raise DataError(f"dataset 'mni152': patch {o.patch} leaves {len(slabs)} slabs of the "
                            "volume, too few for a train, meta and test split: lower patch")
        chosen = {"test": order[:n_test], "meta": order[n_test : n_test + n_meta],
                  "train": order[n_test + n_meta :]}
        splits = {name: self._cubes([slabs[i] for i in sorted(idx)], volume, label)
                  for name, idx in chosen.items() if name != "test"}
        test = [(volume[z : z + o.patch], label[z : z + o.patch])
                for z in (slabs[i] for i in sorted(chosen["test"]))]
        splits["test"] = Split(np.stack([v[None] for v, _ in test]).astype(np.float32),
                               np.stack([m for _, m in test]).astype(np.int64))
        return Splits(**splits, **self._classes(), spacing=(1.0, 1.0, 1.0))  # the template: 1 mm

    def _cubes(self, slabs: list[int], volume: np.ndarray, label: np.ndarray) -> Split:
        o, p = self.options, self.options.patch
        images, masks = [], []
        for z in slabs:
            for y in range(0, volume.shape[1] - p + 1, o.stride):
                for x in range(0, volume.shape[2] - p + 1, o.stride):
                    m = label[z : z + p, y : y + p, x : x + p]
                    if (m > 0).mean() >= o.min_foreground:
                        images.append(volume[None, z : z + p, y : y + p, x : x + p])
                        masks.append(m)
        if not images:
            return Split(np.zeros((0, 1, p, p, p), np.float32), np.zeros((0, p, p, p), np.int64))
        return Split(np.stack(images).astype(np.float32), np.stack(masks).astype(np.int64))

    def _patches(self, slices: list[int], t1: np.ndarray, labels: np.ndarray,
                 block_of: dict[int, int]) -> Split:
        """Patches of the axial slices, named ``z040-y048-x096`` (where they were cut), grouped
        by slice block (neighbouring slices and overlapping patches are near copies)."""
        o = self.options
        images, masks, names, groups = [], [], [], []
        h, w = t1.shape[:2]
        for z in slices:
            for y in range(0, h - o.patch + 1, o.stride):
                for x in range(0, w - o.patch + 1, o.stride):
                    m = labels[y : y + o.patch, x : x + o.patch, z]
                    if (m > 0).mean() < o.min_foreground:
                        continue
                    images.append(t1[None, y : y + o.patch, x : x + o.patch, z])
                    masks.append(m)
                    names.append(f"z{z:03d}-y{y:03d}-x{x:03d}")
                    groups.append(block_of[z])
        if not images:
            return Split(np.zeros((0, 1, o.patch, o.patch), np.float32),
                         np.zeros((0, o.patch, o.patch), np.int64), [], np.zeros(0, np.int64))
        return Split(np.stack(images).astype(np.float32), np.stack(masks).astype(np.int64), names,
                     np.array(groups, dtype=np.int64))
