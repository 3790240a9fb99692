"""The run directory: what a run writes, written so that nothing is ever half-written."""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from noisyseg.config import Config, dump, load_file
from noisyseg.errors import CheckpointError, ConfigError

CONFIG = "config.yaml"
HISTORY = "metrics.jsonl"
FINAL = "metrics.json"
CHECKPOINT = "checkpoint.pt"
EXAMPLES = "examples.png"
CURVES = "curves.png"
AUGMENT = "augment.png"
#: the keys of metrics.json and metrics.jsonl that are wall-clock times: the only ones in which
#: two runs of one config may differ
TIMINGS = frozenset({"seconds", "seconds_to_first_step"})


def default_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [config.dataset.name, config.noise.name, config.reweighter.name]
    if config.corrector.name != "none":
        parts.append(config.corrector.name)
    if config.recipe.name != "none":
        parts[2:] = [config.recipe.name]
    return Path("runs") / f"{stamp}-{'-'.join(parts)}"


def is_recipe_dir(path: Path) -> bool:
    """Does ``path`` hold a recipe of several stages (no checkpoint of its own)?"""
    config = path / CONFIG
    if not config.is_file() or (path / CHECKPOINT).exists():
        return False
    stages = (load_file(config).get("recipe") or {}).get("options", {}).get("stages") or []
    return len(stages) > 1


def check_free(path: Path, overwrite: bool) -> None:
    """Refuse a directory that already holds a run, unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output.dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        what = "a finished run" if (path / FINAL).exists() else "files from another run"
        raise ConfigError(
            f"run directory {path} already holds {what}; choose another --out or pass --overwrite"
        )


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def write_config(run_dir: Path, config: Config) -> None:
    write_text(run_dir / CONFIG, dump(config))


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """NaN / inf (e.g. the weight on corrupted pixels when none are corrupted) -> null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def append_history(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / HISTORY, "a") as fh:
        fh.write(json.dumps(_json_safe(record)) + "\n")


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl by ``history`` (on resume: drop epochs the checkpoint does not hold)."""
    write_text(run_dir / HISTORY, "".join(json.dumps(_json_safe(r)) + "\n" for r in history))


def write_final(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_text(run_dir / FINAL, json.dumps(_json_safe(metrics), indent=2) + "\n")


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / CHECKPOINT, lambda fh: torch.save(state, fh))


#: what a checkpoint holds (the training loop writes exactly these); a resume needs all but
#: :data:`OPTIONAL_KEYS`
CHECKPOINT_KEYS = ("epoch", "step", "config", "model", "optimizer", "scheduler", "reweighter",
                   "corrector", "loss", "generator", "meta", "rng", "history", "best",
                   "calibration_aside", "scaler")
#: loss: checkpoints from before the loss kind have none; calibration_aside: the fingerprint of
#: the meta images train.calibration_share set aside, when it did; scaler: the gradient scaler's
#: state with train.precision = fp16 (None otherwise; none in checkpoints from before it)
OPTIONAL_KEYS = ("meta", "best", "loss", "calibration_aside", "scaler")


def rng_state() -> dict[str, Any]:
    """Every global random generator a run draws from (Python, NumPy, torch, CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _read(path: Path, what: str) -> Any:
    """The object saved in ``path``; a damaged file is a CheckpointError starting with ``what``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds on a damaged file
        raise CheckpointError(
            f"{what}: {path} is unreadable or damaged ({type(exc).__name__}: {exc})"
        ) from None


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of the run in ``run_dir``, checked to hold what a resume needs."""
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a directory")
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: {path} not found (a run writes it at the end of its first epoch)"
        )
    if (run_dir / FINAL).exists():
        raise ConfigError(f"cannot resume: {run_dir} holds a finished run ({FINAL}); nothing to do")
    state = _read(path, "cannot resume")
    missing = [k for k in CHECKPOINT_KEYS
               if k not in OPTIONAL_KEYS and (not isinstance(state, dict) or k not in state)]
    if missing:
        raise CheckpointError(
            f"cannot resume: {path} lacks {', '.join(missing)}; it is not a noisyseg checkpoint"
        )
    return state


def load_start(path: Path) -> dict[str, Any]:
    """The checkpoint a run ended with (``path``: its directory or its checkpoint.pt), for
    ``train.init_from``, checked to hold network weights."""
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"train.init_from: {file} not found "
                          f"(give a run directory or its {CHECKPOINT})")
    state = _read(file, "train.init_from")
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"train.init_from: {file} holds no network weights ('model')")
    return state


def start_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights of a :func:`load_start` checkpoint: with ``train.select_on_meta`` those of its
    selected epoch, else the last."""
    best = state.get("best")
    return best["model"] if best else state["model"]


def load_weights(path: Path) -> dict[str, Any]:
    """The network weights a run ended with (``path``: its directory or its checkpoint.pt), for
    ``train.init_from``; with ``train.select_on_meta`` those of its selected epoch."""
    return start_weights(load_start(path))
