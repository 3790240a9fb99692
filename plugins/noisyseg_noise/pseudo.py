"""``pseudo`` label noise: a corrupted image's mask is replaced by what a weak model predicts.

Pseudo-labels are the noise the seed papers meet in practice: the one-shot weakly-supervised
segmentation paper trains its final model on pseudo masks grown from propagated scribbles, with a
noisy-label strategy (PLC) because those masks are wrong in places; MCPM (Wang et al., MICCAI
2020, Sec. 1) is motivated by the corrupted pseudo-labels of semi-supervised segmentation. Their
errors are not a geometric rule: they follow the image (faint or unusual objects missed,
look-alike tissue taken), which the other noise models do not imitate.

The weak model: the project's small U-Net (:class:`noisyseg_backbones.unet.UNet`, ``base_channels``
and ``depth`` here; 3-D for volumes) trained with cross-entropy and Adam on the CPU, for
``epochs`` epochs of ``batch_size``, on ``images`` clean meta images (the first of a permutation
drawn from the seed; all of them when None). It never sees the training images, so every mask it
gives is out of sample. It predicts every training image once (argmax of its class
probabilities), in :meth:`PseudoNoise.prepare`; the images the core chooses (``noise.rate`` of
them) get their prediction as their mask. With the defaults and 48 px images this takes a few
seconds.

The predictions are cached on disk (beside the generated datasets, :mod:`noisyseg.datacache`:
``$NOISYSEG_CACHE``, off with ``NOISYSEG_CACHE=off`` or ``cache: false``) under a key made of the
options, the seed, the meta images and masks, the training images, the versions of torch and
NumPy and the source of this module and of the U-Net: every later run on the same data and seed
(and every fold of an audit) reads them back instead of training again.

Not offered: a registration-style variant (an atlas mask misaligned by an affine) for ``mni152``.
Its masks come from one template: an "atlas" label of a patch would be the patch's own clean mask
moved by a random affine, which is the geometric noise ``elastic`` and ``alphabeta`` already make,
not the errors of registering one subject's atlas to another.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from noisyseg import NoiseModel, Split, Splits
from noisyseg.errors import DataError
from noisyseg.scratch import chunks

#: images predicted at once
BATCH = 32


class PseudoOptions(BaseModel):
    """The weak model that makes the pseudo-labels, and its training."""

    model_config = ConfigDict(extra="forbid")
    images: int | None = Field(8, ge=1, description="clean meta images the weak model trains on "
                                                    "(None: the whole meta split)")
    epochs: int = Field(25, ge=1, le=10_000, description="epochs the weak model trains")
    batch_size: int = Field(4, ge=1, le=1024, description="images per step of the weak model")
    lr: float = Field(3e-3, gt=0, le=1, description="Adam learning rate of the weak model")
    base_channels: int = Field(8, ge=1, le=128, description="weak U-Net channels at full resolution")
    depth: int = Field(2, ge=1, le=6, description="weak U-Net poolings")
    cache: bool = Field(True, description="keep the predictions on disk for later runs "
                                          "($NOISYSEG_CACHE)")


def train_weak_model(meta: Split, num_classes: int, options: PseudoOptions,
                     seed: int) -> torch.nn.Module:
    """The small U-Net trained on (some of) the clean meta images, on the CPU, in eval mode.
    The global torch random state is left as it was.

    Shape:
        meta - images (M, C, H, W) or (M, C, D, H, W), masks without C
    """
    from noisyseg_backbones.unet import UNet

    from noisyseg.outputs import out_channels, per_pixel_loss

    rng = np.random.default_rng([seed, 0x95E0D0])
    pick = np.sort(rng.permutation(len(meta))[: options.images or len(meta)])
    x = torch.from_numpy(np.asarray(meta.images[pick], dtype=np.float32))
    y = torch.from_numpy(np.asarray(meta.masks[pick], dtype=np.int64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        net = UNet(x.shape[1], out_channels(num_classes), options.base_channels, options.depth,
                   0.0, y.ndim - 1)
        optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
        net.train()
        for _ in range(options.epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            for start in range(0, len(x), options.batch_size):
                batch = order[start : start + options.batch_size]
                loss = per_pixel_loss(net(x[batch]), y[batch]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return net.eval()


@torch.no_grad()
def predict(net: torch.nn.Module, images: np.ndarray, num_classes: int) -> np.ndarray:
    """Each image's most probable class, a batch at a time.

    Shape:
        images - (N, C, H, W) or (N, C, D, H, W); returns (N, H, W) or (N, D, H, W), uint8 up to
        256 classes (else int64)
    """
    from noisyseg.outputs import class_probs

    out = np.empty((len(images), *images.shape[2:]), dtype=np.uint8 if num_classes <= 256 else np.int64)
    for part in chunks(len(images), BATCH):
        x = torch.from_numpy(np.asarray(images[part], dtype=np.float32))
        out[part] = class_probs(net(x)).argmax(1).numpy()
    return out


def cache_key(splits: Splits, seed: int, options: PseudoOptions) -> str:
    """A digest of everything the predictions depend on (see the module docstring)."""
    from noisyseg_backbones import unet

    h = hashlib.sha256()
    sources = [Path(inspect.getsourcefile(m) or "") for m in (inspect.getmodule(cache_key), unet)]
    h.update(json.dumps({
        "options": options.model_dump(mode="json", exclude={"cache"}), "seed": seed,
        "num_classes": splits.num_classes, "torch": torch.__version__, "numpy": np.__version__,
        "sources": [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in sources],
        "shapes": [list(a.shape) for a in (splits.meta.images, splits.meta.masks, splits.train.images)],
    }, sort_keys=True).encode())
    h.update(np.ascontiguousarray(splits.meta.images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(splits.meta.masks, dtype=np.int64).tobytes())
    for part in chunks(len(splits.train)):
        h.update(np.ascontiguousarray(splits.train.images[part], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


class PseudoNoise(NoiseModel):
    """Pseudo-labels: a corrupted image's mask is replaced by a weak U-Net's prediction (trained
    on a few clean meta images, out of sample, cached on disk)."""

    name = "pseudo"
    Options = PseudoOptions
    spatial_dims = (2, 3)

    def __init__(self, options: BaseModel | None = None) -> None:
        super().__init__(options)
        self._key: str | None = None
        self._masks: np.ndarray | None = None

    def prepare(self, splits: Splits, seed: int) -> None:
        """Train the weak model and predict every training image (or read the predictions from
        the cache).

        Shape:
            splits - train and meta images (N, C, *spatial), masks (N, *spatial)
        """
        if not len(splits.meta):
            raise DataError("pseudo noise trains its weak model on the clean meta split, and this "
                            "dataset's meta split is empty: give the dataset a meta split")
        key = cache_key(splits, seed, self.options)
        if key == self._key:
            return
        from noisyseg.datacache import built_aside, cache_root

        root = cache_root() if self.options.cache else None
        entry = None if root is None else root / f"pseudo-{key}"
        if entry is not None and (entry / "done.json").exists():
            try:
                self._masks, self._key = np.load(entry / "masks.npy", mmap_mode="r"), key
                return
            except (OSError, ValueError):  # damaged: make it again
                pass
        net = train_weak_model(splits.meta, splits.num_classes, self.options, seed)
        masks = predict(net, splits.train.images, splits.num_classes)
        if entry is not None:
            try:
                with built_aside(entry) as work:
                    np.save(work / "masks.npy", masks)
                    (work / "done.json").write_text(json.dumps(_info(splits, seed)))
            except OSError:  # a read-only or full disk costs the cache, not the run
                pass
        self._masks, self._key = masks, key

    def corrupt_at(self, mask: np.ndarray, index: int, rng: np.random.Generator,
                   num_classes: int) -> np.ndarray:
        """The weak model's prediction of training image ``index``.

        Shape:
            mask - (H, W) or (D, H, W) integer labels; returns the same shape and dtype
        """
        if self._masks is None:
            raise DataError("pseudo noise replaces a training image's mask by a prediction made "
                            "in prepare(splits, seed): call it first (noisyseg.data.prepare_noise)")
        if not 0 <= index < len(self._masks) or self._masks.shape[1:] != mask.shape:
            raise DataError(f"pseudo noise predicted {len(self._masks)} training images of shape "
                            f"{self._masks.shape[1:]}; asked for image {index} of shape {mask.shape}")
        return np.asarray(self._masks[index], dtype=mask.dtype)

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
        """Not available: a pseudo-label is a prediction of the image, not a function of the mask
        (use :meth:`corrupt_at` after :meth:`prepare`)."""
        raise DataError("pseudo noise predicts a training image's mask from the image: it needs "
                        "prepare(splits, seed) and corrupt_at(mask, index, rng, num_classes)")


def _info(splits: Splits, seed: int) -> dict[str, Any]:
    return {"seed": seed, "train_images": len(splits.train), "meta_images": len(splits.meta),
            "num_classes": splits.num_classes, "torch": torch.__version__,
            "package": _version("noisyseg")}


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return ""
