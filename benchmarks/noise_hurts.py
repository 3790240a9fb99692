"""Does label noise hurt? Train the baseline (reweighter none) on clean masks (r = 0) and on
masks of which 40% are dilated (r = 0.4), same data, seeds and budget; print the test Dice of each.

    python benchmarks/noise_hurts.py                 # default: 2 seeds, 10 epochs
    python benchmarks/noise_hurts.py --seeds 0 --epochs 5

Last line: ``dice_clean=<x> dice_noisy=<y>`` (means over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import noisyseg
from noisyseg.metrics import best_epoch_dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise", default="dilation")
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="noise_hurts-"))
    results: dict[str, list[float]] = {"clean": [], "noisy": []}
    for seed in args.seeds:
        for label, rate in (("clean", 0.0), ("noisy", args.rate)):
            start = time.perf_counter()
            result = noisyseg.run(
                noise={"name": args.noise, "rate": rate},
                seed=seed,
                train={"epochs": args.epochs},
                output={"dir": str(out / f"{label}-seed{seed}"), "overwrite": True},
                progress=False,
            )
            m = result.metrics
            results[label].append(m["dice"])
            print(f"{label:<5} r={rate:.1f} seed={seed} dice={m['dice']:.4f} iou={m['iou']:.4f} "
                  f"hd95={m['hd95']:.2f} best_epoch_dice={best_epoch_dice(result.history):.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    mean = {k: statistics.mean(v) for k, v in results.items()}
    spread = {k: (statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in results.items()}
    print(f"clean: {mean['clean']:.4f} +- {spread['clean']:.4f}   "
          f"noisy (r={args.rate}, {args.noise}): {mean['noisy']:.4f} +- {spread['noisy']:.4f}   "
          f"gap {mean['clean'] - mean['noisy']:+.4f}")
    print(f"dice_clean={mean['clean']:.4f} dice_noisy={mean['noisy']:.4f}")


if __name__ == "__main__":
    main()
