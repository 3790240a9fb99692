"""The networks that judge the masks: K fold runs, or a finished run's own, and their predictions.

Fold run f trains on every training image but those of fold f (``train.exclude_fold``: the noise,
when the config adds some, is applied before the fold is left out, so the models learn from the
very masks that are audited), and predicts the images of fold f: every training image gets
out-of-sample class probabilities (:func:`fold_probs`). A fold run that finished before with the
same config is loaded (:func:`load_network`), one that stopped is resumed. With ``from_run`` a
finished run's (or recipe's last stage's) network predicts every image instead, in sample.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from noisyseg import rundir
from noisyseg.api import run
from noisyseg.build import build_components, with_options
from noisyseg.calibration import Calibrated
from noisyseg.components import Splits
from noisyseg.config import Config, load_file, resolve
from noisyseg.data import corrupt_image
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.outputs import class_probs, out_channels
from noisyseg.plugins import Registry

#: images per forward pass of the scoring, always this many (the last batch padded): batches of
#: changing sizes leave the C allocator's heap fragmented, and memory then grows with the set
BATCH = 32


def finished_dir(run_dir: Path, option: str) -> Path:
    """The directory of the network a finished run ended with: the run's, or its last stage's."""
    from noisyseg.recipes import is_recipe_dir

    if not (run_dir / rundir.CONFIG).is_file():
        raise ConfigError(f"{option} {run_dir}: no run there ({run_dir / rundir.CONFIG} is missing)")
    if not (run_dir / rundir.FINAL).is_file():
        raise ConfigError(f"{option} {run_dir}: the run has not finished ({rundir.FINAL} is "
                          f"missing); finish it with noisyseg run --resume {run_dir}")
    if not is_recipe_dir(run_dir):
        return run_dir
    stages = [d for d in run_dir.iterdir() if d.is_dir() and d.name.split("-", 1)[0].isdigit()
              and (d / rundir.FINAL).is_file()]
    if not stages:
        raise ConfigError(f"{option} {run_dir}: no finished stage found")
    return max(stages, key=lambda d: int(d.name.split("-", 1)[0]))


def load_network(where: Path, registry: Registry, shape: tuple[int, int, int],
                 device: torch.device, option: str) -> nn.Module:
    """The network a finished run (``where``: its directory, or a recipe's last stage) ended
    with, its calibration offsets included, for data of ``shape`` (input channels, classes,
    spatial dimensions)."""
    cfg = resolve(load_file(where / rundir.CONFIG))
    backbone = registry.build("backbone", cfg.backbone.name, cfg.backbone.options)
    in_channels, k, dims = shape
    net = backbone.build_for(in_channels, out_channels(k), dims)
    try:
        net.load_state_dict(rundir.load_weights(where))
    except RuntimeError as exc:
        raise ConfigError(f"{option} {where}: its network does not fit this data set's images "
                          f"({str(exc).splitlines()[0]})") from None
    final = json.loads((where / rundir.FINAL).read_text())
    if "calibration_offset" in final:
        offsets = torch.tensor([0.0, float(final["calibration_offset"])])
    elif f"calibration_offset_class{k - 1}" in final:
        offsets = torch.tensor([float(final[f"calibration_offset_class{c}"]) for c in range(k)])
    else:
        return net.to(device)
    return Calibrated(net, offsets).to(device)


def same_config(run_dir: Path, expected: Config) -> bool:
    """Does the finished run in ``run_dir`` hold the config ``expected`` (its output aside)?"""
    try:
        saved = load_file(run_dir / rundir.CONFIG)
    except NoisysegError:
        return False
    mine = expected.model_dump(mode="json")
    return {k: v for k, v in saved.items() if k != "output"} == \
        {k: v for k, v in mine.items() if k != "output"}


def fold_model(cfg: Config, f: int, k: int, audit_dir: Path, registry: Registry,
               pm: pluggy.PluginManager, handed: bool, progress: bool, nproc: int | None,
               device: torch.device, shape: tuple[int, int, int]) -> nn.Module:
    """The network of fold run ``f`` (trained on every training image but fold f's), from its
    directory when it finished there before with the same config, else trained (or resumed)
    now."""
    from noisyseg.recipes import is_recipe_dir

    where = audit_dir / f"fold-{f + 1}"
    fold_cfg = resolve(cfg, train__exclude_fold=(f, k),
                       output={"dir": str(where), "overwrite": True})
    expected = with_options(fold_cfg, build_components(fold_cfg, registry))
    if (where / rundir.FINAL).exists() and same_config(where, expected):
        return load_network(finished_dir(where, "fold"), registry, shape, device, "fold")
    kwargs: dict[str, Any] = {"progress": progress, "nproc": nproc, "label": f"fold {f + 1}/{k}"}
    if handed and not (nproc or 1) > 1:
        kwargs["plugin_manager"] = pm
    unfinished = ((where / rundir.CHECKPOINT).exists() or is_recipe_dir(where)) \
        and not (where / rundir.FINAL).exists() and same_config(where, expected)
    result = run(resume=where, **kwargs) if unfinished else run(fold_cfg, **kwargs)
    if result.model is None:  # a recipe resumed after its last stage had finished
        return load_network(finished_dir(where, "fold"), registry, shape, device, "fold")
    return result.model.to(device)



def judges(owner: Path | None, cfg: Config, k: int, audit_dir: Path, registry: Registry,
           pm: pluggy.PluginManager, handed: bool, progress: bool, nproc: int | None,
           device: torch.device, shape: tuple[int, int, int]) -> list[nn.Module]:
    """The networks that judge the masks: the finished run's (``owner``: its directory, or its
    recipe's last stage), else the K fold runs' (``handed``: the caller gave ``pm``)."""
    if owner is not None:
        return [load_network(owner, registry, shape, device, "--from")]
    return [fold_model(cfg, f, k, audit_dir, registry, pm, handed, progress, nproc, device, shape)
            for f in range(k)]

@torch.no_grad()
def fold_probs(models: list[nn.Module], fold: np.ndarray, images: np.ndarray,
               device: torch.device) -> np.ndarray:
    """Each image's class probabilities from the model of its fold, in eval mode.

    Shape:
        fold - (B,); images - (B, C, H, W); returns (B, K, H, W) float32
    """
    from noisyseg.step import eval_mode

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out: np.ndarray | None = None
    batch = torch.zeros((BATCH, *x.shape[1:]))
    for f in np.unique(fold):
        at = np.flatnonzero(fold == f)
        with eval_mode(models[f]):
            for start in range(0, len(at), BATCH):
                part = at[start : start + BATCH]
                batch[: len(part)] = x[part]
                batch[len(part) :] = 0
                p = class_probs(models[f](batch.to(device))).cpu().numpy()
                if out is None:
                    out = np.empty((len(x), *p.shape[1:]), dtype=np.float32)
                out[part] = p[: len(part)]
    assert out is not None
    return out


def given_masks(splits: Splits, part: slice, noise: Any, chosen: np.ndarray, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(given, clean) masks of a chunk of the train split: the noisy masks the runs trained on."""
    clean = np.asarray(splits.train.masks[part], dtype=np.int64)
    given = clean.copy()
    for j, i in enumerate(range(part.start, part.stop)):
        if chosen[i]:
            given[j] = corrupt_image(clean[j], i, noise, seed, splits.num_classes)
    return given, clean

