"""Ceilings and detection scores: the oracle reweighter, the noise region, the weight statistics,
fine-tuning from another run's weights, and the accuracy benchmark's recovery arithmetic."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import noisyseg
import noisyseg.loop
from noisyseg import ConfigError, Registry, build_plugin_manager
from noisyseg.components import StepContext
from noisyseg.data import noise_region
from noisyseg.testing import cpu_run_context
from noisyseg.weight_stats import WeightStats

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "dataset": {"name": "synthetic", "options": {"n_train": 32, "n_meta": 8, "n_test": 8, "size": 32,
                                                 "max_radius": 6.0}},
    "backbone": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
    "train": {"epochs": 1, "batch_size": 8},
    "output": {"figure_images": 0, "overwrite": True},
}


def disk(size: int, r: float, cy: float = 16, cx: float = 16) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)


def test_noise_region_is_the_union_grown_by_the_largest_noise_radius() -> None:
    clean = np.stack([disk(32, 5), disk(32, 4)])
    noisy = np.stack([disk(32, 8), disk(32, 4)])  # image 0 dilated by 3 px, image 1 untouched
    region = noise_region(clean, noisy)
    assert region[0].sum() > noisy[0].sum() and region[0][noisy[0] > 0].all()
    assert region[1][clean[1] > 0].all()  # the radius is the set's: image 1 gets the same band
    # a pixel more than 3 px (plus the boundary's half pixel) outside the union is outside
    assert not region[0][16, 16 + 8 + 5] and region[0][16, 16 + 8 + 2]
    assert not region[1][16, 16 + 4 + 5]


def test_weight_stats_scores_inside_the_region_and_the_mass_left_on_corrupted_pixels() -> None:
    stats = WeightStats(0)
    wrong = torch.tensor([[True, False, False, False]])
    region = torch.tensor([[True, True, False, False]])
    # the weight ranks the far (outside-region) clean pixels below the corrupted one: the
    # all-pixel AUROC is 1/3, the region AUROC (corrupted vs its clean neighbour) is 1
    stats.add(torch.tensor([[0.5, 1.0, 0.0, 0.0]]), wrong, region, budget=100)
    s = stats.summary()
    assert s["weight_auroc"] == pytest.approx(1 / 3)
    assert s["weight_auroc_region"] == 1.0
    assert s["weight_mass_corrupted"] == pytest.approx(0.5 / 1.5)
    assert s["corrupted_share"] == 0.25


def oracle(**options: object) -> noisyseg.Reweighter:
    return Registry(build_plugin_manager()).build("reweighter", "oracle", dict(options))


def test_oracle_drops_exactly_the_wrong_labels() -> None:
    run = cpu_run_context(2)
    assert run.clean_labels is not None
    r = oracle(normalise=False)
    r.setup(run)
    index = torch.tensor([3, 5])
    labels = run.clean_labels[index].clone()
    labels[0, :2] = 1 - labels[0, :2]  # two wrong rows
    loss = torch.rand(labels.shape)
    ctx = StepContext(model=None, optimizer=None, images=None, labels=labels, logits=None,
                      loss_map=loss, step=0, epoch=0, index=index,
                      clean_labels=run.clean_labels[index])
    w = r.weigh(ctx)
    assert torch.equal(w == 0, labels != run.clean_labels[index])
    normalised = oracle()
    normalised.setup(run)
    assert normalised.weigh(ctx).mean().item() == pytest.approx(1.0)
    balanced = oracle(balance=True, normalise=False)
    balanced.setup(run)
    w, truth = balanced.weigh(ctx), run.clean_labels[index]
    for c in (0, 1):  # each class's weight adds up to its true pixel count
        assert w[labels == c].sum().item() == pytest.approx(float((truth == c).sum()))


def test_oracle_refuses_a_run_whose_truth_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the clean training masks"):
        noisyseg.run(TINY, reweighter={"name": "oracle"}, noise={"name": "dilation", "rate": 0.0},
                     output={"dir": str(tmp_path / "x")}, progress=False)


def test_oracle_run_logs_perfect_detection_and_the_final_scores(tmp_path: Path) -> None:
    result = noisyseg.run(TINY, reweighter={"name": "oracle"}, output={"dir": str(tmp_path / "o")},
                          progress=False)
    m = result.metrics
    assert m["weight_auroc"] == 1.0 and m["weight_auroc_region"] == 1.0
    assert m["weight_mass_corrupted"] == 0.0 and m["corrupted_share"] > 0


def test_init_from_starts_from_the_other_runs_weights(tmp_path: Path) -> None:
    first = noisyseg.run(TINY, output={"dir": str(tmp_path / "a")}, progress=False)
    # a step of lr ~0 leaves the weights where init_from put them
    second = noisyseg.run(TINY, train={"epochs": 1, "batch_size": 8, "lr": 1e-12, "meta_only": True,
                                       "init_from": str(tmp_path / "a")},
                          output={"dir": str(tmp_path / "b")}, progress=False)
    for (name, p), q in zip(first.model.state_dict().items(), second.model.state_dict().values(),
                            strict=True):
        if p.is_floating_point() and "running" not in name:
            assert torch.allclose(p, q, atol=1e-6), name
    with pytest.raises(ConfigError, match="not found"):
        noisyseg.run(TINY, train={"init_from": str(tmp_path / "missing")},
                     output={"dir": str(tmp_path / "c")}, progress=False)
    with pytest.raises(ConfigError, match="do not fit this backbone"):
        noisyseg.run(TINY, backbone={"name": "unet", "options": {"base_channels": 8, "depth": 2}},
                     train={"init_from": str(tmp_path / "a")}, output={"dir": str(tmp_path / "d")},
                     progress=False)


def _benchmark_module(name: str):  # benchmarks/ is not a package; its scripts import each other
    import sys

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def _rows(dice: dict[tuple[str, float], float], seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Store-like rows of dataset 'd': (method, rate) -> Dice; 'clean' is none at rate 0."""
    return [{"dataset": "d", "noise": "none" if m == "clean" else "dilation",
             "rate": 0.0 if m == "clean" else r, "method": "none" if m == "clean" else m,
             "seed": s, "dice": v} for (m, r), v in dice.items() for s in seeds]


def test_recovery_is_measured_on_the_none_to_clean_gap() -> None:
    protocol = _benchmark_module("protocol")
    rows = [{"dataset": "d", "noise": n, "rate": r, "method": m, "seed": s, "dice": v}
            for (n, r, m, s, v) in [("none", 0.0, "none", 0, 0.9), ("none", 0.0, "none", 1, 0.8),
                                    ("dilation", 0.4, "none", 0, 0.7), ("dilation", 0.4, "none", 1, 0.6),
                                    ("dilation", 0.4, "oracle", 0, 0.85),
                                    ("dilation", 0.4, "oracle", 1, 0.7)]]
    rec, sd, seeds = protocol.recovery(rows, "d", "dilation", 0.4, "oracle")
    assert rec == pytest.approx(0.625) and seeds == 2  # (0.775 - 0.65) / (0.85 - 0.65)
    assert sd == pytest.approx(np.std([0.75, 0.5], ddof=1))
    assert math.isnan(protocol.recovery(rows, "d", "dilation", 0.4, "mcpm")[0])


def test_best_is_ranked_among_the_methods_run_at_both_rates() -> None:
    acc = _benchmark_module("accuracy")
    rows = _rows({("clean", 0.0): 0.9, ("none", 0.4): 0.7, ("none", 0.8): 0.5,
                  ("relabel_finetune", 0.4): 0.76, ("relabel_finetune", 0.8): 0.8,  # 0.3 / 0.75
                  ("finetune", 0.4): 0.78, ("finetune", 0.8): 0.55,  # 0.4 / 0.125: better at 0.4 only
                  ("mcpm", 0.4): 0.9})                                 # r = 0.4 only, recovery 1.0
    methods = ["clean", "none", "relabel_finetune", "finetune", "mcpm"]
    assert acc.headline(rows, ["d"], methods).startswith(
        "best=relabel_finetune recovery_r04=0.300 recovery_r08=0.750")
    only_04 = [r for r in rows if r["rate"] != 0.8]
    assert acc.headline(only_04, ["d"], methods).startswith("best=mcpm")


def test_methods_are_recipes_or_component_names() -> None:
    protocol = _benchmark_module("protocol")
    assert protocol.method_config("finetune_cal") == {"recipe": {"name": "finetune_cal"}}
    assert protocol.method_config("mcpm+plc+corrector.options.warmup_epochs=2") == {
        "recipe": {"name": "none"}, "reweighter": {"name": "mcpm"},
        "corrector": {"name": "plc", "options": {"warmup_epochs": 2}}}
    assert protocol.method_config("tloss") == {"recipe": {"name": "none"}, "loss": {"name": "tloss"}}
    with pytest.raises(SystemExit, match="'mcmp' is not a recipe"):
        protocol.method_config("mcmp")


def test_a_method_label_reaches_the_command_line_as_set_options() -> None:
    """Benchmarks that run ``noisyseg run`` (resume_check.py, scale_check.py) pass a label's
    settings as --set options: they give back the label's config."""
    import functools

    from noisyseg.config import merge, parse_assignment

    protocol = _benchmark_module("protocol")
    for label in ("none", "plc+coteaching", "mcpm+reweighter.options.interval_max=null",
                  "mcpm+reweighter.options.method=higher+corrector.options.warmup_epochs=2"):
        args = protocol.method_args(label)
        assert args[::2] == ["--set"] * (len(args) // 2)
        assert functools.reduce(merge, map(parse_assignment, args[1::2]), {}) == \
            protocol.method_config(label)


def test_no_benchmark_chains_runs_by_itself() -> None:
    """Chains of runs are recipes: no benchmark starts a run from another's weights."""
    chained = [p.name for p in (ROOT / "benchmarks").glob("*.py") if "init_from" in p.read_text()]
    assert not chained, f"{chained} set train.init_from; make the chain a recipe"


def test_accuracy_benchmark_runs_end_to_end_into_the_store(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    acc = _benchmark_module("accuracy")
    import sys

    monkeypatch.setenv("NOISYSEG_RESULTS_STORE", str(tmp_path / "store.sqlite"))
    argv = ["accuracy.py", "--preset", "smoke", "--datasets", "synthetic", "--rates", "0.4",
            "--seeds", "0", "--methods", "clean", "none", "oracle", "finetune", "--runs", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    acc.main()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("best=") and "oracle_recovery_r04=" in last
    rows = acc.store.rows()
    assert len(rows) == 4 and {r["method"] for r in rows} == {"none", "oracle", "finetune"}
    assert all(r["git_commit"] and r["config_digest"] and r["torch_version"] for r in rows)
    finetune = next(r for r in rows if r["method"] == "finetune")
    assert finetune["recipe"] == "finetune" and set(finetune["metrics"]["stages"]) == {
        "1-train", "2-finetune"}
    acc.main()  # again: every run is in the store for this commit, nothing runs twice
    assert len(acc.store.rows()) == 4


def test_select_on_meta_keeps_the_best_meta_epoch(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="train.train_on_meta=false"):
        noisyseg.run(TINY, train={"select_on_meta": True}, output={"dir": str(tmp_path / "x")},
                     progress=False)
    with pytest.raises(ConfigError, match="reweighter 'mcpm' learns its weights from them"):
        noisyseg.run(TINY, reweighter={"name": "mcpm"},
                     train={"select_on_meta": True, "train_on_meta": False},
                     output={"dir": str(tmp_path / "m")}, progress=False)
    original = noisyseg.loop.Loop._evaluate
    meta_scores = iter([0.5, float("nan"), 0.9, 0.7])  # epoch 3 is the best; a NaN is skipped

    def evaluate(self: noisyseg.loop.Loop, distances: bool, split: str = "test",
                 model: torch.nn.Module | None = None) -> dict:
        return {"dice": next(meta_scores)} if split == "meta" else original(self, distances, split, model)

    monkeypatch.setattr(noisyseg.loop.Loop, "_evaluate", evaluate)
    result = noisyseg.run(TINY, train={"epochs": 4, "batch_size": 8, "select_on_meta": True,
                                       "train_on_meta": False},
                          output={"dir": str(tmp_path / "s")}, progress=False)
    m, history = result.metrics, result.history
    assert m["selected_epoch"] == 3 and m["meta_dice"] == 0.9
    assert m["dice"] == pytest.approx(history[2]["test_dice"], abs=1e-12)
    # the model and init_from take the selected weights, not the last epoch's
    last = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False, map_location="cpu")["model"]
    selected = rundir_weights(tmp_path / "s")
    assert any(not torch.equal(last[k], selected[k]) for k in last)
    for k, v in result.model.state_dict().items():
        assert torch.equal(selected[k], v.cpu()), k


def rundir_weights(path: Path) -> dict[str, torch.Tensor]:
    from noisyseg.rundir import load_weights

    return load_weights(path)


def test_apply_weights_false_trains_on_the_plain_loss_but_logs_the_weights(tmp_path: Path) -> None:
    plain = noisyseg.run(TINY, output={"dir": str(tmp_path / "p")}, progress=False)
    detect = noisyseg.run(TINY, reweighter={"name": "oracle"}, train={"epochs": 1, "batch_size": 8,
                                                                      "apply_weights": False},
                          output={"dir": str(tmp_path / "d")}, progress=False)
    weighted = noisyseg.run(TINY, reweighter={"name": "oracle"}, output={"dir": str(tmp_path / "w")},
                            progress=False)
    assert detect.metrics["weight_auroc"] == 1.0  # the weights are still computed and scored
    assert detect.metrics["dice"] == plain.metrics["dice"]  # ... but not applied
    assert detect.history[-1]["train_loss"] == plain.history[-1]["train_loss"]
    assert weighted.history[-1]["train_loss"] != plain.history[-1]["train_loss"]


@pytest.mark.parametrize(("reweighter", "trained_on"), [("none", True), ("mwnet", False),
                                                        ("mcpm", True)])
def test_config_yaml_says_whether_the_meta_images_were_trained_on(
        tmp_path: Path, reweighter: str, trained_on: bool) -> None:
    """train.train_on_meta defaults by reweighter; the run's config.yaml records what it did."""
    import yaml

    noisyseg.run(TINY, reweighter={"name": reweighter}, train={"epochs": 1, "batch_size": 8},
                 output={"dir": str(tmp_path / "r")}, progress=False)
    written = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert written["train"]["train_on_meta"] is trained_on


def test_metrics_say_how_long_the_run_took_to_its_first_step(tmp_path: Path) -> None:
    import time

    asked = time.perf_counter()
    result = noisyseg.run(TINY, output={"dir": str(tmp_path / "r")}, progress=False)
    whole = time.perf_counter() - asked
    first = result.metrics["seconds_to_first_step"]
    assert 0 < first < whole
