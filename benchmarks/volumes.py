"""3-D volumes end to end: plain training (``none``) and MCPM on noisy 3-D masks, scored in 3-D.

    python benchmarks/volumes.py                     # mni152 volumes, 3 seeds, CPU
    python benchmarks/volumes.py --dataset synthetic --seeds 0 --epochs 4

The MNI152 template (1 mm voxels) cut into slabs of 24 axial slices: training and meta samples are
24^3 cubes, the test samples whole slabs (24 x 145 x 181 voxels), predicted by a sliding window of
the training cube. White matter is the label; 40% of the training cubes get their masks dilated
by a 3-D ball of radius 0-3 voxels. A 3-D U-Net (base 8, depth 3), Adam 1e-3, cosine, batch 8.
Dice and HD95 are taken per test volume, HD95 in mm (the template's spacing).

Every run goes to the results store (preset ``volumes``; a run the store holds for this commit
is not run again). Prints one line per run, a table of means and sds over seeds (with the
clean-label run as the ceiling), and last ``dice3d_none=<a> dice3d_mcpm=<b> hd95_mm_none=<c>``
(means over seeds).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from protocol import Spec as Run
from protocol import clean_spec, run_one

BENCHMARK = "volumes"
DATASETS = {
    "mni152": {"name": "mni152", "options": {"dims": 3, "labels": "wm"}},
    "synthetic": {"name": "synthetic", "options": {"dims": 3, "n_train": 120, "n_meta": 20,
                                                   "n_test": 40}},
}
METHODS = ("clean", "none", "mcpm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mni152")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="labels, as accuracy.py reads them")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "benchmarks" / BENCHMARK,
                        help="where the run directories go")
    args = parser.parse_args()
    preset = {"datasets": DATASETS, "base": {
        "device": "cpu", "backbone": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
        "train": {"epochs": args.epochs, "batch_size": 8, "lr": 1e-3, "schedule": "cosine"},
        "output": {"figure_images": 2}}}
    name = "volumes" if args.epochs == 8 else f"volumes-{args.epochs}ep"
    scores: dict[str, dict[str, list[float]]] = {m: {"dice": [], "hd95": []} for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            run = clean_spec(args.dataset, seed) if method == "clean" else Run(
                args.dataset, "dilation_r3", 0.4, method, seed)
            row = run_one(BENCHMARK, name, preset, run, args.runs)
            m = row["metrics"]
            scores[method]["dice"].append(m["dice"])
            scores[method]["hd95"].append(m["hd95"])
            print(f"{method:<5} seed={seed} dice={m['dice']:.4f} hd95={m['hd95']:.2f} mm "
                  f"best_epoch_dice={m['best_dice']:.4f} ({row['seconds']:.0f} s, commit "
                  f"{row['git_commit'][:10]})", flush=True)

    def summary(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    print(f"\n| method | Dice (mean ± sd, n={len(args.seeds)}) | HD95 mm |\n|---|---|---|")
    for method, s in scores.items():
        print(f"| {method} | {summary(s['dice'])} | {summary(s['hd95'])} |")
    mean = {m: statistics.mean(s["dice"]) for m, s in scores.items()}
    hd95 = statistics.mean(scores["none"]["hd95"]) if "none" in scores else float("nan")
    print(f"dice3d_none={mean.get('none', float('nan')):.4f} "
          f"dice3d_mcpm={mean.get('mcpm', float('nan')):.4f} hd95_mm_none={hd95:.2f}")


if __name__ == "__main__":
    main()
