"""The one training loop, step by step: batches, the reweighted step, the corrector, the end of
each epoch (metrics.jsonl, checkpoint). It names no method: the components come in through
:class:`noisyseg.components.Components`. Scoring and calibration are :mod:`noisyseg.evaluation`,
the checkpoint :mod:`noisyseg.checkpointing`, the end of the run :mod:`noisyseg.finish`.

    for each step:
        x, y   = batch, labels from the corrector     (possibly corrected labels)
        x, y   = augment(x, y)                         (with the clean mask; config's augment)
        L      = loss(model(x), y)                     (N, H, W), the loss component's map
        w      = reweighter.weigh(step context)       (N, H, W), detached
        loss   = mean(w * L); backward; optimiser step
        corrector.observe_weights(index, w)           (if it wants them)
        corrector.observe(index, probabilities)       (if it wants them)
    end of epoch: corrector.end_epoch, lr decay, test evaluation, metrics.jsonl, checkpoint

Among several processes (:mod:`noisyseg.distributed`) each takes its share of every batch and of
every meta batch; the model's forward runs through DistributedDataParallel; rank 0 alone
evaluates, writes the run directory and draws the pictures.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn
from tqdm.auto import tqdm

from noisyseg import checkpointing, figures, rundir
from noisyseg.augment import Augmenter, to_original
from noisyseg.batching import Cycler, steps_per_epoch
from noisyseg.components import Components, Split, Splits
from noisyseg.config import Config
from noisyseg.data import NoisyTrainSet
from noisyseg.distributed import World
from noisyseg.errors import NumericalError
from noisyseg.evaluation import evaluate, keep_best
from noisyseg.feed import Feed, FeedBatch, resident
from noisyseg.finish import finish
from noisyseg.label_ledger import LabelLedger
from noisyseg.outputs import class_probs
from noisyseg.precision import Precision
from noisyseg.step import Batch, DeferredChecks, outputs_all, train_step
from noisyseg.tracking import Tracker
from noisyseg.weight_stats import WEIGHT_SAMPLE, WeightStats

#: every this many steps the loop reads the steps' checks (:class:`DeferredChecks`) and the
#: progress bar shows the loss: reading waits for the device, so it is not done at every step
_SHOW_LOSS_EVERY = 20


class Loop:
    """State of one training run, split into steps so each part reads top to bottom."""

    def __init__(
        self,
        cfg: Config,
        parts: Components,
        pm: pluggy.PluginManager,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        train: NoisyTrainSet,
        splits: Splits,
        meta: Cycler | None,
        device: torch.device,
        run_dir: Path,
        world: World | None = None,
        calibration: Split | None = None,
        calibration_aside: str | None = None,
        precision: Precision | None = None,
    ) -> None:
        self.cfg, self.parts, self.pm = cfg, parts, pm
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_set, self.splits, self.meta = train, splits, meta
        self.device, self.run_dir = device, run_dir
        self.world = world or World()
        #: train.precision: the autocast of every forward, and fp16's gradient scaler
        self.precision = precision or Precision(cfg.train.precision, device)
        self.forward = self.world.wrap(model, device)  # the training forward (DDP when shared)
        self.augment = Augmenter(cfg.augment, cfg.seed)
        #: the batches, gathered on the device when the training set fits there (noisyseg.feed)
        self.feed = Feed(train, parts.corrector, cfg.train.batch_size, device,
                         resident(train, device, self.augment.active), self.world)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.start_epoch = 0
        #: the steps' loss and weight checks, read every _SHOW_LOSS_EVERY steps
        self.checks = DeferredChecks()
        self.skipped = 0  # steps skipped this epoch (non-finite loss, on_nonfinite = "skip")
        #: when the run was asked for (the engine sets it) and how long until this process issued
        #: its first training step: data, network, device set-up (metrics.json records it)
        self.asked_at: float | None = None
        self.seconds_to_first_step: float | None = None
        #: with train.select_on_meta: the epoch with the best meta-split Dice and its weights
        self.best: dict[str, Any] | None = None
        #: what predicts once training is done: the model, or with train.calibrate the model with
        #: its calibration offsets (set by :meth:`finish`)
        self.predictor: nn.Module = model
        #: the clean images the calibration fits on: those set aside, or the meta split
        self.calibration = calibration if calibration is not None else splits.meta
        #: the fingerprint of the meta images set aside (train.calibration_share), or None: kept
        #: in the checkpoint so a fine-tune starting here can check it sets the same ones aside
        self.calibration_aside = calibration_aside
        #: the corrector's labels at each epoch's start, and what changed since (label_error, ...)
        self.ledger = LabelLedger(parts.corrector, train)
        #: output.tracker's tracker on rank 0 (set by the engine), else None
        self.tracker: Tracker | None = None

    def _step(self, fed: FeedBatch, epoch: int, stats: WeightStats) -> torch.Tensor:
        """One training step; its loss, left on the device (read once per epoch)."""
        index, originals = fed.index, fed.images
        batch = self.augment(originals, [fed.labels, fed.clean, fed.region], self.step, index)
        labels, clean, region = batch.masks
        meta = None
        if self.meta is not None:
            meta = tuple(self.world.shard(t) for t in next(self.meta))
        try:
            out = train_step(
                self.model, self.optimizer, self.parts.reweighter,
                Batch(batch.images, labels, meta, index, clean if region is not None else None),
                self.step, epoch, self.device, grad_clip=self.cfg.train.grad_clip,
                on_nonfinite=self.cfg.train.on_nonfinite, apply_weights=self.cfg.train.apply_weights,
                forward=self.forward, world=self.world, loss_fn=self.parts.loss,
                precision=self.precision, deferred=self.checks,
            )
        except NumericalError as exc:
            raise self._stopped(exc) from None
        self.step += 1
        if out.skipped:
            self.skipped += 1
            return out.loss
        # a corrector keeps its per-pixel state where the training set has the pixels
        if self.parts.corrector.observes_weights:  # (the engine allows only one-to-one moves)
            self.parts.corrector.observe_weights(index, to_original(out.weights.cpu(), batch.source))
        if self.parts.corrector.observes_predictions:
            if batch.source is None or self.augment.one_to_one:
                probs = to_original(class_probs(out.logits).cpu(), batch.source)
            else:  # affine or elastic: pixels merge and vanish; predict the originals instead
                probs = self._probabilities(originals)
            self.parts.corrector.observe(index, probs)
        if self.world.is_main:  # only rank 0 writes the weight statistics
            stats.add(out.weights, labels != clean, region, WEIGHT_SAMPLE // self.steps_per_epoch)
        return out.loss

    def _verify(self) -> None:
        """Read the checks of the steps since the last read (one wait for the device)."""
        try:
            self.checks.verify(self.parts.reweighter)
        except NumericalError as exc:
            raise self._stopped(exc) from None

    def _stopped(self, exc: NumericalError) -> NumericalError:
        """The error that stops a run whose loss is not finite: where its last checkpoint is and
        what to try."""
        last = self.run_dir / rundir.CHECKPOINT
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        return NumericalError(f"{exc}; {kept}. Try a lower train.lr, set train.grad_clip, or "
                              "train.on_nonfinite=skip to drop such batches")

    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, H, W) of un-augmented training images, in eval mode (no
        BatchNorm statistic changes), on the CPU."""
        with self.precision.autocast():
            return outputs_all(self.model, images, self.device, len(images), class_probs)

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.train_set), self.cfg.train.batch_size)

    def train(self, progress: bool, label: str = "") -> list[dict[str, Any]]:
        cfg = self.cfg
        total = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        bar = tqdm(total=total, initial=min(self.step, total), disable=not progress, unit="step",
                   dynamic_ncols=True)
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                if cfg.train.max_steps is not None and self.step >= cfg.train.max_steps:
                    break
                bar.set_description(f"{label}{', ' * bool(label)}epoch {epoch + 1}/{cfg.train.epochs}")
                start = time.perf_counter()
                stats = WeightStats(cfg.seed + epoch)
                labels_before = self.ledger.snapshot() if self.parts.corrector.changes_labels else None
                losses = self._steps(epoch, stats, bar, progress)
                seconds = time.perf_counter() - start
                record = self._end_epoch(epoch, losses, stats, labels_before, seconds)
                if self.world.is_main:
                    shown = {"dice": f"{record['test_dice']:.3f}"} if "test_dice" in record else {}
                    bar.set_postfix(loss=f"{record['train_loss']:.4f}", **shown)
        finally:
            bar.close()
        return self.history

    def _steps(self, epoch: int, stats: WeightStats, bar: Any, progress: bool) -> list[torch.Tensor]:
        """The steps of one epoch, their losses. Their checks are read every _SHOW_LOSS_EVERY
        steps and at the end, before the epoch's checkpoint (it is written only when good); an
        error on the way reads them first, so a non-finite step before it is what is reported."""
        losses: list[torch.Tensor] = []
        self.model.train()
        try:
            for fed in self.feed.epoch(self.generator):
                losses.append(self._step(fed, epoch, stats))
                if self.seconds_to_first_step is None and self.asked_at is not None:
                    self.seconds_to_first_step = round(time.perf_counter() - self.asked_at, 3)
                bar.update(1)
                if len(losses) % _SHOW_LOSS_EVERY == 0:  # reading waits for the device
                    self._verify()
                    if progress:
                        bar.set_postfix(loss=f"{losses[-1].item():.4f}")
                if self.cfg.train.max_steps is not None and self.step >= self.cfg.train.max_steps:
                    break
        except Exception:
            self._verify()
            raise
        self._verify()
        return losses

    def _end_epoch(
        self, epoch: int, step_losses: list[torch.Tensor], stats: WeightStats,
        labels_before: torch.Tensor | None,
        seconds: float,
    ) -> dict[str, Any]:
        corrector_metrics = self.parts.corrector.end_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        losses = torch.stack(step_losses).double().cpu().numpy() if step_losses else np.array([])
        train_loss = float(np.nanmean(losses)) if not np.isnan(losses).all() else math.nan
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": lr,
            "train_loss": self.world.mean(train_loss),
            **self.ledger.changes(labels_before),
            **stats.summary(),  # among several processes: the pixels of rank 0's shares
            **corrector_metrics,
            **self.parts.loss.metrics(),
            **self.parts.reweighter.metrics(),
        }
        if self.world.is_main:
            if self._evaluates(epoch):
                record.update({f"test_{k}": v for k, v in self._evaluate(distances=False).items()})
            record["seconds"] = round(seconds, 3)
            if self.cfg.train.select_on_meta:
                record["meta_dice"] = dice = self._evaluate(distances=False, split="meta")["dice"]
                self.best = keep_best(self.best, epoch, dice, self.model)
        if self.cfg.train.on_nonfinite == "skip":
            record["skipped_steps"], self.skipped = self.skipped, 0
        self.history.append(record)
        if not self.world.is_main:
            return record
        rundir.append_history(self.run_dir, record)
        rundir.save_checkpoint(self.run_dir, checkpointing.state(self, epoch))
        if self.tracker is not None:  # after the checkpoint: a resume never logs it twice
            self.tracker.log_epoch(record)
        self.pm.hook.on_epoch_end(epoch=epoch + 1, metrics=dict(record), run_dir=str(self.run_dir))
        return record

    def _evaluates(self, epoch: int) -> bool:
        """Is the test split scored at the end of ``epoch`` (``train.eval_every``)?"""
        every = self.cfg.train.eval_every
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs)

    def _evaluate(self, distances: bool, split: str = "test",
                  model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of a split, predicted by ``model`` (default: the one training), its forwards
        under train.precision's autocast."""
        with self.precision.autocast():
            return evaluate(model if model is not None else self.model, getattr(self.splits, split),
                            self.splits, tuple(self.train_set.images.shape[2:]), self.device,
                            distances)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (:func:`noisyseg.checkpointing.restore`)."""
        checkpointing.restore(self, state)

    def finish(self) -> dict[str, float]:
        """Final test metrics, metrics.json and the pictures (:func:`noisyseg.finish.finish`)."""
        return finish(self)

    def save_augmented(self, draws: int = 4) -> None:
        """augment.png, before training starts (rank 0; only when the config augments)."""
        if self.augment.active and self.cfg.output.figure_images and self.world.is_main:
            rows = figures.augmented_rows(self.train_set, self.parts.corrector.labels, self.augment,
                                          min(self.cfg.output.figure_images, 4), draws)
            figures.save_augmented(self.run_dir / rundir.AUGMENT, rows)
