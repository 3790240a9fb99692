"""Meta reweighting vs the baseline: synthetic data, dilation noise, r = 0.4, the same data,
seed and budget for none, mwnet, l2rw and mcpm, plus the clean oracle (none at r = 0).

    python benchmarks/meta_vs_baseline.py                       # 10 epochs, seed 0
    python benchmarks/meta_vs_baseline.py --seeds 0 1 --epochs 12
    python benchmarks/meta_vs_baseline.py --methods mcpm --set reweighter.options.init_bias=2

Prints one line per run (final and best-epoch test Dice, HD95, the noise-detection AUROC of
1 - weight and the mean weights on corrupted / clean pixels at the last epoch), the share of the
none -> clean gap each method recovers, and last ``dice_none=<a> dice_mcpm=<b> dice_clean=<c>``.
Results are appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import noisyseg
from noisyseg.config import merge, parse_assignment
from noisyseg.metrics import best_epoch_dice

RUNS = {  # label -> (reweighter, noise rate)
    "none": ("none", 0.4),
    "mwnet": ("mwnet", 0.4),
    "l2rw": ("l2rw", 0.4),
    "mcpm": ("mcpm", 0.4),
    "clean": ("none", 0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/meta_vs_baseline"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    dice: dict[str, list[float]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for label in args.methods:
            reweighter, rate = RUNS[label]
            rate = args.rate if rate > 0 else 0.0
            config: dict = {"seed": seed, "noise": {"name": "dilation", "rate": rate},
                            "reweighter": {"name": reweighter}, "train": {"epochs": args.epochs},
                            "output": {"dir": str(args.out / f"{label}-seed{seed}"), "overwrite": True}}
            for text in args.assignments:
                if text.startswith("reweighter.") and reweighter == "none":
                    continue
                config = merge(config, parse_assignment(text))
            start = time.perf_counter()
            result = noisyseg.run(config, progress=False)
            last = result.history[-1]
            row = {
                "method": label, "seed": seed, "rate": rate, "epochs": args.epochs,
                "dice": result.metrics["dice"], "iou": result.metrics["iou"],
                "hd95": result.metrics["hd95"],
                "best_dice": best_epoch_dice(result.history),
                "auroc": last.get("weight_auroc"), "w_corrupted": last.get("weight_mean_corrupted"),
                "w_clean": last.get("weight_mean_clean"), "overrides": args.assignments,
                "seconds": round(time.perf_counter() - start, 1),
            }
            with open(args.out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            dice[label].append(row["dice"])
            fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731
            print(f"{label:<6} seed={seed} dice={row['dice']:.4f} best={row['best_dice']:.4f} "
                  f"hd95={row['hd95']:.2f} auroc={fmt(row['auroc'])} "
                  f"w_corrupted={fmt(row['w_corrupted'])} w_clean={fmt(row['w_clean'])} "
                  f"({row['seconds']:.0f} s)", flush=True)
    mean = {k: statistics.mean(v) for k, v in dice.items()}
    if "none" in mean and "clean" in mean and mean["clean"] > mean["none"]:
        gap = mean["clean"] - mean["none"]
        for label in args.methods:
            if label not in ("none", "clean"):
                print(f"{label} recovers {(mean[label] - mean['none']) / gap:+.0%} of the none -> clean gap")
    print(" ".join(f"dice_{k}={mean[k]:.4f}" for k in ("none", "mcpm", "clean") if k in mean))


if __name__ == "__main__":
    main()
