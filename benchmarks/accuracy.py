"""How much of the Dice lost to dilated masks each recipe wins back, with its ceilings.

    python benchmarks/accuracy.py                    # CPU protocol, 3 seeds, synthetic + mni152
    python benchmarks/accuracy.py --preset paper --datasets synthetic   # the MCPM paper's, for a GPU
    python benchmarks/accuracy.py --summary          # the tables from the results store
    python benchmarks/accuracy.py --methods none finetune_cal mcpm+plc --seeds 0

Every method is a recipe name or a component's name (benchmarks/protocol.py says how labels
read), run on masks dilated by 0-6 px (the MCPM paper's main setting) at r = 0.4 and 0.8, and
scored as recovery = (Dice(method) - Dice(none)) / (Dice(clean) - Dice(none)). The default set,
:data:`DEFAULT_METHODS` (about an hour on 2 cores), holds the ceilings (``clean``, the
``oracle`` reweighter), the baseline (``none``, which trains on the clean meta images too) and the
built-in recipes; ``mcpm`` runs at r = 0.4 only on the CPU preset (a run costs about 5 plain ones).

Every run goes to the results store (benchmarks/results/results.sqlite) as it ends; one already
there for this commit is not run again, so a stopped script goes on where it stopped. The last
line is ``best=<method> recovery_r04=<x> recovery_r08=<y> oracle_recovery_r04=<z>
mcpm_recovery_r04=<w>``: recovery of the mean Dice over seeds, averaged over the datasets;
``best`` is the method (not a ceiling, not ``none``) with the highest mean of the two rates among
those run at both; when none ran at both, the highest at r = 0.4.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import store
from protocol import add_run_options, mean_recovery, plan, run_all, runs_dir, table

BENCHMARK = "accuracy"
NOISE = "dilation"
CEILINGS = ("clean", "oracle")
#: what a plain ``python benchmarks/accuracy.py`` runs
DEFAULT_METHODS = ("clean", "none", "oracle", "calibrate", "finetune", "finetune_cal",
                   "confusion_finetune_cal", "relabel_finetune", "mcpm", "mcpm_finetune_cal")
#: methods the CPU preset runs at some rates only (their cost)
ONLY_AT = {"cpu": {"mcpm": [0.4], "mcpm_finetune_cal": [0.4]}}


def headline(rows: list[dict], datasets: list[str], methods: list[str]) -> str:
    def rec(method: str, rate: float) -> float:
        return mean_recovery(rows, datasets, NOISE, rate, method)

    candidates = [m for m in methods if m not in (*CEILINGS, "none")]
    both = {m: (rec(m, 0.4), rec(m, 0.8)) for m in candidates}
    both = {m: v for m, v in both.items() if v[0] == v[0]}
    full = {m: v for m, v in both.items() if v[1] == v[1]}  # run at both rates
    scores = ({m: statistics.mean(v) for m, v in full.items()} if full else
              {m: v[0] for m, v in both.items()})
    best = max(scores, key=scores.get) if scores else "none"
    return (f"best={best} recovery_r04={rec(best, 0.4):.3f} recovery_r08={rec(best, 0.8):.3f} "
            f"oracle_recovery_r04={rec('oracle', 0.4):.3f} mcpm_recovery_r04={rec('mcpm', 0.4):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser, BENCHMARK, DEFAULT_METHODS)
    parser.add_argument("--rates", nargs="+", type=float, default=[0.4, 0.8])
    parser.add_argument("--every-rate", action="store_true",
                        help="run the methods the preset keeps to some rates at every rate")
    args = parser.parse_args()
    methods = list(dict.fromkeys(["clean", "none", *args.methods]))
    if not args.summary:
        specs = plan(args.datasets, [NOISE], args.rates, args.seeds, methods,
                     None if args.every_rate else ONLY_AT.get(args.preset))
        run_all(BENCHMARK, args.preset, specs, runs_dir(args, BENCHMARK), args.reuse)
    rows = [r for r in store.rows(preset=args.preset, seed=args.seeds)
            if r["dataset"] in args.datasets and r["noise"] in (NOISE, "none")]
    print(table(rows, args.datasets, [NOISE], args.rates, methods))
    print("baselines and ceilings: " + " ".join(
        f"{m}_r{r:g}={mean_recovery(rows, args.datasets, NOISE, r, m):+.3f}"
        for m in ("oracle", "calibrate", "finetune") for r in args.rates
        if not math.isnan(mean_recovery(rows, args.datasets, NOISE, r, m))))
    print(headline(rows, args.datasets, methods))


if __name__ == "__main__":
    sys.exit(main())
