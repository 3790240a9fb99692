"""A run's checkpoint: everything the training loop needs to go on exactly where an epoch
ended (:data:`noisyseg.rundir.CHECKPOINT_KEYS`), and putting it back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from noisyseg import rundir
from noisyseg.errors import CheckpointError

if TYPE_CHECKING:
    from noisyseg.loop import Loop


def state(loop: Loop, epoch: int) -> dict[str, Any]:
    """Everything a resume needs, under :data:`rundir.CHECKPOINT_KEYS`."""
    return {
        "epoch": epoch + 1,
        "step": loop.step,
        "config": loop.cfg.model_dump(mode="json"),
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "reweighter": loop.parts.reweighter.state_dict(),
        "loss": loop.parts.loss.state_dict(),
        "corrector": loop.parts.corrector.state_dict(),
        "generator": loop.generator.get_state(),
        "meta": loop.meta.state_dict() if loop.meta is not None else None,
        "rng": rundir.rng_state(),
        "history": loop.history,
        "best": loop.best,
        "calibration_aside": loop.calibration_aside,
        "scaler": loop.precision.state_dict(),  # train.precision = fp16: the gradient scaler
    }


def restore(loop: Loop, state: dict[str, Any]) -> None:
    """Continue from a checkpoint written by :func:`state`: every state and RNG as it was at the
    end of that epoch, and metrics.jsonl cut back to the epochs it holds."""
    where = loop.run_dir / rundir.CHECKPOINT
    try:
        loop.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.scheduler.load_state_dict(state["scheduler"])
        loop.parts.reweighter.load_state_dict(state["reweighter"])
        loop.parts.loss.load_state_dict(state.get("loss", {}))
        loop.parts.corrector.load_state_dict(state["corrector"])
        store = getattr(loop.parts.corrector, "store", None)
        if store is not None and len(store) != len(loop.train_set):
            raise ValueError(f"it holds the labels of {len(store)} training "
                             f"images, this run has {len(loop.train_set)} (train.train_on_meta "
                             "differs? mcpm trains on the meta images by default since 7984e23)")
        if loop.meta is not None:
            loop.meta.load_state_dict(state["meta"])
        loop.generator.set_state(state["generator"])
        loop.precision.load_state_dict(state.get("scaler"))
        rundir.set_rng_state(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot resume from {where}: it does not fit this run ({message})") from None
    kept = state.get("calibration_aside")
    if kept is not None and kept != loop.calibration_aside:
        raise CheckpointError(
            f"cannot resume from {where}: the meta images train.calibration_share sets aside are "
            "not those the run set aside before (did the dataset change?)")
    loop.history = list(state["history"])
    loop.best = state.get("best")
    loop.step = int(state["step"])
    loop.start_epoch = int(state["epoch"])
    if loop.world.is_main:
        rundir.write_history(loop.run_dir, loop.history)
