"""noisyseg audit: the ranking, its scores, memory, the user's file formats and bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import noisyseg
from noisyseg import ConfigError, DataError
from noisyseg.auditor import (
    SIGNALS,
    PixelCurve,
    precision_at_k,
    score_batch,
    suspected_kind,
)
from noisyseg.cli import cli
from noisyseg.data import fold_of
from noisyseg.metrics import detection_auroc
from noisyseg.testing import tiny_run_config


def _tiny(tmp_path: Path, name: str, **overrides: object) -> dict:
    overrides.setdefault("output", {"dir": str(tmp_path / name), "figure_images": 0})
    return tiny_run_config(**overrides)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- the ranking
def test_the_ranking_puts_the_corrupted_masks_first(tmp_path: Path) -> None:
    """Eroded masks, out-of-sample folds: an untrained network ranks them last (they are the
    smaller ones), so a high AUROC needs a network that learned the lesions."""
    config = _tiny(tmp_path, "audit",
                   dataset={"options": {"n_train": 64, "size": 24, "min_radius": 3.0,
                                        "max_radius": 6.0, "max_blobs": 2}},
                   backbone={"options": {"base_channels": 8}},
                   train={"epochs": 12, "lr": 5e-3, "eval_every": 0},
                   noise={"name": "erosion", "rate": 0.5, "options": {"min_radius": 2, "max_radius": 3}})
    result = noisyseg.audit(config, folds=2, progress=False, top=6)
    s = result.summary
    # measured 0.82 / 0.75 (seeds 1-3: 0.92, 0.92, 0.95)
    assert s["image_auroc"] > 0.75 and s["precision_at_k"] > 0.65, s
    assert s["signal"] == "boundary" and s["wrong_images"] == 32 and not s["in_sample"]
    assert 0 < s["pixel_auprc"] <= 1 and s["peak_rss_mb"] > 0
    rows = _csv(result.audit_dir / "audit.csv")
    assert len(rows) == 64 and [int(r["rank"]) for r in rows] == list(range(1, 65))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["fold"] for r in rows} == {"1", "2"}
    assert {r["kind"] for r in rows} <= {"", "too large", "too small", "misplaced", "missing"}
    top = [r for r in rows[:16] if r["truly_wrong"] == "True"]
    assert sum(r["kind"] == "too small" for r in top) > len(top) / 2  # eroded: drawn too small
    assert sorted(p.name for p in (result.audit_dir / "suggested").iterdir()) == \
        [f"train-{i:05d}.png" for i in range(64)]
    assert (result.audit_dir / "audit.png").stat().st_size > 0
    assert (result.audit_dir / "fold-1" / "metrics.json").is_file()


# --------------------------------------------------------------------------- the scores
def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64)


def test_score_batch_signals_and_kinds_on_hand_made_masks() -> None:
    pred = _disk(32, 16, 16, 6)
    probs = np.stack([1.0 - pred, pred]).astype(np.float32)[None].repeat(5, 0) * 0.9 + 0.05
    given = np.stack([pred, _disk(32, 16, 16, 8), _disk(32, 16, 16, 4), _disk(32, 16, 22, 6),
                      np.zeros((32, 32), np.int64)])
    b = score_batch(probs, given)
    assert b.kinds == ["", "too large", "too small", "misplaced", "missing"]
    assert b.signals["boundary"][0] == 0 and b.signals["dice"][0] == 0
    assert all(b.signals[s][0] < b.signals[s][k] for s in SIGNALS for k in range(1, 5))
    assert b.wrong_share[1] == pytest.approx((given[1] != pred).mean())
    # boundary: flagged pixels per outline pixel, about the 2 px between radius 8 and radius 6
    assert 1.5 < b.signals["boundary"][1] < 2.5
    assert np.array_equal(b.pred, np.repeat(pred[None], 5, 0))
    assert b.pixel.shape == (5, 32, 32)


def test_a_missing_object_beside_a_kept_one_is_missing() -> None:
    given = _disk(32, 8, 8, 4).astype(bool)
    pred = given | _disk(32, 22, 22, 5).astype(bool)
    assert suspected_kind(given, pred) == "missing"
    assert suspected_kind(given, given | _disk(32, 8, 8, 6).astype(bool)) == "too small"


def test_softmin_is_cleanlab_s_image_score() -> None:
    from cleanlab.segmentation.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3, 16, 16))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, size=(6, 16, 16))
    quality, pixel = get_label_quality_scores(labels, probs, verbose=False)
    b = score_batch(probs.astype(np.float32), labels)
    assert b.signals["softmin"] == pytest.approx(1 - quality, abs=1e-5)
    assert b.pixel == pytest.approx(1 - pixel, abs=1e-6)


def test_pixel_curve_matches_exact_scores_on_binned_values() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    wrong = rng.random(5000) < 0.1
    scores = np.clip(rng.normal(0.3 + 0.3 * wrong, 0.2), 0, 1)
    binned = np.clip(np.floor(scores * 4096), 0, 4095)
    curve = PixelCurve()
    for part in np.array_split(np.arange(5000), 7):  # streamed in pieces
        curve.add(scores[part], wrong[part])
    assert curve.auprc() == pytest.approx(average_precision_score(wrong, binned), abs=1e-12)
    assert curve.auroc() == pytest.approx(detection_auroc(binned, wrong), abs=1e-12)
    assert np.isnan(PixelCurve().auprc())


def test_precision_at_k() -> None:
    assert precision_at_k(np.array([0.9, 0.8, 0.1, 0.7]), np.array([1, 0, 0, 1])) == 0.5
    assert precision_at_k(np.array([0.9, 0.8, 0.1, 0.7]), np.array([1, 0, 0, 1]), k=1) == 1.0
    assert np.isnan(precision_at_k(np.ones(3), np.zeros(3)))


# --------------------------------------------------------------------------- folds
def test_fold_of_keeps_groups_together_and_fills_every_fold() -> None:
    groups = np.repeat(np.arange(7), [1, 3, 2, 5, 1, 1, 4])
    fold = fold_of(len(groups), 3, seed=4, groups=groups)
    assert set(fold.tolist()) == {0, 1, 2}
    assert all(len(set(fold[groups == g].tolist())) == 1 for g in range(7))
    assert np.array_equal(fold, fold_of(len(groups), 3, seed=4, groups=groups))
    plain = fold_of(10, 3, seed=0)
    assert sorted(np.bincount(plain).tolist()) == [3, 3, 4]
    with pytest.raises(DataError, match="3 folds need at least 3"):
        fold_of(10, 3, seed=0, groups=np.array([0] * 5 + [1] * 5))


@pytest.mark.parametrize("noise", ["dilation", "elastic"])
def test_a_fold_run_trains_on_the_masks_of_the_whole_noisy_split(registry, noise: str) -> None:
    from noisyseg.data import build_train_set

    splits = registry.build("dataset", "synthetic", {"size": 32, "n_train": 40, "n_meta": 4,
                                                     "n_test": 4}).load(0)
    model = registry.build("noise", noise, {})
    whole = build_train_set(splits, model, 0.5, 3, include_meta=False)
    part = build_train_set(splits, model, 0.5, 3, include_meta=True, exclude_fold=(1, 3))
    keep = np.flatnonzero(fold_of(40, 3, 3) != 1)
    assert len(part) == len(keep) + 4 and part.noisy.dtype == torch.uint8
    for name in ("noisy", "clean", "corrupted"):
        assert np.array_equal(getattr(whole, name).numpy()[keep],
                              getattr(part, name).numpy()[: len(keep)]), name
    assert part.corrupted[: len(keep)].any() and not part.corrupted[len(keep):].any()


def test_exclude_fold_leaves_a_fold_of_the_noisy_training_images_out(tmp_path: Path) -> None:
    r = noisyseg.run(_tiny(tmp_path, "f", train={"exclude_fold": [1, 2]}), progress=False)
    assert r.history[0]["step"] == (12 + 8) // 8  # 12 of 24 training images, 8 meta images
    assert r.config.train.exclude_fold == (1, 2)
    with pytest.raises(ConfigError, match="exclude_fold"):
        noisyseg.run(_tiny(tmp_path, "g", train={"exclude_fold": [2, 2]}), progress=False)


def test_a_recipe_audit_goes_on_from_its_finished_folds(tmp_path: Path) -> None:
    config = _tiny(tmp_path, "a", recipe={"name": "finetune"}, train={"max_steps": 2})
    first = noisyseg.audit(config, folds=2, progress=False, top=2)
    stage = first.audit_dir / "fold-1" / "2-finetune" / "checkpoint.pt"
    stamp = stage.stat().st_mtime_ns
    (first.audit_dir / "audit.json").unlink()  # as if it had stopped after its folds
    second = noisyseg.audit(config, folds=2, progress=False, top=2)
    assert stage.stat().st_mtime_ns == stamp
    assert [r["score"] for r in first.rows] == [r["score"] for r in second.rows]
    inside = noisyseg.audit(from_run=first.audit_dir / "fold-1", progress=False, top=0)
    assert inside.summary["in_sample"] and inside.audit_dir == first.audit_dir / "fold-1" / "audit"
    assert not (inside.audit_dir / "audit.png").exists()


def test_an_audit_goes_on_from_its_finished_fold_runs(tmp_path: Path) -> None:
    """A fold run's config.yaml (train_on_meta as its reweighter resolved it) is the config the
    audit expects: a finished fold is not trained again."""
    config = _tiny(tmp_path, "p", train={"max_steps": 2})
    first = noisyseg.audit(config, folds=2, progress=False, top=2)
    checkpoint = first.audit_dir / "fold-1" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    (first.audit_dir / "audit.json").unlink()
    second = noisyseg.audit(config, folds=2, progress=False, top=2)
    assert checkpoint.stat().st_mtime_ns == stamp
    assert [r["score"] for r in first.rows] == [r["score"] for r in second.rows]


# --------------------------------------------------------------------------- memory
_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import noisyseg
r = noisyseg.audit(from_run=sys.argv[1], progress=False, top=2)
print(json.dumps(r.summary["peak_rss_mb"]))
"""


def test_peak_memory_grows_with_the_data_set_only(tmp_path: Path) -> None:
    """Scores stream a chunk of images at a time: 4x the images add about the data set's own
    size (its images, masks and the cache's byte masks while they are read), not a copy of
    every image's class probabilities, pixel scores and prediction (80 kB an image here, 60 MB
    in all). Measured: 43 MB for 39 MB of data."""
    peaks = {}
    for n in (256, 1024):
        run = _tiny(tmp_path, f"r{n}", dataset={"options": {"n_train": n, "size": 64, "n_meta": 4,
                                                             "n_test": 4}},
                    train={"max_steps": 1, "eval_every": 0})
        noisyseg.run(run, progress=False)
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / f"r{n}")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    data_mb = (1024 - 256) * 64 * 64 * (4 + 8 + 1) / 2**20  # float32, int64 and uint8 per pixel
    assert peaks[1024] - peaks[256] < 1.25 * data_mb + 20, (peaks, data_mb)


# --------------------------------------------------------------------------- your files
def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("stream", [False, True])
def test_suggested_masks_are_pngs_like_the_user_s(tmp_path: Path, folder_dataset: Path,
                                                  stream: bool) -> None:
    from PIL import Image

    root = folder_dataset  # 10 PNG masks of 0 and 255
    before = _digest(root / "masks")
    options = {"root": str(root), "stream": stream, "cache_dir": str(tmp_path / "cache")}
    config = _tiny(tmp_path, "audit", dataset={"name": "folder", "options": options},
                   noise={"name": "none"}, train={"max_steps": 2})
    result = noisyseg.audit(config, folds=2, progress=False, top=3)
    rows = _csv(result.audit_dir / "audit.csv")
    names = sorted(r["name"] for r in rows)
    assert names and all(n.startswith("masks/case") for n in names)
    assert "truly_wrong" not in rows[0] and not result.summary["truth_known"]
    written = sorted((result.audit_dir / "suggested").iterdir())
    assert [p.name for p in written] == [Path(n).name for n in names]
    for path in written:
        with Image.open(path) as img:
            assert img.mode == "L" and set(np.unique(np.asarray(img)).tolist()) <= {0, 255}
    assert _digest(root / "masks") == before  # the user's masks are untouched


def test_suggested_masks_of_nifti_slices_are_volumes_like_the_user_s(tmp_path: Path) -> None:
    import nibabel as nib

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for i in range(5):
        mask = np.stack([_disk(24, 12 + i, 11, 4 + z % 2) for z in range(4)], -1).astype(np.uint8)
        image = (rng.normal(0, 0.1, mask.shape) + mask).astype(np.float32)
        nib.Nifti1Image(image, affine).to_filename(root / "images" / f"vol{i}.nii.gz")
        nib.Nifti1Image(mask, affine).to_filename(root / "masks" / f"vol{i}.nii.gz")
    config = _tiny(tmp_path, "audit", dataset={"name": "folder", "options": {"root": str(root)}},
                   noise={"name": "dilation", "rate": 0.5}, train={"max_steps": 2})
    result = noisyseg.audit(config, folds=2, progress=False, top=2)
    rows = _csv(result.audit_dir / "audit.csv")
    files = {r["name"].rsplit(":", 1)[0] for r in rows}
    assert len(rows) == 4 * len(files) and all(":" in r["name"] for r in rows)
    for f in files:  # a volume's slices are near copies: they share a fold
        assert len({r["fold"] for r in rows if r["name"].startswith(f + ":")}) == 1
    for f in files:
        source = nib.load(root / f)
        out = nib.load(result.audit_dir / "suggested" / Path(f).name)
        assert out.shape == source.shape and np.allclose(out.affine, affine)
        assert out.get_data_dtype() == source.get_data_dtype()
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1}


# --------------------------------------------------------------------------- bad input
def test_a_folder_without_masks_fails_naming_it_and_writes_nothing(tmp_path: Path,
                                                                    folder_dataset: Path) -> None:
    root = folder_dataset
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    out = tmp_path / "audit"
    with pytest.raises(DataError, match="no 'masks' folder"):
        noisyseg.audit(_tiny(tmp_path, "audit", dataset={"name": "folder", "options": {"root": str(root)}}),
                       folds=2, progress=False)
    assert not out.exists()
    result = CliRunner().invoke(cli, ["audit", "--dataset", "folder", "--set",
                                      f"dataset.options.root={root}", "--out", str(out), "-q"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "masks" in result.output and not out.exists()


def test_more_folds_than_images_fails_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--folds 40: dataset 'synthetic' has 24 training images"):
        noisyseg.audit(_tiny(tmp_path, "audit"), folds=40, progress=False)
    assert not (tmp_path / "audit").exists()
    with pytest.raises(ConfigError, match="--folds 1"):
        noisyseg.audit(_tiny(tmp_path, "audit"), folds=1, progress=False)
    with pytest.raises(ConfigError, match="unknown signal 'dise'; choose one of: boundary"):
        noisyseg.audit(_tiny(tmp_path, "audit"), signal="dise", progress=False)


def test_a_run_of_another_data_set_or_unfinished_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    noisyseg.run(_tiny(tmp_path, "run", train={"max_steps": 1}), progress=False)
    with pytest.raises(ConfigError, match=r"dataset\.options\.n_train: 24 in .*config\.yaml, 30 here"):
        noisyseg.audit(from_run=run_dir, dataset={"options": {"n_train": 30}}, progress=False)
    with pytest.raises(ConfigError, match="--folds 2 with --from"):
        noisyseg.audit(from_run=run_dir, folds=2, progress=False)
    with pytest.raises(ConfigError, match="no run there"):
        noisyseg.audit(from_run=tmp_path / "nothing", progress=False)
    (run_dir / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="has not finished"):
        noisyseg.audit(from_run=run_dir, progress=False)
    assert not (run_dir / "audit").exists()


# --------------------------------------------------------------------------- command line
def test_the_command_line_audits_folds_and_a_finished_run(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_run_config(train={"max_steps": 2})))
    out = tmp_path / "audit"
    result = CliRunner().invoke(cli, ["audit", "--config", str(config), "--folds", "2", "--out",
                                      str(out), "--top", "3", "--signal", "dice", "-q"])
    assert result.exit_code == 0, result.output
    assert f"audit directory: {out}" in result.output and "#1 " in result.output
    assert "known truth:" in result.output and "image AUROC" in result.output
    summary = json.loads((out / "audit.json").read_text())
    assert summary["folds"] == 2 and summary["signal"] == "dice"
    for name in ("audit.csv", "audit.png", "suggested", "fold-1", "fold-2"):
        assert (out / name).exists(), name
    again = CliRunner().invoke(cli, ["audit", "--config", str(config), "--folds", "2", "--out", str(out)])
    assert again.exit_code == 2 and "already holds a finished audit" in again.output
    inside = CliRunner().invoke(cli, ["audit", "--from", str(out / "fold-1"), "-q"])
    assert inside.exit_code == 0, inside.output
    assert "in sample" in inside.output
    rows = _csv(out / "fold-1" / "audit" / "audit.csv")
    assert {r["fold"] for r in rows} == {"in-sample"}


def test_the_command_line_offers_every_signal() -> None:
    from noisyseg.auditor import DEFAULT_SIGNAL

    option = next(p for p in cli.commands["audit"].params if p.name == "signal")
    assert list(option.type.choices) == list(SIGNALS)
    assert f"default: {DEFAULT_SIGNAL}" in option.help


# --------------------------------------------------------------------------- the benchmark
def test_the_benchmark_stores_each_setting_once_and_prints_its_last_line(tmp_path: Path) -> None:
    import re
    import sqlite3

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "audit.py"
    results = tmp_path / "results.sqlite"
    env = {**os.environ, "NOISYSEG_RESULTS_STORE": str(results)}
    command = [sys.executable, str(script), "--preset", "smoke", "--datasets", "synthetic", "--noises",
               "dilation", "--seeds", "0", "--folds", "2", "--memory", "--runs", str(tmp_path / "runs")]
    for _ in range(2):  # the second time the setting is in the store for this commit: not run again
        out = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        last = out.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"audit_auroc=[\d.]+ cleanlab_auroc=[\d.]+ audit_p_at_k=[\d.]+ "
                            r"peak_rss_mb=nan", last), last
    assert "in the store already" in out.stdout
    with sqlite3.connect(results) as db:
        rows = db.execute("SELECT benchmark, preset, dataset, noise, rate, method, seed, metrics, "
                          "config_digest, git_commit FROM runs").fetchall()
    assert len(rows) == 1 and rows[0][:7] == ("audit", "smoke", "synthetic", "dilation", 0.4, "none", 0)
    metrics = json.loads(rows[0][7])
    assert set(metrics["signals"]) == set(SIGNALS) and metrics["folds"] == 2
    assert metrics["cleanlab"]["version"] and 0 <= metrics["cleanlab"]["image_auroc"] <= 1
    assert rows[0][8] and rows[0][9]
    assert "cleanlab " in out.stderr
