"""What a run's config and data must agree on, checked before anything trains: each check is
a one-line ConfigError that names the option to change."""

from __future__ import annotations

from typing import Any

import torch

from noisyseg.augment import GEOMETRIC, ONE_TO_ONE, enabled
from noisyseg.components import Components, Splits
from noisyseg.config import Config
from noisyseg.errors import ConfigError
from noisyseg.kinds import AUTO


def check_augment(config: Config, parts: Components) -> None:
    """A corrector that keeps the reweighter's weights pixel by pixel needs each augmented pixel
    to come from exactly one original pixel: flips and 90-degree turns, not affine or elastic."""
    moved = [name for name in enabled(config.augment) if name in GEOMETRIC and name not in ONE_TO_ONE]
    if moved and parts.corrector.observes_weights:
        picked = (f" (the one reweighter '{config.reweighter.name}' pairs with, as corrector.name "
                  "is auto; corrector.name=none turns it off)" if config.corrector.name == AUTO else "")
        raise ConfigError(
            f"corrector '{parts.corrector.name}'{picked} keeps the reweighter's weights pixel by "
            f"pixel, and augment.{moved[0]} merges and drops pixels, so the weights cannot be put "
            "back where they belong; use augment.hflip, vflip, rotate90 and the intensity "
            "transforms with this corrector"
        )


def check_precision(config: Config, parts: Components, device: torch.device) -> None:
    """train.precision = fp16 scales the main step's loss with a gradient scaler; a reweighter
    that takes gradients of its own through the network (a meta reweighter's virtual step) would
    take them unscaled, where float16 underflows: it says so (``supports_fp16``). bf16 on CUDA
    needs a GPU that has it."""
    precision = config.train.precision
    if precision == "fp16" and not parts.reweighter.supports_fp16:
        raise ConfigError(
            f"reweighter '{config.reweighter.name}' cannot run in fp16: it takes gradients through "
            "the network outside the fp16 gradient scaler (a meta reweighter's virtual step), where "
            "float16 underflows; use train.precision=bf16 (no scaler needed) or fp32")
    if precision == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        raise ConfigError(f"train.precision=bf16: the GPU of device '{device}' has no bfloat16; "
                          "use train.precision=fp16 (with a reweighter that supports it) or fp32")


def check_volumes(config: Config, parts: Components, splits: Splits) -> None:
    """Volumes need a backbone and a noise model that handle them, and no augmentation (its
    transforms are 2-D): say which option to change."""
    dims = splits.spatial_dims
    if dims == 2:
        return
    for key in ("backbone", "noise"):
        part = getattr(parts, key)
        if dims not in part.spatial_dims:
            raise ConfigError(
                f"dataset '{config.dataset.name}' gives {dims}-D volumes, and {key} "
                f"'{part.name}' handles only {' or '.join(f'{d}-D' for d in part.spatial_dims)} "
                f"data; pick a {key} that handles volumes (e.g. --{key} "
                f"{'unet' if key == 'backbone' else 'dilation'})"
            )
    on = enabled(config.augment)
    if on:
        raise ConfigError(f"dataset '{config.dataset.name}' gives {dims}-D volumes; the augment "
                          f"section's transforms are 2-D: turn them off for volumes (augment.{on[0]} = 0)")


def check_calibration(cfg: Config, meta_images: int, needs_meta: bool, include_meta: bool,
                      aside: str | None, start: dict[str, Any] | None) -> None:
    """train.calibrate must fit on meta images no network of the run has learned from: not
    training images, not meta batches of a meta reweighter, not images the run it starts from
    (init_from) trained on. With calibration_share (``aside``: the fingerprint of the images it
    set aside) the rest of the meta split may be trained on, and a start run must have set the
    same images aside."""
    if not cfg.train.calibrate:
        return
    if aside is None and needs_meta:
        raise ConfigError(
            f"train.calibrate fits its offsets to the clean meta images, and reweighter "
            f"'{cfg.reweighter.name}' learns its weights from them: set train.calibration_share "
            "(e.g. 0.25) to set some meta images aside for the calibration alone")
    if aside is None and not meta_images:
        raise ConfigError(f"train.calibrate needs a meta split, and dataset '{cfg.dataset.name}' "
                          "has none")
    if aside is None and (include_meta or cfg.train.meta_only):
        raise ConfigError(
            "train.calibrate fits its offsets to the clean meta images, so they must not be "
            "training images: set train.train_on_meta=false (and not train.meta_only), or set "
            "train.calibration_share")
    if start is not None and (aside is None or start.get("calibration_aside") != aside):
        raise ConfigError(
            f"train.calibrate with train.init_from: the run in {cfg.train.init_from} may have "
            "trained on the meta images this run calibrates on; give both runs train.calibrate = "
            "true and the same train.calibration_share, seed and dataset, so they set the same "
            "images aside")


def check_meta_use(cfg: Config, meta_images: int, needs_meta: bool, include_meta: bool,
                   world_size: int) -> None:
    """A meta reweighter needs meta images; select_on_meta needs them kept out of training and
    out of a meta reweighter's meta batches; the batch splits evenly among the processes."""
    if needs_meta and meta_images == 0:
        raise ConfigError(
            f"reweighter '{cfg.reweighter.name}' needs a clean meta set, but dataset "
            f"'{cfg.dataset.name}' has an empty meta split; give the dataset a meta split"
        )
    if cfg.train.batch_size % world_size:
        raise ConfigError(batch_share_error(cfg.train.batch_size, world_size))
    if cfg.train.select_on_meta and needs_meta:
        raise ConfigError(
            f"train.select_on_meta scores every epoch on the clean meta images, and reweighter "
            f"'{cfg.reweighter.name}' learns its weights from them, so the score would be biased: "
            "drop select_on_meta, or use a reweighter that does not need a meta set")
    if cfg.train.select_on_meta and (include_meta or cfg.train.meta_only or not meta_images):
        raise ConfigError(
            "train.select_on_meta scores every epoch on the clean meta images, so they must not be "
            "training images: set train.train_on_meta=false (and not train.meta_only)"
            if meta_images else
            f"train.select_on_meta needs a meta split, and dataset '{cfg.dataset.name}' has none"
        )


def batch_share_error(batch_size: int, nproc: int) -> str:
    return (f"train.batch_size ({batch_size}) must be a multiple of the number of processes "
            f"({nproc}): each takes an equal share of every batch")
