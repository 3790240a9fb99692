from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from noisyseg import ConfigError, Reweighter, StepContext, build_plugin_manager, hookimpl, run
from noisyseg.build import resolve_device
from noisyseg.rundir import TIMINGS
from noisyseg.testing import tiny_run_config


def _run(tmp_path: Path, name: str, **overrides: object):
    overrides.setdefault("output", {"dir": str(tmp_path / name)})
    config = tiny_run_config(**overrides)
    return run(config, progress=False)


def test_run_writes_every_file_and_is_deterministic(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", seed=1, train={"epochs": 2})
    b = _run(tmp_path, "b", seed=1, train={"epochs": 2})
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "checkpoint.pt", "examples.png",
                 "curves.png"):
        assert (a.run_dir / name).is_file(), name
    assert _untimed(a.metrics) == _untimed(b.metrics)
    lines = (a.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    final = json.loads((a.run_dir / "metrics.json").read_text())
    assert {"dice", "iou", "hd", "hd95"} <= set(final)
    ckpt = torch.load(a.run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and "model" in ckpt and "optimizer" in ckpt


def test_noise_rate_and_label_error(tmp_path: Path) -> None:
    clean = _run(tmp_path, "c", noise={"rate": 0.0})
    noisy = _run(tmp_path, "n", noise={"rate": 1.0, "options": {"min_radius": 2}})
    assert clean.history[0]["label_error"] == 0
    assert noisy.history[0]["label_error"] > 0.02


def test_max_steps_and_lr_decay(tmp_path: Path) -> None:
    r = _run(tmp_path, "s", train={"epochs": 3, "max_steps": 5, "lr_decay_epochs": [1],
                                   "batch_size": 8, "schedule": "step"})
    assert r.metrics["steps"] == 5
    assert [h["lr"] for h in r.history] == pytest.approx([1e-3, 1e-4])
    r = _run(tmp_path, "c", train={"epochs": 4, "max_steps": 12, "schedule": "cosine"})
    assert [h["lr"] for h in r.history] == pytest.approx([1e-3, 0.5e-3 * (1 + 0.5 ** 0.5), 0.5e-3])


def test_existing_run_directory_is_not_overwritten(tmp_path: Path) -> None:
    _run(tmp_path, "x")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        _run(tmp_path, "x")
    r = _run(tmp_path, "x", output={"dir": str(tmp_path / "x"), "overwrite": True})
    assert len((r.run_dir / "metrics.jsonl").read_text().splitlines()) == 1


class MetaNeeder(Reweighter):
    """Needs a meta batch; checks that it gets one."""

    name = "metaneeder"
    needs_meta_batch = True

    def weigh(self, ctx: StepContext) -> torch.Tensor:
        assert ctx.meta_images is not None and ctx.meta_labels is not None
        assert ctx.meta_images.shape[1:] == ctx.images.shape[1:]
        return torch.ones_like(ctx.loss_map)


class MetaPlugin:
    @hookimpl
    def register_reweighters(self) -> list[type[Reweighter]]:
        return [MetaNeeder]


def test_meta_batches_fed_and_missing_meta_set_fails_before_writing(tmp_path: Path) -> None:
    pm = build_plugin_manager(plugins=[MetaPlugin()])
    config = tiny_run_config(reweighter={"name": "metaneeder"}, output={"dir": str(tmp_path / "m")})
    result = run(config, plugin_manager=pm, progress=False)
    # the meta images are not added to the training set when the reweighter uses them
    assert result.history[0]["step"] == 24 // 8
    config["dataset"]["options"]["n_meta"] = 0
    config["output"]["dir"] = str(tmp_path / "none")
    with pytest.raises(ConfigError, match="needs a clean meta set"):
        run(config, plugin_manager=pm, progress=False)
    assert not (tmp_path / "none").exists()


def test_train_on_meta_by_default_for_plain_methods(tmp_path: Path) -> None:
    r = _run(tmp_path, "t")
    assert r.history[0]["step"] == (24 + 8) // 8
    r = _run(tmp_path, "f", train={"train_on_meta": False})
    assert r.history[0]["step"] == 24 // 8


def test_multiclass_run_on_mni152(tmp_path: Path) -> None:
    r = _run(tmp_path, "mni", dataset={"name": "mni152", "options": {"labels": "both",
                                                                     "slice_step": 8}},
             train={"max_steps": 3})
    assert "dice_class2" in r.metrics


def test_smp_backbone_trains(tmp_path: Path) -> None:
    r = _run(tmp_path, "smp", backbone={"name": "smp", "options": {"encoder_name": "resnet18"}},
             train={"max_steps": 2})
    # the reported Dice is the one of the trained smp network's own test predictions (padded to
    # the encoder's stride and cropped back to 32x32)
    from noisyseg import Registry
    from noisyseg.metrics import evaluate
    from noisyseg.step import predict_all

    options = r.config.dataset.options
    test = Registry(build_plugin_manager()).build("dataset", "synthetic", options).load(r.config.seed).test
    device = next(r.model.parameters()).device
    preds = predict_all(r.model, torch.from_numpy(test.images), device)
    assert preds.shape == test.masks.shape == (8, 32, 32)
    assert r.metrics["dice"] == pytest.approx(evaluate(preds, test.masks, 2)["dice"], abs=1e-12)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu:0")


@pytest.mark.parametrize("name", ["mcpm", "mwnet", "l2rw"])
def test_meta_reweighter_runs_are_deterministic_and_log_noise_detection(tmp_path: Path,
                                                                        name: str) -> None:
    a = _run(tmp_path, "a", seed=3, reweighter={"name": name}, noise={"rate": 0.5})
    b = _run(tmp_path, "b", seed=3, reweighter={"name": name}, noise={"rate": 0.5})
    assert _untimed(a.metrics) == _untimed(b.metrics)
    ha, hb = a.history[0], b.history[0]
    assert ha["weight_auroc"] == hb["weight_auroc"]
    assert 0 <= ha["weight_auroc"] <= 1
    assert ha["weight_mean_corrupted"] >= 0 and ha["weight_mean_clean"] >= 0
    ckpt = torch.load(a.run_dir / "checkpoint.pt", weights_only=False)
    if name != "l2rw":
        assert "net" in ckpt["reweighter"] and "optimizer" in ckpt["reweighter"]


def test_mcpm_with_plc_through_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from noisyseg.cli import cli

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_run_config(
        train={"epochs": 2}, corrector={"name": "plc", "options": {"warmup_epochs": 0, "delta": 0.6,
                                                                    "delta_min": 0.6}},
    )))
    result = CliRunner().invoke(cli, ["run", "--config", str(config), "--reweighter", "mcpm",
                                      "--noise-rate", "1", "--out", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all({"plc_delta", "plc_flipped", "labels_changed", "label_change_precision",
                "weight_auroc"} <= set(x) for x in lines)
    assert sum(x["labels_changed"] for x in lines) == sum(x["plc_flipped"] for x in lines) > 0
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert final["train_label_error_final"] == lines[-1]["label_error"]
    assert final["train_label_error_final"] != final["train_label_error_initial"]
    assert "training labels:" in result.output
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ckpt["corrector"]["labels"].shape[1:] == (32, 32)


def test_coteaching_run_is_deterministic_and_logs_kept_precision(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", seed=3, reweighter={"name": "coteaching", "options": {"num_gradual": 0}},
             train={"epochs": 2})
    b = _run(tmp_path, "b", seed=3, reweighter={"name": "coteaching", "options": {"num_gradual": 0}},
             train={"epochs": 2})
    assert _untimed(a.metrics) == _untimed(b.metrics)
    assert 0 < a.history[-1]["weight_on_clean"] <= 1
    ckpt = torch.load(a.run_dir / "checkpoint.pt", weights_only=False)
    assert set(ckpt["reweighter"]) == {"peer", "peer_optimizer"}


def test_meta_only_trains_on_the_clean_meta_images(tmp_path: Path) -> None:
    r = _run(tmp_path, "m", train={"meta_only": True}, noise={"rate": 1.0})
    assert r.history[0]["step"] == 8 // 8 and r.history[0]["label_error"] == 0


def test_eval_every_scores_the_test_split_every_n_epochs_and_at_the_last(tmp_path: Path) -> None:
    scored = {}
    for every in (2, 0):
        r = run(tiny_run_config(train={"epochs": 3, "eval_every": every}),
                         output={"dir": str(tmp_path / str(every))}, progress=False)
        scored[every] = [h["epoch"] for h in r.history if "test_dice" in h]
        assert 0 <= r.metrics["dice"] <= 1 and (tmp_path / str(every) / "curves.png").exists()
    assert scored == {2: [2, 3], 0: []}


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMINGS}
