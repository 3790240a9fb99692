"""The ``folder`` dataset's cache for ``stream = true``: the files read once, one at a time, into
arrays on disk that training maps into memory (``numpy.load(..., mmap_mode="c")``).

The cache of a folder is one directory named by a hash of the folder's path, every option that
changes what is read, and each file's name, size and modification time: change a file and the
next run builds a new cache; run again unchanged and it starts at once. Building takes a lock,
so several processes (``--nproc``) build it once and share it; a build that dies leaves nothing
the next run would take for a cache.

Layout: ``<split>_images.npy`` (N, C, H, W) float32 and ``<split>_masks.npy`` (N, H, W) class
labels (uint8 up to 256 classes, else int64) for train, meta and test, and ``done.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from noisyseg import Split, Splits
from noisyseg.datacache import SPLITS, built_aside
from noisyseg.scratch import chunks
from noisyseg_datasets.masks import apply_map, class_map
from noisyseg_datasets.writer import sample_names, split_name, value_coding

if TYPE_CHECKING:
    from noisyseg_datasets.folder import FolderDataset

#: the options that change what the cache holds
_CONTENT = ("images_dir", "masks_dir", "num_classes", "mask_threshold", "mask_values",
            "meta_fraction", "test_fraction", "split_seed")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "noisyseg" / "folder"


def stream_splits(dataset: FolderDataset, root: Path) -> Splits:
    """The dataset's splits as arrays mapped from its cache (built first when missing)."""
    o = dataset.options
    groups = ({name: root / name for name in SPLITS if (root / name).is_dir()}
              if (root / "train").is_dir() else {"all": root})
    listing = {name: dataset.pairs(folder) for name, folder in groups.items()}
    cache = Path(o.cache_dir or default_cache()).expanduser() / _key(dataset, root, listing)
    if not (cache / "done.json").exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with _lock(cache.with_suffix(".lock")):
            if not (cache / "done.json").exists():  # another process may have built it meanwhile
                _build(dataset, root, listing, cache)
    info = json.loads((cache / "done.json").read_text())
    parts = {name: Split(_open(cache / f"{name}_images.npy"), _open(cache / f"{name}_masks.npy"))
             for name in SPLITS}
    if "train_names" in info:  # caches built before they were recorded have neither
        names = info["train_names"]
        parts["train"].names = names
        parts["train"].groups = file_groups([split_name(n)[0] for n in names])
        dataset.coding = value_coding({int(v): int(c) for v, c in info["classes"]})
    return Splits(**parts, num_classes=int(info["num_classes"]))


def _open(path: Path) -> np.ndarray:
    """A cached array mapped copy-on-write (an empty one is simply read)."""
    array = np.load(path, mmap_mode="r")
    return np.load(path, mmap_mode="c") if array.size else np.load(path)


#: changes when the cache's content would change for the same files and options (2: whole files,
#: not slices, go to one split; in the key of a folder without split folders holding NIfTI files,
#: the only layout it changed)
LAYOUT = 2


def file_groups(names: list[str]) -> np.ndarray:
    """Each sample's file as an integer (N,), from the file name of each sample."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(name, len(index)) for name in names], dtype=np.int64)


def _key(dataset: FolderDataset, root: Path, listing: dict[str, list[tuple[Path, Path]]]) -> str:
    options = dataset.options.model_dump(mode="json", include=set(_CONTENT))
    files = []
    for pairs in listing.values():
        for pair in pairs:
            for path in pair:
                st = path.stat()
                files.append([str(path.relative_to(root)), st.st_size, st.st_mtime_ns])
    key = {"root": str(root.resolve()), "options": options, "files": files}
    volumes = any(p.name.lower().endswith((".nii", ".nii.gz"))
                  for pair in listing.get("all", []) for p in pair)
    if volumes:  # only their split changed with LAYOUT 2: other caches stay valid
        key["layout"] = LAYOUT
    text = json.dumps(key, sort_keys=True)
    return f"{root.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # no advisory locks here (Windows): one process at a time, please
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(dataset: FolderDataset, root: Path, listing: dict[str, list[tuple[Path, Path]]],
           cache: Path) -> None:
    """Read every file once into raw arrays, find the class map, then write each split's
    arrays, a chunk of samples at a time; the cache appears only when complete."""
    o = dataset.options
    with built_aside(cache) as work:
        raw: dict[str, tuple[int, tuple[int, ...]]] = {}
        values: dict[str, set[int]] = {}
        names: dict[str, list[str]] = {}  # each sample's mask file, per listing
        total = sum(len(pairs) for pairs in listing.values())
        with tqdm(total=total, desc=f"caching {root.name}", unit="file", leave=False,
                  disable=total < 100) as bar:
            for name, pairs in listing.items():
                names[name] = []
                raw[name] = _write_raw(dataset, pairs, root, work / name, values, bar, names[name])
        classes, k = class_map(values, o.num_classes, o.mask_threshold, o.mask_values)
        if "all" in raw:
            plan = {split: ("all", idx) for split, idx in
                    dataset.cuts(raw["all"][0], root, file_groups(names["all"])).items()}
        else:
            plan = {split: (split, np.arange(raw[split][0] if split in raw else 0)) for split in SPLITS}
        shape = next(s for _, s in raw.values() if s)
        for split, (source, idx) in plan.items():
            _write_split(work, split, source if source in raw else None, idx, raw, shape, classes, k)
        for name in raw:
            for suffix in (".img", ".msk"):
                (work / name).with_suffix(suffix).unlink(missing_ok=True)
        source, idx = plan["train"]
        every = sample_names(names.get(source, []))
        train_names = [every[i] for i in idx]
        (work / "done.json").write_text(json.dumps({
            "num_classes": k, "root": str(root), "classes": sorted(classes.items()),
            "train_names": train_names}))


def _write_raw(dataset: FolderDataset, pairs: list[tuple[Path, Path]], root: Path, stem: Path,
               values: dict[str, set[int]], bar: Any, names: list[str]) -> tuple[int, tuple[int, ...]]:
    """Append every sample's image (float32) and raw mask (int64) to two files, and its mask
    file's name to ``names``; (count, shape)."""
    n, shape, done = 0, (), None
    with open(stem.with_suffix(".img"), "wb") as images, open(stem.with_suffix(".msk"), "wb") as masks:
        for x, y, mask_name in dataset.samples(pairs, root):
            images.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
            masks.write(np.ascontiguousarray(y, dtype=np.int64).tobytes())
            values.setdefault(mask_name, set()).update(np.unique(y).tolist())
            names.append(mask_name)
            n, shape = n + 1, tuple(x.shape)
            if mask_name != done:  # one tick per file (a volume holds several samples)
                done = mask_name
                bar.update(1)
    return n, shape


def _write_split(work: Path, split: str, source: str | None, idx: np.ndarray,
                 raw: dict[str, tuple[int, tuple[int, ...]]], shape: tuple[int, ...],
                 classes: dict[int, int], k: int) -> None:
    dtype = np.uint8 if k <= 256 else np.int64
    images = np.lib.format.open_memmap(work / f"{split}_images.npy", mode="w+", dtype=np.float32,
                                       shape=(len(idx), *shape))
    masks = np.lib.format.open_memmap(work / f"{split}_masks.npy", mode="w+", dtype=dtype,
                                      shape=(len(idx), *shape[1:]))
    if len(idx):
        n = raw[source][0]
        src_images = np.memmap((work / source).with_suffix(".img"), dtype=np.float32, mode="r",
                               shape=(n, *shape))
        src_masks = np.memmap((work / source).with_suffix(".msk"), dtype=np.int64, mode="r",
                              shape=(n, *shape[1:]))
        for part in chunks(len(idx)):
            rows = idx[part]
            images[part] = src_images[rows]
            masks[part] = apply_map(np.asarray(src_masks[rows]), classes).astype(dtype)
        del src_images, src_masks
    images.flush()
    masks.flush()
    del images, masks
