"""``folder``: the user's own images and masks.

Layout (``root`` is required)::

    root/images/case01.png   root/masks/case01.png      one folder, cut by meta/test_fraction of files
    root/train/images/...    root/train/masks/...      or explicit splits: train, test, meta
    root/test/...            root/meta/...             (meta is optional)

Images and masks pair up by file name without extension. Formats: PNG, JPEG, BMP, TIFF (Pillow),
NPY (NumPy) and NIfTI (.nii / .nii.gz, nibabel; a 3-D volume becomes one sample per axial slice,
or with ``dims = 3`` one volume, see :mod:`noisyseg_datasets.volumes`).
Masks hold integers: two values in all (0/255, 0/1, ...) are background and foreground, labels
0..K-1 are K classes, anything else is an error unless an option says what the values mean (see
:mod:`noisyseg_datasets.masks`). Integer images are scaled by their type's maximum; float images
are used as they are, and a NaN or infinite pixel is an error naming the file and the pixel.

With ``stream = true`` the files are read once into a cache of arrays on disk
(:mod:`noisyseg_datasets.stream`), and training reads from there: memory does not grow with the
number of images. Reading and checking one file is :mod:`noisyseg_datasets.files`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from noisyseg import DataError, Dataset, DataWarning, Split, Splits
from noisyseg_datasets.files import IMAGE_SUFFIXES, check_finite, read_array, stem, to_image, to_mask
from noisyseg_datasets.masks import apply_map, class_map
from noisyseg_datasets.stream import file_groups, stream_splits
from noisyseg_datasets.volumes import common_spacing, cubes, read_volumes, whole
from noisyseg_datasets.writer import FolderMaskWriter, sample_names, value_coding


def _as_samples(array: np.ndarray, path: Path, is_mask: bool) -> list[np.ndarray]:
    """Split a file's array into 2-D samples: (H, W) or (H, W, C) pictures; NIfTI volumes slice."""
    if path.name.lower().endswith((".nii", ".nii.gz")) and array.ndim == 3:
        return [array[..., z] for z in range(array.shape[-1])]
    if array.ndim == 2 or (array.ndim == 3 and not is_mask and array.shape[-1] in (1, 3, 4)):
        return [array]
    raise DataError(f"{path}: cannot use an array of shape {array.shape} as a 2-D "
                    f"{'mask' if is_mask else 'image'}")


class FolderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Path = Field(..., description="folder holding images/ and masks/ (or train/, test/, meta/)")
    dims: Literal[2, 3] = Field(2, description="2: pictures, and NIfTI volumes as axial slices; 3: "
                                "one volume per NIfTI (or 3-D .npy) file, cut into cubes for "
                                "training, test volumes whole")
    patch: int = Field(64, ge=8, description="dims = 3: side of the training cubes (voxels)")
    stride: int | None = Field(None, ge=1, description="dims = 3: step between cubes, at most "
                               "the patch (default: the patch: no overlap)")
    images_dir: str = Field("images", description="name of the images folder (under root or each split)")
    masks_dir: str = Field("masks", description="name of the masks folder, paired with images by file name")
    num_classes: int | None = Field(None, ge=2, description="default: read from the mask values")
    mask_threshold: float | None = Field(None, description="binary masks: label = value > threshold")
    mask_values: dict[int, int] | None = Field(
        None, description="each mask value's class, e.g. {0: 0, 255: 1}; other values are an error"
    )
    meta_fraction: float = Field(0.1, ge=0, lt=1, description="share of the files in the meta "
                                 "split, when there are no split folders (a file's samples stay "
                                 "together)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the files in the test "
                                 "split, when there are no split folders")
    split_seed: int = Field(0, description="seed of the train/meta/test cut (not the run's seed)")
    stream: bool = Field(False, description="read the files once into a cache of arrays mapped "
                         "from disk and train from there: memory stays flat however large the set")
    cache_dir: Path | None = Field(None, description="stream: where the cache goes (default "
                                   "$XDG_CACHE_HOME/noisyseg/folder, else ~/.cache/noisyseg/folder)")

    @model_validator(mode="after")
    def _check(self) -> FolderOptions:
        if self.meta_fraction + self.test_fraction >= 1:
            raise ValueError("meta_fraction + test_fraction must be < 1")
        if self.stride is not None and self.stride > self.patch:
            raise ValueError(f"stride ({self.stride}) > patch ({self.patch}) would leave voxels "
                             "in no cube")
        if self.dims == 3 and self.stream:
            raise ValueError("stream works for 2-D samples only; set stream = false with dims = 3")
        if self.mask_threshold is not None and self.mask_values is not None:
            raise ValueError("set mask_threshold or mask_values, not both")
        if self.mask_values is not None:
            top = (self.num_classes or max(max(self.mask_values.values(), default=0) + 1, 2)) - 1
            if not self.mask_values or not all(0 <= c <= top for c in self.mask_values.values()):
                raise ValueError(f"mask_values must map mask values to classes 0..{top}")
        return self


class FolderDataset(Dataset):
    """Your own images and masks (PNG/JPEG/TIFF/NPY/NIfTI) from a folder."""

    name = "folder"
    Options = FolderOptions

    def pairs(self, folder: Path) -> list[tuple[Path, Path]]:
        """The (image, mask) files under ``folder``/images and ``folder``/masks, paired by name."""
        o = self.options
        img_dir, mask_dir = folder / o.images_dir, folder / o.masks_dir
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise DataError(f"dataset folder {folder} has no '{d.name}' folder ({d} is missing)")
        images = {stem(p): p for p in sorted(img_dir.iterdir()) if p.name.lower().endswith(IMAGE_SUFFIXES)}
        masks = {stem(p): p for p in sorted(mask_dir.iterdir()) if p.name.lower().endswith(IMAGE_SUFFIXES)}
        if not images:
            raise DataError(f"no images found in {img_dir} (accepted: {', '.join(IMAGE_SUFFIXES)})")
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            shown = ", ".join(unpaired[:5]) + (" ..." if len(unpaired) > 5 else "")
            raise DataError(
                f"images and masks in {folder} do not pair up by name: {len(unpaired)} without a "
                f"partner ({shown})"
            )
        return [(images[key], masks[key]) for key in sorted(images)]

    def samples(self, pairs: list[tuple[Path, Path]], root: Path
                ) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """Every sample of the files, checked, one at a time: the image (C, H, W) float32, the
        mask's raw values (H, W) int64 and the mask file's name relative to ``root``."""
        shape, first = None, None
        for image_path, mask_path in pairs:
            img_arr, mask_arr = read_array(image_path), read_array(mask_path)
            mask_name = str(mask_path.relative_to(root))
            check_finite(img_arr, str(image_path.relative_to(root)))
            img_samples = _as_samples(img_arr, image_path, is_mask=False)
            mask_samples = _as_samples(mask_arr, mask_path, is_mask=True)
            if len(img_samples) != len(mask_samples) or img_samples[0].shape[:2] != mask_samples[0].shape[:2]:
                raise DataError(
                    f"image {image_path.name} {img_arr.shape} and mask {mask_path.name} "
                    f"{mask_arr.shape} differ in size"
                )
            for im, m in zip(img_samples, mask_samples, strict=True):
                x = to_image(im)
                if shape is None:
                    shape, first = x.shape, image_path.name
                elif x.shape != shape:
                    raise DataError(
                        f"all images must have one size and channel count: {first} is {shape}, "
                        f"{image_path.name} is {x.shape}; resize them first"
                    )
                yield x, to_mask(m, mask_name), mask_name

    def read_pairs(self, folder: Path, root: Path
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, set[int]], list[str]]:
        """All (image, mask) samples under ``folder``/images and ``folder``/masks, checked: images
        (N, C, H, W) float32, the masks' raw values (N, H, W) int64, the values each mask file
        holds (by its name relative to ``root``) and each sample's mask file (N names; a NIfTI
        volume's slices share one)."""
        xs, ys, values, files = [], [], {}, []
        for x, y, mask_name in self.samples(self.pairs(folder), root):
            xs.append(x)
            ys.append(y)
            files.append(mask_name)
            values.setdefault(mask_name, set()).update(np.unique(y).tolist())
        return np.stack(xs), np.stack(ys), values, files

    def load(self, seed: int) -> Splits:
        o = self.options
        root = Path(o.root).expanduser()
        if not root.is_dir():
            raise DataError(f"dataset folder {root} does not exist")
        if (root / "train").is_dir() and not (root / "test").is_dir():
            raise DataError(f"{root} has a train/ folder but no test/ folder")
        if o.stream:
            return stream_splits(self, root)
        if o.dims == 3:
            return self._volumes(root)
        values: dict[str, set[int]] = {}
        if (root / "train").is_dir():
            parts = {}
            for name in ("train", "meta", "test"):
                if (root / name).is_dir():
                    x, y, held, files = self.read_pairs(root / name, root)
                    parts[name] = Split(x, y, sample_names(files), file_groups(files))
                    values.update(held)
        else:
            x, y, values, files = self.read_pairs(root, root)
            names, groups = sample_names(files), file_groups(files)
            parts = {name: Split(x[idx], y[idx], [names[i] for i in idx], groups[idx])
                     for name, idx in self.cuts(len(x), root, groups).items()}
        if "meta" not in parts:
            train = parts["train"]
            parts["meta"] = Split(train.images[:0], train.masks[:0])
        classes, k = class_map(values, o.num_classes, o.mask_threshold, o.mask_values)
        self.coding = value_coding(classes)
        parts = {name: dataclasses.replace(p, masks=apply_map(p.masks, classes))
                 for name, p in parts.items()}
        return Splits(**parts, num_classes=k)

    def mask_writer(self, folder: Path) -> FolderMaskWriter | None:
        """The training masks as files like the user's (:mod:`noisyseg_datasets.writer`); None
        before :meth:`load`, or from a stream cache older than the mask values it records."""
        coding = getattr(self, "coding", None)
        if coding is None:
            return None
        return FolderMaskWriter(Path(self.options.root).expanduser(), folder, coding)

    def _volumes(self, root: Path) -> Splits:
        """dims = 3: volumes go whole to a split; train and meta are cut into cubes."""
        o = self.options
        if (root / "train").is_dir():
            groups = {name: read_volumes(self, root / name, root)
                      for name in ("train", "meta", "test") if (root / name).is_dir()}
        else:
            found = read_volumes(self, root, root)
            groups = {name: [found[i] for i in sorted(idx)]
                      for name, idx in self.cuts(len(found), root).items()}
        spacing = common_spacing([v for group in groups.values() for v in group])
        values: dict[str, set[int]] = {}
        for group in groups.values():
            for _, mask, name, _ in group:
                values.setdefault(name, set()).update(np.unique(mask).tolist())
        stride = o.stride or o.patch
        parts = {name: whole(group, o.patch) if name == "test" else cubes(group, o.patch, stride)
                 for name, group in groups.items()}
        if "meta" not in parts:
            parts["meta"] = Split(parts["train"].images[:0], parts["train"].masks[:0])
        classes, k = class_map(values, o.num_classes, o.mask_threshold, o.mask_values)
        parts = {name: Split(p.images, apply_map(p.masks, classes)) for name, p in parts.items()}
        return Splits(**parts, num_classes=k, spacing=spacing)

    def cuts(self, n: int, root: Path, groups: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sample indices of the test, meta and train splits of a folder without split folders.
        Whole files go to one split (``groups``: each sample's file; a NIfTI volume's slices are
        near-copies of each other and must not straddle train and test); a file's samples keep
        their order, files come in the seed's permuted order."""
        o = self.options
        groups = np.arange(n) if groups is None else np.asarray(groups)
        members: dict[int, list[int]] = {}  # each file's samples, files in reading order
        for i, g in enumerate(groups.tolist()):
            members.setdefault(g, []).append(i)
        files = list(members.values())
        order = np.random.default_rng(o.split_seed).permutation(len(files))
        n_test = max(1, round(o.test_fraction * len(files)))
        n_meta = round(o.meta_fraction * len(files))
        if len(files) - n_test - n_meta < 1:
            what = "samples" if len(files) == n else "files (a volume's slices stay together)"
            raise DataError(f"{root}: {len(files)} {what} are too few to split into train/meta/test; "
                            "put the splits in train/, test/ (and meta/) folders instead")
        if o.meta_fraction > 0 and n_meta == 0:
            warnings.warn(f"dataset 'folder': meta_fraction {o.meta_fraction} of {len(files)} "
                          f"{'files' if len(files) < n else 'samples'} leaves the meta split "
                          "empty; raise it or give a meta/ folder", DataWarning, stacklevel=3)

        def samples(chosen: np.ndarray) -> np.ndarray:
            if len(files) == n:  # one sample per file
                return chosen
            parts = [files[f] for f in chosen]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

        return {"test": samples(order[:n_test]), "meta": samples(order[n_test : n_test + n_meta]),
                "train": samples(order[n_test + n_meta :])}

