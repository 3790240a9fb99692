"""Built-in datasets: ``synthetic`` (generated), ``mni152`` (real MRI shipped with nilearn) and
``folder`` (your own files)."""

from __future__ import annotations

from noisyseg import Dataset, hookimpl
from noisyseg_datasets.folder import FolderDataset
from noisyseg_datasets.mni152 import MNI152Dataset
from noisyseg_datasets.synthetic import SyntheticDataset


@hookimpl
def register_datasets() -> list[type[Dataset]]:
    return [SyntheticDataset, MNI152Dataset, FolderDataset]
