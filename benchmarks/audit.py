"""How well ``noisyseg audit`` finds the wrong masks, beside cleanlab.segmentation given the same
out-of-sample probabilities, and the audit's peak memory at 1,000 and 10,000 images.

    python benchmarks/audit.py                     # CPU size, 3 seeds, 3 folds, memory at 1k and 10k
    python benchmarks/audit.py --preset smoke --datasets synthetic --noises dilation --seeds 0 \\
        --folds 2 --memory 200 400                 # seconds: the smallest settings
    python benchmarks/audit.py --summary --docs    # the tables from the store, into docs/audit.md

Per dataset (the preset's synthetic lesions and MNI152 white matter), noise setting and seed:
``noisyseg.audit`` with K folds (the preset's network and training, ``--method`` as the
benchmarks read it: the ``none`` recipe by default) scores every training image by each signal;
the truth is known, so each signal gets its image AUROC and precision at k (k = the number of
images whose mask the noise changed), and the pixel score (1 - p(given label)) its AUPRC.
``cleanlab.segmentation.rank.get_label_quality_scores`` gets the very probabilities the audit
used (its ``observe`` hook) and the same given masks: its softmin image score, and its pixel
score (the same as the audit's), scored alike; ``cleanlab.segmentation.filter.find_label_issues``
gives its flagged pixels, whose F1 stands beside that of the audit's (prediction != given).

Memory: for each n of ``--memory``, one process generates n synthetic 64x64 images into the
dataset cache, and a fresh process audits them (the default 3 folds, each run cut to
``--memory-steps`` optimiser steps; the scoring pass is the full one): its peak resident memory
(VmHWM) is what the last line reports, for the largest n.

Results go to the results store (benchmarks/results/results.sqlite, :mod:`store`), benchmark
``audit``: a row per setting (preset, dataset, noise and its options, rate, method, seed; metrics:
each signal's image AUROC and precision at k, the pixel AUPRC and F1, and cleanlab's, with its
version) and one per memory measurement (preset ``memory``, no method; metrics: images, steps,
peak RSS, data size). The digest of a row is that of the audit's config plus the number of folds
(and ``audit``: a row is never taken for a training run of the same config). A setting or
measurement stored for this commit is not run again, so a benchmark killed part way goes on
where it stopped when started again (the audit of the setting it was in goes on from its
finished fold runs). ``--summary`` and ``--docs`` read the store: per setting and seed the newest
row. The cleanlab version goes to stderr and into every row. Prints a table per noise setting,
each signal's mean AUROC, and last ``audit_auroc=<mean image AUROC of the default signal>
cleanlab_auroc=<cleanlab's> audit_p_at_k=<the default signal's mean precision at k>
peak_rss_mb=<at the largest n>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import store
from protocol import NOISES, PRESETS, ROOT, add_run_options, method_config, runs_dir

from noisyseg.config import merge, resolve

BENCHMARK = "audit"
#: (noise label, rate): the toolkit's noise and the literature's protocols (the noise suite's
#: settings; a label benchmarks/protocol.py does not define yet is skipped, with a note)
SETTINGS: tuple[tuple[str, float], ...] = (
    ("dilation", 0.4), ("elastic", 0.4), ("alphabeta_a05_b05", 0.5), ("alphabeta_a07_b07", 0.7),
    ("markov_grow", 0.4), ("markov_shrink", 0.4), ("jsrt", 0.4),
)
#: the preset of the memory measurements' rows (their data and network are their own)
MEMORY = "memory"
DOCS = ROOT / "docs" / "audit.md"
START, END = "<!-- audit:start (python benchmarks/audit.py --summary --docs) -->", "<!-- audit:end -->"


def _f1(flagged: Any, wrong: Any) -> float:
    tp = int((flagged & wrong).sum())
    fp, fn = int((flagged & ~wrong).sum()), int((~flagged & wrong).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def setting_config(preset: str, dataset: str, noise: str, rate: float, seed: int, method: str,
                   runs: Path, folds: int) -> dict[str, Any]:
    """The config of one setting's audit (its directory under ``runs``)."""
    p = PRESETS[preset]
    name = f"{dataset}-{noise}-r{rate:g}-{method}-k{folds}-s{seed}"
    return merge(merge(p["base"], method_config(method)), {
        "seed": seed, "dataset": p["datasets"][dataset], "noise": {**NOISES[noise], "rate": rate},
        "output": {"dir": str(runs / name), "overwrite": True}})


def options(folds: int) -> dict[str, Any]:
    """What sets a setting's result besides its config (:func:`store.digest`)."""
    return {"benchmark": BENCHMARK, "folds": folds}


def one(config: dict[str, Any], folds: int) -> tuple[dict[str, Any], float]:
    """Audit one setting and score cleanlab on the same probabilities: (the metrics of its row,
    the audit's seconds)."""
    import cleanlab
    import numpy as np
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    import noisyseg
    from noisyseg.audit_signals import DEFAULT_SIGNAL, SIGNALS, PixelCurve, precision_at_k
    from noisyseg.metrics import detection_auroc

    kept: dict[str, list[Any]] = {"probs": [], "given": [], "clean": []}

    def keep(index: Any, probs: Any, given: Any, clean: Any) -> None:
        kept["probs"].append(probs)
        kept["given"].append(given.astype(np.uint8))
        kept["clean"].append(clean.astype(np.uint8))

    start = time.perf_counter()
    result = noisyseg.audit(config, folds=folds, progress=False, top=16, observe=keep)
    seconds = round(time.perf_counter() - start, 1)
    probs_a, given_a, clean_a = (np.concatenate(kept.pop(key)) for key in ("probs", "given", "clean"))
    wrong = given_a != clean_a
    positives = wrong.reshape(len(wrong), -1).any(1)
    s = result.summary
    signals = {sig: {"image_auroc": s["signals"][sig]["image_auroc"],
                     "p_at_k": s["signals"][sig]["precision_at_k"]} for sig in SIGNALS}
    assert signals[DEFAULT_SIGNAL]["image_auroc"] == s["image_auroc"]
    labels = given_a.astype(np.int64)
    quality, pixel = get_label_quality_scores(labels, probs_a, verbose=False)
    curve = PixelCurve()
    curve.add(1 - pixel, wrong)
    issues = find_label_issues(labels, probs_a, downsample=1, n_jobs=1, verbose=False)
    metrics = {
        "folds": folds, "k": int(positives.sum()), "images": len(positives), "signal": DEFAULT_SIGNAL,
        "image_auroc": s["image_auroc"], "p_at_k": s["precision_at_k"],
        "pixel_auprc": s["pixel_auprc"], "pixel_f1": _f1(probs_a.argmax(1) != given_a, wrong),
        "signals": signals,
        "cleanlab": {"version": cleanlab.__version__, "signal": "softmin",
                     "image_auroc": detection_auroc(1 - quality, positives),
                     "p_at_k": precision_at_k(1 - quality, positives),
                     "pixel_auprc": curve.auprc(),
                     "pixel_f1": _f1(np.asarray(issues, dtype=bool), wrong)},
    }
    return metrics, seconds


def run_setting(preset: str, dataset: str, noise: str, rate: float, seed: int, folds: int,
                method: str, runs: Path) -> tuple[dict[str, Any], bool]:
    """The stored row of a setting (audited now unless the store holds it for this commit), and
    whether it was audited now."""
    from noisyseg.build import resolve_device

    config = setting_config(preset, dataset, noise, rate, seed, method, runs, folds)
    known = store.done(store.digest(config, options(folds)))
    if known is not None:
        return known, False
    metrics, seconds = one(config, folds)
    cfg = resolve(config)
    return store.record(
        benchmark=BENCHMARK, preset=preset, dataset=dataset, noise=noise,
        noise_options=NOISES[noise].get("options", {}), rate=rate, method=method,
        recipe=cfg.recipe.name, seed=seed, metrics=metrics, config=config, options=options(folds),
        device=str(resolve_device(cfg.device)), seconds=seconds), True


_GENERATE = """
import sys
from noisyseg.datacache import load_splits
from noisyseg.plugins import Registry, build_plugin_manager
options = {"size": 64, "n_train": int(sys.argv[1]), "n_meta": 50, "n_test": 50}
load_splits(Registry(build_plugin_manager()).build("dataset", "synthetic", options), 0)
"""
_AUDIT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import noisyseg
r = noisyseg.audit(json.loads(sys.argv[1]), progress=False)
print(json.dumps({"peak_rss_mb": r.summary["peak_rss_mb"], "seconds": r.summary["seconds"]}))
"""


def memory_config(n: int, steps: int, runs: Path) -> dict[str, Any]:
    """The config of the memory measurement at n images (the audit's defaults otherwise: 3 folds)."""
    return {"dataset": {"name": "synthetic", "options": {"size": 64, "n_train": n, "n_meta": 50,
                                                         "n_test": 50}},
            "train": {"max_steps": steps, "eval_every": 0},
            "output": {"dir": str(runs / f"memory-{n}"), "overwrite": True, "figure_images": 0}}


def memory(n: int, steps: int, runs: Path) -> dict[str, Any]:
    """Peak RSS of a fresh process auditing n synthetic 64x64 images (generated beforehand):
    its stored row, measured now unless the store holds it for this commit."""
    from noisyseg.build import resolve_device

    config = memory_config(n, steps, runs)
    known = store.done(store.digest(config, options(3)))
    if known is not None:
        return known
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", _GENERATE, str(n)], check=True, env=env)
    out = subprocess.run([sys.executable, "-c", _AUDIT, json.dumps(config)],
                         check=True, env=env, capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    data_mb = n * 64 * 64 * (4 + 8) / 2**20  # float32 images, int64 masks
    metrics = {"images": n, "steps": steps, "folds": 3, "peak_rss_mb": round(got["peak_rss_mb"], 1),
               "data_mb": round(data_mb, 1), "seconds": got["seconds"]}
    return store.record(benchmark=BENCHMARK, preset=MEMORY, dataset="synthetic", metrics=metrics,
                        config=config, options=options(3), seconds=got["seconds"],
                        device=str(resolve_device(resolve(config).device)))


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def flat(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored setting as the tables read it: a row per signal of the audit (tool ``noisyseg``)
    and one for cleanlab's softmin (tool ``cleanlab``)."""
    m = row["metrics"]
    base = {"dataset": row["dataset"], "noise": row["noise"], "rate": row["rate"], "seed": row["seed"],
            "pixel_auprc": _num(m["pixel_auprc"]), "pixel_f1": _num(m["pixel_f1"])}
    out = [{**base, "tool": "noisyseg", "signal": sig, "image_auroc": _num(v["image_auroc"]),
            "p_at_k": _num(v["p_at_k"])} for sig, v in m["signals"].items()]
    c = m["cleanlab"]
    out.append({**base, "tool": "cleanlab", "signal": c["signal"], "image_auroc": _num(c["image_auroc"]),
                "p_at_k": _num(c["p_at_k"]), "pixel_auprc": _num(c["pixel_auprc"]),
                "pixel_f1": _num(c["pixel_f1"])})
    return out


def stored(preset: str, datasets: list[str], settings: list[tuple[str, float]], seeds: list[int],
           folds: int, method: str) -> list[dict[str, Any]]:
    """The store's rows of these settings: per dataset, setting and seed the newest."""
    newest: dict[tuple, dict[str, Any]] = {}
    for r in store.rows(benchmark=BENCHMARK, preset=preset, method=method, seed=seeds):
        if r["dataset"] in datasets and (r["noise"], r["rate"]) in settings \
                and r["metrics"].get("folds") == folds:
            newest[(r["dataset"], r["noise"], r["rate"], r["seed"])] = r  # oldest first
    return list(newest.values())


def stored_memory(sizes: list[int], steps: int) -> list[dict[str, Any]]:
    """The newest memory measurement of each n of ``sizes``, smallest n first."""
    newest: dict[int, dict[str, Any]] = {}
    for r in store.rows(benchmark=BENCHMARK, preset=MEMORY):
        m = r["metrics"]
        if m["images"] in sizes and m["steps"] == steps:
            newest[m["images"]] = m
    return [newest[n] for n in sorted(newest)]


def _mean(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.mean(values) if values else math.nan


def _sd(values: list[float]) -> str:
    values = [v for v in values if v == v]
    return f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""


def summary(rows: list[dict[str, Any]], mem: list[dict[str, Any]]) -> tuple[str, str]:
    """The markdown tables and the last line."""
    from noisyseg.audit_signals import DEFAULT_SIGNAL, SIGNALS

    settings = list(dict.fromkeys((r["dataset"], r["noise"], r["rate"]) for r in rows))
    pick = lambda tool, sig, d, n, r: [x for x in rows if (x["tool"], x["signal"], x["dataset"],  # noqa: E731
                                                            x["noise"], x["rate"]) == (tool, sig, d, n, r)]
    lines = [f"| dataset | noise | r | seeds | audit AUROC ({DEFAULT_SIGNAL}) | cleanlab AUROC | "
             "audit p@k | cleanlab p@k | pixel AUPRC | pixel F1 audit / cleanlab |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for d, n, r in settings:
        ours, theirs = pick("noisyseg", DEFAULT_SIGNAL, d, n, r), pick("cleanlab", "softmin", d, n, r)
        cell = lambda xs, key: f"{_mean([x[key] for x in xs]):.3f}{_sd([x[key] for x in xs])}"  # noqa: E731
        lines.append(f"| {d} | {n} | {r:g} | {len(ours)} | {cell(ours, 'image_auroc')} | "
                     f"{cell(theirs, 'image_auroc')} | {cell(ours, 'p_at_k')} | {cell(theirs, 'p_at_k')} | "
                     f"{cell(ours, 'pixel_auprc')} | {_mean([x['pixel_f1'] for x in ours]):.3f} / "
                     f"{_mean([x['pixel_f1'] for x in theirs]):.3f} |")
    lines += ["", "Image AUROC of every signal (mean over seeds), and cleanlab's softmin:", "",
              "| dataset | noise | r | " + " | ".join(SIGNALS) + " | cleanlab |",
              "|---|---|---|" + "---|" * (len(SIGNALS) + 1)]
    for d, n, r in settings:
        cells = [f"{_mean([x['image_auroc'] for x in pick('noisyseg', s, d, n, r)]):.3f}" for s in SIGNALS]
        cells.append(f"{_mean([x['image_auroc'] for x in pick('cleanlab', 'softmin', d, n, r)]):.3f}")
        lines.append(f"| {d} | {n} | {r:g} | " + " | ".join(cells) + " |")
    means = {s: _mean([x["image_auroc"] for x in rows if x["tool"] == "noisyseg" and x["signal"] == s])
             for s in SIGNALS}
    lines.append("| **mean** | | | " + " | ".join(f"{v:.3f}" for v in means.values()) + " | "
                 f"{_mean([x['image_auroc'] for x in rows if x['tool'] == 'cleanlab']):.3f} |")
    if mem:
        lines += ["", "| images (64x64) | data (MB) | peak RSS (MB) | seconds |", "|---|---|---|---|"]
        lines += [f"| {m['images']} | {float(m['data_mb']):.0f} | {float(m['peak_rss_mb']):.0f} | "
                  f"{float(m['seconds']):.0f} |" for m in mem]
    default = [x for x in rows if x["tool"] == "noisyseg" and x["signal"] == DEFAULT_SIGNAL]
    peak = max(mem, key=lambda m: int(m["images"]))["peak_rss_mb"] if mem else math.nan
    last = (f"audit_auroc={_mean([x['image_auroc'] for x in default]):.3f} "
            f"cleanlab_auroc={_mean([x['image_auroc'] for x in rows if x['tool'] == 'cleanlab']):.3f} "
            f"audit_p_at_k={_mean([x['p_at_k'] for x in default]):.3f} peak_rss_mb={float(peak):.0f}")
    return "\n".join(lines), last


def write_docs(table: str, last: str, preset: str, versions: list[str]) -> None:
    """The tables into docs/audit.md, with the cleanlab ``versions`` the rows compared with."""
    text = DOCS.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    note = (f"Preset `{preset}`, cleanlab {', '.join(versions) or 'n/a'}; written by "
            f"`python benchmarks/audit.py --summary --docs` from the results store.\n\n`{last}`")
    DOCS.write_text(f"{head}{START}\n{note}\n\n{table}\n{END}{tail}")


def main() -> None:
    import cleanlab

    from noisyseg.audit_signals import DEFAULT_SIGNAL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser, BENCHMARK, reuse=False)
    parser.add_argument("--noises", nargs="+", default=None, help="labels of SETTINGS (default: all)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--method", default="none", help="as benchmarks/protocol.py reads methods")
    parser.add_argument("--memory", nargs="*", type=int, default=[1000, 10000],
                        help="image counts of the memory measurement (none: skip it)")
    parser.add_argument("--memory-steps", type=int, default=20)
    parser.add_argument("--docs", action="store_true", help="write the tables into docs/audit.md")
    args = parser.parse_args()
    runs = runs_dir(args, BENCHMARK)
    settings = [s for s in SETTINGS if args.noises is None or s[0] in args.noises]
    missing = [n for n, _ in settings if n not in NOISES]
    if missing:
        print(f"note: {', '.join(missing)} not in benchmarks/protocol.py's NOISES yet: skipped",
              file=sys.stderr)
    settings = [s for s in settings if s[0] in NOISES]
    print(f"cleanlab {cleanlab.__version__}", file=sys.stderr)
    if not args.summary:
        plan = [(d, n, r, s) for s in args.seeds for d in args.datasets for n, r in settings]
        start = time.perf_counter()
        for i, (d, n, r, s) in enumerate(plan, 1):
            row, now = run_setting(args.preset, d, n, r, s, args.folds, args.method, runs)
            m = row["metrics"]
            print(f"[{i}/{len(plan)} {time.perf_counter() - start:.0f} s] {d} {n} r{r:g} s{s}: "
                  f"audit AUROC {_num(m['signals'][DEFAULT_SIGNAL]['image_auroc']):.3f}, cleanlab "
                  f"{_num(m['cleanlab']['image_auroc']):.3f} ({row['seconds']:.0f} s"
                  + ("" if now else ", in the store already") + ")", flush=True)
        for n in args.memory:
            m = memory(n, args.memory_steps, runs)["metrics"]
            print(f"memory: {n} images, peak RSS {m['peak_rss_mb']:.0f} MB ({m['seconds']:.0f} s)",
                  flush=True)
    found = stored(args.preset, args.datasets, settings, args.seeds, args.folds, args.method)
    mem = stored_memory(args.memory, args.memory_steps) if args.memory else []
    table, last = summary([x for r in found for x in flat(r)], mem)
    print(table)
    if args.docs:
        write_docs(table, last, args.preset,
                   sorted({r["metrics"]["cleanlab"]["version"] for r in found}))
    print(last)


if __name__ == "__main__":
    sys.exit(main())
