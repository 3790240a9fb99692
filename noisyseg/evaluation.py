"""Scoring a network on a split, keeping the epoch with the best meta-split Dice
(``train.select_on_meta``) and fitting the calibration offsets (``train.calibrate``): what the
training loop asks at the end of an epoch and of the run."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from noisyseg.calibration import Calibrated, classes_present, fit_offsets
from noisyseg.components import Split, Splits
from noisyseg.errors import DataWarning
from noisyseg.metrics import image_table, summarise
from noisyseg.scratch import CHUNK, as_tensor, chunks
from noisyseg.step import outputs_all, predict_all

#: a split is scored this many pixels (voxels) at a time, at most CHUNK images
CHUNK_PIXELS = 256 * 64 * 64


def evaluate(model: nn.Module, data: Split, splits: Splits, window: tuple[int, ...],
             device: torch.device, distances: bool) -> dict[str, float]:
    """Metrics of a split, predicted by ``model`` (images larger than ``window``, the training
    patch, by a sliding window) and scored a chunk of images at a time."""
    k = splits.num_classes
    per_chunk = max(1, CHUNK_PIXELS // int(np.prod(data.images.shape[2:])))  # volumes: fewer
    table = [image_table(predict_all(model, as_tensor(np.ascontiguousarray(data.images[p])),
                                     device, window=window),
                         np.asarray(data.masks[p]), k, distances, spacing=splits.spacing)
             for p in chunks(len(data), min(per_chunk, CHUNK))]
    return summarise(np.concatenate(table), k, distances)  # (no split scored is empty)


def keep_best(best: dict[str, Any] | None, epoch: int, dice: float,
              model: nn.Module) -> dict[str, Any] | None:
    """train.select_on_meta: the epoch with the best meta-split Dice so far and its weights (a
    copy); a NaN Dice (nothing to score) changes nothing."""
    if dice != dice or (best is not None and dice <= best["dice"]):
        return best
    return {"epoch": epoch + 1, "dice": dice,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def calibrate(model: nn.Module, calibration: Split, num_classes: int,
              device: torch.device) -> tuple[nn.Module, dict[str, float]]:
    """Fit the calibration offsets on clean images (train.calibrate: the meta split, or the
    share of it set aside): the model with them, and the offsets with those images' Dice
    before and after."""
    k = num_classes
    images, masks = calibration.images, np.asarray(calibration.masks)
    logits = outputs_all(model, as_tensor(np.ascontiguousarray(images)), device).float()
    offsets, before, after = fit_offsets(logits, masks, k)
    absent = sorted(set(range(1, k)) - set(classes_present(masks, k)))
    if absent:
        warnings.warn(f"train.calibrate: the {len(images)} meta images it fits on hold no pixel "
                      f"of class{'es' * (len(absent) > 1)} {', '.join(map(str, absent))}, so "
                      "their offsets stay 0 (a larger train.calibration_share gives it more)",
                      DataWarning, stacklevel=3)
    predictor = Calibrated(model, torch.from_numpy(offsets)).to(device)
    named = ({"calibration_offset": float(offsets[1] - offsets[0])} if k == 2 else
             {f"calibration_offset_class{c}": float(offsets[c]) for c in range(k)})
    return predictor, {**named, "meta_dice_uncalibrated": before, "meta_dice_calibrated": after,
                       "calibration_images": float(len(images))}
