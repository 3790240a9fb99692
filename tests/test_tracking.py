"""output.tracker: TensorBoard and MLflow receive the epochs, the config and the figures, read back
from the event files and from the MLflow file store."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import noisyseg.loop
from noisyseg import ConfigError, run
from noisyseg.config import resolve
from noisyseg.testing import tiny_run_config
from noisyseg.tracking import MLFLOW_DIR, MLFLOW_RUN_ID, TENSORBOARD_DIR


def _config(tmp_path: Path, tracker: str, name: str = "run") -> dict[str, Any]:
    return tiny_run_config(seed=3, train={"epochs": 2}, noise={"rate": 0.5},
                           output={"dir": str(tmp_path / name), "tracker": tracker})


def _interrupted_then_resumed(tmp_path: Path, tracker: str, monkeypatch: pytest.MonkeyPatch,
                              before_resume: Any = None) -> Any:
    """A run stopped by Ctrl-C in its second (last) epoch (4 steps an epoch), then resumed."""
    original, calls = noisyseg.loop.train_step, []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(noisyseg.loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(_config(tmp_path, tracker), progress=False)
    monkeypatch.setattr(noisyseg.loop, "train_step", original)
    if before_resume is not None:
        before_resume(tmp_path / "run")
    return run(resume=tmp_path / "run", progress=False)


# ---- TensorBoard -------------------------------------------------------------------------------

def _events(run_dir: Path) -> Any:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _series(events: Any, tag: str) -> list[tuple[int, float]]:
    return [(s.step, s.value) for s in events.Scalars(tag)]


def test_tensorboard_gets_every_epoch_the_config_and_the_figures(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    result = run(_config(tmp_path, "tensorboard"), progress=False)
    events = _events(result.run_dir)
    tags = events.Tags()
    numeric = [k for k, v in result.history[0].items() if isinstance(v, float | int) and k != "epoch"]
    assert set(numeric) <= set(tags["scalars"]) and "epoch" not in tags["scalars"]
    for key in ("train_loss", "test_dice", "lr", "label_error"):
        assert _series(events, key) == [(h["epoch"], pytest.approx(h[key], rel=1e-6))
                                        for h in result.history], key
    assert _series(events, "final/dice") == [(2, pytest.approx(result.metrics["dice"], rel=1e-6))]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "tracker: tensorboard" in text and "epochs: 2" in text
    assert {"figures/examples", "figures/curves"} <= set(tags["images"])
    assert events.Images("figures/curves")[0].width > 100


def test_tensorboard_resumed_run_logs_each_epoch_once(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    result = _interrupted_then_resumed(tmp_path, "tensorboard", monkeypatch)
    events = _events(result.run_dir)
    assert _series(events, "train_loss") == [(h["epoch"], pytest.approx(h["train_loss"], rel=1e-6))
                                             for h in result.history]
    assert [step for step, _ in _series(events, "train_loss")] == [1, 2]
    assert len(events.Tensors("config/text_summary")) == 1


def test_tensorboard_overwritten_run_drops_the_old_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = _config(tmp_path, "tensorboard")
    run(config, progress=False)
    config["train"]["epochs"] = 1
    config["output"]["overwrite"] = True
    result = run(config, progress=False)
    assert [step for step, _ in _series(_events(result.run_dir), "train_loss")] == [1]


# ---- MLflow ------------------------------------------------------------------------------------

@pytest.fixture
def local_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI from the environment: the run's own file store."""
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _mlflow_run(run_dir: Path, store: Path | None = None) -> tuple[Any, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(store or run_dir / MLFLOW_DIR).resolve().as_uri())
    return client, client.get_run((run_dir / MLFLOW_RUN_ID).read_text().strip())


def _history(client: Any, run: Any, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.usefixtures("local_mlflow")
def test_mlflow_gets_params_every_epoch_and_the_artifacts(tmp_path: Path) -> None:
    result = run(_config(tmp_path, "mlflow"), progress=False)
    client, logged = _mlflow_run(result.run_dir)
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "noisyseg"
    params = logged.data.params
    assert params["train.epochs"] == "2" and params["output.tracker"] == "mlflow"
    assert params["noise.rate"] == "0.5" and params["train.max_steps"] == "null"
    assert params["backbone.options.base_channels"] == "4"  # the resolved options, flattened
    for key in ("train_loss", "test_dice", "lr", "step"):
        assert _history(client, logged, key) == [(h["epoch"], pytest.approx(h[key]))
                                                 for h in result.history], key
    assert "epoch" not in logged.data.metrics
    assert _history(client, logged, "final/dice") == [(2, pytest.approx(result.metrics["dice"]))]
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"config.yaml", "examples.png", "curves.png"} <= artifacts
    config = Path(client.download_artifacts(logged.info.run_id, "config.yaml", str(tmp_path)))
    assert config.read_text() == (result.run_dir / "config.yaml").read_text()


@pytest.mark.usefixtures("local_mlflow")
def test_mlflow_resumed_run_continues_the_same_run(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = []
    result = _interrupted_then_resumed(
        tmp_path, "mlflow", monkeypatch,
        before_resume=lambda d: first.append((d / MLFLOW_RUN_ID).read_text().strip()))
    client, logged = _mlflow_run(result.run_dir)
    assert logged.info.run_id == first[0] and logged.info.status == "FINISHED"
    assert [s for s, _ in _history(client, logged, "train_loss")] == [1, 2]
    assert len(client.search_runs([logged.info.experiment_id])) == 1


@pytest.mark.usefixtures("local_mlflow")
def test_mlflow_run_lost_on_resume_gets_a_new_run_with_every_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _interrupted_then_resumed(tmp_path, "mlflow", monkeypatch,
                                       before_resume=lambda d: (d / MLFLOW_RUN_ID).unlink())
    client, logged = _mlflow_run(result.run_dir)
    assert _history(client, logged, "train_loss") == [
        (h["epoch"], pytest.approx(h["train_loss"])) for h in result.history]
    assert logged.data.params["train.epochs"] == "2"


@pytest.mark.usefixtures("local_mlflow")
def test_mlflow_uses_the_tracking_uri_the_environment_sets(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "server-store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lesions")
    config = tiny_run_config(output={"dir": str(tmp_path / "run"), "tracker": "mlflow"})
    result = run(config, progress=False)
    assert not (result.run_dir / MLFLOW_DIR).exists()
    client, logged = _mlflow_run(result.run_dir, store)
    assert client.get_experiment(logged.info.experiment_id).name == "lesions"
    assert [s for s, _ in _history(client, logged, "train_loss")] == [1]


# ---- choosing one ------------------------------------------------------------------------------

@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_missing_package_names_the_extra_before_anything_is_written(
        tmp_path: Path, tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # import tracker -> ImportError
    with pytest.raises(ConfigError, match=rf"pip install 'noisyseg\[{tracker}\]'"):
        run(_config(tmp_path, tracker), progress=False)
    assert not (tmp_path / "run").exists()


def test_no_tracker_by_default_and_unknown_names_list_the_choices(tmp_path: Path) -> None:
    assert resolve().output.tracker is None
    with pytest.raises(ConfigError, match="output.tracker.*'tensorboard' or 'mlflow'"):
        resolve(output={"tracker": "wandb"})
