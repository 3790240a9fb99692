"""Why MCPM does not move the Dice, and what does: variants of its options scored on the clean
meta images set aside for validation, never on the test split.

    python benchmarks/mcpm_sweep.py                       # the variants below, 2 seeds
    python benchmarks/mcpm_sweep.py --variants calibrate+mcpm --noises elastic --seeds 0

Every variant runs with a quarter of the meta images set aside (the ``calibrate`` recipe): its
score is the Dice of the network on them before any offset (``meta_dice_uncalibrated``), which no
network of the run learned from. Printed per variant: that validation Dice (mean over datasets,
noises and seeds), and MCPM's diagnostics at the last epoch: the mean weight on corrupted and on
clean pixels and the AUROC of 1 - weight for finding the corrupted ones. The test Dice is in the
results store and is not printed here (choose on validation, then look at the test split once).
Last line: ``best=<variant> val_dice=<x> default_val_dice=<y> none_val_dice=<z>`` (the default:
plain ``calibrate+mcpm``, or the first variant given when it is not among them; none: the first
plain-training variant, settings included). Other methods' options are swept the same way:
``--variants calibrate calibrate+distil calibrate+distil+reweighter.options.estimate=mutual_info``,
and any setting: ``--variants calibrate+train.epochs=60 calibrate+mcpm+train.epochs=60``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from protocol import Spec, run_all

BENCHMARK = "mcpm_sweep"
MCPM = "calibrate+mcpm"
#: plain training and the oracle (with any settings, e.g. +train.epochs=60) are not variants
BASELINES = ("calibrate", "calibrate+oracle")
VARIANTS = (
    "calibrate",                                                       # plain training
    "calibrate+oracle",                                                # weight 0 on the corrupted
    MCPM,                                                              # the default
    f"{MCPM}+reweighter.options.meta_lr=0.01",
    f"{MCPM}+reweighter.options.meta_lr=0.1",
    f"{MCPM}+reweighter.options.meta_lr=0.01+reweighter.options.warmup_epochs=3",
    f"{MCPM}+reweighter.options.meta_lr=0.01+reweighter.options.normalize_per=class",
    f"{MCPM}+reweighter.options.meta_lr=0.01+reweighter.options.inputs=loss_label",
    f"{MCPM}+reweighter.options.meta_lr=0.01+train.train_on_meta=true",
    f"{MCPM}+reweighter.options.monotone=true",                        # weight never rises with loss
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "mni152"])
    parser.add_argument("--noises", nargs="+", default=["elastic", "dilation"])
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", type=Path, default=Path("runs") / "benchmarks" / f"{BENCHMARK}-cpu")
    args = parser.parse_args()
    specs = [Spec(d, n, args.rate, v, s) for s in args.seeds for d in args.datasets
             for n in args.noises for v in args.variants]
    rows = run_all(BENCHMARK, "cpu", specs, args.runs)
    print("| variant | validation Dice | weight on corrupted / clean | AUROC of 1 - weight |")
    print("|---|---|---|---|")
    val: dict[str, float] = {}
    for v in args.variants:
        mine = [r for r, s in zip(rows, specs, strict=True) if s.method == v]
        dice = [r["metrics"]["meta_dice_uncalibrated"] for r in mine]
        val[v] = statistics.mean(dice)
        diag = [r["metrics"] for r in mine if r["metrics"].get("weight_mean_corrupted") is not None]

        def mean(key: str, diag: list = diag) -> str:
            values = [m[key] for m in diag if m.get(key) is not None]
            return f"{statistics.mean(values):.3f}" if values else "-"

        print(f"| {v} | {val[v]:.4f} (n={len(dice)}) | {mean('weight_mean_corrupted')} / "
              f"{mean('weight_mean_clean')} | {mean('weight_auroc')} |")
    tried = [v for v in val if _methods(v) not in BASELINES]  # the variants
    best = max(tried, key=val.get) if tried else "none"
    default = MCPM if MCPM in val or not tried else tried[0]  # e.g. calibrate+distil
    plain = next((v for v in val if _methods(v) == "calibrate"), "calibrate")
    print(f"best={best} val_dice={val.get(best, float('nan')):.4f} "
          f"default_val_dice={val.get(default, float('nan')):.4f} "
          f"none_val_dice={val.get(plain, float('nan')):.4f}")


def _methods(variant: str) -> str:
    """A variant's recipe and components without its settings: calibrate+mcpm+train.epochs=60
    -> calibrate+mcpm."""
    return "+".join(t for t in variant.split("+") if "=" not in t)


if __name__ == "__main__":
    sys.exit(main())
