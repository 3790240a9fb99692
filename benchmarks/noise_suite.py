"""Recipes across the noise users actually have: the toolkit's noise models, the literature's
protocols and pseudo-labels, on synthetic lesions and MNI152 white matter.

    python benchmarks/noise_suite.py                   # CPU size (48 px, 20 epochs), 3 seeds
    python benchmarks/noise_suite.py --preset paper    # the GPU size
    python benchmarks/noise_suite.py --summary         # the tables from the results store
    python benchmarks/noise_suite.py --noises markov_grow jsrt --methods finetune_cal --seeds 0

The suite (:data:`SUITE`): each setting is a noise label (benchmarks/protocol.py's NOISES) and
the share of images it corrupts; ``mild`` settings corrupt at most half the images (r or alpha
<= 0.5), the others are ``harsh``. Every method is a recipe or a component name, as accuracy.py
reads them. Runs go to the results store (a run the store holds for this commit is not run
again). Prints per setting the recovery of each method (mean ± sd over seeds, averaged over the
datasets), then per method the mean over the suite, over its mild and its harsh settings and the
worst setting, and last ``suite_best=<method> suite_recovery=<mean> suite_worst=<worst>
mcpm_suite_recovery=<x>``: ``suite_best`` is the method with the best mean over the suite among
those whose worst setting is >= 0 (all of them when none is).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import store
from protocol import PRESETS, mean_recovery, plan, recovery, run_all

BENCHMARK = "noise_suite"
#: (noise label, rate): the settings of the suite
SUITE: tuple[tuple[str, float], ...] = (
    ("dilation", 0.4), ("erosion", 0.4), ("elastic", 0.4), ("elastic_nobias", 0.4),
    ("alphabeta_a05_b05", 0.5), ("alphabeta_a07_b07", 0.7),
    ("markov_grow", 0.4), ("markov_shrink", 0.4), ("jsrt", 0.4), ("pseudo", 0.5),
)
DEFAULT_METHODS = ("clean", "none", "calibrate", "finetune_cal", "confusion_finetune_cal",
                   "relabel_finetune", "mcpm", "mcpm_finetune_cal")


def mild(rate: float) -> bool:
    return rate <= 0.5


def summary(rows: list[dict], datasets: list[str], settings: list[tuple[str, float]],
            methods: list[str]) -> str:
    """Per setting each method's recovery, then each method over the suite; the last line."""
    methods = [m for m in methods if m not in ("clean", "none")]
    lines = ["| noise | r | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for noise, rate in settings:
        cells = []
        for m in methods:
            recs = [recovery(rows, d, noise, rate, m) for d in datasets]
            recs = [r for r in recs if r[0] == r[0]]
            if not recs:
                cells.append("")
                continue
            sds = [r[1] for r in recs if r[1] == r[1]]
            sd = f" ± {statistics.mean(sds):.2f}" if sds else ""
            cells.append(f"{statistics.mean(r[0] for r in recs):+.2f}{sd}")
        lines.append(f"| {noise} | {rate:g} | " + " | ".join(cells) + " |")
    lines += ["", "| method | suite mean | mild mean | harsh mean | worst (setting) |",
              "|---|---|---|---|---|"]
    scores: dict[str, tuple[float, float]] = {}
    for m in methods:
        per = {(n, r): mean_recovery(rows, datasets, n, r, m) for n, r in settings}
        per = {k: v for k, v in per.items() if v == v}
        if not per:
            continue
        worst = min(per, key=per.get)
        mean = statistics.mean(per.values())
        scores[m] = (mean, per[worst])
        mild_mean = [v for (_, r), v in per.items() if mild(r)]
        harsh_mean = [v for (_, r), v in per.items() if not mild(r)]
        lines.append(f"| {m} | {mean:+.2f} | "
                     f"{statistics.mean(mild_mean) if mild_mean else math.nan:+.2f} | "
                     f"{statistics.mean(harsh_mean) if harsh_mean else math.nan:+.2f} | "
                     f"{per[worst]:+.2f} ({worst[0]} r={worst[1]:g}) |")
    safe = {m: v for m, v in scores.items() if v[1] >= 0} or scores
    best = max(safe, key=lambda m: safe[m][0]) if safe else "none"
    best_mean, best_worst = scores.get(best, (math.nan, math.nan))
    mcpm = scores.get("mcpm", (math.nan, math.nan))[0]
    lines.append("")
    lines.append(f"suite_best={best} suite_recovery={best_mean:.3f} suite_worst={best_worst:.3f} "
                 f"mcpm_suite_recovery={mcpm:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "mni152"])
    parser.add_argument("--noises", nargs="+", default=None,
                        help="noise labels of the suite to run (default: all of it)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"default: {', '.join(DEFAULT_METHODS)}")
    parser.add_argument("--runs", type=Path, default=None,
                        help="where the run directories go (default: runs/benchmarks/noise_suite-<preset>)")
    parser.add_argument("--summary", action="store_true", help="only print the tables of the store")
    parser.add_argument("--reuse", action="store_true",
                        help="take a run from the store whatever the commit that produced it")
    args = parser.parse_args()
    settings = [s for s in SUITE if args.noises is None or s[0] in args.noises]
    methods = list(dict.fromkeys(["clean", "none", *args.methods]))
    if not args.summary:
        specs = []
        for noise, rate in settings:  # the clean runs once: plan() adds them for each setting
            specs += [s for s in plan(args.datasets, [noise], [rate], args.seeds, methods)
                      if s not in specs]
        specs.sort(key=lambda s: (s.seed, s.dataset))  # every setting's seed 0 first
        run_all(BENCHMARK, args.preset, specs,
                args.runs or Path("runs") / "benchmarks" / f"{BENCHMARK}-{args.preset}", args.reuse)
    rows = [r for r in store.rows(preset=args.preset, seed=args.seeds) if r["dataset"] in args.datasets]
    print(summary(rows, args.datasets, settings, methods))


if __name__ == "__main__":
    sys.exit(main())
