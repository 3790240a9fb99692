"""Generated datasets cached on disk: a dataset computed from its options alone (``synthetic``)
is made once and read back by every later run with the same options.

A dataset class opts in with ``generated = True`` (and ``seeded = False`` when the run's seed does
not change its splits). The cache key is the dataset's name, its options, the seed (when
``seeded``), NumPy's and SciPy's versions and a hash of the source file that defines the dataset,
so editing the generator makes a new cache (helpers in other files are not hashed: a dataset
whose generator lives elsewhere should not say ``generated``). A dataset must not draw from the
global random state: a cache hit skips ``load``. Entries live in ``$NOISYSEG_CACHE`` (default
``$XDG_CACHE_HOME/noisyseg/generated`` or ``~/.cache/noisyseg/generated``); ``NOISYSEG_CACHE=off``
turns the cache off. An entry appears only when complete (written aside, then renamed), so
processes that build it at the same time each end with a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from noisyseg.components import Dataset, Split, Splits
from noisyseg.plugin_index import cache_folder

SPLITS = ("train", "meta", "test")


#: where entries live, or None when ``NOISYSEG_CACHE=off``: the folder of generated data, shared
#: with the command line's plugin index
cache_root = cache_folder


def load_splits(dataset: Dataset, seed: int) -> Splits:
    """``dataset.load(seed)``, from the cache when the dataset is ``generated``."""
    root = cache_root()
    name = entry_name(dataset, seed) if getattr(dataset, "generated", False) else None
    if root is None or name is None:
        return dataset.load(seed)
    entry = root / name
    if (entry / "done.json").exists():
        try:
            return _read(entry)
        except (OSError, ValueError, KeyError):  # damaged: make it again
            shutil.rmtree(entry, ignore_errors=True)
    splits = dataset.load(seed)
    try:
        _write(splits, entry)
    except OSError:  # a read-only or full disk costs the cache, not the run
        pass
    return splits


def entry_name(dataset: Dataset, seed: int) -> str | None:
    """The cache entry's name, or None when the dataset's source file cannot be read (a class
    defined in a notebook): without it a changed generator could not be told apart."""
    try:
        source = Path(inspect.getsourcefile(type(dataset)) or "")
    except TypeError:
        return None
    if not source.is_file():
        return None
    key = json.dumps({
        "options": dataset.options.model_dump(mode="json"),
        "seed": seed if getattr(dataset, "seeded", True) else None,
        "numpy": np.__version__,
        "scipy": _version("scipy"),  # generators filter with scipy.ndimage
        "source": hashlib.sha256(source.read_bytes()).hexdigest(),
    }, sort_keys=True)
    return f"{dataset.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return ""


@contextlib.contextmanager
def built_aside(entry: Path) -> Iterator[Path]:
    """A fresh folder beside ``entry`` to build a cache entry in (its last file ``done.json``):
    renamed to ``entry`` when the block ends without error, deleted in any case. When another
    process finished ``entry`` first, theirs is kept. Used by this cache and the ``folder``
    dataset's stream cache."""
    work = entry.with_name(f"{entry.name}.building-{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    try:
        yield work
        try:
            os.replace(work, entry)
        except OSError:
            if not (entry / "done.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write(splits: Splits, entry: Path) -> None:
    with built_aside(entry) as work:
        small = splits.num_classes <= 256  # masks as bytes: 8x smaller
        for name in SPLITS:
            split = getattr(splits, name)
            np.save(work / f"{name}_images.npy", np.asarray(split.images))  # dtype kept
            np.save(work / f"{name}_masks.npy",
                    np.asarray(split.masks, dtype=np.uint8 if small else np.int64))
        (work / "done.json").write_text(json.dumps(
            {"num_classes": splits.num_classes, "class_names": splits.class_names,
             "spacing": None if splits.spacing is None else [float(v) for v in splits.spacing]}))


def _read(entry: Path) -> Splits:
    info = json.loads((entry / "done.json").read_text())
    parts = {name: Split(np.load(entry / f"{name}_images.npy"),
                         np.load(entry / f"{name}_masks.npy").astype(np.int64))
             for name in SPLITS}
    spacing = info.get("spacing")
    return Splits(**parts, num_classes=int(info["num_classes"]),
                  class_names=list(info["class_names"]),
                  spacing=None if spacing is None else tuple(float(v) for v in spacing))
