"""Build a run from its config and train it: resolve the config, build every component through the
registry, prepare the data and the model, then hand over to the one training loop
(:class:`noisyseg.loop.Loop`). It names no method: every component comes from the registry.
"""

from __future__ import annotations

import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from noisyseg import distributed, rundir
from noisyseg.augment import GEOMETRIC, ONE_TO_ONE, enabled
from noisyseg.calibration import fingerprint, hold_out
from noisyseg.components import Components, LabelCorrector, Loss, Reweighter, RunContext, Splits
from noisyseg.config import Config, resolve
from noisyseg.data import Cycler, build_train_set, check_splits, size_warnings, steps_per_epoch
from noisyseg.datacache import load_splits
from noisyseg.determinism import determinism
from noisyseg.distributed import World
from noisyseg.errors import ConfigError, DataWarning
from noisyseg.kinds import KINDS
from noisyseg.loop import Loop
from noisyseg.losses import out_channels
from noisyseg.plugins import Registry, build_plugin_manager


@dataclass
class RunResult:
    """What :func:`run` returns."""

    run_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    config: Config
    #: the trained network; with ``train.calibrate`` a :class:`~noisyseg.calibration.Calibrated`
    #: that adds the offsets to its logits (the bare network is its ``net``)
    model: nn.Module = field(repr=False)
    #: the trained reweighter and corrector (``corrector.store`` holds the final training labels)
    #: and the loss; None when the run trained in other processes (``nproc``)
    reweighter: Reweighter | None = field(default=None, repr=False)
    corrector: LabelCorrector | None = field(default=None, repr=False)
    loss: Loss | None = field(default=None, repr=False)


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
    """Every kind's component as the config names it, its options validated."""
    sections = {key: getattr(config, key) for key in KINDS}
    return Components({key: registry.build(key, s.name, s.options) for key, s in sections.items()})


def with_options(config: Config, parts: Components) -> Config:
    """The config with every component's options as validated, defaults filled in: what
    config.yaml records, so a repeated run does not depend on a plugin's defaults staying put."""
    data = config.model_dump(mode="json")
    for key in KINDS:
        data[key]["options"] = getattr(parts, key).options.model_dump(mode="json")
    return resolve(data)


def check_augment(config: Config, parts: Components) -> None:
    """A corrector that keeps the reweighter's weights pixel by pixel needs each augmented pixel
    to come from exactly one original pixel: flips and 90-degree turns, not affine or elastic."""
    moved = [name for name in enabled(config.augment) if name in GEOMETRIC and name not in ONE_TO_ONE]
    if moved and parts.corrector.observes_weights:
        raise ConfigError(
            f"corrector '{config.corrector.name}' keeps the reweighter's weights pixel by pixel, "
            f"and augment.{moved[0]} merges and drops pixels, so the weights cannot be put back "
            "where they belong; use augment.hflip, vflip, rotate90 and the intensity transforms "
            "with this corrector"
        )


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


def run(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    nproc: int | None = None,
    label: str = "",
    **overrides: Any,
) -> RunResult:
    """Train one model as ``config`` says and evaluate it on the clean test split; with a
    ``recipe`` of several stages, train them one after another (:mod:`noisyseg.recipes`).

    Args:
        config: a :class:`Config`, plain data, a path to a TOML/YAML/JSON file, or None.
        plugin_manager: use this manager (default: a fresh one with every installed plugin).
        progress: show a progress bar.
        resume: continue the run in this directory from its last checkpoint, as it was
            configured (give no ``config`` or overrides with it). The result is the same as
            that of an uninterrupted run.
        nproc: train with this many processes on this machine (data parallel, see
            :mod:`noisyseg.distributed`); each takes ``train.batch_size / nproc`` images of every
            batch. The result's ``reweighter`` and ``corrector`` are then None. Under ``torchrun``
            leave it out: the processes are already there.
        label: shown before the epoch in the progress bar (a recipe's stage).
        **overrides: config fields with ``__`` for nesting, e.g. ``train__epochs=3``.
    """
    from noisyseg import recipes

    checkpoint = None
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError("resume continues a run as it was configured; give no other settings")
        if recipes.is_recipe_dir(Path(resume)):
            return recipes.run_recipe(None, plugin_manager or build_plugin_manager(), progress,
                                      resume=Path(resume), nproc=nproc,
                                      handed=plugin_manager is not None)
        checkpoint = rundir.load_checkpoint(Path(resume))
        cfg = resolve(checkpoint["config"], output__dir=str(resume))
    else:
        cfg = resolve(config, **overrides)
        if cfg.recipe.name != KINDS["recipe"].default or cfg.recipe.options:
            pm = plugin_manager or build_plugin_manager()
            registry = Registry(pm)
            recipe = registry.build("recipe", cfg.recipe.name, cfg.recipe.options)
            if len(recipe.stages) > 1:
                return recipes.run_recipe(cfg, pm, progress, nproc=nproc,
                                          handed=plugin_manager is not None)
            cfg = recipes.stage_config(cfg, recipe, 0, None, registry, out=None)
    world = distributed.env_world()
    if nproc is not None and world.size > 1 and nproc != world.size:
        raise ConfigError(f"nproc {nproc}: this process is already one of {world.size} (torchrun); "
                          "drop --nproc")
    if nproc is not None and nproc > 1 and world.size == 1:
        if plugin_manager is not None:
            raise ConfigError("nproc: each process loads the installed plugins itself; a "
                              "plugin_manager cannot be handed to them")
        return _spawn_run(cfg, resume, nproc, progress, label)
    device = resolve_device(cfg.device, world)
    created_group = distributed.join(world, device)
    try:
        pm = plugin_manager if plugin_manager is not None else build_plugin_manager()
        with determinism(cfg.deterministic, device):
            return _run_here(cfg, checkpoint, pm, progress, world, device, label)
    finally:
        if created_group:
            distributed.leave()


def _run_here(
    cfg: Config, checkpoint: dict[str, Any] | None, pm: pluggy.PluginManager, progress: bool,
    world: World, device: torch.device, label: str = "",
) -> RunResult:
    """:func:`run` in this process (one of ``world``)."""
    parts = build_components(cfg, Registry(pm))
    check_augment(cfg, parts)
    cfg = with_options(cfg, parts)

    def claim_run_dir() -> tuple[Path, bool]:
        path = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
        if checkpoint is None:
            rundir.check_free(path, cfg.output.overwrite)
        return path, not path.exists()

    run_dir, created = world.from_main(claim_run_dir)

    seed_everything(cfg.seed)
    splits = load_splits(parts.dataset, cfg.seed)  # generated datasets: from a disk cache
    with warnings.catch_warnings():
        if not world.is_main:  # every process checks; one says what it found
            warnings.simplefilter("ignore", DataWarning)
        check_splits(splits, cfg.dataset.name)
    check_volumes(cfg, parts, splits)
    needs_meta = parts.reweighter.needs_meta_batch
    include_meta = cfg.train.train_on_meta if cfg.train.train_on_meta is not None else not needs_meta
    calibration = aside = None  # train.calibration_share: meta images set aside for calibration
    if cfg.train.calibration_share is not None:
        splits, calibration = hold_out(splits, cfg.train.calibration_share, cfg.seed)
        aside = fingerprint(calibration)
    start = None  # train.init_from: the checkpoint the run starts from
    if cfg.train.init_from is not None and checkpoint is None:
        start = rundir.load_start(Path(cfg.train.init_from))
    check_calibration(cfg, len(splits.meta), needs_meta, include_meta, aside, start)
    if needs_meta and len(splits.meta) == 0:
        raise ConfigError(
            f"reweighter '{cfg.reweighter.name}' needs a clean meta set, but dataset "
            f"'{cfg.dataset.name}' has an empty meta split; give the dataset a meta split"
        )
    if cfg.train.batch_size % world.size:
        raise ConfigError(_batch_share_error(cfg.train.batch_size, world.size))
    if cfg.train.select_on_meta and (include_meta or cfg.train.meta_only or not len(splits.meta)):
        raise ConfigError(
            "train.select_on_meta scores every epoch on the clean meta images, so they must not be "
            "training images: set train.train_on_meta=false (and not train.meta_only)"
            if len(splits.meta) else
            f"train.select_on_meta needs a meta split, and dataset '{cfg.dataset.name}' has none"
        )
    train = build_train_set(splits, parts.noise, cfg.noise.rate, cfg.seed, include_meta,
                            cfg.train.meta_only)
    cfg = epochs_for_steps(cfg, len(train))
    if world.is_main and checkpoint is None:
        for message in size_warnings(len(train), len(splits.meta), cfg.train.batch_size,
                                     cfg.train.epochs, cfg.train.max_steps, needs_meta):
            warnings.warn(message, DataWarning, stacklevel=2)

    def build_model() -> nn.Module:
        return parts.backbone.build_for(splits.in_channels, out_channels(splits.num_classes),
                                        splits.spatial_dims).to(device)

    model = build_model()
    pixel_noise_rate = train.noise_rate
    if start is not None:
        try:
            model.load_state_dict(rundir.start_weights(start))
            start = None  # the rest of that checkpoint (optimiser, labels, ...) is not needed
        except RuntimeError as exc:
            raise ConfigError(f"train.init_from: the weights in {cfg.train.init_from} do not fit "
                              f"this backbone ({str(exc).splitlines()[0]})") from None
    context = RunContext(
        build_model=build_model,
        make_optimizer=lambda params: make_optimizer(cfg, params),
        loss_fn=parts.loss,
        device=device,
        num_classes=splits.num_classes,
        noise_rate=cfg.noise.rate,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps_per_epoch(len(train), cfg.train.batch_size),
        seed=cfg.seed,
        pixel_noise_rate=pixel_noise_rate,
        world=world,
        clean_labels=train.clean if pixel_noise_rate > 0 else None,
        scratch=train.scratch,
        spatial_dims=splits.spatial_dims,
    )
    parts.loss.setup(context)
    learned = parts.loss.parameters()  # a loss's own parameters: a group without weight decay
    optimizer = make_optimizer(cfg, [{"params": list(model.parameters())},
                                     {"params": learned, "weight_decay": 0.0}]
                               if learned else model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    parts.reweighter.setup(context)
    parts.corrector.setup(train.noisy, context)
    meta = (
        Cycler(
            (torch.from_numpy(np.array(splits.meta.images, dtype=np.float32)),  # few: in memory
             torch.from_numpy(np.array(splits.meta.masks, dtype=np.int64))),
            cfg.train.meta_batch_size or cfg.train.batch_size,
            cfg.seed + 1,
        )
        if needs_meta
        else None
    )

    loop = Loop(cfg, parts, pm, model, optimizer, scheduler, train, splits, meta, device, run_dir,
                world, calibration, aside)
    if checkpoint is not None:
        loop.restore(checkpoint)
    elif world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (rundir.HISTORY, rundir.FINAL, rundir.CHECKPOINT, rundir.AUGMENT):
            (run_dir / stale).unlink(missing_ok=True)
        rundir.write_config(run_dir, cfg)
        loop.save_augmented()
    try:
        history = loop.train(progress and world.is_main, label)
        final = loop.finish()
    except BaseException as exc:
        kept = (run_dir / rundir.CHECKPOINT).exists()
        if world.is_main and created and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: leave no half-run
        if isinstance(exc, KeyboardInterrupt) and world.is_main:
            exc.add_note(f"the last finished epoch is kept in {run_dir}; continue with: noisyseg run "
                         f"--resume {run_dir}" if kept else "no epoch had finished, nothing was kept")
        raise
    world.barrier()
    return RunResult(run_dir=run_dir, metrics=final, history=history, config=cfg, model=loop.predictor,
                     reweighter=parts.reweighter, corrector=parts.corrector, loss=parts.loss)


def _spawn_run(cfg: Config, resume: str | Path | None, nproc: int, progress: bool,
               label: str = "") -> RunResult:
    """:func:`run` in ``nproc`` new processes; rank 0's result, with its model, comes back."""
    distributed.check_nproc(nproc, resolve_device(cfg.device))
    check_augment(cfg, build_components(cfg, Registry(build_plugin_manager())))  # fail here, not in N
    if cfg.train.batch_size % nproc:
        raise ConfigError(_batch_share_error(cfg.train.batch_size, nproc))
    if resume is None:
        run_dir = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
        rundir.check_free(run_dir, cfg.output.overwrite)
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": run_dir})})
    data = None if resume is not None else cfg.model_dump(mode="json")
    results = distributed.spawn(nproc, _run_in_child, data, resume, progress, label)
    main = results[0]
    return RunResult(run_dir=main["run_dir"], metrics=main["metrics"], history=main["history"],
                     config=cfg, model=main["model"])


def _batch_share_error(batch_size: int, nproc: int) -> str:
    return (f"train.batch_size ({batch_size}) must be a multiple of the number of processes "
            f"({nproc}): each takes an equal share of every batch")


def _run_in_child(data: dict[str, Any] | None, resume: str | Path | None,
                  progress: bool, label: str = "") -> dict[str, Any] | None:
    result = run(data, resume=resume, progress=progress, label=label)
    if not distributed.env_world().is_main:
        return None
    return {"run_dir": result.run_dir, "metrics": result.metrics, "history": result.history,
            "model": result.model}
