"""The one training loop, step by step: batches, the reweighted step, the corrector, the end of
each epoch (evaluation, metrics.jsonl, checkpoint) and resuming from a checkpoint. It names no
method: the components come in through :class:`noisyseg.engine.Components`.

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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn
from tqdm.auto import tqdm

from noisyseg import figures, rundir
from noisyseg.augment import Augmenter, to_original
from noisyseg.calibration import Calibrated, classes_present, fit_offsets
from noisyseg.components import Components, Split, Splits
from noisyseg.config import Config
from noisyseg.data import Cycler, NoisyTrainSet, batches, steps_per_epoch
from noisyseg.distributed import World
from noisyseg.errors import CheckpointError, DataWarning, NumericalError
from noisyseg.losses import class_probs
from noisyseg.metrics import detection_auroc, image_table, summarise
from noisyseg.scratch import CHUNK, as_tensor, chunks
from noisyseg.step import Batch, outputs_all, predict_all, step_context, train_step

#: at most this many training pixels per epoch are kept to score the weights (AUROC)
_WEIGHT_SAMPLE = 1_000_000
#: the test split is scored this many pixels (voxels) at a time, at most CHUNK images
_CHUNK_PIXELS = 256 * 64 * 64
#: the progress bar shows the loss every this many steps (reading it waits for the device)
_SHOW_LOSS_EVERY = 20


class WeightStats:
    """Accumulates weights on corrupted and clean training pixels during one epoch, with the
    pixels' place inside or outside the region where noise can be (:func:`noise_region`). The
    weights stay on their device until :meth:`summary` (no host synchronisation per step)."""

    def __init__(self, seed: int) -> None:
        self.weights: list[torch.Tensor] = []
        self.wrong: list[torch.Tensor] = []
        self.region: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, weights: torch.Tensor, wrong: torch.Tensor, region: torch.Tensor | None,
            budget: int) -> None:
        """``weights`` on any device; ``wrong`` and ``region`` (same shape) on the CPU."""
        w = weights.detach().float().reshape(-1)
        c = wrong.reshape(-1)
        r = torch.ones_like(c) if region is None else region.reshape(-1)
        if w.numel() > budget:
            keep = torch.randperm(w.numel(), generator=self.generator)[:budget]
            w, c, r = w[keep.to(w.device, non_blocking=True)], c[keep], r[keep]
        self.weights.append(w)
        self.wrong.append(c)
        self.region.append(r)

    def summary(self) -> dict[str, float]:
        if not self.weights:
            return {}
        w = torch.cat(self.weights).cpu().numpy()  # the epoch's one read from the device
        c, r = torch.cat(self.wrong).bool().numpy(), torch.cat(self.region).bool().numpy()
        nan = float("nan")
        total = w.sum()
        return {
            "weight_mean_corrupted": float(w[c].mean()) if c.any() else nan,
            "weight_mean_clean": float(w[~c].mean()) if (~c).any() else nan,
            "weight_auroc": detection_auroc(1.0 - w, c),
            # the same inside the region where noise can be: no easy far-away background
            "weight_auroc_region": detection_auroc(1.0 - w[r], c[r]),
            # share of the weight on truly clean pixels: for a 0/1 selection (co-teaching) the
            # precision of the kept pixels
            "weight_on_clean": float(w[~c].sum() / total) if total > 0 else nan,
            # share of the weight left on corrupted pixels, beside their share of the pixels
            # (equal: the weights ignore the noise; 0: every corrupted pixel dropped)
            "weight_mass_corrupted": float(w[c].sum() / total) if total > 0 else nan,
            "corrupted_share": float(c.mean()),
        }


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
    ) -> None:
        self.cfg, self.parts, self.pm = cfg, parts, pm
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_set, self.splits, self.meta = train, splits, meta
        self.device, self.run_dir = device, run_dir
        self.world = world or World()
        self.forward = self.world.wrap(model, device)  # the training forward (DDP when shared)
        self.augment = Augmenter(cfg.augment, cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.start_epoch = 0
        self.skipped = 0  # steps skipped this epoch (non-finite loss, on_nonfinite = "skip")
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
        self._before: torch.Tensor | None = None  # the labels at the start of the epoch

    def _step(self, index: torch.Tensor, epoch: int, stats: WeightStats) -> torch.Tensor:
        """One training step; its loss, left on the device (read once per epoch)."""
        index = self.world.shard(index)
        ts = self.train_set
        originals = ts.images[index]
        batch = self.augment(
            originals, [self.parts.corrector.labels(index), ts.clean[index],
                        None if ts.region is None else ts.region[index]], self.step, index,
        )
        labels, clean, region = batch.masks
        meta = None
        if self.meta is not None:
            meta = tuple(self.world.shard(t) for t in next(self.meta))
        try:
            out = train_step(
                self.model, self.optimizer, self.parts.reweighter,
                Batch(batch.images, labels, meta, index, clean if ts.region is not None else None),
                self.step, epoch, self.device, grad_clip=self.cfg.train.grad_clip,
                on_nonfinite=self.cfg.train.on_nonfinite, apply_weights=self.cfg.train.apply_weights,
                forward=self.forward, world=self.world, loss_fn=self.parts.loss,
            )
        except NumericalError as exc:
            last = self.run_dir / rundir.CHECKPOINT
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
            raise NumericalError(
                f"{exc}; {kept}. Try a lower train.lr, set train.grad_clip, or "
                "train.on_nonfinite=skip to drop such batches"
            ) from None
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
            stats.add(out.weights, labels != clean, region, _WEIGHT_SAMPLE // self.steps_per_epoch)
        return out.loss

    def _known_clean(self, index: torch.Tensor) -> torch.Tensor | None:
        """The clean labels of ``index`` when the run knows them (the noise model changed some
        labels: the noise region exists), else None."""
        return None if self.train_set.region is None else self.train_set.clean[index]

    @torch.no_grad()
    def _probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, H, W) of un-augmented training images, in eval mode (no
        BatchNorm statistic changes), on the CPU."""
        self.model.eval()
        try:
            return class_probs(self.model(images.to(self.device))).cpu()
        finally:
            self.model.train()

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
                start, losses = time.perf_counter(), []
                stats = WeightStats(cfg.seed + epoch)
                labels_before = self._snapshot() if self.parts.corrector.changes_labels else None
                self.model.train()
                for index in batches(len(self.train_set), cfg.train.batch_size, self.generator):
                    losses.append(self._step(index, epoch, stats))
                    bar.update(1)
                    if progress and len(losses) % _SHOW_LOSS_EVERY == 0:  # reading it waits
                        bar.set_postfix(loss=f"{losses[-1].item():.4f}")  # for the device
                    if cfg.train.max_steps is not None and self.step >= cfg.train.max_steps:
                        break
                seconds = time.perf_counter() - start
                record = self._end_epoch(epoch, losses, stats, labels_before, seconds)
                if self.world.is_main:
                    shown = {"dice": f"{record['test_dice']:.3f}"} if "test_dice" in record else {}
                    bar.set_postfix(loss=f"{record['train_loss']:.4f}", **shown)
        finally:
            bar.close()
        return self.history

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
            **self._label_changes(labels_before),
            **stats.summary(),  # among several processes: the pixels of rank 0's shares
            **corrector_metrics,
            **self.parts.loss.metrics(),
        }
        if self.world.is_main:
            if self._evaluates(epoch):
                record.update({f"test_{k}": v for k, v in self._evaluate(distances=False).items()})
            record["seconds"] = round(seconds, 3)
            if self.cfg.train.select_on_meta:
                record["meta_dice"] = self._select(epoch)
        if self.cfg.train.on_nonfinite == "skip":
            record["skipped_steps"], self.skipped = self.skipped, 0
        self.history.append(record)
        if not self.world.is_main:
            return record
        rundir.append_history(self.run_dir, record)
        rundir.save_checkpoint(self.run_dir, self._state(epoch))
        self.pm.hook.on_epoch_end(epoch=epoch + 1, metrics=dict(record), run_dir=str(self.run_dir))
        return record

    def _evaluates(self, epoch: int) -> bool:
        """Is the test split scored at the end of ``epoch`` (``train.eval_every``)?"""
        every = self.cfg.train.eval_every
        return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs)

    def _snapshot(self) -> torch.Tensor:
        """The corrector's labels now, copied into one buffer kept for the run (in files when
        the dataset streams)."""
        store = self.parts.corrector.store
        if self._before is None or self._before.shape != store.shape:
            self._before = self.train_set.scratch.tensor(tuple(store.shape), store.dtype)
        return self._before.copy_(store)

    def _label_changes(self, before: torch.Tensor | None) -> dict[str, float]:
        """Training-label error against the clean masks, and what the corrector changed this epoch
        (``before``: its labels at the epoch's start; None: it never changes them): how many
        pixels and the fraction of them that now hold the clean label (precision)."""
        store, clean = self.parts.corrector.store, self.train_set.clean
        n = right = 0
        for part in chunks(len(store) if before is not None else 0):
            changed = store[part] != before[part]
            n += int(changed.sum())
            right += int((store[part][changed] == clean[part][changed]).sum())
        return {
            "label_error": self.train_set.label_error(store),
            "labels_changed": float(n),
            "label_change_precision": right / n if n else math.nan,
        }

    def _evaluate(self, distances: bool, split: str = "test",
                  model: nn.Module | None = None) -> dict[str, float]:
        """Metrics of a split, predicted (by ``model``, default the one training) and scored a
        chunk of images at a time."""
        data = getattr(self.splits, split)
        k = self.splits.num_classes
        window = tuple(self.train_set.images.shape[2:])  # larger test images: sliding window
        per_chunk = max(1, _CHUNK_PIXELS // int(np.prod(data.images.shape[2:])))  # volumes: fewer
        table = [image_table(predict_all(model if model is not None else self.model,
                                         as_tensor(np.ascontiguousarray(data.images[p])),
                                         self.device, window=window),
                             np.asarray(data.masks[p]), k, distances, spacing=self.splits.spacing)
                 for p in chunks(len(data), min(per_chunk, CHUNK))]
        return summarise(np.concatenate(table), k, distances)  # (no split scored is empty)

    def _select(self, epoch: int) -> float:
        """Score this epoch on the clean meta split; keep its weights when it is the best so far."""
        dice = self._evaluate(distances=False, split="meta")["dice"]
        if dice != dice:  # NaN: nothing to score in the meta split this epoch
            return dice
        if self.best is None or dice > self.best["dice"]:
            self.best = {"epoch": epoch + 1, "dice": dice,
                         "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
        return dice

    def _state(self, epoch: int) -> dict[str, Any]:
        """Everything a resume needs, under :data:`rundir.CHECKPOINT_KEYS`."""
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "reweighter": self.parts.reweighter.state_dict(),
            "loss": self.parts.loss.state_dict(),
            "corrector": self.parts.corrector.state_dict(),
            "generator": self.generator.get_state(),
            "meta": self.meta.state_dict() if self.meta is not None else None,
            "rng": rundir.rng_state(),
            "history": self.history,
            "best": self.best,
            "calibration_aside": self.calibration_aside,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`_state`: every state and RNG as it was
        at the end of that epoch, and metrics.jsonl cut back to the epochs it holds."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.parts.reweighter.load_state_dict(state["reweighter"])
            self.parts.loss.load_state_dict(state.get("loss", {}))
            self.parts.corrector.load_state_dict(state["corrector"])
            if self.meta is not None:
                self.meta.load_state_dict(state["meta"])
            self.generator.set_state(state["generator"])
            rundir.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"cannot resume from {self.run_dir / rundir.CHECKPOINT}: it does not fit this run "
                f"({message})"
            ) from None
        kept = state.get("calibration_aside")
        if kept is not None and kept != self.calibration_aside:
            raise CheckpointError(
                f"cannot resume from {self.run_dir / rundir.CHECKPOINT}: the meta images "
                "train.calibration_share sets aside are not those the run set aside before (did the "
                "dataset change?)")
        self.history = list(state["history"])
        self.best = state.get("best")
        self.step = int(state["step"])
        self.start_epoch = int(state["epoch"])
        if self.world.is_main:
            rundir.write_history(self.run_dir, self.history)

    def finish(self) -> dict[str, float]:
        """Final test metrics (Hausdorff included), metrics.json and the pictures (rank 0; the
        other processes return no metrics). With ``train.select_on_meta`` the model takes the
        weights of the epoch with the best meta-split Dice first."""
        if not self.world.is_main:
            return {}
        selected = {}
        if self.best is not None:  # train.select_on_meta: the best epoch's weights, not the last's
            self.model.load_state_dict(self.best["model"])
            selected = {"selected_epoch": self.best["epoch"], "meta_dice": self.best["dice"]}
        if self.cfg.train.calibrate:
            selected.update(self._calibrate())
        final = self._evaluate(distances=True, model=self.predictor)
        if self.cfg.train.calibrate:  # what the offsets changed: the same model without them
            selected["dice_uncalibrated"] = self._evaluate(distances=False)["dice"]
        last = self.history[-1] if self.history else {}
        final = {
            **final,
            **{k: v for k, v in last.items() if k.startswith("weight_") or k == "corrupted_share"},
            **selected,
            "distance_mm": float(self.splits.spacing is not None),  # hd, hd95: mm, else px
            "train_label_error_initial": self.train_set.noise_rate,
            "train_label_error_final": self.train_set.label_error(self.parts.corrector.store),
            "epochs": len(self.history),
            "steps": self.step,
            "seconds": round(sum(h["seconds"] for h in self.history), 3),
        }
        rundir.write_final(self.run_dir, final)
        figures.save_curves(self.run_dir / rundir.CURVES, self.history)
        if self.cfg.output.figure_images:
            rows = figures.example_rows(self.predictor, self.train_set, self.splits.test,
                                        self.cfg.output.figure_images, self.device,
                                        self._preview_weights)
            figures.save_examples(self.run_dir / rundir.EXAMPLES, rows, self.splits.num_classes)
        return final

    def _calibrate(self) -> dict[str, float]:
        """Fit the calibration offsets on the clean meta images (train.calibrate: the meta split,
        or the share of it set aside); the predictor becomes the model with them. Returns the
        offsets and those images' Dice before and after."""
        k = self.splits.num_classes
        images, masks = self.calibration.images, np.asarray(self.calibration.masks)
        logits = outputs_all(self.model, as_tensor(np.ascontiguousarray(images)), self.device).float()
        offsets, before, after = fit_offsets(logits, masks, k)
        absent = sorted(set(range(1, k)) - set(classes_present(masks, k)))
        if absent:
            warnings.warn(f"train.calibrate: the {len(images)} meta images it fits on hold no pixel "
                          f"of class{'es' * (len(absent) > 1)} {', '.join(map(str, absent))}, so "
                          "their offsets stay 0 (a larger train.calibration_share gives it more)",
                          DataWarning, stacklevel=2)
        self.predictor = Calibrated(self.model, torch.from_numpy(offsets)).to(self.device)
        named = ({"calibration_offset": float(offsets[1] - offsets[0])} if k == 2 else
                 {f"calibration_offset_class{c}": float(offsets[c]) for c in range(k)})
        return {**named, "meta_dice_uncalibrated": before, "meta_dice_calibrated": after,
                "calibration_images": float(len(images))}

    def save_augmented(self, draws: int = 4) -> None:
        """augment.png, before training starts (rank 0; only when the config augments)."""
        if self.augment.active and self.cfg.output.figure_images and self.world.is_main:
            rows = figures.augmented_rows(self.train_set, self.parts.corrector.labels, self.augment,
                                          min(self.cfg.output.figure_images, 4), draws)
            figures.save_augmented(self.run_dir / rundir.AUGMENT, rows)

    def _preview_weights(self, index: torch.Tensor) -> np.ndarray | None:
        """The reweighter's current weight maps of some training images (model in eval mode,
        so no BatchNorm statistic changes), or None."""
        if not len(index):
            return None
        meta = next(self.meta) if self.meta is not None else None
        self.model.eval()
        try:
            batch = Batch(self.train_set.images[index], self.parts.corrector.labels(index), meta,
                          index, self._known_clean(index))
            ctx = step_context(self.model, self.optimizer, batch, self.step, len(self.history),
                               self.device, loss_fn=self.parts.loss)
            weights = self.parts.reweighter.preview(ctx)
        finally:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
        return None if weights is None else weights.detach().cpu().numpy()
