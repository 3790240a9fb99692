"""Label correction and sample selection vs the baseline: synthetic data, dilation noise, r = 0.4,
the same data, seeds and budget for none, plc, coteaching and mcpm+plc (plus the clean oracle).

    python benchmarks/correctors.py                          # 10 epochs, seeds 0 and 1
    python benchmarks/correctors.py --methods plc --set corrector.options.warmup_epochs=5

Prints one line per run: final and best-epoch test Dice, HD95, the training-label error at the
start and the end (PLC), the precision of PLC's flips over the run, and the share of the kept
pixels that are truly clean (co-teaching). Then the mean per method, PLC's final vs initial label
error, and last ``dice_none=<a> dice_plc=<b> dice_coteaching=<c>``.
Results are appended to ``<out>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import noisyseg
from noisyseg import Registry, build_plugin_manager
from noisyseg.config import merge, parse_assignment
from noisyseg.data import build_train_set
from noisyseg.metrics import best_epoch_dice

RUNS = {  # label -> (reweighter, corrector, noise rate)
    "none": ("none", "none", 0.4),
    "plc": ("none", "plc", 0.4),
    "coteaching": ("coteaching", "none", 0.4),
    "mcpm+plc": ("mcpm", "plc", 0.4),
    "clean": ("none", "none", 0.0),
}


def _flip_precision(history: list[dict]) -> float | None:
    """Fraction of all label changes over the run that landed on the clean label."""
    changed = sum(h["labels_changed"] for h in history if h.get("labels_changed"))
    if not changed:
        return None
    right = sum(h["labels_changed"] * h["label_change_precision"] for h in history
                if h.get("labels_changed"))
    return right / changed


def _flip_breakdown(result: noisyseg.RunResult) -> dict[str, int]:
    """Where the corrector's label changes went: on corrupted or clean images, right or wrong,
    foreground -> background or back (binary masks). Rebuilds the run's training set."""
    cfg = result.config
    registry = Registry(build_plugin_manager())
    splits = registry.build("dataset", cfg.dataset.name, cfg.dataset.options).load(cfg.seed)
    noise = registry.build("noise", cfg.noise.name, cfg.noise.options)
    final = torch.load(result.run_dir / "checkpoint.pt", weights_only=False)["corrector"]["labels"].long()
    train = build_train_set(splits, noise, cfg.noise.rate, cfg.seed, len(final) > len(splits.train))
    changed = final != train.noisy
    on_corrupted = train.corrupted[:, None, None].expand_as(changed)
    right = final == train.clean
    return {
        "corrupted_right": int((changed & on_corrupted & right).sum()),
        "corrupted_wrong": int((changed & on_corrupted & ~right).sum()),
        "clean_wrong": int((changed & ~on_corrupted).sum()),
        "fg_to_bg": int((changed & (train.noisy > 0) & (final == 0)).sum()),
        "bg_to_fg": int((changed & (train.noisy == 0) & (final > 0)).sum()),
        "wrong_before": int((train.noisy != train.clean).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0.4)
    parser.add_argument("--set", dest="assignments", action="append", default=[],
                        metavar="KEY=VALUE", help="config override (not for a none component)")
    parser.add_argument("--out", type=Path, default=Path("runs/correctors"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {m: [] for m in args.methods}
    fmt = lambda v: "-" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    for seed in args.seeds:
        for label in args.methods:
            reweighter, corrector, rate = RUNS[label]
            rate = args.rate if rate > 0 else 0.0
            config: dict = {"seed": seed, "noise": {"name": "dilation", "rate": rate},
                            "reweighter": {"name": reweighter}, "corrector": {"name": corrector},
                            "train": {"epochs": args.epochs},
                            "output": {"dir": str(args.out / f"{label}-seed{seed}"), "overwrite": True}}
            for text in args.assignments:
                kind = text.split(".", 1)[0]
                if {"reweighter": reweighter, "corrector": corrector}.get(kind) == "none":
                    continue
                config = merge(config, parse_assignment(text))
            start = time.perf_counter()
            result = noisyseg.run(config, progress=False)
            m, last = result.metrics, result.history[-1]
            row = {
                "method": label, "seed": seed, "rate": rate, "epochs": args.epochs,
                "dice": m["dice"], "iou": m["iou"], "hd95": m["hd95"],
                "best_dice": best_epoch_dice(result.history),
                "label_error_initial": m["train_label_error_initial"],
                "label_error_final": m["train_label_error_final"],
                "flip_precision": _flip_precision(result.history),
                "kept_clean": last.get("weight_on_clean") if reweighter == "coteaching" else None,
                "overrides": args.assignments, "seconds": round(time.perf_counter() - start, 1),
                "flips": _flip_breakdown(result) if corrector != "none" else None,
            }
            with open(args.out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            rows[label].append(row)
            print(f"{label:<10} seed={seed} dice={row['dice']:.4f} best={row['best_dice']:.4f} "
                  f"hd95={row['hd95']:.2f} label_error={row['label_error_initial']:.4f}"
                  f"->{row['label_error_final']:.4f} flip_precision={fmt(row['flip_precision'])} "
                  f"kept_clean={fmt(row['kept_clean'])} ({row['seconds']:.0f} s)", flush=True)
            if row["flips"]:
                print("           changed pixels: " + " ".join(f"{k}={v}" for k, v in row["flips"].items()))

    mean = {k: statistics.mean(r["dice"] for r in v) for k, v in rows.items() if v}
    for label, value in mean.items():
        print(f"mean {label:<10} dice={value:.4f} over {len(rows[label])} seed(s)")
    for label in ("plc", "mcpm+plc"):
        if rows.get(label):
            before = statistics.mean(r["label_error_initial"] for r in rows[label])
            after = statistics.mean(r["label_error_final"] for r in rows[label])
            print(f"{label} label error: initial={before:.4f} final={after:.4f} "
                  f"({(after - before) / before:+.0%})")
    print(" ".join(f"dice_{k}={mean[k]:.4f}" for k in ("none", "plc", "coteaching") if k in mean))


if __name__ == "__main__":
    main()
