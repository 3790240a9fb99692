"""Run tracking (``output.tracker``): a run's per-epoch metrics, its resolved config and its
figures sent to TensorBoard or MLflow, beside what the run directory holds.

One class per backend, each with the same three calls, which the run makes on rank 0 alone::

    tracker = build(config.output.tracker, run_dir)   # imports the backend's package (every rank)
    tracker.start(config, history)   # before the first epoch; history: what a resumed run has done
    tracker.log_epoch(record)        # after each epoch's checkpoint: the line of metrics.jsonl
    tracker.finish(final)            # after metrics.json and the figures

A backend's package is imported only when it is chosen; a missing one is a
:class:`~noisyseg.errors.ConfigError` naming the extra to install. A resumed run (``--resume``)
logs into the same TensorBoard directory and the same MLflow run, from the epoch after its
checkpoint on, so no epoch is logged twice.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from noisyseg import rundir
from noisyseg.config import Config, dump
from noisyseg.errors import ConfigError

#: TensorBoard's event files, inside the run directory
TENSORBOARD_DIR = "tensorboard"
#: MLflow's local file store (when no tracking URI is set), inside the run directory
MLFLOW_DIR = "mlruns"
#: the id of the run's MLflow run, so that a resumed run logs into it
MLFLOW_RUN_ID = "mlflow_run_id"
#: the figures of the run directory a tracker receives at the end, when the run drew them
FIGURES = (rundir.EXAMPLES, rundir.CURVES, rundir.AUGMENT)
#: the MLflow experiment runs go to, unless MLFLOW_EXPERIMENT_NAME says another
EXPERIMENT = "noisyseg"
#: longest parameter value sent to MLflow (older servers take 500 characters; config.yaml,
#: logged too, has every value whole)
_PARAM_LENGTH = 500


class Tracker:
    """Sends one run's metrics, config and figures to a tracking tool.

    Args:
        run_dir: the run directory (where the backend may keep its own files).
    """

    #: the value of ``output.tracker`` that picks it
    name: ClassVar[str]
    #: the package it imports, and the extra of noisyseg that installs it
    package: ClassVar[str]

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def start(self, config: Config, history: list[dict[str, Any]]) -> None:
        """Open the run before its first epoch and log ``config`` (the resolved one, as in
        config.yaml). ``history``: the epoch records a resumed run already has (empty for a new
        run); those were logged before and are not logged again."""
        raise NotImplementedError

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Log one epoch's record (a line of metrics.jsonl): every number in it, at step
        ``record["epoch"]``."""
        raise NotImplementedError

    def finish(self, final: dict[str, Any]) -> None:
        """Log the final metrics (as ``final/<name>``) and the figures, and close the run."""
        raise NotImplementedError


def numbers_of(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record (booleans and text left out) as floats; NaN and
    infinity are kept."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config data -> ``{"train.lr": "0.001", ...}``: strings as they are, every other
    value as JSON (``null``, ``true``, ``[20, 40]``)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def _steps(history: list[dict[str, Any]]) -> int:
    """The last epoch a history holds (0: none)."""
    return int(history[-1]["epoch"]) if history else 0


class TensorBoardTracker(Tracker):
    """Event files in ``<run_dir>/tensorboard/`` (``tensorboard --logdir runs``): a scalar per
    number of each epoch's record (step: the epoch), the resolved config as text, and at the end
    the final metrics (``final/<name>``) and the figures as images."""

    name = "tensorboard"
    package = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.writer: Any = None
        self.epochs = 0

    def start(self, config: Config, history: list[dict[str, Any]]) -> None:
        where = self.run_dir / TENSORBOARD_DIR
        self.epochs = _steps(history)
        if not history:  # a new run (or --overwrite): no events of an earlier run in its curves
            shutil.rmtree(where, ignore_errors=True)
            self.writer = self._writer_class(str(where))
            text = "\n".join(f"    {line}" for line in dump(config).splitlines())  # markdown code
            self.writer.add_text("config", text, 0)
        else:  # resumed: TensorBoard hides whatever an earlier writer logged past the checkpoint
            self.writer = self._writer_class(str(where), purge_step=self.epochs + 1)
        self.writer.flush()

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.epochs = int(record["epoch"])
        for key, value in numbers_of(record).items():
            if key != "epoch":
                self.writer.add_scalar(key, value, self.epochs)
        self.writer.flush()  # an interrupted run keeps every finished epoch

    def finish(self, final: dict[str, Any]) -> None:
        import numpy as np
        from PIL import Image

        for key, value in numbers_of(final).items():
            self.writer.add_scalar(f"final/{key}", value, self.epochs)
        for name in FIGURES:
            path = self.run_dir / name
            if path.is_file():
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"figures/{path.stem}", pixels, self.epochs, dataformats="HWC")
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run per noisyseg run, named after the run directory, in the experiment
    ``noisyseg`` (or ``MLFLOW_EXPERIMENT_NAME``): the flattened resolved config as parameters,
    each epoch's numbers as metrics (step: the epoch), config.yaml, and at the end the final
    metrics (``final/<name>``) and the figures as artifacts.

    It logs to the tracking URI the environment sets (``MLFLOW_TRACKING_URI``, or
    ``mlflow.set_tracking_uri`` in the same process); without one, to a file store in
    ``<run_dir>/mlruns`` (a recipe's stages: in the recipe's directory), for which it sets
    ``MLFLOW_ALLOW_FILE_STORE=true`` unless the environment says otherwise (MLflow 3 keeps the
    file store in maintenance mode behind that switch). The run's id is kept in
    ``<run_dir>/mlflow_run_id``, so ``--resume`` logs into the same run.
    """

    name = "mlflow"
    package = "mlflow"

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir)
        import mlflow
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._mlflow, self._client_class = mlflow, MlflowClient
        self._metric, self._param, self._error = Metric, Param, MlflowException
        self.client: Any = None
        self.run_id = ""
        self.epochs = 0

    def store(self) -> str:
        """The tracking URI the run logs to (see the class)."""
        if self._mlflow.tracking.is_tracking_uri_set():
            return self._mlflow.get_tracking_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return (self._home() / MLFLOW_DIR).resolve().as_uri()

    def _home(self) -> Path:
        """The directory of the local store: the run's, or a recipe's around its stages."""
        return self.run_dir.parent if rundir.is_recipe_dir(self.run_dir.parent) else self.run_dir

    def _run_name(self) -> str:
        home = self._home()
        return self.run_dir.name if home == self.run_dir else f"{home.name}/{self.run_dir.name}"

    def start(self, config: Config, history: list[dict[str, Any]]) -> None:
        self.client = self._client_class(tracking_uri=self.store())
        self.epochs = _steps(history)
        kept = self.run_dir / MLFLOW_RUN_ID
        if history and kept.is_file():
            try:
                self.run_id = self.client.get_run(kept.read_text().strip()).info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except self._error:  # not in this store (the tracking URI changed): a new run
                pass
        run = self.client.create_run(self._experiment(), run_name=self._run_name(),
                                     tags={"noisyseg.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        rundir.write_text(kept, self.run_id + "\n")
        params = [self._param(k, v[:_PARAM_LENGTH])
                  for k, v in flatten(config.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, dump(config), rundir.CONFIG)
        for record in history:  # resumed into a new run: the epochs done before, too
            self.log_epoch(record)

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except self._error:  # another run created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def _log(self, values: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        metrics = [self._metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.epochs = int(record["epoch"])
        self._log({k: v for k, v in numbers_of(record).items() if k != "epoch"}, self.epochs)

    def finish(self, final: dict[str, Any]) -> None:
        self._log({f"final/{k}": v for k, v in numbers_of(final).items()}, self.epochs)
        for name in FIGURES:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")


#: every tracker by its ``output.tracker`` name
TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoardTracker, MLflowTracker)}


def build(name: str | None, run_dir: Path) -> Tracker | None:
    """The tracker ``output.tracker`` names (None: none), its package imported.

    Raises:
        ConfigError: an unknown name (listing the known ones), or its package is not installed.
    """
    if name is None:
        return None
    if name not in TRACKERS:
        raise ConfigError(f"unknown output.tracker {name!r}; choose one of: {', '.join(sorted(TRACKERS))}")
    kind = TRACKERS[name]
    try:
        __import__(kind.package)
    except ImportError:
        raise ConfigError(f"output.tracker = {name} needs the {kind.package} package: "
                          f"pip install 'noisyseg[{name}]'") from None
    return kind(run_dir)
