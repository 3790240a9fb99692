"""``mni152``: real brain MRI offline — the MNI ICBM152 2009a symmetric T1 template and its grey-
and white-matter probability maps, which the nilearn wheel ships (no download).

Reference: Fonov et al., "Unbiased nonlinear average age-appropriate brain templates from birth to
adulthood", NeuroImage 2009. Axial slices are cut into patches; slices are grouped into blocks of
neighbouring slices and whole blocks go to train, meta or test (neighbouring slices are nearly
identical, so a slice-level split would leak).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisyseg import DataError, Dataset, Split, Splits

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


class MNIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: Literal["gm", "wm", "both"] = Field("wm", description="gm, wm, or both as 3 classes")
    patch: int = Field(64, ge=16, le=192, description="patch side (px)")
    stride: int = Field(48, ge=4, description="step between patches (px)")
    slice_step: int = Field(2, ge=1, description="use every n-th axial slice")
    block: int = Field(6, ge=1, description="neighbouring used slices per split block")
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
    """Real brain MRI patches (MNI152 T1, grey/white matter labels) shipped with nilearn."""

    name = "mni152"
    Options = MNIOptions

    def load(self, seed: int) -> Splits:
        o = self.options
        vols = load_volumes()
        labels = label_volume(vols["gm"], vols["wm"], o.labels)
        t1 = vols["t1"]
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
        splits = {
            name: self._patches([z for b in sorted(idx) for z in blocks[b]], t1, labels)
            for name, idx in groups.items()
        }
        num_classes = 3 if o.labels == "both" else 2
        names = {"gm": ["other", "grey matter"], "wm": ["other", "white matter"],
                 "both": ["other", "grey matter", "white matter"]}[o.labels]
        return Splits(**splits, num_classes=num_classes, class_names=names)

    def _patches(self, slices: list[int], t1: np.ndarray, labels: np.ndarray) -> Split:
        o = self.options
        images, masks = [], []
        h, w = t1.shape[:2]
        for z in slices:
            for y in range(0, h - o.patch + 1, o.stride):
                for x in range(0, w - o.patch + 1, o.stride):
                    m = labels[y : y + o.patch, x : x + o.patch, z]
                    if (m > 0).mean() < o.min_foreground:
                        continue
                    images.append(t1[None, y : y + o.patch, x : x + o.patch, z])
                    masks.append(m)
        if not images:
            return Split(np.zeros((0, 1, o.patch, o.patch), np.float32),
                         np.zeros((0, o.patch, o.patch), np.int64))
        return Split(np.stack(images).astype(np.float32), np.stack(masks).astype(np.int64))
