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
those run on every setting whose worst setting is >= 0 (all those run on every setting when none
is); a method run on part of the suite is shown with how many settings it has, never picked.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import store
from protocol import add_run_options, mean_recovery, plan, recovery, run_all, runs_dir

BENCHMARK = "noise_suite"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "noise.md"
START = "<!-- noise_suite:start (python benchmarks/noise_suite.py --docs) -->"
END = "<!-- noise_suite:end -->"
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
    lines += ["", "| method | suite mean | mild mean | harsh mean | worst (setting) | settings run |",
              "|---|---|---|---|---|---|"]
    scores: dict[str, tuple[float, float]] = {}
    complete: set[str] = set()  # run on every setting of the suite (only these can be best)
    for m in methods:
        per = {(n, r): mean_recovery(rows, datasets, n, r, m) for n, r in settings}
        per = {k: v for k, v in per.items() if v == v}
        if not per:
            continue
        worst = min(per, key=per.get)
        mean = statistics.mean(per.values())
        scores[m] = (mean, per[worst])
        if len(per) == len(settings):
            complete.add(m)
        mild_mean = [v for (_, r), v in per.items() if mild(r)]
        harsh_mean = [v for (_, r), v in per.items() if not mild(r)]
        lines.append(f"| {m} | {mean:+.2f} | "
                     f"{f'{statistics.mean(mild_mean):+.2f}' if mild_mean else '—'} | "
                     f"{f'{statistics.mean(harsh_mean):+.2f}' if harsh_mean else '—'} | "
                     f"{per[worst]:+.2f} ({worst[0]} r={worst[1]:g}) | "
                     f"{len(per)} of {len(settings)} |")
    whole = {m: v for m, v in scores.items() if m in complete}
    safe = {m: v for m, v in whole.items() if v[1] >= 0} or whole
    best = max(safe, key=lambda m: safe[m][0]) if safe else "none"
    best_mean, best_worst = scores.get(best, (math.nan, math.nan))
    mcpm = scores.get("mcpm", (math.nan, math.nan))[0]
    lines.append("")
    lines.append(f"suite_best={best} suite_recovery={best_mean:.3f} suite_worst={best_worst:.3f} "
                 f"mcpm_suite_recovery={mcpm:.3f}")
    return "\n".join(lines)


def docs_block(rows: list[dict], preset: str = "cpu") -> str:
    """The generated part of docs/noise.md: the summary of every method the store holds for the
    suite on both datasets, and which seeds and commits it comes from."""
    datasets = ["synthetic", "mni152"]
    rows = [r for r in rows if r["dataset"] in datasets]
    ran = {r["method"] for r in rows if r["benchmark"] == BENCHMARK}
    methods = [m for m in DEFAULT_METHODS if m in ran] + sorted(ran - set(DEFAULT_METHODS))
    suite = [r for r in rows if r["benchmark"] == BENCHMARK]
    seeds = sorted({int(r["seed"]) for r in suite})
    commits = sorted({str(r["git_commit"])[:7] for r in suite})
    note = (f"Preset `{preset}`, seeds {', '.join(map(str, seeds))} (where a method ran), commits "
            f"{', '.join(commits)}; recovery of the noisy-to-clean Dice gap, mean ± sd over "
            "seeds, averaged over the synthetic lesions and MNI152. Written by `python "
            "benchmarks/noise_suite.py --docs` from the results store.")
    return f"{note}\n\n{summary(rows, datasets, list(SUITE), ['clean', 'none', *methods])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser, BENCHMARK, DEFAULT_METHODS)
    parser.add_argument("--noises", nargs="+", default=None,
                        help="noise labels of the suite to run (default: all of it)")
    parser.add_argument("--docs", action="store_true",
                        help="write the tables of every method the store holds for the suite into "
                             "docs/noise.md (implies --summary)")
    args = parser.parse_args()
    settings = [s for s in SUITE if args.noises is None or s[0] in args.noises]
    methods = list(dict.fromkeys(["clean", "none", *args.methods]))
    if args.docs:
        text = docs_block(store.rows(preset=args.preset), args.preset)
        head, rest = DOCS.read_text().split(START, 1)
        DOCS.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
        print(text)
        return
    if not args.summary:
        specs = []
        for noise, rate in settings:  # the clean runs once: plan() adds them for each setting
            specs += [s for s in plan(args.datasets, [noise], [rate], args.seeds, methods)
                      if s not in specs]
        specs.sort(key=lambda s: (s.seed, s.dataset))  # every setting's seed 0 first
        run_all(BENCHMARK, args.preset, specs, runs_dir(args, BENCHMARK), args.reuse)
    rows = [r for r in store.rows(preset=args.preset, seed=args.seeds) if r["dataset"] in args.datasets]
    print(summary(rows, args.datasets, settings, methods))


if __name__ == "__main__":
    sys.exit(main())
