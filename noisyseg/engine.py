"""Train one run from its config: build every component through the registry, prepare the data
and the model, then hand over to the one training loop (:class:`noisyseg.loop.Loop`). It names
no method: every component comes from the registry. :func:`noisyseg.run` (:mod:`noisyseg.api`)
comes here for each run, and for each stage of a recipe.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from noisyseg import distributed, rundir, tracking
from noisyseg.batching import Cycler, size_warnings, steps_per_epoch
from noisyseg.build import (
    build_components,
    epochs_for_steps,
    make_optimizer,
    make_scheduler,
    resolve_device,
    seed_everything,
    with_options,
)
from noisyseg.calibration import fingerprint, hold_out
from noisyseg.checks import (
    batch_share_error,
    check_augment,
    check_calibration,
    check_meta_use,
    check_precision,
    check_volumes,
)
from noisyseg.components import Components, LabelCorrector, Loss, Reweighter, RunContext, Split, Splits
from noisyseg.config import Config, resolve
from noisyseg.data import NoisyTrainSet, build_train_set, prepare_noise
from noisyseg.datacache import load_splits
from noisyseg.determinism import determinism
from noisyseg.distributed import World
from noisyseg.errors import ConfigError, DataWarning
from noisyseg.loop import Loop
from noisyseg.outputs import out_channels
from noisyseg.plugins import Registry, build_plugin_manager
from noisyseg.precision import Precision
from noisyseg.split_checks import check_splits


@dataclass
class RunResult:
    """What :func:`noisyseg.run` returns."""

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


@dataclass
class Data:
    """A run's data, checked against its config: the splits (less the meta images set aside),
    the training set with its noisy labels, and what the checks found."""

    config: Config
    splits: Splits
    train: NoisyTrainSet
    needs_meta: bool
    #: train.calibration_share: the meta images set aside and their fingerprint
    calibration: Split | None = None
    aside: str | None = None
    #: train.init_from: the checkpoint the run starts from
    start: dict[str, Any] | None = None


def run(config: Config | dict[str, Any] | None = None, *,
        plugin_manager: pluggy.PluginManager | None = None, progress: bool = True,
        resume: str | Path | None = None, nproc: int | None = None, label: str = "") -> RunResult:
    """One run (a recipe's stage is one): as :func:`noisyseg.run` describes, but the config is
    taken as it is (its ``recipe`` section is not looked at). ``label`` is shown before the epoch
    in the progress bar."""
    asked_at = time.perf_counter()
    checkpoint = None
    if resume is not None:
        checkpoint = rundir.load_checkpoint(Path(resume))
        cfg = resolve(checkpoint["config"], output__dir=str(resume))
    else:
        cfg = resolve(config)
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
            return _run_here(cfg, checkpoint, pm, progress, world, device, label, asked_at)
    finally:
        if created_group:
            distributed.leave()


def _run_here(cfg: Config, checkpoint: dict[str, Any] | None, pm: pluggy.PluginManager,
              progress: bool, world: World, device: torch.device, label: str = "",
              asked_at: float | None = None) -> RunResult:
    """:func:`run` in this process (one of ``world``)."""
    parts = build_components(cfg, Registry(pm))
    check_augment(cfg, parts)
    check_precision(cfg, parts, device)
    cfg = with_options(cfg, parts)

    def claim_run_dir() -> tuple[Path, bool]:
        path = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
        if checkpoint is None:
            rundir.check_free(path, cfg.output.overwrite)
        return path, not path.exists()

    run_dir, created = world.from_main(claim_run_dir)
    tracker = tracking.build(cfg.output.tracker, run_dir)  # every rank: a missing package fails alike
    data = _data(cfg, parts, checkpoint, world)
    loop = _loop(data, parts, pm, device, run_dir, world)
    loop.asked_at = asked_at
    if checkpoint is not None:
        loop.restore(checkpoint)
    elif world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (rundir.HISTORY, rundir.FINAL, rundir.CHECKPOINT, rundir.AUGMENT):
            (run_dir / stale).unlink(missing_ok=True)
        rundir.write_config(run_dir, data.config)
        loop.save_augmented()
    try:
        if tracker is not None and world.is_main:  # rank 0 logs: the run's epochs, then its end
            tracker.start(data.config, loop.history)
            loop.tracker = tracker
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
    return RunResult(run_dir=run_dir, metrics=final, history=history, config=data.config,
                     model=loop.predictor, reweighter=parts.reweighter, corrector=parts.corrector,
                     loss=parts.loss)


def _data(cfg: Config, parts: Components, checkpoint: dict[str, Any] | None, world: World) -> Data:
    """Load and check the splits, set the calibration images aside, corrupt the training labels;
    the config gets its epochs from train.steps."""
    seed_everything(cfg.seed)
    loaded = load_splits(parts.dataset, cfg.seed)  # generated datasets: from a disk cache
    with warnings.catch_warnings():
        if not world.is_main:  # every process checks; one says what it found
            warnings.simplefilter("ignore", DataWarning)
        check_splits(loaded, cfg.dataset.name)
    check_volumes(cfg, parts, loaded)
    needs_meta = parts.reweighter.needs_meta_batch
    include_meta = cfg.train.train_on_meta
    assert include_meta is not None, "build.with_options sets train.train_on_meta"
    splits, calibration, aside, start = loaded, None, None, None
    if cfg.train.calibration_share is not None:
        splits, calibration = hold_out(loaded, cfg.train.calibration_share, cfg.seed)
        aside = fingerprint(calibration)
    if cfg.train.init_from is not None and checkpoint is None:
        start = rundir.load_start(Path(cfg.train.init_from))
    check_calibration(cfg, len(splits.meta), needs_meta, include_meta, aside, start)
    check_meta_use(cfg, len(splits.meta), needs_meta, include_meta, world.size)
    if not cfg.train.meta_only:  # on the splits as the dataset gave them
        prepare_noise(parts.noise, loaded, cfg.noise.rate, cfg.seed)
    del loaded
    train = build_train_set(splits, parts.noise, cfg.noise.rate, cfg.seed, include_meta,
                            cfg.train.meta_only, cfg.train.exclude_fold)
    if cfg.train.exclude_fold is not None:  # the train set holds copies: free the whole split
        images, masks = splits.train.images, splits.train.masks
        splits = replace(splits, train=Split(np.empty((0, *images.shape[1:]), np.float32),
                                             np.empty((0, *masks.shape[1:]), np.int64)))
    cfg = epochs_for_steps(cfg, len(train))
    if world.is_main and checkpoint is None:
        for message in size_warnings(len(train), len(splits.meta), cfg.train.batch_size,
                                     cfg.train.epochs, cfg.train.max_steps, needs_meta):
            warnings.warn(message, DataWarning, stacklevel=3)
    return Data(cfg, splits, train, needs_meta, calibration, aside, start)


def _loop(data: Data, parts: Components, pm: pluggy.PluginManager, device: torch.device,
          run_dir: Path, world: World) -> Loop:
    """The network (from train.init_from's weights when given), the components set up for the
    run, the optimiser and its schedule, the meta batches: the training loop, ready."""
    cfg, splits, train = data.config, data.splits, data.train

    def build_model() -> nn.Module:
        return parts.backbone.build_for(splits.in_channels, out_channels(splits.num_classes),
                                        splits.spatial_dims).to(device)

    model = build_model()
    if data.start is not None:
        try:
            model.load_state_dict(rundir.start_weights(data.start))
            data.start = None  # the rest of that checkpoint (optimiser, labels, ...) is not needed
        except RuntimeError as exc:
            raise ConfigError(f"train.init_from: the weights in {cfg.train.init_from} do not fit "
                              f"this backbone ({str(exc).splitlines()[0]})") from None
    precision = Precision(cfg.train.precision, device)
    context = RunContext(
        build_model=build_model, make_optimizer=lambda params: make_optimizer(cfg, params),
        loss_fn=parts.loss, device=device, num_classes=splits.num_classes,
        noise_rate=parts.noise.image_share(cfg.noise.rate), epochs=cfg.train.epochs,
        steps_per_epoch=steps_per_epoch(len(train), cfg.train.batch_size), seed=cfg.seed,
        pixel_noise_rate=train.noise_rate, world=world,
        clean_labels=train.clean if train.noise_rate > 0 else None, scratch=train.scratch,
        spatial_dims=splits.spatial_dims, precision=precision,
    )
    parts.loss.setup(context)
    learned = parts.loss.parameters()  # a loss's own parameters: a group without weight decay
    optimizer = make_optimizer(cfg, [{"params": list(model.parameters())},
                                     {"params": learned, "weight_decay": 0.0}]
                               if learned else model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    parts.reweighter.setup(context)
    parts.corrector.setup(train.noisy, context)
    meta = Cycler(  # few: on the training device, so a meta batch is gathered there (no copy)
        (torch.from_numpy(np.array(splits.meta.images, dtype=np.float32)).to(device),
         torch.from_numpy(np.array(splits.meta.masks, dtype=np.int64)).to(device)),
        cfg.train.meta_batch_size or cfg.train.batch_size, cfg.seed + 1,
    ) if data.needs_meta else None
    return Loop(cfg, parts, pm, model, optimizer, scheduler, train, splits, meta, device, run_dir,
                world, data.calibration, data.aside, precision)


def _spawn_run(cfg: Config, resume: str | Path | None, nproc: int, progress: bool,
               label: str = "") -> RunResult:
    """:func:`run` in ``nproc`` new processes; rank 0's result, with its model and the config
    it resolved (the one its config.yaml records), comes back."""
    distributed.check_nproc(nproc, resolve_device(cfg.device))
    parts = build_components(cfg, Registry(build_plugin_manager()))
    check_augment(cfg, parts)  # fail here, not in N processes
    check_precision(cfg, parts, resolve_device(cfg.device))
    cfg = with_options(cfg, parts)  # the run directory's name holds the corrector built
    if cfg.train.batch_size % nproc:
        raise ConfigError(batch_share_error(cfg.train.batch_size, nproc))
    if resume is None:
        run_dir = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
        rundir.check_free(run_dir, cfg.output.overwrite)
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": run_dir})})
    data = None if resume is not None else cfg.model_dump(mode="json")
    results = distributed.spawn(nproc, _run_in_child, data, resume, progress, label)
    main = results[0]
    return RunResult(run_dir=main["run_dir"], metrics=main["metrics"], history=main["history"],
                     config=resolve(main["config"]), model=main["model"])


def _run_in_child(data: dict[str, Any] | None, resume: str | Path | None,
                  progress: bool, label: str = "") -> dict[str, Any] | None:
    result = run(data, resume=resume, progress=progress, label=label)
    if not distributed.env_world().is_main:
        return None
    return {"run_dir": result.run_dir, "metrics": result.metrics, "history": result.history,
            "model": result.model, "config": result.config.model_dump(mode="json")}
