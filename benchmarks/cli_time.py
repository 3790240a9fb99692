"""How long the command line takes to answer: ``noisyseg --help``, ``run --help``, ``plugins``,
``plugins --options mcpm`` and ``config``, each run 5 times in a fresh process (the median).

    python benchmarks/cli_time.py
    python benchmarks/cli_time.py --repeat 9

Each command also reports whether it imported torch (it should not: the listing and the help
come from metadata, and torch is imported when a run starts). The timings go to the results
store (benchmark ``cli_time``). Last line: ``help_s=<median> plugins_s=<median>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import store

COMMANDS = {
    "help": ["--help"],
    "run_help": ["run", "--help"],
    "plugins": ["plugins"],
    "plugins_options": ["plugins", "--options", "mcpm"],
    "config": ["config"],
}
#: run the command line in a fresh interpreter and say whether torch got imported
PROBE = ("import runpy, sys; sys.argv = ['noisyseg', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('noisyseg.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('TORCH', 'torch' in sys.modules, file=sys.stderr)")


def timed(args: list[str]) -> tuple[float, bool]:
    """Seconds of one ``noisyseg ARGS`` in a fresh process, and whether it imported torch."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"}, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"noisyseg {' '.join(args)} failed: {done.stderr[-500:]}")
    return seconds, "TORCH True" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("noisyseg") is None:
        raise SystemExit("the noisyseg command is not on PATH: activate the environment the README sets up")
    medians = {}
    for name, argv in COMMANDS.items():
        runs = [timed(argv) for _ in range(args.repeat)]
        medians[name] = statistics.median(s for s, _ in runs)
        torch = any(t for _, t in runs)
        print(f"noisyseg {' '.join(argv):<26} median {medians[name]:.2f} s over {args.repeat} "
              f"(min {min(s for s, _ in runs):.2f}){'  imports torch' if torch else ''}", flush=True)
        store.record(benchmark="cli_time", method=name, metrics={"median_s": medians[name],
                     "min_s": min(s for s, _ in runs), "imports_torch": torch,
                     "repeat": args.repeat}, device="cpu", preset=f"repeat{args.repeat}")
    print(f"help_s={medians['help']:.2f} plugins_s={medians['plugins']:.2f}")


if __name__ == "__main__":
    main()
