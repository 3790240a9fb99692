"""A run's parts from its config: the device, the seeds, the components through the registry,
the config with every component's options written out, the optimiser and its schedule."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from noisyseg.batching import steps_per_epoch
from noisyseg.components import Components
from noisyseg.config import Config, resolve
from noisyseg.distributed import World
from noisyseg.errors import ConfigError
from noisyseg.kinds import AUTO, KINDS
from noisyseg.plugins import Registry


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else as torch reads it. Among several
    processes on CUDA, process r of this machine gets GPU r (its local rank)."""
    world = world or World()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: cannot read {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here")
    if world.size > 1 and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"device: {name!r} names one GPU, but {world.size} processes train; "
                              "use cuda or auto (process r takes GPU r)")
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process {world.rank} of {world.size} on this machine needs GPU "
                f"{world.local_rank}, but {torch.cuda.device_count()} are visible; use one process "
                "per GPU, or device cpu")
        device = torch.device("cuda", world.local_rank)
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_components(config: Config, registry: Registry) -> Components:
    """Every kind's component as the config names it, its options validated; corrector "auto":
    the one the reweighter pairs with (``Reweighter.default_corrector``)."""
    names = {key: getattr(config, key).name for key in KINDS}
    if names["corrector"] == AUTO:
        names["corrector"] = registry.get("reweighter", names["reweighter"]).default_corrector
    return Components({key: registry.build(key, names[key], getattr(config, key).options)
                       for key in KINDS})


def with_options(config: Config, parts: Components, keep_auto: bool = False) -> Config:
    """The config with every component's options as validated, defaults filled in, corrector
    "auto" replaced by the corrector built, and train.train_on_meta as the reweighter decides it
    when unset: what config.yaml records, so a repeated run does not depend on a plugin's
    defaults staying put. ``keep_auto``: corrector "auto" stays as given (a recipe's run, whose
    stages each pair it with their own reweighter)."""
    data = config.model_dump(mode="json")
    kept_auto = keep_auto and config.corrector.name == AUTO
    for key in KINDS:
        if not (kept_auto and key == "corrector"):
            data[key]["options"] = getattr(parts, key).options.model_dump(mode="json")
    if not kept_auto:
        data["corrector"]["name"] = parts.corrector.name
    if data["train"]["train_on_meta"] is None:
        data["train"]["train_on_meta"] = trains_on_meta_by_default(type(parts.reweighter))
    return resolve(data)


def trains_on_meta_by_default(reweighter: type) -> bool:
    """train.train_on_meta when the config leaves it unset: what the reweighter class asks
    for, else yes unless it learns from the meta images itself."""
    wants = reweighter.trains_on_meta
    return wants if wants is not None else not reweighter.needs_meta_batch


def epochs_for_steps(config: Config, n_train: int) -> Config:
    """With ``train.steps``: the config whose epochs give about that many optimiser steps on
    ``n_train`` training images (rounded to whole epochs, at least one)."""
    t = config.train
    if t.steps is None:
        return config
    epochs = max(1, round(t.steps / steps_per_epoch(n_train, t.batch_size)))
    return config.model_copy(update={"train": t.model_copy(update={"epochs": epochs})})


def make_optimizer(config: Config, params: Any) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> Any:
    """Per-epoch learning-rate schedule (stepped once at the end of every epoch)."""
    t = config.train
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    milestones = t.lr_decay_epochs if t.schedule == "step" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=t.lr_decay_factor)
