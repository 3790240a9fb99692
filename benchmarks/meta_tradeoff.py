"""MCPM's speed options against what they cost in Dice and detection: the table and the plot of
docs/methods/mcpm.md.

Reads the cost ratios that ``step_time.py`` saved (``results/step_time-cpu.json``) and the runs of
``accuracy.py``'s CPU protocol for the mcpm variants (``results/accuracy-cpu-metalayers.csv`` at
r = 0.4, ``results/accuracy-cpu-adaptive08.csv`` at r = 0.8), and writes
``docs/img/mcpm-tradeoff.png``: Dice (mean and sd over seeds, both datasets) against the cost of a
step relative to a plain one, one panel per noise rate, ``none`` as the line to beat.

    python benchmarks/meta_tradeoff.py

Last line: ``default=<variant> ratio=<x> dice_r04=<mean> dice_r08=<mean>``.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RUNS = {0.4: HERE / "results" / "accuracy-cpu-metalayers.csv",
        0.8: HERE / "results" / "accuracy-cpu-adaptive08.csv"}
#: accuracy.py's method -> (step_time.py's name, label)
VARIANTS = {
    "mcpm": ("mcpm_every_step", "every step (paper)"),
    "mcpm_adaptive": ("mcpm", "interval 1 -> 10 (default)"),
    "mcpm_adaptive30": ("mcpm_adaptive30", "interval 1 -> 30"),
    "mcpm_head": ("mcpm_head", "last layer only (meta_layers = 1)"),
}


def dice_by_method(path: Path, rate: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if float(row["rate"]) == rate:
                out.setdefault(row["method"], []).append(float(row["dice"]))
    return out


def main() -> None:
    ratios = json.loads((HERE / "results" / "step_time-cpu.json").read_text())["ratio_to_plain"]
    fig, axes = plt.subplots(1, len(RUNS), figsize=(9, 3.6), sharey=True)
    print("| r | variant | cost (plain steps) | Dice, both datasets (mean ± sd, n) |")
    print("|---|---|---|---|")
    means: dict[tuple[str, float], float] = {}
    for ax, (rate, path) in zip(axes, RUNS.items(), strict=True):
        dice = dice_by_method(path, rate)
        none = dice.get("none", [])
        if none:
            ax.axhline(statistics.mean(none), color="grey", ls="--", lw=1, label="none (1.0)")
        for method, (timed, label) in VARIANTS.items():
            values = dice.get(method)
            if not values or timed not in ratios:
                continue
            m, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            means[method, rate] = m
            ax.errorbar(ratios[timed], m, yerr=sd, fmt="o", capsize=3, label=label)
            print(f"| {rate:g} | {label} | {ratios[timed]:.2f} | {m:.3f} ± {sd:.3f} ({len(values)}) |")
        ax.set_title(f"r = {rate:g} (CPU protocol, synthetic + mni152, 3 seeds)", fontsize=8)
        ax.set_xlabel("cost of a step / a plain step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice")
    axes[0].legend(fontsize=7, loc="lower left")  # the panel with every variant
    fig.tight_layout()
    out = HERE.parent / "docs" / "img" / "mcpm-tradeoff.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    print(f"default=mcpm_adaptive ratio={ratios['mcpm']:.2f} "
          f"dice_r04={means.get(('mcpm_adaptive', 0.4), float('nan')):.3f} "
          f"dice_r08={means.get(('mcpm_adaptive', 0.8), float('nan')):.3f}")


if __name__ == "__main__":
    main()
