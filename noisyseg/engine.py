"""The one training loop. It names no method: every component comes from the registry.

    for each step:
        x, y   = batch, labels from the corrector     (possibly corrected labels)
        L      = per-pixel loss of model(x) vs y      (N, H, W)
        w      = reweighter.weigh(step context)       (N, H, W), detached
        loss   = mean(w * L); backward; optimiser step
        corrector.observe(index, probabilities)       (if it wants them)
    end of epoch: corrector.end_epoch, lr decay, test evaluation, metrics.jsonl, checkpoint
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn
from tqdm.auto import tqdm

from noisyseg import figures, rundir
from noisyseg.components import (
    Backbone,
    Dataset,
    LabelCorrector,
    NoiseModel,
    Reweighter,
    RunContext,
    Splits,
    StepContext,
)
from noisyseg.config import Config, resolve
from noisyseg.data import (
    Cycler,
    NoisyTrainSet,
    batches,
    build_train_set,
    check_splits,
    steps_per_epoch,
)
from noisyseg.errors import CheckpointError, ConfigError, NoisysegError, NumericalError
from noisyseg.losses import class_probs, out_channels, per_pixel_loss, predict
from noisyseg.metrics import detection_auroc, evaluate
from noisyseg.plugins import Registry, build_plugin_manager

#: at most this many training pixels per epoch are kept to score the weights (AUROC)
_WEIGHT_SAMPLE = 1_000_000


@dataclass
class RunResult:
    """What :func:`run` returns."""

    run_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    config: Config
    model: nn.Module = field(repr=False)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: cannot read {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Components:
    dataset: Dataset
    noise: NoiseModel
    backbone: Backbone
    reweighter: Reweighter
    corrector: LabelCorrector


def build_components(config: Config, registry: Registry) -> Components:
    return Components(
        dataset=registry.build("dataset", config.dataset.name, config.dataset.options),
        noise=registry.build("noise", config.noise.name, config.noise.options),
        backbone=registry.build("backbone", config.backbone.name, config.backbone.options),
        reweighter=registry.build("reweighter", config.reweighter.name, config.reweighter.options),
        corrector=registry.build("corrector", config.corrector.name, config.corrector.options),
    )


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


@torch.no_grad()
def predict_all(
    model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Predicted labels (N, H, W) for images (N, C, H, W), in eval mode."""
    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.int64)
    was_training = model.training
    model.eval()
    out = [
        predict(model(images[i : i + batch_size].to(device))).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out).numpy()


class WeightStats:
    """Accumulates weights on corrupted and clean training pixels during one epoch."""

    def __init__(self, seed: int) -> None:
        self.weights: list[np.ndarray] = []
        self.wrong: list[np.ndarray] = []
        self.rng = np.random.default_rng(seed)

    def add(self, weights: torch.Tensor, wrong: torch.Tensor, budget: int) -> None:
        w = weights.detach().float().cpu().numpy().ravel()
        c = wrong.cpu().numpy().ravel()
        if w.size > budget:
            keep = self.rng.choice(w.size, size=budget, replace=False)
            w, c = w[keep], c[keep]
        self.weights.append(w)
        self.wrong.append(c)

    def summary(self) -> dict[str, float]:
        if not self.weights:
            return {}
        w, c = np.concatenate(self.weights), np.concatenate(self.wrong)
        nan = float("nan")
        return {
            "weight_mean_corrupted": float(w[c].mean()) if c.any() else nan,
            "weight_mean_clean": float(w[~c].mean()) if (~c).any() else nan,
            "weight_auroc": detection_auroc(1.0 - w, c),
            # share of the weight on truly clean pixels: for a 0/1 selection (co-teaching) the
            # precision of the kept pixels
            "weight_on_clean": float(w[~c].sum() / w.sum()) if w.sum() > 0 else nan,
        }


@dataclass
class StepOutput:
    loss: float
    weights: torch.Tensor = field(repr=False)
    logits: torch.Tensor = field(repr=False)
    skipped: bool = False


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    reweighter: Reweighter,
    images: torch.Tensor,
    labels: torch.Tensor,
    meta: tuple[torch.Tensor, torch.Tensor] | None,
    step: int,
    epoch: int,
    device: torch.device,
    grad_clip: float | None = None,
    on_nonfinite: str = "stop",
) -> StepOutput:
    """One optimiser step on ``mean(w * L)`` with ``w`` from the reweighter.

    A NaN or infinite loss raises :class:`NumericalError`, or with ``on_nonfinite="skip"`` the
    step is not taken and the output's ``skipped`` is True.

    Shape:
        images - (N, C, H, W); labels - (N, H, W); meta - ((M, C, H, W), (M, H, W)) or None;
        returns weights (N, H, W) and detached logits (N, K, H, W)
    """
    ctx = step_context(model, optimizer, images, labels, meta, step, epoch, device)
    loss_map = ctx.loss_map
    weights = reweighter.weigh(ctx).detach()
    if weights.shape != loss_map.shape:
        raise NoisysegError(
            f"reweighter '{reweighter.name}' returned weights of shape {tuple(weights.shape)}, "
            f"expected {tuple(loss_map.shape)}"
        )
    loss = (weights * loss_map).mean()
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        if on_nonfinite == "skip":
            return StepOutput(loss=math.nan, weights=weights, logits=ctx.logits.detach(), skipped=True)
        raise NumericalError(f"loss is {loss.item()} at step {step} (epoch {epoch + 1})")
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return StepOutput(loss=float(loss.item()), weights=weights, logits=ctx.logits.detach())


def step_context(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    meta: tuple[torch.Tensor, torch.Tensor] | None,
    step: int,
    epoch: int,
    device: torch.device,
) -> StepContext:
    """Forward ``images`` (moved to ``device`` with labels and meta batch) and wrap the result."""
    x, y = images.to(device), labels.to(device)
    logits = model(x)
    meta_x, meta_y = (None, None) if meta is None else (t.to(device) for t in meta)
    return StepContext(
        model=model, optimizer=optimizer, images=x, labels=y, logits=logits,
        loss_map=per_pixel_loss(logits, y), step=step, epoch=epoch,
        meta_images=meta_x, meta_labels=meta_y,
    )


def run(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    plugin_manager: pluggy.PluginManager | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    **overrides: Any,
) -> RunResult:
    """Train one model as ``config`` says and evaluate it on the clean test split.

    Args:
        config: a :class:`Config`, plain data, a path to a TOML/YAML/JSON file, or None.
        plugin_manager: use this manager (default: a fresh one with every installed plugin).
        progress: show a progress bar.
        resume: continue the run in this directory from its last checkpoint, as it was
            configured (give no ``config`` or overrides with it). The result is the same as
            that of an uninterrupted run.
        **overrides: config fields with ``__`` for nesting, e.g. ``train__epochs=3``.
    """
    checkpoint = None
    if resume is not None:
        if config is not None or overrides:
            raise ConfigError("resume continues a run as it was configured; give no other settings")
        checkpoint = rundir.load_checkpoint(Path(resume))
        cfg = resolve(checkpoint["config"], output__dir=str(resume))
    else:
        cfg = resolve(config, **overrides)
    pm = plugin_manager if plugin_manager is not None else build_plugin_manager()
    parts = build_components(cfg, Registry(pm))
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.output.dir) if cfg.output.dir is not None else rundir.default_dir(cfg)
    if checkpoint is None:
        rundir.check_free(run_dir, cfg.output.overwrite)

    seed_everything(cfg.seed)
    splits = parts.dataset.load(cfg.seed)
    check_splits(splits, cfg.dataset.name)
    needs_meta = parts.reweighter.needs_meta_batch
    if needs_meta and len(splits.meta) == 0:
        raise ConfigError(
            f"reweighter '{cfg.reweighter.name}' needs a clean meta set, but dataset "
            f"'{cfg.dataset.name}' has an empty meta split; give the dataset a meta split"
        )
    include_meta = cfg.train.train_on_meta if cfg.train.train_on_meta is not None else not needs_meta
    train = build_train_set(splits, parts.noise, cfg.noise.rate, cfg.seed, include_meta,
                            cfg.train.meta_only)

    def build_model() -> nn.Module:
        return parts.backbone.build(splits.in_channels, out_channels(splits.num_classes)).to(device)

    model = build_model()
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    context = RunContext(
        build_model=build_model,
        make_optimizer=lambda params: make_optimizer(cfg, params),
        loss_fn=per_pixel_loss,
        device=device,
        num_classes=splits.num_classes,
        noise_rate=cfg.noise.rate,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps_per_epoch(len(train), cfg.train.batch_size),
        seed=cfg.seed,
        pixel_noise_rate=float((train.noisy != train.clean).float().mean()),
    )
    parts.reweighter.setup(context)
    parts.corrector.setup(train.noisy, context)
    meta = (
        Cycler(
            (torch.from_numpy(splits.meta.images), torch.from_numpy(splits.meta.masks)),
            cfg.train.meta_batch_size or cfg.train.batch_size,
            cfg.seed + 1,
        )
        if needs_meta
        else None
    )

    created = not run_dir.exists()
    loop = _Loop(cfg, parts, pm, model, optimizer, scheduler, train, splits, meta, device, run_dir)
    if checkpoint is not None:
        loop.restore(checkpoint)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (rundir.HISTORY, rundir.FINAL, rundir.CHECKPOINT):
            (run_dir / stale).unlink(missing_ok=True)
        rundir.write_config(run_dir, cfg)
    try:
        history = loop.train(progress)
        final = loop.finish()
    except BaseException:
        if created and not (run_dir / rundir.CHECKPOINT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping: leave no half-run
        raise
    return RunResult(run_dir=run_dir, metrics=final, history=history, config=cfg, model=model)


class _Loop:
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
    ) -> None:
        self.cfg, self.parts, self.pm = cfg, parts, pm
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_set, self.splits, self.meta = train, splits, meta
        self.device, self.run_dir = device, run_dir
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.start_epoch = 0
        self.skipped = 0  # steps skipped this epoch (non-finite loss, on_nonfinite = "skip")

    def _step(self, index: torch.Tensor, epoch: int, stats: WeightStats) -> float:
        labels = self.parts.corrector.labels(index)
        meta = next(self.meta) if self.meta is not None else None
        try:
            out = train_step(
                self.model, self.optimizer, self.parts.reweighter,
                self.train_set.images[index], labels, meta, self.step, epoch, self.device,
                self.cfg.train.grad_clip, self.cfg.train.on_nonfinite,
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
        if self.parts.corrector.observes_predictions:
            self.parts.corrector.observe(index, class_probs(out.logits).cpu())
        wrong = labels != self.train_set.clean[index]
        stats.add(out.weights, wrong, _WEIGHT_SAMPLE // self.steps_per_epoch)
        return out.loss

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.train_set), self.cfg.train.batch_size)

    def train(self, progress: bool) -> list[dict[str, Any]]:
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
                bar.set_description(f"epoch {epoch + 1}/{cfg.train.epochs}")
                start, losses = time.perf_counter(), []
                stats = WeightStats(cfg.seed + epoch)
                labels_before = self.parts.corrector.store.clone()
                self.model.train()
                for index in batches(len(self.train_set), cfg.train.batch_size, self.generator):
                    losses.append(self._step(index, epoch, stats))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    if cfg.train.max_steps is not None and self.step >= cfg.train.max_steps:
                        break
                seconds = time.perf_counter() - start
                record = self._end_epoch(epoch, losses, stats, labels_before, seconds)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", dice=f"{record['test_dice']:.3f}")
        finally:
            bar.close()
        return self.history

    def _end_epoch(
        self, epoch: int, losses: list[float], stats: WeightStats, labels_before: torch.Tensor,
        seconds: float,
    ) -> dict[str, Any]:
        corrector_metrics = self.parts.corrector.end_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        test = self._evaluate(distances=False)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": lr,
            "train_loss": float(np.nanmean(losses)) if not np.isnan(losses).all() else math.nan,
            **self._label_changes(labels_before),
            **stats.summary(),
            **corrector_metrics,
            **{f"test_{k}": v for k, v in test.items()},
            "seconds": round(seconds, 3),
        }
        if self.cfg.train.on_nonfinite == "skip":
            record["skipped_steps"], self.skipped = self.skipped, 0
        self.history.append(record)
        rundir.append_history(self.run_dir, record)
        rundir.save_checkpoint(self.run_dir, self._state(epoch))
        self.pm.hook.on_epoch_end(epoch=epoch + 1, metrics=dict(record), run_dir=str(self.run_dir))
        return record

    def _label_changes(self, before: torch.Tensor) -> dict[str, float]:
        """Training-label error against the clean masks, and what the corrector changed this epoch:
        how many pixels and the fraction of them that now hold the clean label (precision)."""
        store, clean = self.parts.corrector.store, self.train_set.clean
        changed = store != before
        n = int(changed.sum())
        return {
            "label_error": float((store != clean).float().mean()),
            "labels_changed": float(n),
            "label_change_precision": float((store[changed] == clean[changed]).float().mean())
            if n else math.nan,
        }

    def _evaluate(self, distances: bool) -> dict[str, float]:
        preds = predict_all(self.model, torch.from_numpy(self.splits.test.images), self.device)
        return evaluate(preds, self.splits.test.masks, self.splits.num_classes, distances)

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch + 1,
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "reweighter": self.parts.reweighter.state_dict(),
            "corrector": self.parts.corrector.state_dict(),
            "generator": self.generator.get_state(),
            "meta": self.meta.state_dict() if self.meta is not None else None,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "history": self.history,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`_state`: every state and RNG as it was
        at the end of that epoch, and metrics.jsonl cut back to the epochs it holds."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.parts.reweighter.load_state_dict(state["reweighter"])
            self.parts.corrector.load_state_dict(state["corrector"])
            if self.meta is not None:
                self.meta.load_state_dict(state["meta"])
            self.generator.set_state(state["generator"])
            rng = state["rng"]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"cannot resume from {self.run_dir / rundir.CHECKPOINT}: it does not fit this run "
                f"({message})"
            ) from None
        self.history = list(state["history"])
        self.step = int(state["step"])
        self.start_epoch = int(state["epoch"])
        rundir.write_history(self.run_dir, self.history)

    def finish(self) -> dict[str, float]:
        """Final test metrics (Hausdorff included), metrics.json and the pictures."""
        final = self._evaluate(distances=True)
        ts = self.train_set
        final = {
            **final,
            "train_label_error_initial": float((ts.noisy != ts.clean).float().mean()),
            "train_label_error_final": float((self.parts.corrector.store != ts.clean).float().mean()),
            "epochs": len(self.history),
            "steps": self.step,
            "seconds": round(sum(h["seconds"] for h in self.history), 3),
        }
        rundir.write_final(self.run_dir, final)
        figures.save_curves(self.run_dir / rundir.CURVES, self.history)
        if self.cfg.output.figure_images:
            figures.save_examples(
                self.run_dir / rundir.EXAMPLES, self._example_rows(), self.splits.num_classes
            )
        return final

    def _preview_weights(self, index: torch.Tensor) -> np.ndarray | None:
        """The reweighter's current weight maps of some training images (model in eval mode,
        so no BatchNorm statistic changes), or None."""
        if not len(index):
            return None
        meta = next(self.meta) if self.meta is not None else None
        self.model.eval()
        try:
            ctx = step_context(
                self.model, self.optimizer, self.train_set.images[index],
                self.parts.corrector.labels(index), meta, self.step, len(self.history), self.device,
            )
            weights = self.parts.reweighter.preview(ctx)
        finally:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
        return None if weights is None else weights.detach().cpu().numpy()

    def _example_rows(self) -> list[dict[str, Any]]:
        n = self.cfg.output.figure_images
        ts = self.train_set
        corrupted = torch.nonzero(ts.corrupted).flatten()[: (n + 1) // 2]
        train_idx = corrupted if len(corrupted) else torch.arange(min(len(ts), (n + 1) // 2))
        test_idx = np.arange(min(len(self.splits.test), n - len(train_idx)))
        rows = []
        train_pred = predict_all(self.model, ts.images[train_idx], self.device)
        weights = self._preview_weights(train_idx)
        for k, i in enumerate(train_idx.tolist()):
            rows.append({
                "title": f"train #{i}" + (" (corrupted)" if bool(ts.corrupted[i]) else ""),
                "image": ts.images[i].numpy(), "clean": ts.clean[i].numpy(),
                "noisy": ts.noisy[i].numpy(), "pred": train_pred[k],
                "weight": None if weights is None else weights[k],
            })
        test_pred = predict_all(self.model, torch.from_numpy(self.splits.test.images[test_idx]), self.device)
        for k, i in enumerate(test_idx.tolist()):
            rows.append({
                "title": f"test #{i}", "image": self.splits.test.images[i],
                "clean": self.splits.test.masks[i], "pred": test_pred[k],
            })
        return rows
