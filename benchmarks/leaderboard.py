"""The leaderboard: every method's Dice and recovery of the noisy-to-clean gap, per preset,
dataset, noise and rate, from the results store (benchmarks/results/results.sqlite).

    python benchmarks/leaderboard.py            # rewrite docs/leaderboard.md and the README's table
    python benchmarks/leaderboard.py --check    # exit 1 when either is out of date

The docs build runs it too (benchmarks/docs_hook.py). A method's row takes the runs of the newest commit
that ran it; its recovery compares them with the ``none`` and clean runs of the same commit when
that commit has them, else with the newest ones (rows migrated from the old CSVs with migrated
baselines only).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGE = ROOT / "docs" / "leaderboard.md"
README = ROOT / "README.md"
README_START = "<!-- leaderboard:readme (python benchmarks/leaderboard.py) -->"
README_END = "<!-- leaderboard:end -->"
#: the README's table: (method, what it is), shown for the accuracy benchmark's noise
README_METHODS = (("finetune_cal", "fine-tune on the clean meta images, calibrate"),
                  ("relabel_finetune", "relabel with L2RW's weights, then fine-tune"),
                  ("confusion_finetune_cal", "annotator model, fine-tune, calibrate"),
                  ("finetune", "fine-tune on the clean meta images"),
                  ("calibrate", "calibrate the decision only"))
PRESETS = {
    "cpu": "CPU protocol: 48 px patches (synthetic: 300 train / 40 meta / 200 test; MNI152 white "
           "matter: about 284 / 43 / 126), U-Net of 8 base channels and depth 3, 20 epochs of "
           "Adam (lr 1e-3, cosine), batch 16",
    "paper": "the MCPM paper's protocol: 64 px, 1906 / 300 / 1385 images, U-Net of 32 base "
             "channels and depth 4, batch 128, 50 epochs (lr 1e-4, x0.1 at 20 and 40)",
}

Key = tuple[str, str, str, float]  # preset, dataset, noise, rate
#: benchmarks whose rows are no method's result: mcpm_sweep chooses options on the meta images'
#: validation share (its test Dice is kept in the store); audit stores detection scores, no Dice
NOT_SHOWN = {"mcpm_sweep", "audit"}


def _migrated(row: dict[str, Any]) -> bool:
    return row["git_tree"] == "migrated-csv"


def _by_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
    return {int(r["seed"]): float(r["dice"]) for r in rows if r["dice"] is not None}


def _newest(rows: list[dict[str, Any]], like: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of the newest (commit, tree) among ``rows``; with ``like``, the rows of its
    commit when there are, else of the newest commit of the same kind (migrated or not)."""
    if not rows:
        return []
    if like is not None:
        same = [r for r in rows if (r["git_commit"], r["git_tree"]) == (like["git_commit"], like["git_tree"])]
        if same:
            return same
        rows = [r for r in rows if _migrated(r) == _migrated(like)] or rows
    last = max(rows, key=lambda r: (r["date"], r["id"]))
    return [r for r in rows if (r["git_commit"], r["git_tree"]) == (last["git_commit"], last["git_tree"])]


def entries(rows: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    """(preset, dataset, noise, rate) -> one entry per method: Dice, recovery, seeds, commit."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["dataset"] is None or r["method"] is None or r["rate"] is None:
            continue  # a timing, not an accuracy run
        if r["benchmark"] in NOT_SHOWN:
            continue
        groups[(r["preset"], r["dataset"], r["noise"], float(r["rate"]), r["method"])].append(r)
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for (preset, dataset, noise, rate, method), runs in sorted(groups.items()):
        if rate == 0:
            continue
        mine = _newest(runs)
        none = _newest(groups.get((preset, dataset, noise, rate, "none"), []), mine[0])
        clean = _newest(groups.get((preset, dataset, "none", 0.0, "none"), []), mine[0])
        got, base, top = _by_seed(mine), _by_seed(none), _by_seed(clean)
        seeds = sorted(set(got) & set(base) & set(top))
        entry: dict[str, Any] = {"method": method, "dice": list(got.values()), "seeds": len(got),
                                 "commit": _commit(mine[0]), "recovery": math.nan,
                                 "recovery_sd": math.nan, "recovery_seeds": len(seeds)}
        if seeds and method != "none":
            def mean(d: dict[int, float], seeds: list[int] = seeds) -> float:
                return statistics.mean(d[s] for s in seeds)

            gap = mean(top) - mean(base)
            entry["recovery"] = (mean(got) - mean(base)) / gap if gap else math.nan
            per = [(got[s] - base[s]) / (top[s] - base[s]) for s in seeds if top[s] != base[s]]
            entry["recovery_sd"] = statistics.stdev(per) if len(per) > 1 else math.nan
        out[(preset, dataset, noise, rate)].append(entry)
        if method == "none" and clean:
            top_rows = {"method": "clean", "dice": list(top.values()), "seeds": len(top),
                        "commit": _commit(clean[0]), "recovery": math.nan, "recovery_sd": math.nan,
                        "recovery_seeds": 0}
            out[(preset, dataset, noise, rate)].append(top_rows)
    return out


def _commit(row: dict[str, Any]) -> str:
    short = row["git_commit"][:7]
    return f"{short} (migrated)" if _migrated(row) else short + ("" if row["git_tree"] == "clean" else "+")


def _dice(values: list[float]) -> str:
    if not values:
        return "—"
    sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{sd}"


def _recovery(entry: dict[str, Any]) -> str:
    rec, sd = entry["recovery"], entry["recovery_sd"]
    if rec != rec:
        return ""
    return f"{rec:+.2f}" + (f" ± {sd:.2f}" if sd == sd else "")


def mean_recovery(board: dict[Key, list[dict[str, Any]]], preset: str, noise: str, rate: float,
                  method: str) -> tuple[float, int]:
    """Recovery averaged over the datasets, and the fewest seeds behind one of them."""
    found = [e for (p, _, n, r), es in board.items() if (p, n, r) == (preset, noise, rate)
             for e in es if e["method"] == method and e["recovery"] == e["recovery"]]
    if not found:
        return math.nan, 0
    return statistics.mean(e["recovery"] for e in found), min(e["recovery_seeds"] for e in found)


def page(rows: list[dict[str, Any]]) -> str:
    board = entries(rows)
    lines = ["# Leaderboard", "",
             "Generated from the results store (`benchmarks/results/results.sqlite`) by "
             "`python benchmarks/leaderboard.py`, also at every docs build: do not edit by hand. "
             "Recovery is the share of the Dice gap between plain training on the noisy labels "
             "(`none`) and on the clean labels (`clean`) that a method wins back (0: no better "
             "than `none`, 1: as good as clean labels), over the seeds that have all three, "
             "with its sd over the seeds. Each row names the commit that ran it ('+': with "
             "uncommitted changes; 'migrated': an old CSV row, produced on another machine and "
             "torch, kept for the record). How to reproduce each table: "
             "[benchmarks](benchmarks.md).", ""]
    for preset in sorted({k[0] for k in board}, key=lambda p: (p not in PRESETS, p)):
        lines += [f"## Preset `{preset}`", ""]
        if preset in PRESETS:
            lines += [PRESETS[preset] + ".", ""]
        keys = sorted(k for k in board if k[0] == preset)
        methods = sorted({e["method"] for k in keys for e in board[k]} - {"none", "clean"})
        settings = sorted({(k[2], k[3]) for k in keys})
        if len({k[1] for k in keys}) > 1:
            lines += ["Mean recovery over the datasets (the tables below give each):", "",
                      "| method | " + " | ".join(f"{n} r={r:g}" for n, r in settings) + " |",
                      "|---|" + "---|" * len(settings)]
            for m in methods:
                cells = [mean_recovery(board, preset, n, r, m)[0] for n, r in settings]
                lines.append(f"| {m} | " + " | ".join("" if c != c else f"{c:+.2f}" for c in cells) + " |")
            lines.append("")
        for key in keys:
            _, dataset, noise, rate = key
            lines += [f"### {dataset} · {noise} · r = {rate:g}", "",
                      "| method | test Dice (mean ± sd) | seeds | recovery (± sd) | commit |",
                      "|---|---|---|---|---|"]
            def rank(e: dict[str, Any]) -> tuple:
                rec = e["recovery"] if e["recovery"] == e["recovery"] else -9.0
                return e["method"] != "clean", e["method"] != "none", -rec

            order = sorted(board[key], key=rank)
            for e in order:
                lines.append(f"| {e['method']} | {_dice(e['dice'])} | {e['seeds']} | {_recovery(e)} | "
                             f"{e['commit']} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def readme_table(rows: list[dict[str, Any]], preset: str = "cpu", noise: str = "dilation") -> str:
    """The README's table: the recipes' recovery on the accuracy benchmark, mean of the datasets."""
    board = entries(rows)
    lines = ["| recipe | what it does | recovery at r = 0.4 | at r = 0.8 | seeds |",
             "|---|---|---|---|---|"]
    for method, what in README_METHODS:
        cells = [mean_recovery(board, preset, noise, r, method) for r in (0.4, 0.8)]
        seeds = min((n for _, n in cells if n), default=0)
        shown = ["—" if v != v else f"{v:.0%}" for v, _ in cells]
        lines.append(f"| `{method}` | {what} | {shown[0]} | {shown[1]} | {seeds} |")
    return "\n".join(lines)


def readme_section(text: str) -> str:
    return text.split(README_START, 1)[1].split(README_END, 1)[0].strip()


def write(check: bool = False, readme: bool = True) -> bool:
    """Rewrite (or with ``check`` compare) docs/leaderboard.md and, with ``readme``, the
    README's table; True when they were up to date."""
    rows = store.rows()
    fresh = page(rows)
    ok = PAGE.exists() and PAGE.read_text() == fresh
    if readme:
        text = README.read_text()
        table = readme_table(rows)
        ok = ok and readme_section(text) == table
        if not check:
            head, rest = text.split(README_START, 1)
            README.write_text(f"{head}{README_START}\n{table}\n{README_END}{rest.split(README_END, 1)[1]}")
    if not check and not (PAGE.exists() and PAGE.read_text() == fresh):
        PAGE.write_text(fresh)  # only when it changed: mkdocs serve watches the page
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when out of date")
    args = parser.parse_args()
    ok = write(check=args.check)
    if args.check and not ok:
        sys.exit(f"{PAGE} or the README's table is out of date: run python benchmarks/leaderboard.py")
    print(f"{'checked' if args.check else 'wrote'} {PAGE} and the README's table")


if __name__ == "__main__":
    main()
