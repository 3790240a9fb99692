"""Why perfect reweighting does not reach clean-label training: where the oracle's errors are.

    python benchmarks/oracle_gap.py        # after benchmarks/accuracy.py (reads its run directories)

For the runs of benchmarks/accuracy.py (clean, none, oracle, relabel when present) it predicts the
test split again and splits the Dice loss into its two sides, pooled over the test pixels:
precision (how much of the predicted foreground is true: low = over-segmentation, the bias
dilation noise teaches) and recall (how much true foreground is found). It also counts, on the
training set, the share of background labels within 3 px of an object that the oracle leaves
(dilation removes exactly these from the corrupted images). The last line is
``oracle_precision=<p> oracle_recall=<r> clean_precision=<p> clean_recall=<r> none_precision=<p>``
(synthetic, r = 0.4, mean over seeds).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from noisyseg import Registry, build_plugin_manager
from noisyseg.config import resolve
from noisyseg.data import build_train_set
from noisyseg.rundir import load_weights
from noisyseg.step import predict_all

HERE = Path(__file__).resolve().parent


def precision_recall(run_dir: Path) -> tuple[float, float, float]:
    """(precision, recall, near-object background kept) of one finished run."""
    cfg = resolve(run_dir / "config.yaml")
    registry = Registry(build_plugin_manager())
    splits = registry.build("dataset", cfg.dataset.name, cfg.dataset.options).load(cfg.seed)
    model = registry.build("backbone", cfg.backbone.name, cfg.backbone.options).build(
        splits.in_channels, 1)
    model.load_state_dict(load_weights(run_dir))
    pred = predict_all(model, torch.from_numpy(splits.test.images), torch.device("cpu"),
                       window=tuple(splits.train.images.shape[2:])) > 0  # as the run scores
    truth = splits.test.masks > 0
    tp = float((pred & truth).sum())
    noise = registry.build("noise", cfg.noise.name, cfg.noise.options)
    train = build_train_set(splits, noise, cfg.noise.rate, cfg.seed, include_meta=True)
    clean, noisy = train.clean.numpy() > 0, train.noisy.numpy() > 0
    near = np.stack([ndimage.binary_dilation(c, iterations=3) & ~c for c in clean])
    kept = float((near & ~noisy).sum() / max(near.sum(), 1))  # near-object bg whose label is right
    return tp / max(pred.sum(), 1), tp / max(truth.sum(), 1), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "accuracy-cpu")
    args = parser.parse_args()
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for run_dir in sorted((args.out / "runs").glob("synthetic-*")):
        if not (run_dir / "metrics.json").exists():
            continue
        _, rate, method, _seed = run_dir.name.split("-", 3)
        if method in ("clean", "none", "oracle", "oracle_balanced", "relabel"):
            rows.setdefault((rate, method), []).append(precision_recall(run_dir))
    print("| r | method | precision | recall | near-object background labelled right (train) |")
    print("|---|---|---|---|---|")
    for (rate, method), vals in sorted(rows.items()):
        p, r, k = (statistics.mean(v[i] for v in vals) for i in range(3))
        print(f"| {rate[1:]} | {method} | {p:.3f} | {r:.3f} | {k:.3f} (n={len(vals)}) |")

    def mean(rate: str, method: str, i: int) -> float:
        vals = rows.get((rate, method), [])
        return statistics.mean(v[i] for v in vals) if vals else float("nan")

    print(f"oracle_precision={mean('r0.4', 'oracle', 0):.3f} "
          f"oracle_recall={mean('r0.4', 'oracle', 1):.3f} "
          f"clean_precision={mean('r0', 'clean', 0):.3f} clean_recall={mean('r0', 'clean', 1):.3f} "
          f"none_precision={mean('r0.4', 'none', 0):.3f}")


if __name__ == "__main__":
    main()
