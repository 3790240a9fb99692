"""The end of a run: the final test metrics (Hausdorff included, after selecting the best
meta epoch and calibrating when the config says so), metrics.json, the pictures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from noisyseg import figures, rundir
from noisyseg.evaluation import calibrate
from noisyseg.step import Batch, step_context

if TYPE_CHECKING:
    from noisyseg.loop import Loop


def finish(loop: Loop) -> dict[str, float]:
    """Final test metrics, metrics.json and the pictures (rank 0; the other processes return no
    metrics). With ``train.select_on_meta`` the model takes the weights of the epoch with the
    best meta-split Dice first; with ``train.calibrate`` the loop's predictor becomes the
    model with its offsets."""
    if not loop.world.is_main:
        return {}
    selected: dict[str, Any] = {}
    if loop.best is not None:  # train.select_on_meta: the best epoch's weights, not the last's
        loop.model.load_state_dict(loop.best["model"])
        selected = {"selected_epoch": loop.best["epoch"], "meta_dice": loop.best["dice"]}
    if loop.cfg.train.calibrate:
        with loop.precision.autocast():  # the logits it fits on come as the run predicts
            loop.predictor, fitted = calibrate(loop.model, loop.calibration,
                                               loop.splits.num_classes, loop.device)
        selected.update(fitted)
    final = loop._evaluate(distances=True, model=loop.predictor)
    if loop.cfg.train.calibrate:  # what the offsets changed: the same model without them
        selected["dice_uncalibrated"] = loop._evaluate(distances=False)["dice"]
    final = {**final, **selected, **_run_facts(loop)}
    rundir.write_final(loop.run_dir, final)
    figures.save_curves(loop.run_dir / rundir.CURVES, loop.history)
    if loop.cfg.output.figure_images:
        rows = figures.example_rows(loop.predictor, loop.train_set, loop.splits.test,
                                    loop.cfg.output.figure_images, loop.device,
                                    lambda index: preview_weights(loop, index), loop.precision)
        figures.save_examples(loop.run_dir / rundir.EXAMPLES, rows, loop.splits.num_classes)
    if loop.tracker is not None:
        loop.tracker.finish(final)
    return final


def _run_facts(loop: Loop) -> dict[str, Any]:
    """The last epoch's weight statistics, the noise and the labels, the run's length."""
    last = loop.history[-1] if loop.history else {}
    train = loop.train_set
    return {
        **{k: v for k, v in last.items() if k.startswith("weight_") or k == "corrupted_share"},
        "distance_mm": float(loop.splits.spacing is not None),  # hd, hd95: mm, else px
        "train_label_error_initial": train.noise_rate,
        # what the noise model did: the shares of training pixels it made foreground (FP) and
        # background (FN), and of training images it was applied to
        "noise_fp_share": train.noise_fp,
        "noise_fn_share": train.noise_fn,
        "noise_image_share": float(train.corrupted.float().mean()) if len(train) else 0.0,
        "train_label_error_final": train.label_error(loop.parts.corrector.store),
        "epochs": len(loop.history),
        "steps": loop.step,
        "seconds": round(sum(h["seconds"] for h in loop.history), 3),
        "seconds_to_first_step": loop.seconds_to_first_step,
    }


def preview_weights(loop: Loop, index: torch.Tensor) -> np.ndarray | None:
    """The reweighter's current weight maps of some training images (model in eval mode, so no
    BatchNorm statistic changes), or None."""
    if not len(index):
        return None
    meta = next(loop.meta) if loop.meta is not None else None
    loop.model.eval()
    try:
        batch = Batch(loop.train_set.images[index], loop.parts.corrector.labels(index), meta,
                      index, None if loop.train_set.region is None else loop.train_set.clean[index])
        ctx = step_context(loop.model, loop.optimizer, batch, loop.step, len(loop.history),
                           loop.device, loss_fn=loop.parts.loss, precision=loop.precision)
        weights = loop.parts.reweighter.preview(ctx)
    finally:
        loop.model.train()
        loop.optimizer.zero_grad(set_to_none=True)
    return None if weights is None else weights.detach().cpu().numpy()
