"""Your own data, scored honestly: a folder dataset written here, bad copies of it, a short run.

    python benchmarks/own_data.py             # about 30 s on 2 CPU cores
    python benchmarks/own_data.py --out DIR   # keep the data and the runs

It writes 40 PNG images (32x32) with 0/255 blob masks (5 of them without a blob) to a temp dir,
plus two bad copies, and checks:

* stray_value_error: one mask anti-aliased (a pixel of 128, one of 254) makes ``noisyseg run``
  fail with exit code 2 and an error naming that mask file;
* nan_names_file: one image saved as float32 .npy with a NaN makes it fail naming that image;
* binary_headline_is_foreground: a short run on the clean folder through ``noisyseg.run`` reports
  a headline Dice equal (1e-9) to the foreground Dice recomputed here from the model's test
  predictions (images with no foreground in truth and prediction left out);
* monai_max_abs_diff: the largest difference between our Dice, IoU, HD and HD95 and MONAI's on
  50 random 10x10 mask pairs of 2 to 4 classes (every class in both masks). MONAI's HD95 carries
  float32 rounding that grows with the distances (see noisyseg.metrics); the line before the last
  shows it on 64x64 pairs.

Last line: ``stray_value_error=<true|false> nan_names_file=<true|false>
binary_headline_is_foreground=<true|false> monai_max_abs_diff=<x>``, also a row of the results
store (benchmark ``own_data``, dataset folder, preset ``40x32px``; metrics the last line's, the
two Dice of the third check and the 64x64 MONAI differences).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import store
import torch
from PIL import Image

import noisyseg
from noisyseg import Registry, build_plugin_manager
from noisyseg.metrics import evaluate
from noisyseg.step import predict_all
from noisyseg.testing import label_fields, monai_metrics

BENCHMARK = "own_data"
SMALL = {"backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 2}},
         "train": {"batch_size": 8, "lr": 0.01}, "noise": {"rate": 0.0}, "device": "cpu"}


def write_folder(root: Path, n: int = 40, size: int = 32, seed: int = 0) -> Path:
    """PNG images (a bright blob on noise) and 0/255 PNG masks; every 8th without a blob."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(8, size - 8, 2)
        radius = rng.uniform(3, 7) * (i % 8 != 3)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image = rng.uniform(0, 90, (size, size)) + 140 * mask
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"case{i:02d}.png")
    return root


def cli_error(root: Path, out: Path) -> tuple[int, str]:
    """Exit code and stderr of ``noisyseg run`` on the folder at ``root``."""
    done = subprocess.run(
        [sys.executable, "-m", "noisyseg", "run", "--dataset", "folder", "--set",
         f"dataset.options.root={root}", "--epochs", "2", "--batch-size", "8", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )
    return done.returncode, done.stderr.strip()


def stray_value_error(clean: Path, tmp: Path) -> bool:
    root = tmp / "anti-aliased"
    shutil.copytree(clean, root)
    path = root / "masks" / "case07.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[0, :2] = 128, 254
    Image.fromarray(mask).save(path)
    code, err = cli_error(root, tmp / "run-anti-aliased")
    print(f"anti-aliased mask: exit {code}: {err}")
    return code == 2 and "masks/case07.png" in err and "128, 254" in err


def nan_names_file(clean: Path, tmp: Path) -> bool:
    root = tmp / "nan-image"
    shutil.copytree(clean, root)
    image = np.asarray(Image.open(root / "images" / "case11.png"), dtype=np.float32) / 255
    image[5, 9] = np.nan
    (root / "images" / "case11.png").unlink()
    np.save(root / "images" / "case11.npy", image)
    code, err = cli_error(root, tmp / "run-nan")
    print(f"NaN image: exit {code}: {err}")
    return code == 2 and "images/case11.npy" in err and "(5, 9)" in err


def foreground_dice(preds: np.ndarray, truths: np.ndarray) -> float:
    """Mean Dice of class 1 over the images where it is in the truth or the prediction."""
    scores = []
    for p, t in zip(preds == 1, truths == 1, strict=True):
        if p.any() or t.any():
            scores.append(2 * (p & t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores))


def binary_headline_is_foreground(clean: Path, tmp: Path) -> tuple[bool, float, float]:
    """Whether the headline Dice is the foreground Dice recomputed here; both Dice."""
    dataset = {"name": "folder", "options": {"root": str(clean)}}
    config = {**SMALL, "dataset": dataset, "train": {**SMALL["train"], "epochs": 12},
              "output": {"dir": str(tmp / "run-clean"), "figure_images": 0}}
    result = noisyseg.run(config, progress=False)
    splits = Registry(build_plugin_manager()).build("dataset", "folder", dataset["options"]).load(0)
    test = splits.test
    preds = predict_all(result.model, torch.from_numpy(test.images), torch.device("cpu"),
                        window=tuple(splits.train.images.shape[2:]))  # as the run scores
    ours = foreground_dice(preds, test.masks)
    empty = [i for i, t in enumerate(test.masks) if not t.any()]
    left_out = [i for i in empty if not preds[i].any()]
    flattered = (ours * (len(test) - len(left_out)) + len(left_out)) / len(test)
    print(f"clean folder: headline Dice {result.metrics['dice']:.6f}, foreground Dice recomputed "
          f"{ours:.6f}; test masks without foreground: {empty}, left out (nothing predicted): {left_out}; "
          f"scoring those 1 would give {flattered:.6f}")
    return abs(result.metrics["dice"] - ours) <= 1e-9, result.metrics["dice"], ours


def monai_differences(pairs: int, size: int) -> tuple[float, float]:
    """Largest absolute and relative difference from MONAI on random mask pairs."""
    worst_abs = worst_rel = 0.0
    for i in range(pairs):
        k = 2 + i % 3
        truth, pred = label_fields(1, size, k, seed=2 * i), label_fields(1, size, k, seed=2 * i + 1)
        ours, theirs = evaluate(pred, truth, k), monai_metrics(pred, truth, k)
        for key, value in ours.items():
            diff = abs(value - theirs[key])
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / max(abs(value), 1e-12))
    return worst_abs, worst_rel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    tmp = args.out or Path(tempfile.mkdtemp(prefix="noisyseg-own-data-"))
    clean = write_folder(tmp / "clean")
    stray = stray_value_error(clean, tmp)
    nan = nan_names_file(clean, tmp)
    headline, headline_dice, foreground = binary_headline_is_foreground(clean, tmp)
    diff, _ = monai_differences(50, 10)
    big_abs, big_rel = monai_differences(20, 64)
    print(f"MONAI on 64x64 pairs: max abs diff {big_abs:.2e}, max relative {big_rel:.2e} "
          "(MONAI's float32 distances)")
    if args.out is None:
        shutil.rmtree(tmp)
    print(f"stray_value_error={str(stray).lower()} nan_names_file={str(nan).lower()} "
          f"binary_headline_is_foreground={str(headline).lower()} monai_max_abs_diff={diff:.3g}")
    store.record(benchmark=BENCHMARK, preset="40x32px", dataset="folder", device="cpu", metrics={
        "stray_value_error": stray, "nan_names_file": nan, "binary_headline_is_foreground": headline,
        "monai_max_abs_diff": diff, "headline_dice": headline_dice, "foreground_dice": foreground,
        "monai_64px_max_abs_diff": big_abs, "monai_64px_max_rel_diff": big_rel})


if __name__ == "__main__":
    main()
