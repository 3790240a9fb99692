"""Kill a real ``noisyseg run`` with SIGKILL in the middle of an epoch, resume it with
``noisyseg run --resume``, and compare with the same run left alone.

    python benchmarks/resume_check.py                     # none and mcpm, 3 epochs, 300 images
    python benchmarks/resume_check.py --methods mcpm --epochs 4 --n-train 1000
    python benchmarks/resume_check.py --methods plc+coteaching

Methods are labels, as every benchmark reads them (benchmarks/protocol.py), of single-stage runs
(the ``none`` recipe with components picked and set). For each method it runs the command once
uninterrupted (a) and once killed part-way through epoch 2 and resumed (b), then compares the
final metrics, every line of metrics.jsonl (timings aside) and the final model weights bit for
bit. One line per method, then last
``identical=<true|false> dice_a=<x> dice_b=<y>`` (true only if every method matched; the Dice
values listed in the order of --methods, comma-separated). Each method is a row of the results
store (benchmark ``resume_check``, preset ``e<epochs>-n<n-train>``, dataset synthetic, the
method's label; metrics identical, dice_a, dice_b and where it was killed): the last line's
figures, per method.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import protocol
import store
import torch

from noisyseg.build import resolve_device
from noisyseg.rundir import TIMINGS

BENCHMARK = "resume_check"
#: what a plain ``python benchmarks/resume_check.py`` checks
METHODS = ("none", "mcpm")
COMMAND = [sys.executable, "-c", "from noisyseg.cli import cli; cli()", "run"]


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMINGS} for x in lines]


def _same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(b / "checkpoint.pt", weights_only=False)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def method_args(label: str) -> list[str]:
    """``noisyseg run`` options of a method label; a recipe of stages is refused (the kill
    watches the run directory's own checkpoint)."""
    recipe = protocol.method_config(label)["recipe"]["name"]
    if recipe != "none":
        raise SystemExit(f"method {label!r}: resume_check.py kills single-stage runs; it runs the "
                         f"recipe {recipe}")
    return protocol.method_args(label)


def check(method: str, args: list[str], root: Path) -> tuple[bool, float, float, dict]:
    name = method.replace("/", "_")  # a label's setting may hold a path
    a, b = root / f"{name}-a", root / f"{name}-b"
    subprocess.run([*COMMAND, *args, "--out", str(a), "-q"], check=True)

    process = subprocess.Popen([*COMMAND, *args, "--out", str(b), "-q"])
    while not (b / "checkpoint.pt").exists():
        if process.poll() is not None:
            raise SystemExit(f"{method}: the run ended before its first checkpoint")
        time.sleep(0.05)
    epoch_seconds = json.loads((b / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
    time.sleep(0.5 * epoch_seconds)  # half-way through epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len((b / "metrics.jsonl").read_text().splitlines())
    subprocess.run([*COMMAND, "--resume", str(b), "-q"], check=True)

    fa = json.loads((a / "metrics.json").read_text())
    fb = json.loads((b / "metrics.json").read_text())
    keys = [k for k in fa if k not in TIMINGS]
    same = ({k: fa[k] for k in keys} == {k: fb[k] for k in keys} and _records(a) == _records(b)
            and _same_weights(a, b))
    return same, fa["dice"], fb["dice"], {"killed_after_epochs": done,
                                          "killed_seconds_into_next": 0.5 * epoch_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help="labels, as accuracy.py reads them (default: none mcpm)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    commands = {method: method_args(method) for method in args.methods}  # a bad label fails here
    common = ["--epochs", str(args.epochs), "--set", f"dataset.options.n_train={args.n_train}"]
    root = args.out or Path(tempfile.mkdtemp(prefix="noisyseg-resume-"))
    os.makedirs(root, exist_ok=True)
    preset = f"e{args.epochs}-n{args.n_train}"
    device = str(resolve_device("auto"))  # where the command's runs train
    results = []
    for method in args.methods:
        same, dice_a, dice_b, kill = check(method, [*common, *commands[method]], root)
        results.append((same, dice_a, dice_b))
        where = (f"killed after {kill['killed_after_epochs']} finished epoch(s), "
                 f"{kill['killed_seconds_into_next']:.1f} s into the next")
        print(f"method={method} identical={str(same).lower()} dice_a={dice_a:.6f} dice_b={dice_b:.6f} "
              f"({where})", flush=True)
        store.record(benchmark=BENCHMARK, preset=preset, dataset="synthetic", method=method,
                     device=device, metrics={"identical": same, "dice_a": dice_a, "dice_b": dice_b,
                                            **kill})
    print(f"identical={str(all(r[0] for r in results)).lower()} "
          f"dice_a={','.join(f'{r[1]:.6f}' for r in results)} "
          f"dice_b={','.join(f'{r[2]:.6f}' for r in results)}")


if __name__ == "__main__":
    main()
